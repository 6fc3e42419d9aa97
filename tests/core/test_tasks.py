"""The task layer: language modelling (plain text, packing, LM loss + distillation, perplexity)
and the choice of task from model and data, on tiny decoders and a tokenizer built in the test."""
from __future__ import annotations

import json
import math

import pytest
import torch

from .decoders import decoder_config, tiny_decoder
from vtrans_core.errors import CompressionError
from vtrans_core.tasks import TASKS, choose_task
from vtrans_core.tasks.language_modeling import (
    generation_samples, lm_loss, pack, perplexity, read_documents, split_documents, window_batches,
)

WORDS = ("the a of and to in is was he she it that for on with as his her they at by this had not but from "
         "or have an be which one you were all we when there can been has more if will no out so said what up "
         "its about into than them only some could new other time very").split()


@pytest.fixture(scope="module")
def tokenizer():
    """A word-level tokenizer over WORDS (ids < 100, the tiny decoders' vocabulary)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = WORDS + [f"w{i}" for i in range(100 - 4 - len(WORDS))]     # every model id decodes
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{w: i + 4 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


def _doc(seed: int, n: int = 30) -> str:
    g = torch.Generator().manual_seed(seed)
    return " ".join(WORDS[i] for i in torch.randint(0, len(WORDS), (n,), generator=g).tolist())


def test_text_files_are_read_as_documents(tmp_path):
    txt = tmp_path / "c.txt"
    txt.write_text("first doc\nstill first\n\n\nsecond doc\n\nthird\n")
    assert read_documents(txt) == ("c.txt", ["first doc\nstill first", "second doc", "third"])
    lines = tmp_path / "lines.txt"
    lines.write_text("one\ntwo\n\nthree\n".replace("\n\n", "\n"))
    assert read_documents(lines)[1] == ["one", "two", "three"]
    jl = tmp_path / "d.jsonl"
    jl.write_text("\n".join(json.dumps({"text": t, "source": "x"}) for t in ("a b", "c d")))
    assert read_documents(jl)[1] == ["a b", "c d"]
    cs = tmp_path / "d.csv"
    cs.write_text('id,text\n1,"hello, world"\n2,bye\n')
    assert read_documents(cs)[1] == ["hello, world", "bye"]


@pytest.mark.parametrize("name,content,needle", [
    ("lab.csv", "text,label\nhi,1\nho,0\n", "label"),
    ("lab.jsonl", '{"text": "hi", "label": 1}\n', "label"),
    ("one.txt", "just one line", "at least 2"),
    ("bad.jsonl", '{"text": "a"}\nnot json\n', "line 2"),
    ("nocol.csv", "body\nx\ny\n", "text"),
    ("x.docx", "a\n\nb", ".txt"),
])
def test_unusable_text_is_refused_naming_the_problem(tmp_path, name, content, needle):
    p = tmp_path / name
    p.write_text(content)
    with pytest.raises(CompressionError) as err:
        read_documents(p)
    assert err.value.field == "data" and needle in str(err.value)


def test_split_is_by_document_deterministic_and_disjoint():
    docs = [f"doc {i}" for i in range(37)]
    calib, held = split_documents(docs)
    assert (calib, held) == split_documents(list(docs))
    assert not set(calib) & set(held) and sorted(calib + held) == sorted(docs)
    assert len(held) == 4                           # 10%, rounded
    assert len(split_documents(docs[:2])[1]) == 1   # at least one held out


def test_packing_fills_windows_with_documents_joined_by_eos(tokenizer):
    docs = [_doc(i, 25) for i in range(5)]
    win = pack(tokenizer, docs, 16)
    stream = []
    for d in docs:
        stream += tokenizer(d, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert len(win) == len(stream) // 16 and win.tokens == len(win) * 16
    assert win.ids.reshape(-1).tolist() == stream[: win.tokens]
    batch = next(window_batches(win, 2, "cpu", shuffle=False))
    assert batch["input_ids"].shape == (2, 16) and torch.equal(batch["labels"], batch["input_ids"])
    with pytest.raises(CompressionError):
        pack(tokenizer, ["the a"], 16)


def test_lm_loss_is_next_token_ce_plus_distillation(tokenizer):
    model = tiny_decoder("llama-gqa")
    win = pack(tokenizer, [_doc(i) for i in range(6)], 12)
    batch = next(window_batches(win, 4, "cpu", shuffle=False))
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], labels=batch["input_ids"])
    total, task, distill = lm_loss(out.logits, out.logits, batch, temperature=2.0, weight=0.5)
    assert abs(task.item() - out.loss.item()) < 1e-5        # = transformers' shifted LM loss
    assert abs(distill.item()) < 1e-5                        # the dense model distilled onto itself
    other = tiny_decoder("llama-gqa", seed=1)
    with torch.no_grad():
        t_logits = other(input_ids=batch["input_ids"]).logits
    total, task, distill = lm_loss(out.logits, t_logits, batch, temperature=2.0, weight=0.5)
    assert distill.item() > 0 and abs(total.item() - (0.5 * task.item() + 0.5 * distill.item())) < 1e-4
    alone, _, zero = lm_loss(out.logits, None, batch, 2.0, 0.5)
    assert abs(alone.item() - out.loss.item()) < 1e-5 and zero.item() == 0


def _whole_batch_lm_loss(student, teacher, labels, t=2.0, w=0.5):
    """The loss as one vocabulary-wide computation over the batch (what lm_loss computed before
    it went window by window)."""
    import torch.nn.functional as F

    s, y, v = student[:, :-1].reshape(-1, student.shape[-1]), labels[:, 1:].reshape(-1), student.shape[-1]
    ce = F.cross_entropy(s, y)
    kl = F.kl_div(F.log_softmax(s / t, -1), F.log_softmax(teacher[:, :-1].reshape(-1, v) / t, -1),
                  log_target=True, reduction="batchmean") * t * t
    return (1 - w) * ce + w * kl


def test_lm_loss_window_by_window_is_the_same_loss_and_keeps_only_its_inputs():
    torch.manual_seed(0)
    student = torch.randn(4, 33, 500, requires_grad=True)
    teacher, labels = torch.randn(4, 33, 500), torch.randint(0, 500, (4, 33))
    saved = [0]

    def pack(t):
        saved[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        total, _, _ = lm_loss(student, teacher, {"labels": labels}, 2.0, 0.5)
    grad, = torch.autograd.grad(total, student)
    ref = _whole_batch_lm_loss(student, teacher, labels)
    ref_grad, = torch.autograd.grad(ref, student)
    torch.testing.assert_close(total, ref)
    torch.testing.assert_close(grad, ref_grad)
    # kept for backward: the windows' inputs (views of the two logit tensors), not the ~6
    # vocabulary-wide intermediates a whole-batch loss keeps
    assert saved[0] <= 2.1 * student.numel() * 4, saved[0] / (student.numel() * 4)


def test_perplexity_states_its_window_and_matches_transformers(tokenizer):
    model = tiny_decoder("gpt2")
    win = pack(tokenizer, [_doc(i) for i in range(8)], 10)
    got = perplexity(model, win, batch_size=3, device="cpu")
    with torch.no_grad():
        ref = math.exp(model(input_ids=win.ids, labels=win.ids).loss.item())
    assert abs(got["perplexity"] - ref) / ref < 1e-5
    assert got["window"] == got["stride"] == 10 and got["tokens_scored"] == len(win) * 9


def test_generation_samples_are_greedy_and_fixed(tokenizer):
    model = tiny_decoder("qwen3")
    docs = [_doc(i) for i in range(3)]
    a = generation_samples(model, tokenizer, docs, n=2, prompt_tokens=5, new_tokens=4)
    assert a == generation_samples(model, tokenizer, docs, n=2, prompt_tokens=5, new_tokens=4)
    assert len(a) == 2 and a[0]["prompt"] == " ".join(docs[0].split()[:5])
    for s in a:   # greedy up to 4 new tokens (fewer only when the model emits EOS)
        assert 1 <= s["new_tokens"] <= 4 and (s["new_tokens"] == 4 or s["continuation"].count(" ") < 3)


def _cfg(name: str) -> dict:
    return decoder_config(name).to_dict() if name != "bert" else {"model_type": "bert",
                                                                  "architectures": ["BertForSequenceClassification"]}


def test_task_follows_the_model_and_the_data_must_fit(tmp_path):
    assert choose_task(_cfg("gpt2")).name == "language-modeling"
    assert choose_task(_cfg("qwen3")).name == "language-modeling"
    assert choose_task(_cfg("bert")).name == "sequence-classification"
    assert choose_task(_cfg("llama-gqa"), explicit="language-modeling") is TASKS["language-modeling"]
    with pytest.raises(CompressionError) as err:
        choose_task(_cfg("bert"), explicit="language-modeling")
    assert err.value.field == "options.task"
    with pytest.raises(CompressionError) as err:
        choose_task(_cfg("bert"), explicit="summarization")
    assert err.value.field == "options.task"
    labelled = tmp_path / "l.csv"
    labelled.write_text("text,label\nhi,1\nho,0\n")
    text = tmp_path / "t.txt"
    text.write_text("a\n\nb\n")
    with pytest.raises(CompressionError) as err:
        choose_task(_cfg("llama-gqa"), labelled)
    assert err.value.field == "data" and "label" in str(err.value)
    with pytest.raises(CompressionError) as err:
        choose_task(_cfg("bert"), text)
    assert err.value.field == "data" and "plain text" in str(err.value)
    assert choose_task(_cfg("gpt2"), text).name == "language-modeling"
    assert choose_task(_cfg("bert"), labelled).name == "sequence-classification"


def test_language_modeling_task_end_to_end_on_a_text_file(tokenizer, tmp_path):
    """load_data -> encode -> loss -> evaluate through the Task interface only."""
    task = TASKS["language-modeling"]
    p = tmp_path / "corpus.txt"
    p.write_text("\n\n".join(_doc(i, 40) for i in range(20)))
    splits = task.load_data(p, seed=123)
    assert splits.describe()["documents"] == 20 and len(splits.eval) == 2 and not task.needs_teacher({}, splits)
    enc_train, enc_eval = task.encode(tokenizer, splits.train, 16), task.encode(tokenizer, splits.eval, 16)
    model = tiny_decoder("mistral")
    batch = next(task.batches(enc_train, 4, "cpu", shuffle=True))
    total, _, _ = task.loss(model(input_ids=batch["input_ids"]).logits, None, batch, 1.0, 0.0)
    total.backward()
    assert model.lm_head.weight.grad is not None
    m = task.evaluate(model, enc_eval, 4, "cpu")
    assert m["window"] == 16 and m["perplexity"] > 1 and task.primary_metric in m and not task.higher_is_better


def test_sequence_classification_task_wraps_the_existing_pieces(tmp_path):
    from vtrans_core.training import distillation_loss

    task = TASKS["sequence-classification"]
    rows = tmp_path / "rows.csv"
    rows.write_text("text,label\n" + "\n".join(f"row {i},{'pos' if i % 2 else 'neg'}" for i in range(40)))
    splits = task.load_data(rows, seed=0)
    assert splits.meta["labels"] == ["neg", "pos"] and len(splits.train) == 32 and len(splits.eval) == 4
    assert task.needs_teacher({"architectures": ["BertModel"]}, splits)
    with pytest.raises(CompressionError) as err:
        task.load_data(tmp_path / "x.txt", seed=0)
    assert err.value.field == "data"
    logits, teacher = torch.randn(4, 2), torch.randn(4, 2)
    batch = {"labels": torch.tensor([0, 1, 1, 0])}
    got = task.loss(logits, teacher, batch, 2.0, 0.5)
    want = distillation_loss(logits, teacher, batch["labels"], 2.0, 0.5)
    assert all(torch.allclose(a, b) for a, b in zip(got, want))
    m = {"accuracy": 50.0}
    assert task.quality_warnings(m, m) == []

"""A pruned decoder works with the tool LLM users already run: the EleutherAI lm-eval harness's
Hugging Face backend (`model="hf"`, loading the output folder as any checkpoint) scores it on a
local perplexity task (a task YAML over a local text file, no hub). Its per-document
log-likelihoods must equal a direct forward pass of the same model, so the number it reports
is the pruned model's, not a load-time fallback (random init of missing weights would differ)."""
from __future__ import annotations

import math
import os
import re

import pytest

from .decoders import save_tiny_lm, write_text_corpus
from vtrans_core import compress

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")   # the task reads a local file: never the hub
lm_eval = pytest.importorskip("lm_eval")

TASK = "vtrans_local_ppl"
SEQ = 16
OPTIONS = {"seq_len": SEQ, "prefill_batch": 2, "prefill_seq": 32, "decode_tokens": 4, "latency_runs": 1,
           "generation_samples": 1}


def _task_dir(tmp_path, text_file):
    """A task YAML as a user would write one: the `text` builder, one document per paragraph,
    rolling log-likelihood (perplexity) over each document."""
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / f"{TASK}.yaml").write_text(f"""task: {TASK}
dataset_path: text
dataset_kwargs:
  data_files:
    test: {text_file}
  sample_by: paragraph
  cache_dir: {tmp_path / "hf-cache"}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
""")
    return tasks


def _direct_loglikelihood(model, tok, text: str, prefix_id: int) -> float:
    """log p(text | prefix token), the whole document in one window (it fits the context)."""
    import torch

    ids = tok(text, add_special_tokens=False)["input_ids"]
    x = torch.tensor([[prefix_id] + ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(x).logits[0, :-1].float(), -1)
    return float(logp.gather(1, torch.tensor(ids)[:, None]).sum())


def test_pruned_decoder_scores_in_lm_eval_hf_backend(tmp_path):
    from lm_eval.tasks import TaskManager
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = save_tiny_lm("llama-gqa", tmp_path / "model")
    corpus = write_text_corpus(tmp_path / "corpus.txt", n_docs=30, words=60)
    out = tmp_path / "pruned"
    result = compress(str(model_dir), str(corpus), {"kind": "params", "target": 0.8, "seq_len": SEQ}, "faster",
                      OPTIONS, output_dir=out)
    assert result.metrics["params_fraction"] <= 0.81

    held = write_text_corpus(tmp_path / "held.txt", n_docs=5, words=40)   # 40 tokens < the 64-token context
    res = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={out},dtype=float32", tasks=[TASK],
                                  task_manager=TaskManager(include_path=str(_task_dir(tmp_path, held)),
                                                           include_defaults=False),   # index only ours
                                  device="cpu", batch_size=2, log_samples=True)
    scores = res["results"][TASK]
    word_ppl = scores["word_perplexity,none"]
    assert math.isfinite(word_ppl) and word_ppl > 1.0
    samples = res["samples"][TASK]
    assert len(samples) == 5

    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    assert sum(p.numel() for p in model.parameters()) == result.metrics["pruned"]["params"]
    prefix = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id   # lm-eval's prefix token
    total_ll, total_words = 0.0, 0
    for s in samples:
        text = s["doc"]["text"]
        harness_ll = float(s["filtered_resps"][0])
        assert harness_ll == pytest.approx(_direct_loglikelihood(model, tok, text, prefix), rel=1e-4, abs=1e-3)
        total_ll += harness_ll
        total_words += len(re.split(r"\s+", text))     # lm-eval's word count for word_perplexity
    assert word_ppl == pytest.approx(math.exp(-total_ll / total_words), rel=1e-4)

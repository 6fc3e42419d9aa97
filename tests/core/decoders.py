"""Tiny random causal LMs of every decoder family, built in the test (no downloads).

Each case exercises a different corner: grouped-query attention with several query heads per
key/value head, multi-query attention (one k/v head), head_dim != hidden / heads (Mistral), Qwen2's
q/k/v-only biases, Qwen3's q/k norms, LLaMA with attention/MLP biases, tied and untied LM heads,
GPT-2's Conv1D + fused q|k|v + learned positions + LayerNorm.
"""
from __future__ import annotations

import torch

VOCAB = 100

# name -> (config class name, kwargs)
DECODERS = {
    "llama-gqa": ("LlamaConfig", dict(hidden_size=48, num_attention_heads=6, num_key_value_heads=2, head_dim=8,
                                      intermediate_size=64, tie_word_embeddings=False)),
    "llama-tied-bias": ("LlamaConfig", dict(hidden_size=48, num_attention_heads=6, num_key_value_heads=3, head_dim=8,
                                            intermediate_size=64, tie_word_embeddings=True, attention_bias=True,
                                            mlp_bias=True)),
    "mistral": ("MistralConfig", dict(hidden_size=40, num_attention_heads=4, num_key_value_heads=2, head_dim=12,
                                      intermediate_size=64, tie_word_embeddings=False)),
    "qwen2-mqa": ("Qwen2Config", dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=1, head_dim=8,
                                      intermediate_size=64, tie_word_embeddings=True)),
    "qwen3": ("Qwen3Config", dict(hidden_size=32, num_attention_heads=6, num_key_value_heads=3, head_dim=8,
                                  intermediate_size=64, tie_word_embeddings=True)),
    "gpt2": ("GPT2Config", dict(n_embd=32, n_head=4, n_inner=64, n_positions=64)),
}


def decoder_config(name: str, layers: int = 2):
    import transformers

    cls_name, kw = DECODERS[name]
    common = dict(vocab_size=VOCAB, bos_token_id=1, eos_token_id=2, pad_token_id=0, initializer_range=0.1)
    if cls_name == "GPT2Config":
        return transformers.GPT2Config(n_layer=layers, **common, **kw)
    return getattr(transformers, cls_name)(num_hidden_layers=layers, max_position_embeddings=64, **common, **kw)


def tiny_decoder(name: str, seed: int = 0, attn: str = "sdpa", **kw):
    """Random causal LM with non-trivial norm parameters (stock init: weight 1 / bias 0, which
    would hide mistakes in norm slicing or folding)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(decoder_config(name, **kw), attn_implementation=attn)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "norm" in pname or ".ln_" in pname:
                p.add_(torch.randn_like(p) * 0.2)
    return model.eval()


def decoder_inputs(seed: int = 1, batch: int = 3, length: int = 12):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # one left-padded row (how decoders batch prompts) exercises the causal mask
    ids[1, :4] = 0
    return {"input_ids": ids, "attention_mask": mask}


def numel(model) -> int:
    """Parameters counted once (a tied LM head shares the embedding's)."""
    return sum(p.numel() for p in model.parameters())


WORDS = ("the a of and to in is was he she it that for on with as his her they at by this had not but from "
         "or have an be which one you were all we when there can been has more if will no out so said what up "
         "its about into than them only some could new other time very").split()


def tiny_tokenizer():
    """A word-level tokenizer over WORDS (ids < 100, the tiny decoders' vocabulary)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = WORDS + [f"w{i}" for i in range(VOCAB - 4 - len(WORDS))]     # every model id decodes
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{w: i + 4 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


def random_doc(seed: int, n: int = 30) -> str:
    g = torch.Generator().manual_seed(seed)
    return " ".join(WORDS[i] for i in torch.randint(0, len(WORDS), (n,), generator=g).tolist())


def save_tiny_lm(name: str, path, layers: int = 2, positions: int = 64):
    """A tiny random causal LM + its word-level tokenizer saved as a stock HF folder (safetensors)."""
    model = tiny_decoder(name, layers=layers)
    model.save_pretrained(path, safe_serialization=True)
    tiny_tokenizer().save_pretrained(path)
    return path


def write_text_corpus(path, n_docs: int = 40, words: int = 60):
    """A .txt corpus of n_docs documents separated by blank lines."""
    path.write_text("\n\n".join(random_doc(i, words) for i in range(n_docs)) + "\n", encoding="utf-8")
    return path

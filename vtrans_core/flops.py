"""Analytic parameter and FLOP counts of encoder and decoder models, dense or pruned.

`ModelShape` is the family-independent description of a (possibly per-layer pruned) model:
hidden width, head size, query and key/value heads and FFN width per layer, which attention /
FFN blocks remain, plus the embedding tables and the head (classifier or LM head), and the few
architecture facts the counts need (gated FFN, which projections carry biases, RMSNorm vs
LayerNorm, Qwen3's q/k norms, RoPE, a tied LM head). The family adapter fills them in; every
count in vtrans (budgets, plans, metrics) goes through the formulas here so that they all agree.

What is counted, and why:
- params: ALL weights and biases, embeddings (word, position, token type), every LayerNorm /
  RMSNorm, the pooler / pre-classifier dense and the classifier or LM head (not counted again
  when it is tied to the word embedding). This equals `sum(p.numel())` of the materialized model
  (which counts a tied parameter once; checked in tests/core/test_flops.py and
  test_decoders.py). A removed block has no weights.
- flops: MATMUL flops for ONE sequence of `seq_len` tokens at batch 1, the quantity that
  `torch.utils.flop_counter.FlopCounterMode` reports: every Linear 2*T*in*out, the attention
  scores Q.K^T and the weighted sum A.V, 2*T*T*d per head each, and the head (pooler /
  pre-classifier dense and classifier) on the first token only; an LM head on every token
  (a language-model forward scores every position). Grouped-query attention: k and v project to
  kv_heads * head_dim, scores and the weighted sum are per QUERY head. RoPE's rotary table and
  rotation, biases, norms, softmax and activations are not counted (FlopCounterMode does not
  count them either: checked in tests/core/test_decoders.py).
  Note: torch's counter has no formula for the CPU flash-attention kernel that SDPA uses on
  CPU, so measuring with FlopCounterMode needs attn_implementation="eager"; the analytic count
  always includes attention.

The same formulas accept torch tensors in place of the counts: `expected_size` feeds them the
soft keep probabilities of the VIB masks to get the differentiable expected size that the
budget Lagrangian uses.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Sequence


@dataclass
class ModelShape:
    family: str                 # config.model_type: "bert", "roberta", "distilbert", "llama", "gpt2", ...
    vocab: int
    positions: int
    token_types: int            # 0 when the family has no token-type embedding (DistilBERT)
    hidden: int
    head_dim: int               # size of one attention head (the dense model's, never changed)
    heads: list[int]            # heads kept per layer (0 when the attention block is removed)
    ffn: list[int]              # FFN neurons kept per layer (0 when the FFN block is removed)
    attn_blocks: list[bool] = field(default_factory=list)
    ffn_blocks: list[bool] = field(default_factory=list)
    num_labels: int = 2         # classifier outputs; for an LM head the vocabulary size
    head_dense: bool = True     # pooler / pre_classifier / classifier.dense (hidden -> hidden)
    # Architecture facts (defaults = the BERT-style encoders; the decoder adapters set them).
    kv_heads: list[int] | None = None   # key/value heads per layer (GQA); None: one per query head
    gated_ffn: bool = False     # gate + up + down (LLaMA) instead of in + out
    qkv_bias: bool = True
    o_bias: bool = True
    ffn_bias: bool = True
    norm_bias: bool = True      # LayerNorm (weight + bias) vs RMSNorm (weight only)
    qk_norm: bool = False       # Qwen3: RMSNorm over head_dim on queries and keys (2 * head_dim)
    rope: bool = False          # rotary positions (no table, no counted matmul; informational)
    lm_head: bool = False       # the head scores every token (causal LM), not the first one
    head_tied: bool = False     # the LM head is the word embedding (no parameters of its own)
    head_bias: bool = True
    # A stock config derives head size from hidden / heads (BERT, GPT-2): the uniform layout then
    # needs hidden == heads * head_dim. LLaMA-family configs carry head_dim separately.
    attn_width_tied: bool = True
    # LlamaConfig (transformers 5) refuses hidden_size % num_attention_heads != 0 even though it
    # carries head_dim; Mistral/Qwen2/Qwen3 configs do not. A uniform result must respect it.
    hidden_divisible_by_heads: bool = False

    def __post_init__(self) -> None:
        if not self.attn_blocks:
            self.attn_blocks = [h > 0 for h in self.heads]
        if not self.ffn_blocks:
            self.ffn_blocks = [f > 0 for f in self.ffn]

    @property
    def kv(self) -> list[int]:
        """Key/value heads per layer (== heads for multi-head attention)."""
        return list(self.kv_heads) if self.kv_heads is not None else list(self.heads)

    def group_size(self, l: int) -> int:
        """Query heads per key/value head in layer l (1 for multi-head attention)."""
        kv = self.kv[l]
        return self.heads[l] // kv if kv else 0

    @property
    def n_layers(self) -> int:
        return len(self.heads)

    def is_uniform(self, removed_layers: bool = False) -> bool:
        """True when a stock config can express this shape: the same heads and FFN width in
        every layer, attention width == hidden width, no half-removed layer. Whole removed
        layers are accepted only with `removed_layers=True` (a uniform PLAN, whose removed
        layers materialize deletes); a model still holding skipped layers is not stock."""
        blocks = list(zip(self.attn_blocks, self.ffn_blocks))
        if any(a != b for a, b in blocks) or (not removed_layers and not all(a for a, _ in blocks)):
            return False
        kept = [i for i, (a, _) in enumerate(blocks) if a]
        kv = self.kv
        if len({(self.heads[i], kv[i]) for i in kept}) > 1 or len({self.ffn[i] for i in kept}) > 1:
            return False
        if self.hidden_divisible_by_heads and any(self.hidden % self.heads[i] for i in kept):
            return False
        return not self.attn_width_tied or all(self.heads[i] * self.head_dim == self.hidden for i in kept)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelShape":
        return cls(**d)

    def replace(self, **kw: Any) -> "ModelShape":
        return replace(self, **kw)


def _terms(shape: ModelShape, kind: str, seq_len: int, hidden: Any, heads: Sequence[Any],
           ffn: Sequence[Any], attn: Sequence[Any], ffnb: Sequence[Any], kv: Sequence[Any] | None = None) -> Any:
    """The one formula. Counts may be ints (exact) or tensors (expected, differentiable).
    `kv`: key/value heads per layer (None: the same as `heads`, multi-head attention)."""
    H, d, T, C = hidden, shape.head_dim, seq_len, shape.num_labels
    kv = heads if kv is None else kv
    n_in = 2 if shape.gated_ffn else 1                 # FFN input projections (gate + up, or in)
    norm = 2 * H if shape.norm_bias else H             # one LayerNorm / RMSNorm over the hidden width
    total: Any = 0
    if kind == "params":
        # embeddings + the one norm outside the layers (BERT's embedding LN / a decoder's final norm)
        total = (shape.vocab + shape.positions + shape.token_types) * H + norm
        for l in range(shape.n_layers):
            A, K = heads[l] * d, kv[l] * d
            qkv = H * (A + 2 * K) + ((A + 2 * K) if shape.qkv_bias else 0)
            o = A * H + (H if shape.o_bias else 0)
            total = total + attn[l] * (qkv + o + norm + (2 * d if shape.qk_norm else 0))
            F = ffn[l]
            bias = (n_in * F + H) if shape.ffn_bias else 0
            total = total + ffnb[l] * ((n_in + 1) * H * F + bias + norm)
        if shape.head_dense:
            total = total + H * H + H
        if C and not shape.head_tied:
            total = total + H * C + (C if shape.head_bias else 0)
        return total
    if kind == "flops":
        for l in range(shape.n_layers):
            A, K = heads[l] * d, kv[l] * d
            # q, o (A wide), k, v (K wide) + scores and weighted sum (2*T*T*d per query head each)
            total = total + attn[l] * (2 * T * H * (2 * A + 2 * K) + 2 * 2 * T * T * A)
            total = total + ffnb[l] * ((n_in + 1) * 2 * T * H * ffn[l])
        if shape.head_dense:
            total = total + 2 * H * H      # first token only
        if C:
            total = total + 2 * H * C * (T if shape.lm_head else 1)
        return total
    raise ValueError(f"unknown size kind {kind!r} (params or flops)")


def shape_size(shape: ModelShape, kind: str, seq_len: int = 128) -> int:
    """Exact params or flops of a shape."""
    attn = [1 if a else 0 for a in shape.attn_blocks]
    ffnb = [1 if f else 0 for f in shape.ffn_blocks]
    return int(_terms(shape, kind, seq_len, shape.hidden, shape.heads, shape.ffn, attn, ffnb, shape.kv))


def unit_costs(shape: ModelShape, kind: str = "params", seq_len: int = 128) -> dict[str, float]:
    """KL weight of each mask key: the size of ONE unit of the structure (what removing it saves)
    relative to one FFN neuron of the first layer, so the information prior charges a head or a
    hidden channel for the weights it carries instead of a per-structure guess (prunable.py)."""
    base = shape_size(shape, kind, seq_len)

    def saved(**kw: Any) -> int:
        return base - shape_size(shape.replace(**kw), kind, seq_len)

    def one_less(counts: list[int]) -> list[int]:
        return [max(c - 1, 0) if l == 0 else c for l, c in enumerate(counts)]

    neuron = max(saved(ffn=one_less(list(shape.ffn))), 1)
    # one query head (in GQA its key/value head stays: it serves the group's other heads)
    head = saved(heads=one_less(list(shape.heads)), kv_heads=shape.kv_heads)
    costs = {"hidden": saved(hidden=shape.hidden - 1), "heads": head, "ffn": neuron}
    # A block gate is one scalar whose removal is a large, non-local change that the gradient at
    # g = 1 underestimates; charged its full size (770-2300 neurons on MiniLM) the prior removed
    # two whole layers under frozen weights where one was better (63.9% vs 67.3% at 0.5 FLOPs).
    # Blocks are charged like one head; the budget Lagrangian still sees their full cost.
    costs.update(attn_block=head, ffn_block=head, layer=head)
    return {k: max(v, 1) / neuron for k, v in costs.items()}


def expected_size(shape: ModelShape, kind: str, seq_len: int, hidden: Any, heads: Sequence[Any],
                  ffn: Sequence[Any], attn: Sequence[Any], ffnb: Sequence[Any], kv: Sequence[Any] | None = None) -> Any:
    """Differentiable size: pass expected kept counts (sums of keep probabilities) and block
    keep probabilities (tensors); `kv` the expected key/value heads (GQA; None = heads). Products
    of expectations, not the exact expectation of the product: the usual relaxation, exact
    whenever the probabilities are 0 or 1."""
    return _terms(shape, kind, seq_len, hidden, heads, ffn, attn, ffnb, kv)


def _shape_of(obj: Any) -> ModelShape:
    if isinstance(obj, ModelShape):
        return obj
    if hasattr(obj, "result_shape"):          # a PruningPlan
        return obj.result_shape()
    from .families import adapter_for        # late import: families import this module
    if hasattr(obj, "config") and hasattr(obj, "named_modules"):   # a model: inspect modules
        return adapter_for(obj).shape_of(obj)
    return adapter_for(obj).shape_from_config(obj)


def count_params(config_or_plan: Any) -> int:
    """Params of a config, model, ModelShape or PruningPlan (the plan's result)."""
    return shape_size(_shape_of(config_or_plan), "params")


def count_flops(config_or_plan: Any, seq_len: int = 128) -> int:
    """Matmul flops of one `seq_len`-token sequence at batch 1 (see module docstring)."""
    return shape_size(_shape_of(config_or_plan), "flops", seq_len)


def count(config_or_plan: Any, kind: str, seq_len: int = 128) -> int:
    return shape_size(_shape_of(config_or_plan), kind, seq_len)

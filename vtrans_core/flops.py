"""Analytic parameter and FLOP counts of encoder models, dense or pruned.

`ModelShape` is the family-independent description of a (possibly per-layer pruned) encoder:
hidden width, head size, heads and FFN width per layer, which attention / FFN blocks remain,
plus the embedding tables and the classification head. Every count in vtrans (budgets,
plans, metrics) goes through the formulas here so that they all agree.

What is counted, and why:
- params: ALL weights and biases, embeddings (word, position, token type), every LayerNorm,
  the pooler / pre-classifier dense and the classifier. This equals `sum(p.numel())` of the
  materialized model (checked in tests/core/test_flops.py). A removed block has no weights.
- flops: MATMUL flops for ONE sequence of `seq_len` tokens at batch 1, the quantity that
  `torch.utils.flop_counter.FlopCounterMode` reports: every Linear 2*T*in*out, the attention
  scores Q.K^T and the weighted sum A.V, 2*T*T*d per head each, and the head (pooler /
  pre-classifier dense and classifier) on the first token only. Biases, LayerNorms, softmax
  and activations are not matmuls and are not counted (neither does FlopCounterMode).
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
    family: str                 # config.model_type: "bert", "roberta", "distilbert"
    vocab: int
    positions: int
    token_types: int            # 0 when the family has no token-type embedding (DistilBERT)
    hidden: int
    head_dim: int               # size of one attention head (the dense model's, never changed)
    heads: list[int]            # heads kept per layer (0 when the attention block is removed)
    ffn: list[int]              # FFN neurons kept per layer (0 when the FFN block is removed)
    attn_blocks: list[bool] = field(default_factory=list)
    ffn_blocks: list[bool] = field(default_factory=list)
    num_labels: int = 2
    head_dense: bool = True     # pooler / pre_classifier / classifier.dense (hidden -> hidden)

    def __post_init__(self) -> None:
        if not self.attn_blocks:
            self.attn_blocks = [h > 0 for h in self.heads]
        if not self.ffn_blocks:
            self.ffn_blocks = [f > 0 for f in self.ffn]

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
        if len({self.heads[i] for i in kept}) > 1 or len({self.ffn[i] for i in kept}) > 1:
            return False
        return all(self.heads[i] * self.head_dim == self.hidden for i in kept)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelShape":
        return cls(**d)

    def replace(self, **kw: Any) -> "ModelShape":
        return replace(self, **kw)


def _terms(shape: ModelShape, kind: str, seq_len: int, hidden: Any, heads: Sequence[Any],
           ffn: Sequence[Any], attn: Sequence[Any], ffnb: Sequence[Any]) -> Any:
    """The one formula. Counts may be ints (exact) or tensors (expected, differentiable)."""
    H, d, T, C = hidden, shape.head_dim, seq_len, shape.num_labels
    total: Any = 0
    if kind == "params":
        total = (shape.vocab + shape.positions + shape.token_types) * H + 2 * H
        for l in range(shape.n_layers):
            A = heads[l] * d
            # q, k, v (weights + biases), o (weights + bias), attention LayerNorm
            total = total + attn[l] * (3 * (H * A + A) + A * H + H + 2 * H)
            F = ffn[l]
            total = total + ffnb[l] * (H * F + F + F * H + H + 2 * H)
        if shape.head_dense:
            total = total + H * H + H
        if C:
            total = total + H * C + C
        return total
    if kind == "flops":
        for l in range(shape.n_layers):
            A = heads[l] * d
            # q, k, v, o projections + scores and weighted sum (2*T*T*d per head each)
            total = total + attn[l] * (4 * 2 * T * H * A + 2 * 2 * T * T * A)
            total = total + ffnb[l] * (2 * 2 * T * H * ffn[l])
        if shape.head_dense:
            total = total + 2 * H * H      # first token only
        if C:
            total = total + 2 * H * C
        return total
    raise ValueError(f"unknown size kind {kind!r} (params or flops)")


def shape_size(shape: ModelShape, kind: str, seq_len: int = 128) -> int:
    """Exact params or flops of a shape."""
    attn = [1 if a else 0 for a in shape.attn_blocks]
    ffnb = [1 if f else 0 for f in shape.ffn_blocks]
    return int(_terms(shape, kind, seq_len, shape.hidden, shape.heads, shape.ffn, attn, ffnb))


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
    head = saved(heads=one_less(list(shape.heads)))
    costs = {"hidden": saved(hidden=shape.hidden - 1), "heads": head, "ffn": neuron}
    # A block gate is one scalar whose removal is a large, non-local change that the gradient at
    # g = 1 underestimates; charged its full size (770-2300 neurons on MiniLM) the prior removed
    # two whole layers under frozen weights where one was better (63.9% vs 67.3% at 0.5 FLOPs).
    # Blocks are charged like one head; the budget Lagrangian still sees their full cost.
    costs.update(attn_block=head, ffn_block=head, layer=head)
    return {k: max(v, 1) / neuron for k, v in costs.items()}


def expected_size(shape: ModelShape, kind: str, seq_len: int, hidden: Any, heads: Sequence[Any],
                  ffn: Sequence[Any], attn: Sequence[Any], ffnb: Sequence[Any]) -> Any:
    """Differentiable size: pass expected kept counts (sums of keep probabilities) and block
    keep probabilities (tensors). Products of expectations, not the exact expectation of the
    product: the usual relaxation, exact whenever the probabilities are 0 or 1."""
    return _terms(shape, kind, seq_len, hidden, heads, ffn, attn, ffnb)


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

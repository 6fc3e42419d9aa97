"""The budget a compression must meet: a fraction of the dense model's params or FLOPs, or a
speedup (dense time / pruned time, measured on the device the job runs on; latency.py)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .errors import CompressionError

BUDGET_KINDS = ("params", "flops", "speedup")
MAX_SPEEDUP = 50.0
# Delivered models may exceed the target by at most this much (issue #2: measured <= target + 0.01).
BUDGET_TOLERANCE = 0.01


@dataclass(frozen=True)
class Budget:
    kind: str
    target: float
    # FLOPs are counted for one sequence of this many tokens.
    seq_len: int = 128

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def parse(cls, value: "Budget | dict[str, Any]") -> "Budget":
        if isinstance(value, Budget):
            value = value.to_dict()
        if not isinstance(value, dict):
            raise CompressionError("budget", "must be an object like {\"kind\": \"flops\", \"target\": 0.5}")
        unknown = set(value) - {"kind", "target", "seq_len"}
        if unknown:
            raise CompressionError(f"budget.{sorted(unknown)[0]}", "is not a budget field (kind, target, seq_len)")
        kind = value.get("kind")
        if kind not in BUDGET_KINDS:
            raise CompressionError("budget.kind", f"must be one of {', '.join(BUDGET_KINDS)}, got {kind!r}")
        target = value.get("target")
        if isinstance(target, bool) or not isinstance(target, (int, float)):
            raise CompressionError("budget.target", f"must be a number, got {target!r}")
        if kind == "speedup":
            if not 1.0 < float(target) <= MAX_SPEEDUP:
                raise CompressionError("budget.target", f"a speedup must be above 1 and at most {MAX_SPEEDUP:g} "
                                       f"(e.g. 2.0 for twice as fast), got {target}")
        elif not 0.0 < float(target) < 1.0:
            raise CompressionError("budget.target", f"must be strictly between 0 and 1 (the fraction that remains), got {target}")
        seq_len = value.get("seq_len", 128)
        if isinstance(seq_len, bool) or not isinstance(seq_len, int) or not 1 <= seq_len <= 8192:
            raise CompressionError("budget.seq_len", f"must be an integer between 1 and 8192, got {seq_len!r}")
        return cls(kind=kind, target=float(target), seq_len=seq_len)

    @property
    def size_kind(self) -> str:
        """The analytic size the masks are trained toward (a speedup budget trains toward FLOPs)."""
        return "flops" if self.kind == "speedup" else self.kind

    @property
    def size_target(self) -> float:
        """Target fraction of size_kind: 1/speedup (FLOPs) for a speedup budget."""
        return 1.0 / self.target if self.kind == "speedup" else self.target

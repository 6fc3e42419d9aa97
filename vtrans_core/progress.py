"""Overall-progress reporting for compress(): one monotonic fraction across all stages, with ETA.

The whole run is planned up front as weighted stages (weights ~ expected seconds of work), so a
progress bar moves at a roughly even pace. The caller's callback may raise (cancellation); the
exception propagates untouched.
"""
from __future__ import annotations

import time
from typing import Any, Callable

ProgressFn = Callable[[str, float, dict], None]
# Report at most this often within a stage (stage starts/ends are always reported).
MIN_INTERVAL_SECONDS = 0.5


class Progress:
    def __init__(self, callback: ProgressFn | None, plan: dict[str, float], floor: float = 0.0):
        """`plan`: stage key -> relative weight, in execution order.

        A stage that runs several times (masks/prune per round) gets one key per run,
        "masks#1", "masks#2", ...; the part before '#' is the stage name reported.
        `floor`: a run resumed from a checkpoint reports no less than where the checkpoint was."""
        self.callback = callback
        self.plan = {k: max(float(v), 1e-6) for k, v in plan.items()}
        self.total = sum(self.plan.values())
        self.done_weight = 0.0
        self.stage_name: str | None = None
        self.stage_started = 0.0
        self.stage_seconds: dict[str, float] = {}
        self.started = time.perf_counter()
        self.fraction = self.origin = float(floor)
        self.last_report = 0.0

    def replan(self, stage: str, weight: float) -> None:
        """Adjust a stage not started yet (e.g. once the data size is known)."""
        if stage in self.plan and stage != self.stage_name:
            self.total += max(weight, 1e-6) - self.plan[stage]
            self.plan[stage] = max(weight, 1e-6)

    def skip_to(self, stage: str) -> None:
        """A resumed run: every stage planned before `stage` counts as done (none is reported)."""
        self._finish_current()
        keys = list(self.plan)
        if stage in keys:
            self.done_weight = sum(self.plan[k] for k in keys[:keys.index(stage)])

    def start(self, stage: str, **metrics: Any) -> None:
        self._finish_current()
        self.stage_name = stage
        self.stage_started = time.perf_counter()
        if stage not in self.plan:  # unplanned stages still report, with no weight
            self.plan[stage] = 1e-6
            self.total += 1e-6
        self._emit(0.0, metrics, force=True)

    def update(self, done: float, total: float, **metrics: Any) -> None:
        """Progress within the current stage: `done` of `total` units."""
        within = min(max(done / total, 0.0), 1.0) if total > 0 else 1.0
        self._emit(within, metrics, force=False)

    def finish(self, **metrics: Any) -> None:
        """End the whole run: fraction 1.0 reported once."""
        self._finish_current()
        self.fraction = 1.0
        if self.callback is not None:
            self.callback("save", 1.0, {**metrics, "eta_seconds": 0.0})

    def _finish_current(self) -> None:
        if self.stage_name is None:
            return
        seconds = time.perf_counter() - self.stage_started
        name = self.stage_name.split("#")[0]
        self.stage_seconds[name] = round(self.stage_seconds.get(name, 0.0) + seconds, 3)
        self.done_weight += self.plan[self.stage_name]
        self.stage_name = None

    def _emit(self, within: float, metrics: dict, force: bool) -> None:
        weight = self.plan[self.stage_name] if self.stage_name else 0.0
        fraction = min((self.done_weight + weight * within) / self.total, 0.999)
        self.fraction = max(self.fraction, fraction)  # monotonic even if a plan was off
        now = time.perf_counter()
        if self.callback is None or (not force and now - self.last_report < MIN_INTERVAL_SECONDS):
            return
        self.last_report = now
        elapsed = now - self.started
        run = self.fraction - self.origin   # this run's share (a resumed run started at origin)
        eta = elapsed * (1.0 - self.fraction) / run if run > 0.01 else None
        payload = {k: _jsonable(v) for k, v in metrics.items()}
        if eta is not None:
            payload["eta_seconds"] = round(eta, 1)
        self.callback((self.stage_name or "load").split("#")[0], self.fraction, payload)


def _jsonable(value: Any) -> Any:
    try:
        import torch

        if isinstance(value, torch.Tensor):
            return value.item() if value.numel() == 1 else value.tolist()
    except ImportError:  # pragma: no cover - torch is always installed with vtrans_core
        pass
    if isinstance(value, float):
        return round(value, 6)
    return value

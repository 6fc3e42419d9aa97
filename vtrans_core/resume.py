"""Resumable compress(): when to save a checkpoint, what goes in it, and how a run picks it up.

compress(..., checkpoint=<folder or CheckpointTarget>, checkpoint_seconds=300) saves at natural
boundaries (after the teacher stage, after each mask round's cut, after the refit, and every
`checkpoint_seconds` of fine-tuning) and, when a valid checkpoint is there at the start, skips
the finished stages and continues from the saved step. Everything that decides the rest of the
run is saved (weights, masks, plans, optimiser and scheduler state, the data order, the RNG
states, counters, history), so a resumed run computes the same result as an uninterrupted one.

A checkpoint that cannot be used (corrupt file, another request's, shapes that do not fit) is
discarded with a warning and the run starts over: never a crash loop on a bad checkpoint.
"""
from __future__ import annotations

import hashlib
import json
import logging
import random
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import Checkpoint, CheckpointInvalid, clear_checkpoint, load_checkpoint, save_checkpoint

log = logging.getLogger("vtrans.resume")
DEFAULT_SECONDS = 300.0


class CheckpointTarget:
    """A local checkpoint folder and what to do when something happens to it. The worker
    subclasses it to mirror the folder in the artifact store and to record job events."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    def saved(self, manifest: dict[str, Any]) -> None:
        """After each save (the folder holds the new checkpoint)."""

    def resumed(self, stage: str, step: int) -> None:
        log.info("resumed from checkpoint: stage %s, step %d", stage, step)

    def discarded(self, reason: str) -> None:
        warnings.warn(f"checkpoint not used: {reason}; starting over", RuntimeWarning, stacklevel=2)


def as_target(checkpoint: Any) -> CheckpointTarget | None:
    if checkpoint is None or isinstance(checkpoint, CheckpointTarget):
        return checkpoint
    return CheckpointTarget(checkpoint)


class Session:
    """One run's checkpointing: the checkpoint it resumed from (if any) and the saves it makes."""

    def __init__(self, target: CheckpointTarget, fingerprint: str, seconds: float = DEFAULT_SECONDS):
        self.target, self.fingerprint, self.seconds = target, fingerprint, float(seconds)
        self.loaded: Checkpoint | None = None
        self.progress = None                   # progress.Progress, set by the pipeline
        self.carry: dict[str, dict[str, torch.Tensor]] = {}   # tensors every later save repeats
        self.carry_state: dict[str, Any] = {}
        self.last_save = time.monotonic()
        self.saves = 0

    def open(self) -> Session:
        try:
            self.loaded = load_checkpoint(self.target.directory, self.fingerprint)
        except CheckpointInvalid as err:
            self.discard(str(err))
        if self.loaded is not None:
            try:
                self.carry_state = dict(self.loaded.state.get("carry", {}))
                for group in self.loaded.state.get("carry_groups", []):
                    self.carry[group] = self.loaded.tensors(group)
            except CheckpointInvalid as err:
                self.discard(str(err))
                return self
            self.target.resumed(self.loaded.stage, self.loaded.step)
        return self

    def discard(self, reason: str) -> None:
        self.loaded = None
        self.carry, self.carry_state = {}, {}
        clear_checkpoint(self.target.directory)
        self.target.discarded(reason)

    @property
    def fraction(self) -> float:
        return float(self.loaded.manifest["fraction"]) if self.loaded is not None else 0.0

    def resumes_at(self, *stages: str) -> Checkpoint | None:
        """The loaded checkpoint when it was saved at one of `stages` (prefix match: "round")."""
        ck = self.loaded
        if ck is not None and any(ck.stage == s or ck.stage.startswith(f"{s}#") for s in stages):
            return ck
        return None

    def save(self, stage: str, step: int, state: dict[str, Any], tensors: dict[str, dict[str, torch.Tensor]]) -> None:
        tensors = {**self.carry, **tensors, "rng": rng_tensors()}
        full = {**state, "carry": self.carry_state, "carry_groups": sorted(self.carry), "rng": rng_state()}
        fraction = self.progress.fraction if self.progress is not None else 0.0
        self.last_save = time.monotonic()
        try:
            manifest = save_checkpoint(self.target.directory, self.fingerprint, stage, step, fraction, full, tensors)
        except OSError as err:   # a full disk costs the ability to resume, not the job
            log.warning("checkpoint at %s step %d not saved: %s", stage, step, err)
            return
        self.saves += 1
        self.target.saved(manifest)

    def due(self) -> bool:
        return time.monotonic() - self.last_save >= self.seconds

    def restore_rng(self, ck: Checkpoint) -> None:
        set_rng(ck.state["rng"], ck.tensors("rng"))

    def info(self) -> dict[str, Any]:
        """For metrics.json: where this run started from and how many saves it made."""
        out: dict[str, Any] = {"saves": self.saves, "seconds": self.seconds}
        if self.loaded is not None:
            out["resumed_from"] = {"stage": self.loaded.stage, "step": self.loaded.step}
        return out


def fail_restore(err: Exception) -> CheckpointInvalid:
    return err if isinstance(err, CheckpointInvalid) else CheckpointInvalid(f"{type(err).__name__}: {err}")


# ----------------------------------------------------------------------------- RNG states

def rng_state() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": [version, list(internal), gauss],
            "numpy": [name, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)]}


def rng_tensors() -> dict[str, torch.Tensor]:
    out = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"cuda.{i}"] = s
    return out


def set_rng(state: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[f"cuda.{i}"] for i in range(torch.cuda.device_count()) if f"cuda.{i}" in tensors]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


# ----------------------------------------------------------------------------- data order

class BatchStream:
    """endless_batches() that can say where it is and continue from there: the RNG state at the
    start of the current epoch (which decides its shuffle) and how many batches of it were used."""

    def __init__(self, enc, batch_size: int, device, rng: random.Random):
        self.enc, self.batch_size, self.device, self.rng = enc, batch_size, device, rng
        self._new_epoch()

    def _new_epoch(self) -> None:
        from .data import iterate_batches

        self.epoch_rng = self.rng.getstate()    # the shuffle happens at the first next()
        self.pos = 0
        self._it = iterate_batches(self.enc, self.batch_size, self.device, shuffle=True, rng=self.rng)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        try:
            batch = next(self._it)
        except StopIteration:
            self._new_epoch()
            batch = next(self._it)
        self.pos += 1
        return batch

    def state(self) -> dict[str, Any]:
        version, internal, gauss = self.epoch_rng
        return {"epoch_rng": [version, list(internal), gauss], "pos": self.pos}

    def load_state(self, state: dict[str, Any]) -> None:
        from .data import iterate_batches

        version, internal, gauss = state["epoch_rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        self.epoch_rng = self.rng.getstate()
        self._it = iterate_batches(self.enc, self.batch_size, self.device, shuffle=True, rng=self.rng)
        for _ in range(int(state["pos"])):   # the epoch's batches already trained on
            next(self._it)
        self.pos = int(state["pos"])


# ----------------------------------------------------------------------------- fingerprint

def request_fingerprint(kind: str, source: Any, config: dict | None, data: Any, eval_data: Any, budget,
                        method: str, opts, export: list[str] | None) -> str:
    """Identifies the request a checkpoint belongs to, from inputs available before any loading
    (file contents and sizes, not paths: a new attempt downloads them to a new folder)."""
    parts = {"method": method, "budget": budget.to_dict(), "options": opts.to_dict(), "export": export or [],
             "model": _model_identity(kind, source, config), "data": _data_identity(data),
             "eval_data": _data_identity(eval_data)}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _model_identity(kind: str, source: Any, config: dict | None) -> Any:
    if kind == "dir":
        path = Path(source)
        files = sorted((p.relative_to(path).as_posix(), p.stat().st_size) for p in path.rglob("*") if p.is_file()) \
            if path.is_dir() else [(path.name, path.stat().st_size)]
        return {"config": config, "files": files}
    if kind == "hub":
        return str(source)
    return {"object": type(source).__name__, "config": config}


def _data_identity(data: Any) -> Any:
    if data is None:
        return None
    if isinstance(data, (str, Path)) and Path(data).is_file():
        digest = hashlib.sha256()
        with Path(data).open("rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
        return digest.hexdigest()
    return str(data) if isinstance(data, (str, Path)) else repr(data)[:10_000]


__all__ = ["BatchStream", "CheckpointInvalid", "CheckpointTarget", "Session", "as_target", "request_fingerprint"]

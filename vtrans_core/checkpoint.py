"""On-disk checkpoints of a running compress(): a folder with a JSON manifest and safetensors files.

Layout of a checkpoint folder (only the latest save is kept):
    manifest.json              format, fingerprint of the request, stage, step, progress fraction,
                               JSON state (counters, RNG states, data order, history, ...) and,
                               per tensor group, its file name, byte size and sha256
    000007-model.safetensors   one file per tensor group, named after the save's sequence number

A save writes the new tensor files first, then replaces manifest.json in one rename, then
deletes the files the new manifest no longer names. A crash at any point leaves either the old
manifest with its (still present) files or the new one with its files: never a mix. Object
stores mirror the folder in the same order (worker/checkpoints.py).

Only safetensors and JSON are read back (never pickle): a checkpoint comes from storage another
machine wrote. Every file is hash-checked on load; anything wrong raises CheckpointInvalid,
which resume.py turns into a clean restart with a warning.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

FORMAT = 1
MANIFEST = "manifest.json"


class CheckpointInvalid(Exception):
    """The checkpoint cannot be used (corrupt, incomplete, or made for another request)."""


@dataclass
class Checkpoint:
    directory: Path
    manifest: dict[str, Any]

    @property
    def stage(self) -> str:
        return self.manifest["stage"]

    @property
    def step(self) -> int:
        return int(self.manifest["step"])

    @property
    def state(self) -> dict[str, Any]:
        return self.manifest["state"]

    def tensors(self, group: str) -> dict[str, torch.Tensor]:
        """The tensors of one group (hash-checked when the checkpoint was loaded)."""
        from safetensors.torch import load_file

        entry = self.manifest["files"].get(group)
        if entry is None:
            raise CheckpointInvalid(f"the checkpoint has no {group!r} tensors")
        try:
            return load_file(str(self.directory / entry["file"]))
        except Exception as err:  # a file changed after the check
            raise CheckpointInvalid(f"{entry['file']}: {type(err).__name__}: {err}") from None

    def has(self, group: str) -> bool:
        return group in self.manifest["files"]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(directory: Path, fingerprint: str, stage: str, step: int, fraction: float,
                    state: dict[str, Any], tensors: dict[str, dict[str, torch.Tensor]]) -> dict[str, Any]:
    """Write a new checkpoint into `directory` (replacing the previous one); returns the manifest."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    previous = _read_manifest(directory)
    seq = int(previous.get("seq", 0)) + 1 if isinstance(previous, dict) else 1
    files = {}
    for group, named in tensors.items():
        name = f"{seq:06d}-{group}.safetensors"
        path = directory / name
        # contiguous CPU copies: safetensors refuses views and shared storage (tied embeddings)
        save_file({k: v.detach().to("cpu").contiguous().clone() for k, v in named.items()}, str(path))
        files[group] = {"file": name, "bytes": path.stat().st_size, "sha256": sha256_file(path)}
    manifest = {"format": FORMAT, "seq": seq, "fingerprint": fingerprint, "stage": stage, "step": int(step),
                "fraction": round(float(fraction), 6), "state": state, "files": files}
    tmp = directory / f".{MANIFEST}.partial"
    tmp.write_text(json.dumps(manifest, default=_json_default), encoding="utf-8")
    os.replace(tmp, directory / MANIFEST)
    keep = {MANIFEST} | {f["file"] for f in files.values()}
    for path in directory.iterdir():
        if path.name not in keep and path.is_file():
            path.unlink(missing_ok=True)
    return manifest


def load_checkpoint(directory: Path | None, fingerprint: str) -> Checkpoint | None:
    """The checkpoint in `directory`; None when there is none. Raises CheckpointInvalid when one
    is there but cannot be used."""
    if directory is None or not (directory / MANIFEST).exists():
        return None
    manifest = _read_manifest(directory)
    if not isinstance(manifest, dict):
        raise CheckpointInvalid(f"{MANIFEST} is not valid JSON")
    if manifest.get("format") != FORMAT:
        raise CheckpointInvalid(f"checkpoint format {manifest.get('format')!r}, this version reads {FORMAT}")
    if manifest.get("fingerprint") != fingerprint:
        raise CheckpointInvalid("it was made for a different request (model, data, budget, method or options)")
    for key in ("stage", "step", "state", "files", "fraction"):
        if key not in manifest:
            raise CheckpointInvalid(f"{MANIFEST} lacks {key!r}")
    for group, entry in manifest["files"].items():
        path = directory / str(entry.get("file", ""))
        if not path.is_file() or path.parent != directory:
            raise CheckpointInvalid(f"the {group!r} file {entry.get('file')!r} is missing")
        if path.stat().st_size != entry.get("bytes") or sha256_file(path) != entry.get("sha256"):
            raise CheckpointInvalid(f"the {group!r} file {entry['file']} does not match its hash (corrupt)")
    return Checkpoint(directory, manifest)


def clear_checkpoint(directory: Path) -> None:
    if directory.is_dir():
        for path in directory.iterdir():
            if path.is_file():
                path.unlink(missing_ok=True)


def _json_default(value: Any) -> Any:
    # metrics and history may hold 0-d tensors or numpy scalars
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} in a checkpoint's state is not JSON")


def _read_manifest(directory: Path) -> dict | None | str:
    path = directory / MANIFEST
    if not path.exists():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "invalid"
    return value if isinstance(value, dict) else "invalid"


# ----------------------------------------------------------------------------- tensor helpers

def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimiser's state as flat tensors ("<param index>.<name>") + its JSON-able groups."""
    sd = opt.state_dict()
    flat = {f"{idx}.{name}": (value if torch.is_tensor(value) else torch.tensor(value))
            for idx, per in sd["state"].items() for name, value in per.items()}
    groups = [{k: v for k, v in g.items() if k in ("lr", "initial_lr", "params")} for g in sd["param_groups"]]
    return flat, {"groups": groups}


def load_optimizer(opt: torch.optim.Optimizer, flat: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    sd = opt.state_dict()
    if len(sd["param_groups"]) != len(meta["groups"]):
        raise CheckpointInvalid("optimiser groups differ from the checkpoint's")
    for group, saved in zip(sd["param_groups"], meta["groups"]):
        if list(group["params"]) != list(saved["params"]):
            raise CheckpointInvalid("optimiser parameters differ from the checkpoint's")
        group.update({k: v for k, v in saved.items() if k != "params"})
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in flat.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    sd["state"] = state
    try:
        opt.load_state_dict(sd)
    except (ValueError, RuntimeError, KeyError) as err:
        raise CheckpointInvalid(f"optimiser state: {err}") from None


def load_module(module: torch.nn.Module, tensors: dict[str, torch.Tensor], what: str) -> None:
    """load_state_dict(strict) whose shape/key mismatches become CheckpointInvalid."""
    try:
        module.load_state_dict(tensors, strict=True)
    except (RuntimeError, KeyError) as err:
        raise CheckpointInvalid(f"{what}: {str(err).splitlines()[0][:300]}") from None

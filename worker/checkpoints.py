"""A job's checkpoint in the artifact store (jobs/<job>/checkpoint/), so any worker can resume it.

vtrans_core writes checkpoints into a local folder (vtrans_core/resume.py); this target mirrors
the folder in the store after each save, fetches it at the start of an attempt, and records the
resume (or why a checkpoint was not used) as a status event of the job. Same order as on disk:
the new tensor files first, then manifest.json, then the files it no longer names are deleted,
so a worker killed mid-upload leaves the previous checkpoint whole. The runner removes the
prefix when the job ends (succeeded, failed, cancelled); the reaper when it gives a job up.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from api import jobstore
from api.artifacts import ArtifactStore, checkpoint_prefix
from vtrans_core.resume import CheckpointTarget

from .events import note

log = logging.getLogger("vtrans.worker")
MANIFEST = "manifest.json"


class StoreCheckpoint(CheckpointTarget):
    def __init__(self, store: ArtifactStore, db_url: str, claim: jobstore.Claim, work: Path):
        super().__init__(work / "checkpoint")
        self.store, self.db_url, self.claim = store, db_url, claim
        self.prefix = checkpoint_prefix(claim.job_id)
        self.uploaded: set[str] = set()
        self.resumed_from: tuple[str, int] | None = None

    def download(self) -> bool:
        """Fetch the stored checkpoint (the manifest and the files it names); False: there is none.
        A missing or damaged file is left for vtrans_core's hash check to report."""
        self.directory.mkdir(parents=True, exist_ok=True)
        key = f"{self.prefix}/{MANIFEST}"
        try:
            if not self.store.exists(key):
                return False
            self.store.get_file(key, self.directory / MANIFEST)
            manifest = json.loads((self.directory / MANIFEST).read_text(encoding="utf-8"))
            for entry in (manifest.get("files") or {}).values():
                name = str(entry.get("file", ""))
                if name and "/" not in name and self.store.exists(f"{self.prefix}/{name}"):
                    self.store.get_file(f"{self.prefix}/{name}", self.directory / name)
                    self.uploaded.add(name)
        except Exception as err:   # unreadable: vtrans_core says why and starts over
            log.warning("job %s: checkpoint download failed: %s", self.claim.job_id, err)
        return True

    def saved(self, manifest: dict[str, Any]) -> None:
        files = [entry["file"] for entry in manifest["files"].values()]
        try:
            for name in files:
                if name not in self.uploaded:   # file names carry the save's number: new ones only
                    self.store.put_file(self.directory / name, f"{self.prefix}/{name}")
                    self.uploaded.add(name)
            self.store.put_file(self.directory / MANIFEST, f"{self.prefix}/{MANIFEST}")
            keep = {f"{self.prefix}/{name}" for name in [*files, MANIFEST]}
            for key in self.store.keys(self.prefix):
                if key not in keep:
                    self.store.delete(key)
            self.uploaded &= set(files)
        except Exception as err:   # the job goes on; a later save (or none) replaces this one
            log.warning("job %s: checkpoint upload failed: %s", self.claim.job_id, err)

    def resumed(self, stage: str, step: int) -> None:
        self.resumed_from = (stage, step)
        self._note(f"resumed from checkpoint: stage {stage}, step {step}")

    def discarded(self, reason: str) -> None:
        log.warning("job %s: checkpoint not used: %s; starting over", self.claim.job_id, reason)
        self.uploaded.clear()
        try:
            self.store.delete_prefix(self.prefix)
        except Exception as err:
            log.warning("job %s: could not remove the unusable checkpoint: %s", self.claim.job_id, err)
        self._note(f"checkpoint not used: {reason}; starting over")

    def remove(self) -> None:
        """The job ended: its checkpoint has no further use."""
        try:
            self.store.delete_prefix(self.prefix)
        except Exception as err:
            log.warning("job %s: could not remove its checkpoint: %s", self.claim.job_id, err)

    def _note(self, message: str) -> None:
        note(self.db_url, self.claim, message)

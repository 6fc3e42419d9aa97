"""A lease heartbeat that does not depend on progress reports.

Progress reports renew the lease too, but long stretches have none: loading a multi-GB decoder,
downloading it from the object store, uploading the result. A thread renews the lease every
`heartbeat_seconds` while the attempt runs, so a healthy worker is never presumed dead; a
worker that really dies (kill -9, OOM, lost machine) stops its thread with it, and the reaper
still requeues the job one lease later.
"""
from __future__ import annotations

import logging
import threading

from api import jobstore
from api.settings import Settings
from sqlalchemy.exc import InterfaceError, OperationalError

log = logging.getLogger("vtrans.worker")


class Heartbeat:
    def __init__(self, settings: Settings, claim: jobstore.Claim):
        self.settings, self.claim = settings, claim
        self.lost = threading.Event()      # set when another attempt owns the job: stop at the next report
        self.beats = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"vtrans-heartbeat-{claim.job_id}", daemon=True)

    def start(self) -> "Heartbeat":
        if self.settings.heartbeat_interval > 0:
            self._thread.start()
        return self

    def stop(self) -> None:
        """Idempotent. Called before the attempt records its end, so no beat races the final UPDATE."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.settings.heartbeat_interval):
            try:
                owned = jobstore.renew_lease(self.settings.db_url, self.claim, self.settings.lease_seconds)
            except (OperationalError, InterfaceError) as exc:
                # A database restart: try again next beat (the lease has slack for a few misses).
                log.warning("job %s: lease not renewed, database unreachable: %s", self.claim.job_id,
                            str(exc).splitlines()[0][:200])
                continue
            except Exception:  # never let a heartbeat bug kill the job; the next beat retries
                log.exception("job %s: heartbeat failed", self.claim.job_id)
                continue
            self.beats += 1
            if not owned:
                log.warning("job %s attempt %d: lease taken over by another attempt", self.claim.job_id,
                            self.claim.attempt)
                self.lost.set()
                return

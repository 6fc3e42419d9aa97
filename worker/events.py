"""Status events the worker adds to a running job's stream (a resume, a hub download...)."""
from __future__ import annotations

import logging

from api import jobstore

log = logging.getLogger("vtrans.worker")


def note(db_url: str, claim: jobstore.Claim, message: str) -> None:
    """Best effort: an event is information, not a reason to stop the job."""
    try:
        jobstore.note(db_url, claim, message)
    except Exception as err:
        log.warning("job %s: %s (event not recorded: %s)", claim.job_id, message, err)

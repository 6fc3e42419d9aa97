"""Where a hub job's model is downloaded on a worker machine, and when that folder goes.

Not the attempt's scratch folder (removed when the attempt ends): a job that waits for the hub
(jobstore.defer) runs again later, on this machine perhaps, and its next run continues the files
the last one got (hub_fetch.fetch_file resumes a cut file with a Range request), instead of a
multi-GB download from byte 0 after every outage. So the folder lives in the worker's data dir,
per job and keyed by repo and revision (a job's revision never changes; the key says what it
holds), and goes when the job ends: by the attempt that ended it (runner._ended), or, when the job
ended on another machine or its worker died, by the next job this machine runs (sweep_ended).
Per job, not shared between jobs of one revision: a job that ends must not pull the files from
under another that is still reading them.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

log = logging.getLogger("vtrans.worker")
HUB_DOWNLOADS = "hub-download"   # in <work_dir>/<job id>/, beside the attempt-N scratch folders


def hub_download_dir(work_dir: Path, job_id: str, repo_id: str, revision: str) -> Path:
    return work_dir / job_id / HUB_DOWNLOADS / f"{repo_id.replace('/', '--')}@{revision}"


def forget(work_dir: Path, job_id: str) -> None:
    """The job ended: its downloads have no further use here."""
    shutil.rmtree(work_dir / job_id / HUB_DOWNLOADS, ignore_errors=True)
    try:
        (work_dir / job_id).rmdir()   # only if no attempt of the job is using it
    except OSError:
        pass


def sweep_ended(db_url: str, work_dir: Path) -> list[str]:
    """Remove the downloads of jobs that are neither queued nor running any more (they ended on
    another machine, or here with a worker that died); returns their ids."""
    from sqlalchemy import select

    from api.db import session_scope
    from api.models import Job

    ids = [p.parent.name for p in work_dir.glob(f"*/{HUB_DOWNLOADS}")]
    if not ids:
        return []
    with session_scope(db_url) as s:
        live = set(s.scalars(select(Job.id).where(Job.id.in_(ids), Job.status.in_(("queued", "running")))))
    ended = [job_id for job_id in ids if job_id not in live]
    for job_id in ended:
        forget(work_dir, job_id)
        log.info("job %s has ended: its hub download on this machine removed", job_id)
    return ended

"""Live fan-out of job events (owned and filled by the "live" helper, issue #4).

The service calls publish() after it has COMMITTED a job_events row, so subscribers never see
an event the database does not have. It must not raise and must not block.
"""
from __future__ import annotations


def publish(job_id: str, event: dict) -> None:
    return None

"""The Celery settings that long GPU jobs need (SERVICE-NOTES.md), per broker kind."""
from __future__ import annotations

from api.settings import Settings
from worker.celery_app import TASK_NAME, make_celery


def test_long_job_settings_on_redis(tmp_path):
    s = Settings(data_dir=tmp_path, broker_url="redis://127.0.0.1:6379/3", max_job_seconds=4 * 3600)
    conf = make_celery(s).conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1 and conf.worker_concurrency == 1
    assert conf.broker_transport_options["visibility_timeout"] > 4 * 3600
    assert conf.task_default_queue == s.queue


def test_embedded_sqlite_broker_gets_no_redis_only_options(tmp_path):
    conf = make_celery(Settings(data_dir=tmp_path)).conf
    assert conf.broker_url.startswith("sqla+sqlite:///") and conf.broker_transport_options == {}


def test_task_is_registered_under_the_contract_name():
    import worker.tasks  # noqa: F401  (registers the task)
    from worker.celery_app import app

    assert TASK_NAME in app.tasks

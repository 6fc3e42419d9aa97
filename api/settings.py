"""Service configuration, read from VTRANS_* environment variables (pydantic-settings).

Defaults give the embedded single-machine set-up (SQLite + SQLite broker + local folder);
production sets DATABASE_URL / BROKER_URL / ARTIFACT_URL to Postgres, Redis and a shared
store (see README.md and docker-compose.yml).
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VTRANS_", extra="ignore")

    data_dir: Path = Path("./var")
    database_url: str | None = None      # default: sqlite:///<data_dir>/vtrans.db
    broker_url: str | None = None        # default: sqla+sqlite:///<data_dir>/broker.db
    artifact_url: str | None = None      # default: file://<data_dir>/artifacts
    queue: str = "vtrans"                # Celery queue name (tests use a unique one per run)
    # Routing by resource (issue #16, api/routing.py). Both empty: every job goes to `queue`.
    gpu_queue: str = ""                  # decoders and models of >= gpu_min_params parameters
    cpu_queue: str = ""                  # everything else
    gpu_min_params: int = 300_000_000
    worker_queues: str = ""              # `vtrans worker` default for --queues (comma-separated)
    # Operator overrides, first match wins: {"tenant:acme": "gpu", "org/big-*": "gpu", "mdl_123": "cpu"}.
    queue_overrides: dict[str, str] = Field(default_factory=dict)
    # A worker not seen for this long no longer counts as serving its queues (0: 3 x reaper interval).
    worker_stale_seconds: float = 0.0
    host: str = "127.0.0.1"
    port: int = 8000
    # uvicorn's access log: a line per request on stdout. On by default (an operator expects a
    # record of requests); off saves its formatting cost per request when a proxy in front of the
    # API already logs them (benchmarks/README.md, "API load").
    access_log: bool = True
    api_key: str | None = None           # accepted as a key of tenant "default" (scripts, tests)
    # How long an API process may reuse a valid key's lookup (seconds; 0: look it up on every
    # request). Only on Postgres, and only while the process hears revocations as they commit
    # (api/key_cache.py): a revoked key is refused at once either way. Saves ~20-30% of a GET's
    # API CPU (issue #16's load benchmark).
    api_key_cache_seconds: float = Field(default=10.0, ge=0)

    # Per-tenant limits (issue #5). tenant_limits overrides them per tenant (an API key acts for its
    # tenant), e.g. VTRANS_TENANT_LIMITS='{"acme": {"max_active_jobs": 20, "max_model_upload_bytes":
    # 16000000000, "max_model_unpacked_bytes": 20000000000}}'; the keys are the setting names below.
    max_active_jobs: int = 8             # queued + running jobs per tenant; more -> 429
    tenant_limits: dict[str, dict[str, int]] = Field(default_factory=dict)
    retry_after_seconds: int = 5         # Retry-After on 503 (database/broker down) answers
    db_connect_timeout: int = 5          # seconds; an outage answers 503 quickly instead of hanging
    # Threads per API process for sync routes, sync dependencies and SSE polls (anyio's default is
    # 40). They share one GIL: in issue #16's load run 12 threads served the same requests with the
    # same CPU as 40 at half the p99 (fewer threads fighting over the GIL), with 25 database
    # connections at peak instead of 58. Requests beyond it wait in line, holding nothing.
    api_threads: int = Field(default=16, ge=1)
    # Connection pool per process (Postgres): at least api_threads (each thread holds at most one
    # at a time); 5 + 5 connections under 40 threads answered 503 after 30 s in the issue #16 load
    # shakedown. Mind Postgres' max_connections: processes x (size + overflow).
    db_pool_size: int = Field(default=20, ge=1)
    db_max_overflow: int = Field(default=20, ge=0)
    db_pool_timeout: float = Field(default=30.0, gt=0)
    # A job still queued this long after its last change may have lost its broker message (a
    # Redis restart without persistence, a failed re-send): the reaper sends it again. Duplicate
    # messages are harmless (the claim is a conditional UPDATE).
    resend_queued_after_seconds: float = 900.0

    # Upload limits, per tenant (tenant_limits overrides each one). Archives are checked both on
    # the compressed size and on what they unpack to. Sized for real decoders: a 1-2B model in
    # bf16 is 2-4 GB of safetensors, which gzip barely shrinks, plus tokenizer files; 6 GiB / 8 GiB
    # leave room for a 3B model in bf16 or a 1.5B one in float32. Uploads are streamed to disk
    # in 1 MiB blocks and counted as they arrive (api/routes/uploads_common.py), never held in memory.
    max_model_upload_bytes: int = 6 * 1024**3
    max_model_unpacked_bytes: int = 8 * 1024**3
    max_archive_members: int = 2000
    max_dataset_upload_bytes: int = 200 * 1024**2
    max_dataset_rows: int = 2_000_000
    min_dataset_rows: int = 8

    # Durable jobs: a claim holds a lease renewed by progress reports; the reaper requeues a job
    # whose lease expired (worker died) or fails it after max_attempts.
    lease_seconds: float = 600.0
    max_attempts: int = 3
    reaper_interval_seconds: float = Field(default=0.0, description="0: lease_seconds / 4")
    cancel_check_seconds: float = 1.0
    # A thread renews the lease this often whatever the job is doing (a long model load or
    # download reports no progress). 0: lease_seconds / 3, so two beats can be missed; < 0: off.
    heartbeat_seconds: float = 0.0
    # The broker must not hand a running job out again before it can finish (Redis visibility timeout).
    max_job_seconds: int = 48 * 3600
    worker_max_tasks_per_child: int = 1  # fresh process per job: frees (GPU) memory between jobs
    # Resumable jobs: a running job saves a checkpoint to the artifact store (jobs/<id>/checkpoint/)
    # after each stage and every this many seconds of fine-tuning; a new attempt continues from it.
    # < 0: no checkpoints (a new attempt starts over).
    checkpoint_seconds: float = 300.0
    # A hub job's download (worker/hub_download.py): a transient hub failure (connection refused or
    # reset, timeout, HTTP 408/429/5xx) is retried, this many attempts in all, the waits between
    # them doubling and adding up to hub_retry_seconds (5 over 600 s: 40, 80, 160, 320 s); a 429/503's
    # Retry-After lengthens a wait, within that total (asking for more fails the job). A hub
    # outage usually lasts minutes; the heartbeat keeps the lease meanwhile and a cancel ends the
    # wait. A definite answer (no such revision or repository, gated, 401/403) is never retried.
    # These are the only retries: huggingface_hub's and hf_xet's own are turned off in the
    # download's process (worker/hub_fetch.use_one_retry_layer, hub_download.CHILD_ENV).
    hub_download_attempts: int = Field(default=5, ge=1)
    hub_retry_seconds: float = Field(default=600.0, ge=0)
    # A wait for the hub longer than this does not hold the worker: the attempt ends and the job
    # goes back to the queue until the wait is over (status queued, waiting_reason and retry_at
    # say so), so a GPU worker runs other jobs meanwhile. Shorter waits are slept on the worker:
    # a new attempt costs a fresh process and a claim (the files so far are kept on the worker,
    # and a run on another machine downloads them again).
    hub_requeue_after_seconds: float = Field(default=30.0, ge=0)

    # Schedules and webhooks (issue #14), run by `vtrans scheduler` (and by `vtrans serve`).
    scheduler_interval_seconds: float = 5.0   # how often due schedules are looked for
    webhook_poll_seconds: float = 1.0         # how often the outbox is looked at
    # Refuse webhook URLs that resolve to loopback/private/link-local addresses (SSRF); tests and
    # single-machine set-ups with a local receiver set this to true.
    webhook_allow_private: bool = False
    webhook_timeout_seconds: float = 10.0     # each connect/read, and the whole attempt
    # Encrypts webhook signing secrets at rest (api/secretbox.py); the same value on every API
    # and scheduler process. Unset: secrets are stored in plain text, as before.
    secret_key: SecretStr | None = None
    # Wait before attempt 2, 3, ...: exponential, about 15 hours in all; then the message is failed
    # (it can still be redelivered by hand).
    webhook_retry_delays: list[float] = Field(default_factory=lambda: [5, 30, 120, 600, 1800, 3600, 7200,
                                                                       14400, 28800])

    def resolved_data_dir(self) -> Path:
        return self.data_dir.expanduser().resolve()

    @property
    def db_url(self) -> str:
        url = self.database_url or f"sqlite:///{self.resolved_data_dir() / 'vtrans.db'}"
        # Accept the usual postgres:// spellings and use psycopg 3, the driver we ship.
        for prefix in ("postgres://", "postgresql://"):
            if url.startswith(prefix):
                url = "postgresql+psycopg://" + url[len(prefix):]
        if url.startswith("postgresql") and "connect_timeout=" not in url:
            # libpq's default is to wait forever for an unreachable server: bound it.
            url += ("&" if "?" in url else "?") + f"connect_timeout={self.db_connect_timeout}"
        return url

    @property
    def secret_key_value(self) -> str | None:
        return self.secret_key.get_secret_value() if self.secret_key else None

    @property
    def broker(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{self.resolved_data_dir() / 'broker.db'}"

    @property
    def artifacts(self) -> str:
        return self.artifact_url or f"file://{self.resolved_data_dir() / 'artifacts'}"

    @property
    def reaper_interval(self) -> float:
        return self.reaper_interval_seconds or max(1.0, self.lease_seconds / 4)

    @property
    def worker_stale_after(self) -> float:
        return self.worker_stale_seconds or 3 * self.reaper_interval

    @property
    def heartbeat_interval(self) -> float:
        if self.heartbeat_seconds < 0:
            return 0.0
        return self.heartbeat_seconds or max(0.5, self.lease_seconds / 3)

    @property
    def tmp_dir(self) -> Path:
        return self.resolved_data_dir() / "tmp"

    @property
    def work_dir(self) -> Path:
        return self.resolved_data_dir() / "work"


@lru_cache
def get_settings() -> Settings:
    return Settings()

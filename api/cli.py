"""`vtrans` console script: serve (embedded all-in-one), api, worker, scheduler, migrate, keys,
compress, and `jobs` (a client of a running service, api/cli_jobs.py)."""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys

from . import routing
from .settings import Settings


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vtrans", description="Compress transformer models with VTrans.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    s = sub.add_parser("serve", help="API + one worker + the scheduler on SQLite and a local broker (no servers needed)")
    s.add_argument("--host", help="bind address (default VTRANS_HOST or 127.0.0.1)")
    s.add_argument("--port", type=int, help="port (default VTRANS_PORT or 8000)")
    a = sub.add_parser("api", help="the HTTP API process (production)")
    a.add_argument("--host")
    a.add_argument("--port", type=int)
    w = sub.add_parser("worker", help="a Celery worker process (production)")
    w.add_argument("--pool", choices=["prefork", "solo"], default="prefork",
                   help="prefork (default): each job in a child process; solo: in this process")
    w.add_argument("--loglevel", default="INFO")
    w.add_argument("--queues", help="comma-separated queues to consume, e.g. gpu,cpu (default "
                   "VTRANS_WORKER_QUEUES, else VTRANS_QUEUE); see api/routing.py for which job goes where")
    sc = sub.add_parser("scheduler", help="fire due schedules and deliver webhooks (production; any number "
                        "of them may run: each firing happens once)")
    sc.add_argument("--once", action="store_true", help="one pass, then exit")
    clock = sc.add_mutually_exclusive_group()
    clock.add_argument("--now", help="pretend the time is this ISO 8601 instant (tests, dry runs)")
    clock.add_argument("--clock-file", help="read the current time (ISO 8601) from this file on every pass (tests)")
    sub.add_parser("migrate", help="create or upgrade the database schema (Alembic)")
    sub.add_parser("encrypt-webhook-secrets", help="encrypt webhook secrets stored before VTRANS_SECRET_KEY was set")
    k = sub.add_parser("keys", help="API keys: create, revoke, list (issue #5)")
    ksub = k.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    kc = ksub.add_parser("create", help="create a key for a tenant and print it (shown only once)")
    kc.add_argument("--tenant", required=True, help="tenant name: lowercase letters, digits, '-', '_'")
    kr = ksub.add_parser("revoke", help="revoke a key by its id (key_...)")
    kr.add_argument("id")
    ksub.add_parser("list", help="list keys (id, tenant, prefix, created, revoked)")
    from .cli_jobs import add_parser as add_jobs_parser

    add_jobs_parser(sub)
    sub.add_parser("compress", help="compress a model locally, without the service (vtrans compress --help)",
                   add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "compress":  # the core library's own CLI parses the rest
        from vtrans_core.cli import main as core_main

        return core_main(argv[1:])
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    if args.command == "jobs":  # a client of a running service: no server settings needed
        from .cli_jobs import run as run_jobs

        return run_jobs(args)
    try:
        settings = Settings()
    except Exception as exc:  # a malformed VTRANS_* variable
        print(f"vtrans: invalid configuration: {exc}", file=sys.stderr)
        return 2
    if args.port is not None if hasattr(args, "port") else False:
        if not 0 < args.port < 65536:
            parser.error(f"--port must be between 1 and 65535, got {args.port}")
    return {"serve": _serve, "api": _api, "worker": _worker, "migrate": _migrate,
            "keys": _keys, "scheduler": _scheduler, "encrypt-webhook-secrets": _seal_secrets}[args.command](settings, args)


def _seal_secrets(settings: Settings, args) -> int:
    from .webhook_delivery import seal_plain_secrets

    if not settings.secret_key_value:
        print("vtrans: set VTRANS_SECRET_KEY first (the same value on every API and scheduler process)",
              file=sys.stderr)
        return 2
    if not _checked(settings):
        return 1
    print(f"vtrans: encrypted {seal_plain_secrets(settings.db_url, settings.secret_key_value)} webhook secret(s)",
          file=sys.stderr)
    return 0


def _scheduler(settings: Settings, args) -> int:
    import logging
    import threading
    from datetime import datetime
    from pathlib import Path

    from . import scheduler

    if not _checked(settings):
        return 1
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    clock = scheduler.utcnow
    if args.now:
        try:
            fixed = datetime.fromisoformat(args.now)
        except ValueError:
            print(f"vtrans: --now {args.now!r} is not an ISO 8601 time", file=sys.stderr)
            return 2
        if fixed.tzinfo is None:
            print("vtrans: --now needs a UTC offset (e.g. 2026-12-07T03:00:00+00:00)", file=sys.stderr)
            return 2
        clock = lambda: fixed  # noqa: E731
    elif args.clock_file:
        clock = scheduler.file_clock(Path(args.clock_file))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    scheduler.run(settings, clock=clock, once=args.once, stop=stop)
    return 0


def _keys(settings: Settings, args) -> int:
    from . import auth

    if not _checked(settings):
        return 1
    if args.keys_command == "create":
        try:
            created = auth.create_key(settings.db_url, args.tenant)
        except ValueError as exc:
            print(f"vtrans: {exc}", file=sys.stderr)
            return 2
        print(f"vtrans: created key {created.id} for tenant {created.tenant_id}; it is shown only now:",
              file=sys.stderr)
        print(created.key)  # stdout: the key alone, so `KEY=$(vtrans keys create ...)` works
        return 0
    if args.keys_command == "revoke":
        if not auth.revoke_key(settings.db_url, args.id):
            print(f"vtrans: no active key with id {args.id}", file=sys.stderr)
            return 1
        print(f"vtrans: revoked {args.id}", file=sys.stderr)
        return 0
    for k in auth.list_keys(settings.db_url):
        print(f"{k['id']}  {k['tenant']:<16} {k['prefix']}...  created {k['created_at']}"
              + (f"  REVOKED {k['revoked_at']}" if k["revoked_at"] else ""))
    return 0


def _migrate(settings: Settings, _args=None) -> int:
    from .db import migrate

    migrate(settings.db_url)
    print(f"vtrans: database migrated ({settings.db_url.split('://')[0]})", file=sys.stderr)
    return 0


def _checked(settings: Settings) -> bool:
    from .db import DatabaseNotMigrated, check_migrated

    try:
        check_migrated(settings.db_url)
    except DatabaseNotMigrated as exc:
        print(f"vtrans: {exc}", file=sys.stderr)
        return False
    return True


def _run_uvicorn(settings: Settings, host: str, port: int) -> None:
    import uvicorn

    from .app import create_app

    print(f"vtrans: serving at http://{host}:{port}  (API docs: http://{host}:{port}/docs)", flush=True)
    uvicorn.run(create_app(settings), host=host, port=port, log_level="info", access_log=settings.access_log)


def _api(settings: Settings, args) -> int:
    if not _checked(settings):
        return 1
    _run_uvicorn(settings, args.host or settings.host, args.port or settings.port)
    return 0


def _worker(settings: Settings, args) -> int:
    if not _checked(settings):
        return 1
    from vtrans_core.process_memory import keep_freed_memory
    from worker.celery_app import app

    keep_freed_memory()   # before the pool forks: jobs time latencies in one allocator state (its docstring)
    queues = [q.strip() for q in (args.queues or settings.worker_queues or settings.queue).split(",") if q.strip()]
    app.worker_main(["worker", "-Q", ",".join(queues), "--loglevel", args.loglevel, "--concurrency", "1",
                     "--pool", args.pool, "-n", f"vtrans-{os.getpid()}@%h"])
    return 0


def _die_with_parent() -> None:
    # Linux: the embedded worker gets SIGTERM if `vtrans serve` dies, so it never lingers.
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _serve(settings: Settings, args) -> int:
    data_dir = settings.resolved_data_dir()
    data_dir.mkdir(parents=True, exist_ok=True)
    _migrate(settings)
    from .auth import local_key

    key, created = local_key(settings.db_url, data_dir)
    print(f"vtrans: API key ({'new' if created else 'from ' + str(data_dir / 'api-key')}): {key}\n"
          f"vtrans: send it as 'Authorization: Bearer {key}'", flush=True)
    env = dict(os.environ, VTRANS_DATA_DIR=str(data_dir))
    # The SQLite broker (kombu's SQLAlchemy transport) works with the solo pool.
    children = [subprocess.Popen([sys.executable, "-m", "api.cli", command, *extra], env=env,
                                 preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
                for command, *extra in (("worker", "--pool", "solo", "--queues", ",".join(routing.all_queues(settings))),
                                        ("scheduler",))]
    try:
        _run_uvicorn(settings, args.host or settings.host, args.port or settings.port)
    finally:
        for child in children:
            child.terminate()
        for child in children:
            try:
                child.wait(timeout=20)
            except subprocess.TimeoutExpired:
                child.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())

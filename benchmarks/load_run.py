"""One command for the API load benchmark (issue #16, item 4): sets up the production shape on
this machine, runs benchmarks/load_api.py against it, and tears it all down.

    python -m benchmarks.load_run                 # the issue's target rates, 60 s (make bench-load)
    python -m benchmarks.load_run --scale 0.1 --seconds 20 --sse 10   # a shakedown on a busy machine

What it does, in order: a fresh Postgres database vtrans_load_<pid> (trust auth on
127.0.0.1:5432), `vtrans migrate`, `vtrans keys create`, an empty Redis DB number with a queue
name of our own, N `vtrans api` processes on free ports (VTRANS_MAX_ACTIVE_JOBS=1000000 so the
submits are never refused; no workers, so submitted jobs stay queued), a tiny BERT uploaded as
the model, the built-in `tweet-sentiment` task as the dataset, then load_api with the chosen
rates. Everything it started is removed on success, error and Ctrl-C: the processes, the
database, and the Redis keys of its queue. The report goes to benchmarks/results/load_api.json.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks import load_api
from benchmarks.load_cpu import process_cpu

REPO = Path(__file__).resolve().parent.parent
PG_ADMIN_DSN = os.environ.get("VTRANS_LOAD_PG_ADMIN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres")
PG_URL_BASE = os.environ.get("VTRANS_LOAD_PG_URL_BASE", "postgresql+psycopg://postgres@127.0.0.1:5432")
REDIS_BASE = os.environ.get("VTRANS_LOAD_REDIS", "redis://127.0.0.1:6379")
TENANT = "load"
DATASET = "tweet-sentiment"   # built in: no dataset upload needed, and submits resolve it without a DB read
TARGETS = {"submit_rate": 50.0, "get_rate": 200.0, "list_rate": 200.0, "sse": 100}   # issue #16


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_redis_db() -> int:
    """An empty Redis DB number, highest first (the tests pick random low ones)."""
    import redis

    for db in range(15, 0, -1):
        client = redis.Redis.from_url(f"{REDIS_BASE}/{db}")
        try:
            if client.dbsize() == 0:
                return db
        finally:
            client.close()
    raise RuntimeError("no empty Redis DB number (1-15) on " + REDIS_BASE)


def tiny_model_archive(workdir: Path) -> bytes:
    """A randomly initialised 2-layer BERT classifier + tokenizer, safetensors, as a .tar.gz."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "the", "movie", "was", "."]
    path = workdir / "model"
    path.mkdir(parents=True)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, num_labels=3,
                        id2label={0: "negative", 1: "neutral", 2: "positive"},
                        label2id={"negative": 0, "neutral": 1, "positive": 2})
    BertForSequenceClassification(config).save_pretrained(path, safe_serialization=True)
    BertTokenizerFast(vocab={w: i for i, w in enumerate(words)}, do_lower_case=True).save_pretrained(path)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(path, arcname="model")
    return buf.getvalue()


class Stack:
    """Everything the run started, undone in reverse order by close() whatever happened."""

    def __init__(self, workdir: Path, api_procs: int):
        self.workdir, self.api_procs = workdir, api_procs
        self.db_name = f"vtrans_load_{os.getpid()}"
        self.db_url = f"{PG_URL_BASE}/{self.db_name}"
        self.queue = f"vtrans-load-{os.getpid()}"
        self.redis_url: str | None = None
        self.procs: list[tuple[subprocess.Popen, Path]] = []
        self.urls: list[str] = []
        self.db_created = False

    def env(self) -> dict[str, str]:
        return dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                    VTRANS_DATABASE_URL=self.db_url, VTRANS_BROKER_URL=self.redis_url or "",
                    VTRANS_DATA_DIR=str(self.workdir / "data"), VTRANS_MAX_ACTIVE_JOBS="1000000",
                    VTRANS_QUEUE=self.queue, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")

    def vtrans(self, *args: str) -> str:
        r = subprocess.run([sys.executable, "-m", "api.cli", *args], env=self.env(), cwd=REPO,
                           capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            raise RuntimeError(f"vtrans {' '.join(args)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
        return r.stdout

    def up(self) -> str:
        """Database, schema, key, Redis, API processes; returns the API key."""
        import psycopg

        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.db_name}"')
        self.db_created = True
        self.redis_url = f"{REDIS_BASE}/{free_redis_db()}"
        self.vtrans("migrate")
        key = self.vtrans("keys", "create", "--tenant", TENANT).strip()
        for i in range(self.api_procs):
            port = free_port()
            log = self.workdir / f"api-{i}.log"
            with log.open("wb") as fh:
                p = subprocess.Popen([sys.executable, "-m", "api.cli", "api", "--port", str(port)], env=self.env(),
                                     cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
            self.procs.append((p, log))
            self.urls.append(f"http://127.0.0.1:{port}")
        for url, (p, log) in zip(self.urls, self.procs):
            self._wait_ready(url, p, log)
        return key

    @staticmethod
    def _wait_ready(url: str, p: subprocess.Popen, log: Path, timeout: float = 120) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if p.poll() is not None:
                raise RuntimeError(f"API process {url} exited ({p.returncode}):\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(url + "/readyz", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"API process {url} not ready after {timeout:.0f} s:\n{log.read_text()[-3000:]}")

    def close(self) -> None:
        for p, _ in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)   # own session: uvicorn and anything it started
        for p, _ in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=10)
        if self.redis_url:
            try:
                import redis

                client = redis.Redis.from_url(self.redis_url)
                for key in client.scan_iter(f"*{self.queue}*"):
                    client.delete(key)
                client.close()
            except Exception as exc:
                print(f"load_run: could not clean Redis {self.redis_url}: {exc}", file=sys.stderr)
        if self.db_created:
            import psycopg

            from api.db import get_engine

            get_engine(self.db_url).dispose()   # the seeder's and sampler's connections
            with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')


def upload_model(url: str, key: str, workdir: Path) -> str:
    archive = tiny_model_archive(workdir)
    r = httpx.post(url + "/v1/models", headers={"Authorization": f"Bearer {key}"},
                   files={"file": ("tiny-bert.tar.gz", archive, "application/gzip")}, timeout=120)
    if r.status_code != 201:
        raise RuntimeError(f"model upload failed: {r.status_code} {r.text[:1000]}")
    return r.json()["id"]


def cpu_probe(stack: Stack, key: str, model: str, n: int) -> dict:
    """API CPU per request, one request at a time: milliseconds of the API processes' CPU (user +
    system) per request of each kind. Unlike latency this hardly depends on what else the machine
    runs, so a shakedown on a busy machine still says what 2 cores can serve: 1000 / cpu_ms
    requests/s per core."""
    pids = [p.pid for p, _ in stack.procs]
    headers = {"Authorization": f"Bearer {key}"}
    clients = [httpx.Client(base_url=u, headers=headers, timeout=120) for u in stack.urls]
    _drain(clients)
    ids = [j["id"] for j in clients[0].get("/v1/jobs", params={"limit": 100}).json()["data"]]
    body = {"model": model, "dataset": DATASET, "method": "fast",
            "budget": {"kind": "flops", "target": 0.5, "seq_len": 128}}
    calls = {"submit": lambda c, i: c.post("/v1/jobs", json=body),
             "get": lambda c, i: c.get(f"/v1/jobs/{ids[i % len(ids)]}"),
             "list": lambda c, i: c.get("/v1/jobs", params={"status": "queued", "limit": 20}),
             "metrics": lambda c, i: c.get("/metrics")}
    out = {}
    for kind, call in calls.items():
        count = max(5, n // 10) if kind == "metrics" else n
        before = sum(process_cpu(pid) for pid in pids)
        codes = [call(clients[i % len(clients)], i).status_code for i in range(count)]
        cpu_ms = (sum(process_cpu(pid) for pid in pids) - before) * 1000 / count
        out[kind] = {"n": count, "cpu_ms_per_request": round(cpu_ms, 2), "errors": sum(c >= 400 for c in codes)}
    for c in clients:
        c.close()
    return out


def _drain(clients: list[httpx.Client], limit: float = 900) -> None:
    """Wait until every API answers a list within 2 s: requests the load generator gave up on are
    still being served after it stopped, and would be counted against the probe."""
    end = time.monotonic() + limit
    for c in clients:
        while time.monotonic() < end:
            try:
                if c.get("/v1/jobs", params={"limit": 1}, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(2)


def explain_list(db_url: str) -> dict:
    """The filtered first-page list and the per-submit active count, as Postgres plans them."""
    from sqlalchemy import text

    from api.db import get_engine

    queries = {"list": "SELECT * FROM jobs WHERE tenant_id = :t AND status IN ('queued') "
                       "ORDER BY created_at DESC, id DESC LIMIT 21",
               "active_count": "SELECT count(*) FROM jobs WHERE tenant_id = :t AND status IN ('queued', 'running')"}
    out = {}
    with get_engine(db_url).connect() as conn:
        conn.execute(text("ANALYZE jobs"))
        for name, sql in queries.items():
            plan = conn.execute(text("EXPLAIN (ANALYZE, FORMAT JSON) " + sql), {"t": TENANT}).scalar_one()[0]
            indexes: list[str] = []

            def walk(node):
                if "Index Name" in node:
                    indexes.append(node["Index Name"])
                for child in node.get("Plans", []):
                    walk(child)

            walk(plan["Plan"])
            out[name] = {"indexes": indexes, "execution_ms": round(plan["Execution Time"], 3)}
    return out


def _rates(args) -> dict[str, float]:
    return {k: (getattr(args, k) if getattr(args, k) is not None else v * args.scale) for k, v in TARGETS.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--warmup-seconds", type=float, default=5,
                   help="unmeasured submits/gets/lists at 0.1x the rates before the measured run (0: none)")
    p.add_argument("--scale", type=float, default=1.0, help="fraction of the issue's target rates and SSE count")
    p.add_argument("--submit-rate", type=float, help="submits/s (default 50 x scale)")
    p.add_argument("--get-rate", type=float, help="gets/s (default 200 x scale)")
    p.add_argument("--list-rate", type=float, help="filtered first-page lists/s (default 200 x scale)")
    p.add_argument("--sse", type=int, help="concurrent SSE followers (default 100 x scale)")
    p.add_argument("--metrics-rate", type=float, default=0.2, help="/metrics scrapes/s (a Prometheus every 5 s)")
    p.add_argument("--seed-jobs", type=int, default=10_000)
    p.add_argument("--api-procs", type=int, default=2)
    p.add_argument("--cpu-probe", type=int, default=200, help="after the load: this many sequential requests of "
                   "each kind, reporting the API's CPU ms per request (0: skip)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "load_api.json"))
    p.add_argument("--keep-logs", action="store_true", help="keep the API logs' directory (path printed)")
    args = p.parse_args(argv)
    rates = _rates(args)
    load_before = _loadavg()
    workdir = Path(tempfile.mkdtemp(prefix="vtrans-load-"))
    stack = Stack(workdir, args.api_procs)
    # Ctrl-C and `kill` both end in the finally below.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        print(f"load_run: database {stack.db_name}, {args.api_procs} API processes ...", file=sys.stderr, flush=True)
        key = stack.up()
        model = upload_model(stack.urls[0], key, workdir)
        print(f"load_run: APIs {stack.urls} ready (Redis {stack.redis_url}); model {model}; rates {rates}, "
              f"{args.seconds:.0f} s, {args.seed_jobs} seeded jobs", file=sys.stderr, flush=True)
        load_args = argparse.Namespace(
            url=stack.urls, key=key, tenant=TENANT, model=model, dataset=DATASET, seconds=args.seconds,
            submit_rate=rates["submit_rate"], get_rate=rates["get_rate"],
            list_rate=rates["list_rate"], sse=int(rates["sse"]), seed_jobs=args.seed_jobs, db_url=stack.db_url,
            metrics_rate=args.metrics_rate, warmup_seconds=args.warmup_seconds, api_pid=[proc.pid for proc, _ in stack.procs])
        report = asyncio.run(load_api.run(load_args))
        for name, step in (("query_plans", lambda: explain_list(stack.db_url)),
                           ("cpu_probe", lambda: cpu_probe(stack, key, model, args.cpu_probe) if args.cpu_probe
                            else None)):
            try:
                report[name] = step()
            except Exception as exc:   # the load figures are still worth writing
                report[name] = {"error": f"{type(exc).__name__}: {exc}"}
        report["setup"] = {"api_processes": args.api_procs, "scale": args.scale, "rates": rates,
                           "cpu_count": os.cpu_count(), "load_average_before": load_before}
        text = json.dumps(report, indent=2)
        print(text)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n", encoding="utf-8")
        for _, log in stack.procs:
            errors = [line for line in log.read_text(errors="replace").splitlines() if "Traceback" in line
                      or "ERROR" in line]
            if errors:
                print(f"load_run: {log.name}: {len(errors)} error lines, e.g. {errors[0][:300]}", file=sys.stderr)
        return 0
    except KeyboardInterrupt:
        print("load_run: interrupted, tearing down", file=sys.stderr)
        return 130
    finally:
        stack.close()
        if args.keep_logs:
            print(f"load_run: logs kept in {workdir}", file=sys.stderr)
        else:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


if __name__ == "__main__":
    sys.exit(main())

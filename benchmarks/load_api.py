"""Load benchmark of the HTTP API (issue #16, item 4): open-loop request rates, not a timed test.

Runs against API processes that are already up (the production shape: `vtrans api` x2 behind
the URLs given, Postgres, Redis), as one tenant:

    python -m benchmarks.load_api --url http://127.0.0.1:8001 --url http://127.0.0.1:8002 \\
        --key $VTRANS_API_KEY --model mdl_... --dataset ds_... \\
        --seed-jobs 10000 --db-url postgresql+psycopg://postgres@127.0.0.1:5432/vtrans_load

Phases run at the same time for --seconds: submits at --submit-rate/s (POST /v1/jobs), gets at
--get-rate/s (GET /v1/jobs/{id} of a random seeded job), first-page filtered lists at --list-rate/s
(GET /v1/jobs?status=queued&limit=20), and --sse followers holding GET /v1/jobs/{id}/events open.
Requests are sent on a fixed schedule whether or not earlier ones answered (open loop), so a slow
server shows up as latency, not as a lower rate. Reports p50/p99/max per kind, errors, and the
database's peak connection count (pg_stat_activity, sampled every 0.5 s) when --db-url is given.

The client is aiohttp, not httpx: httpx's async pool matches every waiting request against every
connection on each send (quadratic in the requests in flight), so at ~450 requests/s it took a
whole core and stalled, and the latencies measured the generator, not the API. The report says
how late the generator sent (`send_lag`) and, when --api-pid is given, whose CPU the run used.

The API must allow the submits: set VTRANS_MAX_ACTIVE_JOBS high for the run (jobs stay queued
unless workers run). --seed-jobs inserts queued job rows straight into the database (fast; the
API's own code path is measured by the submit phase).
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import random
import statistics
import time
from typing import Any

import aiohttp

from benchmarks.load_cpu import CpuMeter

TARGETS_MS = {"submit": 100.0, "get": 50.0, "list": 100.0}   # p99 targets from issue #16


def seed_jobs(db_url: str, tenant: str, n: int, model: str, dataset: str) -> dict[str, list[str]]:
    """n job rows, a third each queued / succeeded / failed, newest first; finished ones carry
    start and end times (so /metrics has durations to aggregate, as in a real table).
    Returns {status: [ids]}."""
    from datetime import timedelta

    from sqlalchemy import insert

    from api.db import get_engine
    from api.models import Job, new_id, utcnow

    now = utcnow()
    rng = random.Random(0)
    rows = []
    for i in range(n):
        status = ("queued", "succeeded", "failed")[i % 3]
        created = now - timedelta(seconds=i)
        finished = status != "queued"
        request = {"model": model, "dataset": dataset, "method": rng.choice(("fast", "vtrans")),
                   "budget": {"kind": "flops", "target": 0.5, "seq_len": 128}, "options": {}}
        rows.append({"id": new_id("job"), "tenant_id": tenant, "status": status, "model": model, "dataset": dataset,
                     "request": request, "progress": 1.0 if finished else 0.0, "attempts": int(finished),
                     "event_seq": 0, "cancel_requested": False, "created_at": created, "updated_at": created,
                     "started_at": created if finished else None,
                     "finished_at": created + timedelta(seconds=rng.uniform(5, 3600)) if finished else None})
    with get_engine(db_url).begin() as conn:
        for chunk in range(0, n, 1000):
            conn.execute(insert(Job), rows[chunk:chunk + 1000])
    by_status: dict[str, list[str]] = {}
    for r in rows:
        by_status.setdefault(r["status"], []).append(r["id"])
    return by_status


async def _timed(results: dict, kind: str, call) -> None:
    t0 = time.perf_counter()
    try:
        async with call() as r:
            await r.read()
            ok, code = r.status < 400, str(r.status)
    except Exception as exc:
        ok, code = False, type(exc).__name__
    results[kind].append(((time.perf_counter() - t0) * 1000, ok, t0))
    if not ok:
        results.setdefault(f"{kind}_errors_by_code", {}).setdefault(code, 0)
        results[f"{kind}_errors_by_code"][code] += 1


async def _open_loop(rate: float, seconds: float, make_call, results: dict, kind: str) -> None:
    if rate <= 0:
        return
    tasks, start = [], time.perf_counter()
    for i in itertools.count():
        due = start + i / rate
        if due - start >= seconds:
            break
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        # How late this request leaves: a starved generator would show up here, not as API latency.
        results["send_lag"].append(((time.perf_counter() - due) * 1000, True))
        tasks.append(asyncio.create_task(_timed(results, kind, make_call)))
    await asyncio.gather(*tasks)


async def _follow(client: aiohttp.ClientSession, job_id: str, seconds: float, results: dict,
                  delay: float = 0.0) -> None:
    await asyncio.sleep(delay)
    t0 = time.perf_counter()
    try:
        async with client.get(f"/v1/jobs/{job_id}/events", timeout=aiohttp.ClientTimeout(total=seconds + 30)) as r:
            # Time to the first line (the `retry:` preamble, sent once the route has read the job).
            await r.content.readline()
            first = (time.perf_counter() - t0) * 1000
            async for _ in r.content:
                if time.perf_counter() - t0 > seconds:
                    break
            results["sse_connect"].append((first, r.status == 200))
            results["sse_held"].append(((time.perf_counter() - t0) * 1000, r.status == 200))
    except Exception:
        results["sse_connect"].append(((time.perf_counter() - t0) * 1000, False))


async def _db_sampler(db_url: str | None, seconds: float, peak: dict) -> None:
    if not db_url:
        return
    from sqlalchemy import text

    from api.db import get_engine

    engine = get_engine(db_url)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        def sample():
            with engine.connect() as conn:
                return conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")
                                    ).scalar_one()
        peak["connections"] = max(peak.get("connections", 0), await asyncio.to_thread(sample))
        await asyncio.sleep(0.5)


async def run(args) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {args.key}"}
    clients = [aiohttp.ClientSession(base_url=u, headers=headers, timeout=aiohttp.ClientTimeout(total=30),
                                     connector=aiohttp.TCPConnector(limit=400)) for u in args.url]
    pick = itertools.cycle(clients)
    by_status = seed_jobs(args.db_url, args.tenant, args.seed_jobs, args.model, args.dataset) if args.seed_jobs else {}
    ids = [i for group in by_status.values() for i in group]
    if not ids:
        async with clients[0].get("/v1/jobs", params={"limit": 100}) as r:
            for j in (await r.json())["data"]:
                by_status.setdefault(j["status"], []).append(j["id"])
                ids.append(j["id"])
    # Followers of queued jobs stay connected for the whole run (a finished job's stream ends at once).
    follow_ids = by_status.get("queued") or ids
    body = {"model": args.model, "dataset": args.dataset, "method": "fast",
            "budget": {"kind": "flops", "target": 0.5, "seq_len": 128}}
    results: dict[str, Any] = {k: [] for k in ("submit", "get", "list", "metrics", "sse_connect", "sse_held",
                                               "send_lag")}
    peak: dict[str, int] = {}
    s = args.seconds
    calls = {"submit": lambda: next(pick).post("/v1/jobs", json=body),
             "get": lambda: next(pick).get(f"/v1/jobs/{random.choice(ids)}"),
             "list": lambda: next(pick).get("/v1/jobs", params={"status": "queued", "limit": 20})}
    warmup = getattr(args, "warmup_seconds", 0.0)
    # The SSE followers connect during the warm-up, spread over it, and stay to the end of the
    # measured run: the target is 100 followers held during the load, not 100 connecting in the
    # same instant (a herd that cost the first seconds' requests ~0.4 s of p99).
    delays = [i * warmup / max(1, args.sse) for i in range(args.sse)]
    followers = [asyncio.create_task(_follow(next(pick), random.choice(follow_ids), warmup + s - d, results, delay=d))
                 for d in delays]
    if warmup > 0:
        # A tenth of the rates, not measured: a server that has just started fills its connection
        # pools, compiles its queries and opens its broker channel on the first requests; the
        # report is about the server running, and says the warm-up's length.
        scratch: dict[str, Any] = {k: [] for k in (*calls, "send_lag")}
        await asyncio.gather(*(_open_loop(getattr(args, f"{k}_rate") * 0.1, warmup, call, scratch, k)
                               for k, call in calls.items()))
    # The generator's own full garbage collections (torch, the seeded rows) stalled it ~200 ms at a
    # time, which the report would have charged to the API: its setup objects are frozen.
    gc.collect()
    gc.freeze()
    meter = CpuMeter(getattr(args, "api_pid", None) or [])
    await asyncio.gather(
        *(_open_loop(getattr(args, f"{k}_rate"), s, call, results, k) for k, call in calls.items()),
        _open_loop(getattr(args, "metrics_rate", 0.0), s, lambda: next(pick).get("/metrics"), results, "metrics"),
        _db_sampler(args.db_url, s, peak))
    cpu = meter.used()
    await asyncio.gather(*followers)   # they end at their next line after their time (a ping: <= 15 s)
    for c in clients:
        await c.close()
    report: dict[str, Any] = {"seconds": s, "warmup_seconds": warmup, "api_processes": len(args.url),
                              "seeded_jobs": len(ids), "cpu_seconds_during_load": cpu}
    for kind, values in results.items():
        if not isinstance(values, list):   # errors by status code
            report[kind] = values
            continue
        ms = sorted(v[0] for v in values)
        if not ms:
            continue
        report[kind] = {"n": len(ms), "errors": sum(not v[1] for v in values),
                        "p50_ms": round(statistics.median(ms), 1), "p99_ms": _p99(ms), "max_ms": round(ms[-1], 1),
                        **({"target_p99_ms": TARGETS_MS[kind]} if kind in TARGETS_MS else {})}
        if kind in TARGETS_MS:   # is the tail the start's transient or the steady state?
            report[kind]["p99_ms_by_10s"] = _p99_by_window(values, 10.0)
    report["db_peak_connections"] = peak.get("connections")
    return report


def _p99(sorted_ms: list[float]) -> float:
    return round(sorted_ms[min(len(sorted_ms) - 1, int(0.99 * len(sorted_ms)))], 1)


def _p99_by_window(values: list[tuple], window: float) -> list[float]:
    """p99 of the requests sent in each `window` seconds of the run, in order."""
    start = min(v[2] for v in values)
    buckets: dict[int, list[float]] = {}
    for ms, _, t0 in values:
        buckets.setdefault(int((t0 - start) // window), []).append(ms)
    return [_p99(sorted(buckets[i])) for i in sorted(buckets)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", action="append", required=True, help="an API base URL (repeat for several processes)")
    p.add_argument("--key", required=True)
    p.add_argument("--tenant", default="default", help="the key's tenant (for --seed-jobs)")
    p.add_argument("--model", required=True, help="an uploaded model id the submits use")
    p.add_argument("--dataset", required=True, help="an uploaded dataset id or built-in task")
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--warmup-seconds", type=float, default=5, help="unmeasured requests at 0.1x the rates first")
    p.add_argument("--submit-rate", type=float, default=50)
    p.add_argument("--get-rate", type=float, default=200)
    p.add_argument("--list-rate", type=float, default=200)
    p.add_argument("--sse", type=int, default=100)
    p.add_argument("--metrics-rate", type=float, default=0.2, help="GET /metrics per second")
    p.add_argument("--seed-jobs", type=int, default=0)
    p.add_argument("--db-url", help="the API's database (seeding and connection sampling)")
    p.add_argument("--api-pid", type=int, action="append", help="an API process id (CPU accounting; repeat)")
    p.add_argument("--out", help="write the report as JSON here too")
    args = p.parse_args()
    report = asyncio.run(run(args))
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()

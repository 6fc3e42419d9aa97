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

The API must allow the submits: set VTRANS_MAX_ACTIVE_JOBS high for the run (jobs stay queued
unless workers run). --seed-jobs inserts queued job rows straight into the database (fast; the
API's own code path is measured by the submit phase).
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import statistics
import time
from typing import Any

import httpx

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
        r = await call()
        ok, code = r.status_code < 400, str(r.status_code)
    except Exception as exc:
        ok, code = False, type(exc).__name__
    results[kind].append(((time.perf_counter() - t0) * 1000, ok))
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
        tasks.append(asyncio.create_task(_timed(results, kind, make_call)))
    await asyncio.gather(*tasks)


async def _follow(client: httpx.AsyncClient, job_id: str, seconds: float, results: dict) -> None:
    t0 = time.perf_counter()
    try:
        async with client.stream("GET", f"/v1/jobs/{job_id}/events", timeout=seconds + 30) as r:
            # Time to the first line (the `retry:` preamble, sent once the route has read the job).
            first = (time.perf_counter() - t0) * 1000
            async for _ in r.aiter_lines():
                if time.perf_counter() - t0 > seconds:
                    break
            results["sse_connect"].append((first, r.status_code == 200))
            results["sse_held"].append(((time.perf_counter() - t0) * 1000, r.status_code == 200))
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
    clients = [httpx.AsyncClient(base_url=u, headers=headers, timeout=30,
                                 limits=httpx.Limits(max_connections=400)) for u in args.url]
    pick = itertools.cycle(clients)
    by_status = seed_jobs(args.db_url, args.tenant, args.seed_jobs, args.model, args.dataset) if args.seed_jobs else {}
    ids = [i for group in by_status.values() for i in group]
    if not ids:
        r = await clients[0].get("/v1/jobs", params={"limit": 100})
        for j in r.json()["data"]:
            by_status.setdefault(j["status"], []).append(j["id"])
            ids.append(j["id"])
    # Followers of queued jobs stay connected for the whole run (a finished job's stream ends at once).
    follow_ids = by_status.get("queued") or ids
    body = {"model": args.model, "dataset": args.dataset, "method": "fast",
            "budget": {"kind": "flops", "target": 0.5, "seq_len": 128}}
    results: dict[str, Any] = {k: [] for k in ("submit", "get", "list", "metrics", "sse_connect", "sse_held")}
    peak: dict[str, int] = {}
    s = args.seconds
    await asyncio.gather(
        _open_loop(args.submit_rate, s, lambda: next(pick).post("/v1/jobs", json=body), results, "submit"),
        _open_loop(args.get_rate, s, lambda: next(pick).get(f"/v1/jobs/{random.choice(ids)}"), results, "get"),
        _open_loop(args.list_rate, s, lambda: next(pick).get("/v1/jobs", params={"status": "queued", "limit": 20}),
                   results, "list"),
        _open_loop(getattr(args, "metrics_rate", 0.0), s, lambda: next(pick).get("/metrics"), results, "metrics"),
        *[_follow(next(pick), random.choice(follow_ids), s, results) for _ in range(args.sse)],
        _db_sampler(args.db_url, s, peak))
    for c in clients:
        await c.aclose()
    report: dict[str, Any] = {"seconds": s, "api_processes": len(args.url), "seeded_jobs": len(ids)}
    for kind, values in results.items():
        if not isinstance(values, list):   # errors by status code
            report[kind] = values
            continue
        ms = sorted(v for v, _ in values)
        if not ms:
            continue
        report[kind] = {"n": len(ms), "errors": sum(not ok for _, ok in values),
                        "p50_ms": round(statistics.median(ms), 1),
                        "p99_ms": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 1), "max_ms": round(ms[-1], 1),
                        **({"target_p99_ms": TARGETS_MS[kind]} if kind in TARGETS_MS else {})}
    report["db_peak_connections"] = peak.get("connections")
    return report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", action="append", required=True, help="an API base URL (repeat for several processes)")
    p.add_argument("--key", required=True)
    p.add_argument("--tenant", default="default", help="the key's tenant (for --seed-jobs)")
    p.add_argument("--model", required=True, help="an uploaded model id the submits use")
    p.add_argument("--dataset", required=True, help="an uploaded dataset id or built-in task")
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--submit-rate", type=float, default=50)
    p.add_argument("--get-rate", type=float, default=200)
    p.add_argument("--list-rate", type=float, default=200)
    p.add_argument("--sse", type=int, default=100)
    p.add_argument("--metrics-rate", type=float, default=0.2, help="GET /metrics per second")
    p.add_argument("--seed-jobs", type=int, default=0)
    p.add_argument("--db-url", help="the API's database (seeding and connection sampling)")
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

"""Whose CPU a load run used: the API processes, the load generator, Postgres, Redis, and the
machine as a whole (Linux /proc; elsewhere the figures are left out).

On a 2-core machine the generator, the database and the API share the cores, so a latency
target missed because the machine was saturated says nothing until it is known who saturated it.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_cpu(pid: int) -> float:
    """utime + stime of one process (all its threads), in seconds; 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def _by_command(names: tuple[str, ...]) -> dict[int, float]:
    """CPU of every live process whose command name starts with one of `names`. A backend that
    exits mid-run takes its CPU with it, so the database figure is a floor."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        if comm.startswith(names):
            out[int(entry.name)] = process_cpu(int(entry.name))
    return out


def _machine_busy() -> float:
    """Seconds of non-idle CPU on the whole machine since boot (all cores)."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return 0.0
    idle = values[3] + (values[4] if len(values) > 4 else 0)   # idle + iowait
    return (sum(values[:8]) - idle) / _TICK


class CpuMeter:
    """Snapshot at construction; `used()` gives the CPU seconds each party spent since."""

    def __init__(self, api_pids: list[int]):
        self.api_pids = list(api_pids)
        self.wall = time.monotonic()
        self.api = sum(process_cpu(p) for p in self.api_pids)
        self.me = time.process_time()
        self.db = _by_command(("postgres",))
        self.redis = _by_command(("redis-server",))
        self.machine = _machine_busy()

    @staticmethod
    def _delta(before: dict[int, float], after: dict[int, float]) -> float:
        # Processes born during the run count from zero.
        return sum(v - before.get(pid, 0.0) for pid, v in after.items())

    def used(self) -> dict[str, float]:
        wall = time.monotonic() - self.wall
        out = {"wall": wall, "generator": time.process_time() - self.me,
               "postgres": self._delta(self.db, _by_command(("postgres",))),
               "redis": self._delta(self.redis, _by_command(("redis-server",))),
               "machine": _machine_busy() - self.machine, "cores": float(os.cpu_count() or 1)}
        if self.api_pids:
            out["api"] = sum(process_cpu(p) for p in self.api_pids) - self.api
        out["machine_busy_fraction"] = out["machine"] / (wall * out["cores"]) if wall > 0 else 0.0
        return {k: round(v, 3) for k, v in out.items()}

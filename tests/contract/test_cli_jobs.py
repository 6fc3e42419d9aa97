"""`vtrans jobs ...` as a CI step runs it: a subprocess with VTRANS_URL / VTRANS_API_KEY against
the real service. Exit codes: 0 succeeded, 1 failed, 2 bad request, 3 cancelled, 4 timed out,
5 service unusable (see api/cli_jobs.py). The README's CI step, a real compression submitted,
waited for and downloaded, is tests/contract/test_readme_ci.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from live.conftest import FakeRun


pytestmark = pytest.mark.slow


def vtrans(server, *args: str, key: str | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, VTRANS_URL=server.url, VTRANS_API_KEY=key or server.settings.api_key,
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "api.cli", "jobs", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def _ended(server, status: str) -> str:
    run = FakeRun(server.settings).start()
    run.progress("masks")
    run.finish(status)
    return run.job_id


@pytest.mark.parametrize("status, code", [("succeeded", 0), ("failed", 1), ("cancelled", 3)])
def test_wait_exit_code_follows_the_job_status(live_api, status, code):
    job_id = FakeRun(live_api.settings).job_id if status == "cancelled" else _ended(live_api, status)
    if status == "cancelled":
        assert vtrans(live_api, "cancel", job_id).returncode == 0
    r = vtrans(live_api, "wait", job_id, "--json")
    assert r.returncode == code, r.stderr
    assert json.loads(r.stdout)["status"] == status


def test_wait_timeout_exits_4(live_api):
    run = FakeRun(live_api.settings).start()
    run.progress("masks")
    r = vtrans(live_api, "wait", run.job_id, "--timeout", "2")
    assert r.returncode == 4 and "timed out" in r.stderr


@pytest.mark.parametrize("args, needle", [
    (["--budget", "flops:1.5"], "budget.target"),          # refused by the service (422)
    (["--budget", "half"], "KIND:TARGET"),                  # refused before any request
    (["--budget", "flops:0.5", "--option", "nonsense_option=1"], "options"),
])
def test_bad_requests_exit_2_and_name_the_field(live_api, args, needle):
    r = vtrans(live_api, "submit", "--model", "org/tiny", "--dataset", "tweet-sentiment", "--method", "fast", *args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert needle in r.stderr


def test_usage_errors_exit_2_and_service_errors_exit_5(live_api):
    assert vtrans(live_api, "submit", "--model", "org/tiny").returncode == 2       # argparse: missing arguments
    r = vtrans(live_api, "get", "job_00000000000000000000", "--json")
    assert r.returncode == 5 and json.loads(r.stdout)["error"]["status"] == 404
    assert vtrans(live_api, "get", "job_00000000000000000000", key="vt_wrong").returncode == 5


def test_get_list_and_events_print_json(live_api):
    job_id = _ended(live_api, "succeeded")
    got = vtrans(live_api, "get", job_id, "--json")
    assert got.returncode == 0 and json.loads(got.stdout)["status"] == "succeeded"
    listed = vtrans(live_api, "list", "--status", "succeeded", "--limit", "3", "--json")
    assert listed.returncode == 0 and job_id in [j["id"] for j in json.loads(listed.stdout)]
    events = vtrans(live_api, "events", job_id, "--json")
    lines = [json.loads(line) for line in events.stdout.splitlines()]
    assert events.returncode == 0 and [e["seq"] for e in lines] == [1, 2, 3, 4]
    assert [e["kind"] for e in lines] == ["status", "status", "progress", "status"]
    assert [e.get("status") for e in lines] == ["queued", "running", None, "succeeded"]


def test_submit_uploads_an_eval_dataset_and_plain_text(live_api, tiny_dataset_csv, tmp_path):
    """--eval-dataset takes a file (uploaded first) like --dataset does, and a .txt corpus (a
    language model's dataset) is uploaded rather than sent as a name the service cannot know."""
    r = vtrans(live_api, "submit", "--model", "org/tiny", "--dataset", "tweet-sentiment", "--eval-dataset",
               str(tiny_dataset_csv), "--budget", "flops:0.5", "--method", "fast", "--json")
    assert r.returncode == 0, r.stderr
    job = json.loads(r.stdout)
    assert job["request"]["eval_dataset"].startswith("ds_") and "uploaded dataset" in r.stderr
    assert vtrans(live_api, "cancel", job["id"]).returncode == 0

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"document {i} says the quick brown fox jumps over the lazy dog\n\n" for i in range(20)))
    r = vtrans(live_api, "submit", "--model", "org/tiny-lm", "--dataset", str(corpus), "--budget", "params:0.8",
               "--method", "faster", "--json")
    assert f"uploaded dataset {corpus}" in r.stderr, r.stderr
    if r.returncode == 0:
        vtrans(live_api, "cancel", json.loads(r.stdout)["id"])


def _running(server, stage: str, eta: int) -> FakeRun:
    """A running job that has reported half its work and an ETA (the waiter replays them)."""
    run = FakeRun(server.settings).start()
    for fraction in (0.25, 0.5):
        run.progress(stage, fraction, eta_seconds=eta)
    return run


def test_wait_shows_a_progress_bar_on_a_terminal_and_nothing_otherwise(live_api):
    """stderr on a terminal: a bar with the stage, the fraction and the job's ETA (on a sized
    terminal and on one that reports no size, as a pty nobody sized does); stderr on a pipe (a CI
    log): no bar at all, only the final job line on stdout."""
    for columns in (0, 120):
        _bar_on_a_terminal(live_api, columns)

    run = _running(live_api, "finetune", 42)
    env = dict(os.environ, VTRANS_URL=live_api.url, VTRANS_API_KEY=live_api.settings.api_key)
    proc = subprocess.Popen([sys.executable, "-m", "api.cli", "jobs", "wait", run.job_id, "--timeout", "60"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run.finish("succeeded")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and run.job_id in out
    assert "%" not in err and "eta" not in err, err


def _bar_on_a_terminal(live_api, columns: int) -> None:
    import fcntl
    import pty
    import struct
    import termios
    import threading
    import time

    run = _running(live_api, "finetune", 42)
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    seen = bytearray()

    def read():
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:          # EIO: the terminal's other end was closed
                return
            if not chunk:
                return
            seen.extend(chunk)
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    env = dict(os.environ, VTRANS_URL=live_api.url, VTRANS_API_KEY=live_api.settings.api_key)
    proc = subprocess.Popen([sys.executable, "-m", "api.cli", "jobs", "wait", run.job_id, "--timeout", "90"], env=env,
                            stdout=subprocess.PIPE, stderr=slave, text=True)
    os.close(slave)
    deadline = time.monotonic() + 60      # the job ends only once the bar showed its progress
    while b"eta 42s" not in seen and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    run.finish("succeeded")
    out, _ = proc.communicate(timeout=60)
    reader.join(5)
    os.close(master)
    bar = seen.decode(errors="replace")
    assert proc.returncode == 0 and run.job_id in out, (out, bar)
    assert run.job_id in bar and "finetune" in bar and "50%" in bar and "eta 42s" in bar, (columns, bar)


def test_download_exits_0_with_the_files_and_5_on_a_bad_checksum(live_api, tmp_path):
    from .test_client import _succeeded_with_files

    run, payload = _succeeded_with_files(live_api.settings, tmp_path, 64 * 1024)
    got = vtrans(live_api, "download", run.job_id, str(tmp_path / "out"), "--json")
    assert got.returncode == 0, got.stderr
    assert sorted(os.path.basename(p) for p in json.loads(got.stdout)) == ["metrics.json", "model.tar.gz"]
    assert (tmp_path / "out" / "model.tar.gz").read_bytes() == payload
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.tar.gz.part").write_bytes(b"\0" * 1000)   # a leftover that is not the file's start
    r = vtrans(live_api, "download", run.job_id, str(bad), "--name", "model.tar.gz")
    assert r.returncode == 5 and "sha256" in r.stderr, r.stderr

"""Fetch the exact hub revision a job recorded, so the worker compresses the bytes the job
record names rather than whatever the hub's `main` points at when the job runs.

The job's `request.model_source.revision` is the commit sha resolved at submit/firing time.
The worker downloads that revision into a folder of the job's under its data dir, kept while the
job waits for the hub (so a requeued run resumes the files where the last one stopped:
hub_fetch.fetch_file) and removed when the job ends (worker/runner.py: recurring jobs leave no
growing cache behind), and hands the folder to vtrans_core.compress, which stays free of hub
revisions. Only safetensors weights, JSON configs
and tokenizer files are fetched: never pickled weights (*.bin, *.pt, ...) nor code (*.py).

huggingface_hub reads HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE and HF_HOME / HF_HUB_CACHE from the
environment as everywhere else in the service. When the hub cannot be used (HF_HUB_OFFLINE=1,
or unreachable), the HF cache is searched for that same commit, as from_pretrained would.

Cancel and outages (issue #14). The transfer runs in a child process (worker/hub_fetch.py) that
the worker waits on, calling `check` (the job's cancel/lease check) every `poll_seconds`:
- a cancel kills the child at once, wherever it is (mid-file in a multi-GB safetensors, inside
  huggingface_hub's own retry sleeps, in a blocking read), and the partial folder is deleted only
  after the child is dead, so nothing writes into it afterwards. Checking between files would
  not be prompt (one file is minutes of transfer), and a download thread cannot be killed: it
  would go on filling the disk and the link while the worker starts its next job.
- a transient failure (connection refused/reset, timeout, HTTP 408/429/5xx) is retried up to
  `attempts` times, the waits doubling and adding up to `retry_seconds`; each wait is announced
  with a job event ("waiting on the Hugging Face hub ...") and cut short by a cancel. Files that
  completed in an earlier attempt are kept, and a file cut short is continued from its last byte
  (a Range request: hub_fetch.fetch_file), in this run or a requeued one. A definite answer (revision or repository not
  found, gated, 401/403) fails at once: waiting would not change it.
- a child that dies without writing its outcome (killed by a signal: the kernel's OOM killer, an
  operator's kill -9; or crashed) fails the job at once with an error naming the signal or exit
  code, the partial folder deleted: it is not retried, as nothing says the hub was at fault and
  what killed it (memory, a person) would most likely do so again.
- a 429 or 503 with a Retry-After header (seconds or an HTTP date) is the hub saying when to come
  back: the next attempt waits at least that long (earlier would only be refused again), the
  waits still adding up to no more than `retry_seconds`. When the hub asks for more than is left
  of it, the job fails at once saying so rather than sleeping past the operator's bound.
- this loop is the only one that retries: the child stops huggingface_hub's own retries of those
  statuses and connection errors (hub_fetch.use_one_retry_layer), which would otherwise sleep
  unseen inside an attempt (up to 5 times, as long as each Retry-After asks) before this loop
  even knew of a failure. So every wait is counted here, announced, and cut short by a cancel.
- the same holds for Xet-backed repos: hf_xet's Rust client retries on its own (5 times, waits
  from 3 s up to 6 min: HF_XET_CLIENT_RETRY_MAX_ATTEMPTS / _BASE_DELAY / _MAX_DURATION, read in
  hf_xet 1.8), outside the child's HTTP client. The child runs with HF_HUB_DISABLE_XET=1
  (CHILD_ENV), so huggingface_hub fetches those files over plain HTTP through the client above:
  an xet failure would reach us as a Rust error string that classify() cannot tell transient from
  definite, and xet truncates a partial file rather than continue it. The xet retries are set
  to none as well, should anything still reach hf_xet. The cost: xet's chunk deduplication.
- a wait longer than `defer_after` is not slept here: HubDeferred ends the attempt, and the
  runner sends the job back to the queue until then (jobstore.defer), so the worker (a GPU's)
  runs other jobs meanwhile. `state` carries the attempts and waiting used into the next run,
  so the bounds above hold for the job's download as a whole, however many runs it takes.
"""
from __future__ import annotations

import email.utils
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timezone
from pathlib import Path

from vtrans_core.errors import CompressionError

log = logging.getLogger("vtrans.worker")

# Top-level files from_pretrained reads for a safetensors model and its tokenizer. A sentencepiece
# `.model` is a protobuf, vocab/merges `.txt` and `.tiktoken` are text, a chat template `.jinja`
# is rendered in transformers' sandbox: none of them can run code when loaded.
ALLOW_PATTERNS = ["*.safetensors", "*.json", "*.txt", "tokenizer.model", "spiece.model",
                  "sentencepiece.bpe.model", "*.tiktoken", "*.jinja"]
# from_pretrained on a folder reads only its top level: sub-folders (onnx/, original/, other
# precisions) would be downloaded for nothing.
IGNORE_PATTERNS = ["*/*"]
PACKAGE_ROOT = Path(__file__).resolve().parents[1]   # so the child finds `worker.hub_fetch` from any cwd
# What the download child runs with, over the worker's own environment (see the module docstring:
# this loop is the only layer that retries). Online was decided by the parent (constants.HF_HUB_OFFLINE,
# possibly set after start-up): the child must not read a different answer from the environment.
CHILD_ENV = {"HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
             "HF_HUB_DISABLE_XET": "1",   # Xet-backed files over plain HTTP, through hub_fetch's client
             "HF_XET_CLIENT_RETRY_MAX_ATTEMPTS": "0",   # (hf_xet: "retry at most this many times")
             "HF_XET_CLIENT_RETRY_BASE_DELAY": "0s", "HF_XET_CLIENT_RETRY_MAX_DURATION": "0s"}


def child_environment() -> dict[str, str]:
    """The download child's environment: the worker's (HF_TOKEN, HF_ENDPOINT, ...), CHILD_ENV
    over it whatever the operator set, and this package importable."""
    return dict(os.environ, **CHILD_ENV,
                PYTHONPATH=os.pathsep.join(filter(None, [str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")])))


def retry_delays(attempts: int, total_seconds: float) -> list[float]:
    """The waits before attempts 2..n: doubling, adding up to total_seconds (5 over 600 s: 40, 80, 160, 320)."""
    n = max(attempts, 1) - 1
    if n == 0:
        return []
    unit = max(total_seconds, 0.0) / (2 ** n - 1)
    return [unit * 2 ** i for i in range(n)]


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """The wait a Retry-After header asks for (RFC 9110 §10.2.3): delay-seconds (digits only),
    or an HTTP-date (IMF-fixdate, or the obsolete RFC 850 and asctime forms a recipient must
    accept) counted from `now` (time.time()), 0 once past. None when absent or unparseable (a
    negative or fractional number, a word): the doubling schedule applies as without a header."""
    value = (value or "").strip()
    if not value:
        return None
    if value.isascii() and value.isdigit():   # (isdigit alone takes "²" and other scripts' digits)
        return float(value) if len(value) <= 15 else math.inf   # past 15 digits: longer than any budget
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:   # "-0000" and the asctime form carry no zone: HTTP dates are GMT
        when = when.replace(tzinfo=timezone.utc)
    return max(when.timestamp() - (time.time() if now is None else now), 0.0)


def _seconds(x: float) -> str:
    return f"{x:.0f} s" if x >= 10 or x == int(x) else f"{x:.1f} s"


def _from_cache(repo_id: str, revision: str, cache_dir: str | Path | None) -> Path | None:
    """That commit's snapshot in the HF cache, or None (never touches the network)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, local_files_only=True,
                                      allow_patterns=ALLOW_PATTERNS, ignore_patterns=IGNORE_PATTERNS))
    except Exception:
        return None


def _fetch_in_child(repo_id: str, revision: str, dest: Path, endpoint: str | None,
                    check: Callable[[], None], poll_seconds: float) -> dict:
    """One download attempt in a child process; its outcome dict (worker/hub_fetch.py). `check`
    raising (cancel, lease lost) kills the child first, then propagates."""
    dest.mkdir(parents=True, exist_ok=True)
    result, log_file = dest.with_name(dest.name + ".fetch.json"), dest.with_name(dest.name + ".fetch.log")
    result.unlink(missing_ok=True)
    args = {"repo": repo_id, "revision": revision, "dest": str(dest), "endpoint": endpoint,
            "result": str(result), "allow": ALLOW_PATTERNS, "ignore": IGNORE_PATTERNS}
    env = child_environment()
    try:
        with log_file.open("wb") as out:
            # Its own session: killpg reaches the child and anything it started, nothing of ours.
            proc = subprocess.Popen([sys.executable, "-m", "worker.hub_fetch", json.dumps(args)], env=env,
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        try:
            while True:
                try:
                    code = proc.wait(timeout=poll_seconds)
                    break
                except subprocess.TimeoutExpired:
                    check()
        finally:
            if proc.poll() is None:   # cancelled, lease lost, or the worker itself is stopping
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
        if result.is_file():
            return json.loads(result.read_text(encoding="utf-8"))
        tail = [line for line in log_file.read_text(errors="replace").splitlines() if line.strip()][-1:]
        how = f"exited with code {code}"
        if code < 0:   # Popen's way of saying "killed by signal -code"
            try:
                how = f"was killed by {signal.Signals(-code).name} (signal {-code})"
            except ValueError:
                how = f"was killed by signal {-code}"
        return {"ok": False, "kind": "error", "type": "DownloadProcessDied", "status": None, "retry_after": None,
                "message": f"the download process {how}" + (f": {tail[0][:300]}" if tail else "")}
    finally:
        result.unlink(missing_ok=True)
        log_file.unlink(missing_ok=True)


def _wait(seconds: float, check: Callable[[], None], poll_seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(poll_seconds, left))
        check()


class HubDeferred(Exception):
    """The next download attempt is `seconds` away, longer than the caller wants to wait holding
    its worker: it should end the attempt and run the job again then (jobstore.defer), passing
    `state` back to download_revision. `message` says why ("waiting on the hub: ...")."""

    def __init__(self, seconds: float, message: str, state: dict):
        super().__init__(message)
        self.seconds, self.message, self.state = seconds, message, state


def download_revision(repo_id: str, revision: str, dest: Path, *, endpoint: str | None = None,
                      cache_dir: str | Path | None = None, attempts: int = 1, retry_seconds: float = 0.0,
                      check: Callable[[], None] = lambda: None, note: Callable[[str], None] = lambda m: None,
                      poll_seconds: float = 1.0, defer_after: float | None = None,
                      state: dict | None = None) -> Path:
    """The folder holding `repo_id` at commit `revision`: downloaded into `dest`, or the HF cache's
    snapshot of that commit when the hub cannot be used. Raises CompressionError("model", ...) with
    a message for the job's user when neither works (the runner reports it as the job's error),
    and whatever `check` raises (the job was cancelled) with `dest` removed.

    A wait longer than `defer_after` seconds raises HubDeferred instead of sleeping (None: every
    wait is slept here). `state` is a HubDeferred's: the attempts and waiting an earlier run of
    the job used, so `attempts` and `retry_seconds` bound the job's download as a whole."""
    from huggingface_hub import constants

    where = f"{repo_id!r} at revision {revision}"
    hub = f"the Hugging Face hub ({(endpoint or constants.ENDPOINT).rstrip('/')})"
    no_copy = "and the local Hugging Face cache has no copy of that revision"
    if constants.HF_HUB_OFFLINE:   # set from HF_HUB_OFFLINE when huggingface_hub is imported
        cached = _from_cache(repo_id, revision, cache_dir)
        if cached is not None:
            return _checked(cached, where)
        raise CompressionError("model", f"could not download {where} from {hub} (HF_HUB_OFFLINE is set), {no_copy}")
    state = state or {}
    delays, waited = retry_delays(attempts, retry_seconds), float(state.get("waited") or 0.0)
    started = float(state.get("started") or time.time())   # wall clock: it spans attempts, maybe machines
    try:
        check()
        # Continue the schedule where the earlier run left it (never past the last attempt: a
        # lowered setting still gets the attempt this run was started for).
        for attempt in range(min(int(state.get("attempts") or 0) + 1, max(attempts, 1)), max(attempts, 1) + 1):
            outcome = _fetch_in_child(repo_id, revision, dest, endpoint, check, poll_seconds)
            if outcome["ok"]:
                return _checked(dest.resolve(), where)
            error = f"{outcome['type']}: {outcome['message']}"
            _raise_if_definite(outcome["kind"], where, hub, outcome["message"])
            cached = _from_cache(repo_id, revision, cache_dir)   # as good as a download, and no wait
            if cached is not None:
                note(f"{hub} could not be used ({error}); using the local Hugging Face cache's copy of {revision}")
                shutil.rmtree(dest, ignore_errors=True)
                return _checked(cached, where)
            if outcome["kind"] != "transient":
                raise CompressionError("model", f"could not download {where} from {hub} ({error}), {no_copy}")
            if attempt > len(delays):
                break
            left = max(retry_seconds - waited, 0.0)
            asked = retry_after_seconds(outcome.get("retry_after"))
            header = outcome.get("retry_after_header") or "Retry-After"   # (or a 429's RateLimit reset)
            if asked is not None and asked > left:
                raise CompressionError("model", f"could not download {where} from {hub} ({error}): the hub "
                                       f"asked to wait {_seconds(asked)} before retrying ({header}), more than "
                                       f"the {_seconds(left)} left of the retry budget (VTRANS_HUB_RETRY_SECONDS="
                                       f"{retry_seconds:g}; raise it to wait that long), {no_copy}")
            # The doubling schedule, clipped so that the waits never add up past the budget (a
            # Retry-After may have used some), and never shorter than the hub asked.
            wait = min(delays[attempt - 1], left)
            why = ""
            if asked is not None and asked > wait:
                wait, why = asked, f", as the hub asked ({header}: {outcome['retry_after']})"
            waited += wait
            message = (f"waiting on {hub}: download attempt {attempt} of {attempts} failed ({error}); "
                       f"retrying in {_seconds(wait)}{why}")
            log.warning("%s: hub download attempt %d/%d failed (%s); retrying in %.1f s%s",
                        where, attempt, attempts, error, wait, why)
            if defer_after is not None and wait > defer_after:
                raise HubDeferred(wait, message, {"attempts": attempt, "waited": waited, "started": started})
            note(message)
            _wait(wait, check, poll_seconds)
        raise CompressionError("model", f"could not download {where} from {hub}: still failing after {attempts} "
                               f"attempts over {time.time() - started:.0f} s (last error: {error}), {no_copy}")
    except HubDeferred:   # the job runs again later, on this worker maybe: its next run continues these files
        raise
    except BaseException:   # failed or cancelled: no partial model is left behind
        shutil.rmtree(dest, ignore_errors=True)
        raise


def _raise_if_definite(kind: str, where: str, hub: str, message: str) -> None:
    """The hub's definite answers: retrying would give the same one."""
    base = f"could not download {where} from {hub}: "
    if kind == "revision":
        raise CompressionError("model", base + "the hub has no such revision (deleted, or history rewritten "
                               "since the job recorded it)")
    if kind == "gated":
        raise CompressionError("model", base + f"the repository is gated and the worker's token (HF_TOKEN) has "
                               f"no access ({message})")
    if kind == "repo":
        raise CompressionError("model", base + f"repository not found, or private without a token giving access "
                               f"({message})")
    if kind == "denied":
        raise CompressionError("model", base + f"access denied; check the worker's token (HF_TOKEN) ({message})")


def _checked(folder: Path, where: str) -> Path:
    """vtrans loads safetensors only: say so in terms of the hub repo, not of a scratch folder."""
    if not any(folder.glob("*.safetensors")):
        raise CompressionError("model", f"{where} has no safetensors weights (model.safetensors); vtrans does not "
                               "load pickled weights (*.bin)")
    return folder


__all__ = ["ALLOW_PATTERNS", "IGNORE_PATTERNS", "HubDeferred", "download_revision", "retry_after_seconds", "retry_delays"]

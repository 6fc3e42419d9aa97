"""The child process that downloads one hub revision for worker/hub_download.py.

Run as `python -m worker.hub_fetch '<json>'` with {"repo", "revision", "dest", "endpoint",
"result", "allow", "ignore"}. It imports only the standard library and huggingface_hub (not
torch, not the service), so it starts in well under a second. It writes its outcome to the
`result` file as JSON: {"ok": true, "files": [...]} or {"ok": false, "kind", "type", "message",
"status", "retry_after"}, `kind` saying what the parent should do with the failure (see
classify()) and `retry_after` the raw Retry-After header of a 429/503 answer (or a 429's
RateLimit reset in seconds, then with `retry_after_header`: "RateLimit reset"; null when none), which the parent
parses when it decides the wait (a date is measured against its clock then). The child retries
nothing itself, nor lets huggingface_hub do so (use_one_retry_layer()).

Why a process of its own: the parent must be able to stop a multi-GB transfer the moment the job
is cancelled, and only a process can be stopped at any instant (a thread cannot be killed and
would keep writing into a folder the parent deletes). See hub_download.py.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

# Transient: the hub (or the way to it) may answer later. Matched by class name along the MRO
# because the package allows huggingface_hub versions built on requests, httpx or httpx2.
TRANSIENT_NAMES = {"ConnectionError", "ConnectError", "ConnectTimeout", "TimeoutException", "Timeout",
                   "TimeoutError", "ReadTimeout", "NetworkError", "RemoteProtocolError", "ProtocolError",
                   "ChunkedEncodingError", "ReadError", "WriteError", "HubUnreachable"}
TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
# The statuses RFC 9110 §10.2.3 gives Retry-After a meaning for when it comes with an error
# ("too many requests", "unavailable, come back then"); on others the header is not about waiting.
RETRY_AFTER_STATUS = {429, 503}
PARTIAL_DIR = ".partial"   # in `dest`: the files still being downloaded (fetch_file)


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    lines = [line for line in text.splitlines() if line.strip() and "Client Error" not in line]
    return (lines[0] if lines else text or type(err).__name__)[:300]


def _status(err: BaseException) -> int | None:
    response = getattr(err, "response", None)
    return getattr(response, "status_code", None)


def _retry_after(err: BaseException) -> str | None:
    """The Retry-After header of the response `err` carries, unparsed (capped: it is only
    echoed to the parent, which ignores what it cannot parse). huggingface_hub's HfHubHTTPError
    keeps the requests/httpx response as `.response`; its headers match case-insensitively, but
    a plain mapping is read the same way."""
    headers = getattr(getattr(err, "response", None), "headers", None)
    try:
        value = next((v for k, v in headers.items() if str(k).lower() == "retry-after"), None)
    except (AttributeError, TypeError):   # no response, or no headers on it
        return None
    if value is None:
        return None
    return str(value).strip()[:100] or None


def _ratelimit_reset(err: BaseException) -> str | None:
    """The seconds until the window resets, from a 429's RateLimit header when no request is left
    (the IETF draft the hub follows: `"api";r=0;t=55`), read with huggingface_hub's own parser. It
    honoured this itself before use_one_retry_layer() took its retries away, so the parent does now."""
    try:
        from huggingface_hub.utils import parse_ratelimit_headers

        info = parse_ratelimit_headers(err.response.headers)
    except Exception:   # no response or headers, or a parser that is not there
        return None
    return str(info.reset_in_seconds) if info is not None and info.remaining == 0 else None


def classify(err: BaseException) -> dict:
    """What a download failure means for the job: `revision`, `gated`, `repo` (the hub's definite
    answers: fail at once), `denied` (401/403 without a hub error code: no retry either),
    `transient` (connection refused/reset, timeouts, 408/429/5xx: retry) or `error` (anything
    else, e.g. a full disk: no retry), with the Retry-After of a 429/503. huggingface_hub wraps a network failure in
    LocalEntryNotFoundError ("not in the cache either"), so the causes are looked at too."""
    from huggingface_hub.utils import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    seen, chain = set(), []
    cur: BaseException | None = err
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    kind = "error"
    for e in chain:   # the outermost definite answer wins
        status = _status(e)
        if isinstance(e, RevisionNotFoundError):
            kind = "revision"
        elif isinstance(e, GatedRepoError):   # (a RepositoryNotFoundError: test it first)
            kind = "gated"
        elif isinstance(e, RepositoryNotFoundError):
            kind = "repo"
        elif status in (401, 403):
            kind = "denied"
        elif status in TRANSIENT_STATUS or any(c.__name__ in TRANSIENT_NAMES for c in type(e).__mro__):
            kind = "transient"
        elif "Consistency check failed" in str(e):   # a transfer cut short: the bytes may come next time
            kind = "transient"
        else:
            continue
        retry_after, extra = _retry_after(e) if status in RETRY_AFTER_STATUS else None, {}
        if retry_after is None and status == 429 and (reset := _ratelimit_reset(e)) is not None:
            retry_after, extra = reset, {"retry_after_header": "RateLimit reset"}
        return {"kind": kind, "type": type(e).__name__, "message": first_line(e), "status": status,
                "retry_after": retry_after, **extra}
    return {"kind": kind, "type": type(err).__name__, "message": first_line(err), "status": _status(err),
            "retry_after": None}


class HubAnswered(Exception):
    """The hub answered a status worth retrying (408/429/5xx): raised at once, for the parent's
    loop to decide the wait. `response` is kept for classify() (status, Retry-After)."""

    def __init__(self, response) -> None:
        detail = ""
        try:
            if int(response.headers.get("content-length", "-1")) in range(1, 65537):   # a short error page
                response.read()
                detail = str((response.json() or {}).get("error") or "")[:200]
        except Exception:   # no JSON, a broken body: the status says enough
            pass
        finally:
            response.close()
        request = response.request
        super().__init__(f"{response.status_code} {response.reason_phrase} for {request.method} {request.url}"
                         + (f": {detail}" if detail else ""))
        self.response = response


class HubUnreachable(Exception):
    """A connection refused/reset or a timeout before the hub answered; the transport's own error
    is the __cause__ (classify() finds it there)."""


def use_one_retry_layer() -> bool:
    """Make the parent's loop the only one that retries (issue #14).

    huggingface_hub (read in 2.4) retries underneath, in its shared HTTP client's callers: http_backoff
    (the file listing, and the second HEAD pass hf_hub_download makes after a failed one) retries
    408/429/500/502/503/504, timeouts and network errors 5 times, sleeping 1, 2, 4, 8, 8 s, or a
    429's RateLimit reset / any Retry-After in seconds + 1 s; the transfer's GET retries 408/429
    the same way, and a connection error when it opens restarts it up to 5 times. Each such sleep
    is invisible to the parent: with Retry-After: 120 one attempt could sleep 10 minutes in here
    before the parent's own wait, outside VTRANS_HUB_RETRY_SECONDS and its cancel polling.

    There is no setting to turn that off, but the client is the documented extension point
    (huggingface_hub.set_client_factory, "customize the httpx Client"): ours answers those
    statuses and transport errors by raising an exception none of those callers retries, so one
    request fails one attempt at once and the parent decides the wait. The library's own client
    configuration is copied (its request hook: offline check, request ids; redirects; timeouts).
    Left as it is: a connection that breaks while a file's body is streaming is resumed from the
    byte it reached after 1 s (http_get; it gives up after 5 breaks in a row without a new byte);
    ending the attempt there would cost the parent's longer wait for a blip.
    Xet-backed files come through this client too: the parent starts us with HF_HUB_DISABLE_XET=1
    and hf_xet's own retries set to none (hub_download.CHILD_ENV, and why there).
    False (nothing changed) with a huggingface_hub whose client is not an httpx one."""
    import huggingface_hub

    if not hasattr(huggingface_hub, "set_client_factory"):
        return False
    default = huggingface_hub.get_session()
    base = type(default)
    httpx = sys.modules.get(base.__module__.split(".")[0])
    if httpx is None or not hasattr(httpx, "TransportError") or not hasattr(base, "send"):
        return False
    retried = TRANSIENT_STATUS
    # What huggingface_hub's callers retry (its _DEFAULT_RETRY_ON_EXCEPTIONS, and http_get's list);
    # other transport errors (a proxy refusing, an unsupported URL) it raises as they are.
    unreachable = tuple(getattr(httpx, name) for name in ("TimeoutException", "NetworkError", "RemoteProtocolError")
                        if hasattr(httpx, name))

    class OneAttemptClient(base):
        def send(self, request, *args, **kwargs):
            try:
                response = super().send(request, *args, **kwargs)
            except unreachable as err:
                raise HubUnreachable(f"{type(err).__name__}: {err}") from err
            if response.status_code in retried:
                raise HubAnswered(response)
            return response

    hooks = {kind: list(fns) for kind, fns in default.event_hooks.items()}
    options = {"event_hooks": hooks, "follow_redirects": default.follow_redirects, "timeout": default.timeout}
    huggingface_hub.set_client_factory(lambda: OneAttemptClient(**options))
    return True


def fetch(repo: str, revision: str, dest: str, endpoint: str | None, allow: list[str], ignore: list[str]) -> list[str]:
    """List the commit's top-level files, then fetch the wanted ones one by one into `dest`.

    Not snapshot_download: when its listing call fails it may fall back to whatever `dest`
    already holds (a retry's partial folder) and call that a snapshot; here a failed listing is
    an error, and success means every listed file arrived."""
    from huggingface_hub import HfApi
    from huggingface_hub.utils import filter_repo_objects

    api = HfApi(endpoint=endpoint)
    names = [f.path for f in api.list_repo_tree(repo, revision=revision, recursive=False)
             if type(f).__name__ == "RepoFile"]
    wanted = list(filter_repo_objects(names, allow_patterns=allow, ignore_patterns=ignore))
    for name in wanted:
        fetch_file(repo, revision, name, Path(dest), endpoint)
    shutil.rmtree(Path(dest) / PARTIAL_DIR, ignore_errors=True)   # (empty by now: every file arrived)
    return wanted


def fetch_file(repo: str, revision: str, name: str, dest: Path, endpoint: str | None) -> None:
    """One file into dest/name, resuming the bytes an earlier attempt got (issue #14).

    Not hf_hub_download: huggingface_hub 2.x downloads to a file name unique to the process and
    deletes it when the transfer fails, so every attempt (each a new child process) would start
    the file from byte 0, a multi-GB safetensors again after every outage. Here the bytes go to
    dest/.partial/<name>.<etag>.part, kept when the attempt fails; the next attempt (the same
    `dest`: the worker keeps it across the job's runs, worker/hub_downloads.py) asks for the rest
    with a Range request through huggingface_hub's own http_get (which restarts from 0 if the
    server ignores the Range). http_get writes whole 10 MiB chunks: a cut keeps those that arrived. The etag in the name: bytes of another version of the file
    are never continued. A resumed file is checked against the etag (sha256 of an LFS file, git
    blob id of a small one) before it takes its name: bytes appended to a wrong prefix fail the
    attempt as a consistency error, and the next one starts from 0 (a whole transfer is trusted,
    as hf_hub_download does: so an etag of some other form costs one retry, never the job). A
    file already in `dest` with the size the hub announces is kept: `dest` is this revision's
    alone, its files cannot change."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    meta = get_hf_file_metadata(hf_hub_url(repo, name, revision=revision, endpoint=endpoint), endpoint=endpoint)
    target = dest / name
    if target.is_file() and meta.size is not None and target.stat().st_size == meta.size:
        return
    etag = "".join(c for c in (meta.etag or "") if c.isalnum())[:64] or "unknown"
    partial = dest / PARTIAL_DIR / f"{name}.{etag}.part"
    partial.parent.mkdir(parents=True, exist_ok=True)
    with partial.open("ab") as out:
        have = out.tell()
        if meta.size is not None and have > meta.size:   # not this file's bytes after all
            out.truncate(0)
            have = 0
        http_get(meta.location, out, resume_size=have, headers=build_hf_headers(), expected_size=meta.size)
    if have and not _matches_etag(partial, etag):
        partial.unlink(missing_ok=True)
        raise OSError(f"Consistency check failed: {name} does not match its etag {etag} after the download")
    os.replace(partial, target)


def _matches_etag(path: Path, etag: str) -> bool:
    """The hub's etag is the sha256 of an LFS file's bytes, the git blob id (sha1 of
    "blob <size>\0" + bytes) of a small file's; another form (a proxy's) is not checked."""
    if len(etag) not in (40, 64):
        return True
    digest = hashlib.sha256() if len(etag) == 64 else hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest() == etag.lower()


def _exit_with_parent() -> None:
    """A worker killed with -9 cannot kill us: notice its death and stop writing to its folder."""
    parent = os.getppid()
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(3)


def main(argv: list[str]) -> int:
    args = json.loads(argv[0])
    threading.Thread(target=_exit_with_parent, daemon=True).start()
    try:
        use_one_retry_layer()
        files = fetch(args["repo"], args["revision"], args["dest"], args.get("endpoint"),
                      args["allow"], args["ignore"])
        outcome = {"ok": True, "files": files}
    except Exception as err:
        outcome = {"ok": False, **classify(err)}
    tmp = args["result"] + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(outcome, fh)
    os.replace(tmp, args["result"])   # the parent never reads half a result
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

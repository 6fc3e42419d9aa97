"""Downloads answer Range requests only as /openapi.json declares (downloadJobArtifact: 200, 206
with the file's own media type, 416 problem+json), with a file on disk (file://, which Starlette's
FileResponse serves) exactly as with one in a remote store (memory:// stands in for s3://).
On disk, FileResponse alone answered a malformed range with a text/plain 400, an unsatisfiable one
with a text/plain 416 and several ranges with multipart/byteranges: none of them declared."""
from __future__ import annotations

import hashlib
import os
import secrets

import pytest

from .conftest import Recorder, assert_problem, auth

SIZE = 1000
DOWNLOAD = ("/v1/jobs/{job_id}/artifacts/{name}", "get")


@pytest.fixture(params=["file", "memory"])
def served(request, service_settings, tmp_path):
    """A succeeded job with one final artifact, served by the app: (client, its url, its bytes)."""
    from fastapi.testclient import TestClient

    from api.app import create_app
    from api.artifacts import ArtifactStore
    from api.db import session_scope
    from api.models import Artifact, Job, new_id

    url = (f"file://{tmp_path / 'store'}" if request.param == "file"
           else f"memory://vtrans-ranges-{secrets.token_hex(4)}")
    settings = service_settings.model_copy(update={"artifact_url": url})
    content = os.urandom(SIZE)
    job_id = new_id("job")
    key = f"jobs/{job_id}/attempt-1/model.tar.gz"
    (tmp_path / "f").write_bytes(content)
    ArtifactStore(url).put_file(tmp_path / "f", key)
    with session_scope(settings.db_url) as s:
        s.add(Job(id=job_id, status="succeeded", model="org/tiny", dataset="tweet-sentiment", progress=1.0,
                  request={"model": "org/tiny", "dataset": "tweet-sentiment", "method": "fast",
                           "budget": {"kind": "flops", "target": 0.5}, "options": {}}))
        s.flush()
        s.add(Artifact(job_id=job_id, name="model.tar.gz", storage_key=key, size_bytes=SIZE,
                       media_type="application/gzip", sha256=hashlib.sha256(content).hexdigest(), attempt=1,
                       final=True))
    with TestClient(create_app(settings, enqueue=Recorder()), headers=auth(settings)) as c:
        yield c, f"/v1/jobs/{job_id}/artifacts/model.tar.gz", content


def _assert_declared(client, response) -> None:
    """The status is one the operation declares (or its nXX), with the media type and the
    headers it declares."""
    path, method = DOWNLOAD
    declared = client.get("/openapi.json").json()["paths"][path][method]["responses"]
    status = str(response.status_code)
    entry = declared.get(status) or declared[f"{status[0]}XX"]
    assert response.headers["content-type"].split(";")[0] in entry["content"], (status, response.headers)
    missing = [h for h in entry.get("headers", {}) if h.lower() not in response.headers]
    assert not missing, (status, missing)


def test_the_whole_file_with_its_checksum(served):
    c, url, content = served
    r = c.get(url)
    assert r.status_code == 200 and r.content == content
    assert r.headers["etag"] == f'"{hashlib.sha256(content).hexdigest()}"'
    _assert_declared(c, r)


@pytest.mark.parametrize("header, part", [
    ("bytes=100-", slice(100, SIZE)), ("bytes=10-19", slice(10, 20)), ("bytes=-5", slice(SIZE - 5, SIZE)),
    ("bytes=990-5000", slice(990, SIZE)), ("bytes=0-0", slice(0, 1)),
])
def test_one_range_is_a_206_of_those_bytes(served, header, part):
    c, url, content = served
    r = c.get(url, headers={"Range": header})
    assert r.status_code == 206 and r.content == content[part]
    assert r.headers["content-range"] == f"bytes {part.start}-{part.stop - 1}/{SIZE}"
    _assert_declared(c, r)


@pytest.mark.parametrize("header", [
    "bytes=5000-",      # past the end
    "bytes=-0",         # an empty suffix
    "bytes=5-3",        # end before start
    "bytes=0-1,5-6",    # several ranges (multipart/byteranges is not offered)
    "items=0-1",        # another unit
    "bytes=x-",         # not a number
])
def test_a_range_it_cannot_serve_is_the_declared_416_problem(served, header):
    c, url, _ = served
    r = c.get(url, headers={"Range": header})
    assert_problem(r, 416)
    assert r.headers["content-range"] == f"bytes */{SIZE}"
    _assert_declared(c, r)

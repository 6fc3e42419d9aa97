"""Model upload limits for real decoders: defaults that fit a 1-2B model in bf16, per-tenant
overrides, 413 problem+json naming the file and the limit, and an upload streamed to the store
without the file ever being held in memory (tracemalloc over a real HTTP server in this process).
"""
from __future__ import annotations

import json
import shutil
import tarfile
import threading
import time
import tracemalloc
from pathlib import Path

import httpx
import pytest

from .conftest import Recorder, assert_problem

MiB = 1024**2
BOUNDARY = "vtrans-test-boundary"


def _pad_safetensors(path: Path, size: int) -> None:
    """A valid safetensors file of `size` bytes of random (incompressible) data, written in
    1 MiB blocks: gzip cannot shrink it, so the archive is as large as the model."""
    import os

    n = size // 4
    header = json.dumps({"pad": {"dtype": "F32", "shape": [n], "data_offsets": [0, n * 4]}}).encode()
    header += b" " * (-len(header) % 8)
    with path.open("wb") as out:
        out.write(len(header).to_bytes(8, "little") + header)
        for start in range(0, n * 4, MiB):
            out.write(os.urandom(min(MiB, n * 4 - start)))


@pytest.fixture(scope="module")
def big_archive(tmp_path_factory, tiny_model_dir) -> Path:
    """tiny BERT + 24 MiB of extra weights, as model.tar.gz on disk (~24 MiB)."""
    root = tmp_path_factory.mktemp("big-model")
    model = root / "model"
    shutil.copytree(tiny_model_dir, model)
    _pad_safetensors(model / "pad.safetensors", 24 * MiB)
    archive = root / "model.tar.gz"
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        tar.add(model, arcname="model")
    return archive


def _multipart(path: Path, filename: str):
    """(Content-Length, body iterator): the file read and sent 256 KiB at a time."""
    head = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n"
            "Content-Type: application/gzip\r\n\r\n").encode()
    tail = f"\r\n--{BOUNDARY}--\r\n".encode()

    def body():
        yield head
        with path.open("rb") as fh:
            while block := fh.read(256 * 1024):
                yield block
        yield tail

    return len(head) + path.stat().st_size + len(tail), body()


def _upload(url: str, key: str, path: Path, filename: str = "model.tar.gz") -> httpx.Response:
    length, body = _multipart(path, filename)
    headers = {"Authorization": f"Bearer {key}", "Content-Length": str(length),
               "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    return httpx.post(url + "/v1/models", content=body, headers=headers, timeout=120)


class _ThreadServer:
    """uvicorn serving the app in a thread of this process, so tracemalloc sees the server's
    allocations (the in-process TestClient would buffer the whole request body itself)."""

    def __init__(self, settings):
        import socket

        import uvicorn

        from api.app import create_app

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        config = uvicorn.Config(create_app(settings, enqueue=Recorder()), host="127.0.0.1", port=port,
                                log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "uvicorn did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(30)


def _tenant(settings, prefix: str) -> tuple[str, str]:
    import secrets

    from api.auth import create_key

    name = f"{prefix}-{secrets.token_hex(4)}"
    return name, create_key(settings.db_url, name).key


def test_defaults_fit_a_two_billion_parameter_decoder_in_bf16():
    from api.settings import Settings

    s = Settings()
    bf16_2b = 2_000_000_000 * 2            # bytes of weights; safetensors hardly compress
    assert s.max_model_upload_bytes >= bf16_2b and s.max_model_unpacked_bytes >= bf16_2b
    assert s.max_model_upload_bytes == 6 * 1024**3 and s.max_model_unpacked_bytes == 8 * 1024**3


def test_streamed_upload_small_memory_and_per_tenant_413(service_settings, big_archive):
    size = big_archive.stat().st_size
    assert size > 23 * MiB
    roomy, roomy_key = _tenant(service_settings, "roomy")
    small, small_key = _tenant(service_settings, "small")
    packed, packed_key = _tenant(service_settings, "packed")
    settings = service_settings.model_copy(update={
        # the service default (8 MiB here) is below the archive: only the overrides let it in
        "tenant_limits": {roomy: {"max_model_upload_bytes": 32 * MiB, "max_model_unpacked_bytes": 40 * MiB},
                          small: {"max_model_upload_bytes": 16 * MiB},
                          packed: {"max_model_upload_bytes": 32 * MiB, "max_model_unpacked_bytes": 20 * MiB}}})
    with _ThreadServer(settings) as srv:
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            r = _upload(srv.url, roomy_key, big_archive)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert r.status_code == 201, r.text
        stored = {f["name"]: f["size"] for f in r.json()["files"]}
        assert stored["pad.safetensors"] > 24 * MiB
        # the whole 24 MiB went through this process (client and server) with a few MiB at most
        # in Python memory at any time
        print(f"\nupload of {size / MiB:.1f} MiB: peak traced memory {peak / MiB:.2f} MiB")
        assert peak < 8 * MiB, f"peak traced memory {peak / MiB:.1f} MiB for a {size / MiB:.1f} MiB upload"
        key = settings.resolved_data_dir() / "artifacts" / "uploads" / "models" / r.json()["id"] / "pad.safetensors"
        assert key.stat().st_size == stored["pad.safetensors"]

        # over the tenant's upload limit: refused from Content-Length, before the body is read
        r = _upload(srv.url, small_key, big_archive)
        body = assert_problem(r, 413, "file")
        assert r.headers["content-type"].startswith("application/problem+json")
        assert "16 MiB (16777216 bytes)" in body["detail"] and "this tenant's upload limit" in body["detail"]

        # within the upload limit, but unpacking past the tenant's unpacked limit: the file is named
        r = _upload(srv.url, packed_key, big_archive, filename="llama-1b.tar.gz")
        body = assert_problem(r, 413, "file")
        assert "'llama-1b.tar.gz' unpacks to more than" in body["detail"]
        assert "20 MiB (20971520 bytes)" in body["detail"]
        assert not any((settings.tmp_dir).glob("upload-*"))       # nothing left behind

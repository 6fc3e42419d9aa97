"""The fake hub in a thread of the test process (tests/service/fake_hub.py) and the helpers the
worker-side hub download tests share (test_hub_download.py, test_hub_download_faults.py)."""
from __future__ import annotations

import json
import secrets
import threading
import types
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from . import fake_hub


def new_sha() -> str:
    return secrets.token_hex(20)


def commit_files(folder: Path, marker: str, weights: bool = True) -> Path:
    """A repo commit: what from_pretrained needs, plus files the worker must never fetch."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "marker": marker}))
    (folder / "tokenizer.json").write_text("{}")
    (folder / "tokenizer_config.json").write_text("{}")
    (folder / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    if weights:
        (folder / "model.safetensors").write_bytes(marker.encode() * 10)
    (folder / "pytorch_model.bin").write_bytes(b"a pickle: must never be downloaded")
    (folder / "modeling_custom.py").write_text("raise SystemExit('remote code must never be downloaded')\n")
    (folder / "README.md").write_text("# card\n")
    (folder / "onnx").mkdir()
    (folder / "onnx" / "model.safetensors").write_bytes(b"a sub-folder from_pretrained does not read")
    return folder


@pytest.fixture
def hub(monkeypatch):
    """The fake hub on a free port, and huggingface_hub switched online for this test only (the
    test session sets HF_HUB_OFFLINE=1)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    server = ThreadingHTTPServer(("127.0.0.1", 0), fake_hub.Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    start = len(fake_hub.REQUESTS)
    yield types.SimpleNamespace(url=url, requests=lambda: fake_hub.REQUESTS[start:])
    server.shutdown()
    server.server_close()


def children() -> list[int]:
    """This test process's live children (Linux /proc, zombies left out): the download's child must be gone."""
    pids = [int(pid) for f in Path("/proc/self/task").glob("*/children") for pid in f.read_text().split()]
    alive = []
    for pid in pids:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0] != "Z":
                alive.append(pid)
        except (OSError, IndexError):   # gone meanwhile
            pass
    return alive


def leftovers(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) if root.exists() else []

"""Issue #5, hostile input: archives (traversal, links, devices, bombs), model configs (custom
code, unknown architectures, pickle), hub IDs and local paths, artifact names in URLs (encoded
too), datasets (limits, line numbers), and that no pickle is ever unpickled."""
from __future__ import annotations

import ast
import io
import pickle
import shutil
import socket
import tarfile
import zipfile
from pathlib import Path

import pytest

from .conftest import FAST, REPO, assert_problem, make_client, tar_gz_of

SENTINEL = "pwned-by-archive"


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]], base: Path | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        if base is not None:
            for p in sorted(base.iterdir()):
                tar.add(p, arcname=f"model/{p.name}")
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _info(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


TAR_ATTACKS = {
    "dotdot": (_info(f"model/../../{SENTINEL}"), b"x"),
    "absolute": (_info(f"/tmp/{SENTINEL}"), b"x"),
    "symlink": (_info(f"model/{SENTINEL}", tarfile.SYMTYPE, "/etc/passwd"), None),
    "hardlink": (_info(f"model/{SENTINEL}", tarfile.LNKTYPE, "/etc/passwd"), None),
    "char-device": (_info(f"model/{SENTINEL}", tarfile.CHRTYPE), None),
    "block-device": (_info(f"model/{SENTINEL}", tarfile.BLKTYPE), None),
    "fifo": (_info(f"model/{SENTINEL}", tarfile.FIFOTYPE), None),
}


def _nothing_escaped(settings) -> None:
    root = settings.resolved_data_dir().parent
    assert not list(root.rglob(f"*{SENTINEL}*")) and not Path(f"/tmp/{SENTINEL}").exists()
    tmp = settings.tmp_dir
    assert not tmp.exists() or not any(tmp.iterdir())   # the private workspace was cleaned up


@pytest.mark.parametrize("attack", sorted(TAR_ATTACKS))
def test_tar_attacks_are_refused(api_settings, tiny_model_dir, attack):
    data = _tar([TAR_ATTACKS[attack]], base=tiny_model_dir)
    with make_client(api_settings) as c:
        r = c.post("/v1/models", files={"file": ("m.tar.gz", data, "application/gzip")})
    assert_problem(r, 422, "file")
    _nothing_escaped(api_settings)


@pytest.mark.parametrize("name", [f"../{SENTINEL}", f"/{SENTINEL}", f"model/../../{SENTINEL}", f"C:\\\\{SENTINEL}"])
def test_zip_traversal_is_refused(api_settings, tiny_model_dir, name):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in tiny_model_dir.iterdir():
            zf.write(p, f"model/{p.name}")
        zf.writestr(zipfile.ZipInfo(name), b"x")
    with make_client(api_settings) as c:
        assert_problem(c.post("/v1/models", files={"file": ("m.zip", buf.getvalue(), "application/zip")}), 422)
    _nothing_escaped(api_settings)


def test_zip_bomb_is_refused_before_anything_is_written(api_settings, tiny_model_dir, monkeypatch):
    import api.uploads

    written: list[str] = []
    original = api.uploads._Budget.copy
    monkeypatch.setattr(api.uploads._Budget, "copy", lambda self, src, dest: (written.append(dest.name),
                                                                             original(self, src, dest))[1])
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for p in tiny_model_dir.iterdir():
            zf.write(p, f"model/{p.name}")
        zf.writestr("model/zeros.txt", b"\0" * (api_settings.max_model_unpacked_bytes + 1))
    assert len(buf.getvalue()) < 100_000  # tiny on the wire
    with make_client(api_settings) as c:
        body = assert_problem(c.post("/v1/models", files={"file": ("m.zip", buf.getvalue(), "application/zip")}), 413)
    assert "unpacks to more than" in body["detail"] and written == []
    # Too many members is also known from the central directory alone.
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(api_settings.max_archive_members + 1):
            zf.writestr(f"model/{i}.txt", b"")
    with make_client(api_settings) as c:
        assert_problem(c.post("/v1/models", files={"file": ("m.zip", buf.getvalue(), "application/zip")}), 413)
    assert written == []


def test_tar_bomb_is_stopped_at_the_limit(api_settings, tiny_model_dir):
    # A gzip stream cannot be sized without decompressing it: the budget stops the copy midway.
    data = _tar([(_info("model/zeros.txt"), b"\0" * (api_settings.max_model_unpacked_bytes + 1))], base=tiny_model_dir)
    with make_client(api_settings) as c:
        assert_problem(c.post("/v1/models", files={"file": ("m.tar.gz", data, "application/gzip")}), 413)
    _nothing_escaped(api_settings)


def _model_variant(tiny_model_dir: Path, tmp_path: Path, config_change: dict) -> bytes:
    import json

    d = tmp_path / "variant"
    shutil.copytree(tiny_model_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(config_change)
    (d / "config.json").write_text(json.dumps(cfg))
    return tar_gz_of(d)


@pytest.mark.parametrize("change", [
    {"auto_map": {"AutoModel": "evil.EvilModel"}},
    {"model_type": "evilnet", "architectures": ["EvilNetForSequenceClassification"]},
    {"model_type": "llama_custom"},
], ids=["auto_map", "custom-architecture", "unknown-model-type"])
def test_custom_code_configs_are_refused(api_settings, tiny_model_dir, tmp_path, change):
    with make_client(api_settings) as c:
        r = c.post("/v1/models", files={"file": ("m.tar.gz", _model_variant(tiny_model_dir, tmp_path, change),
                                                 "application/gzip")})
    assert_problem(r, 422, "file")


class _Bomb:
    """Unpickling this creates a file: proof that someone called pickle/torch.load on it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_weights_are_never_unpickled(api_settings, tiny_model_dir, tiny_dataset_csv, tmp_path):
    """A model folder with real safetensors AND a booby-trapped pytorch_model.bin: the upload
    drops the .bin, and a full compression of that folder never opens it."""
    from vtrans_core import compress

    marker = tmp_path / "unpickled"
    d = tmp_path / "trap"
    shutil.copytree(tiny_model_dir, d)
    (d / "pytorch_model.bin").write_bytes(pickle.dumps(_Bomb(marker)))
    with make_client(api_settings) as c:
        r = c.post("/v1/models", files={"file": ("m.tar.gz", tar_gz_of(d), "application/gzip")})
        assert r.status_code == 201 and r.json()["ignored_files"] == ["pytorch_model.bin"]
        assert "pytorch_model.bin" not in {f["name"] for f in r.json()["files"]}
    compress(model=str(d), data=str(tiny_dataset_csv), budget={"kind": "flops", "target": 0.7, "seq_len": 16},
             method="fast", options=dict(FAST, mask_steps=1), output_dir=str(tmp_path / "out"))
    assert not marker.exists()
    (d / "model.safetensors").unlink()  # only the pickle left: refused, still not opened
    with pytest.raises(Exception, match="pickle"):
        compress(model=str(d), data=str(tiny_dataset_csv), budget={"kind": "flops", "target": 0.7},
                 method="fast", options=dict(FAST, mask_steps=1), output_dir=str(tmp_path / "out2"))
    assert not marker.exists()


FORBIDDEN_CALLS = {"load", "loads", "Unpickler"}


def test_source_never_calls_pickle_or_torch_load_or_remote_code():
    """Guard against a future edit: no torch.load / pickle.load(s) / Unpickler call and no
    trust_remote_code=True keyword anywhere in the service or the library."""
    offenders = []
    for folder in ("api", "worker", "vtrans_core"):
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Call):
                    f = node.func
                    if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and \
                            f.value.id in ("torch", "pickle", "dill", "joblib") and f.attr in FORBIDDEN_CALLS:
                        offenders.append(f"{path}:{node.lineno} {f.value.id}.{f.attr}")
                    for kw in node.keywords:
                        if kw.arg == "trust_remote_code" and not (isinstance(kw.value, ast.Constant)
                                                                  and kw.value.value is False):
                            offenders.append(f"{path}:{node.lineno} trust_remote_code")
                if isinstance(node, ast.ImportFrom) and node.module in ("pickle", "dill") and \
                        any(a.name in FORBIDDEN_CALLS for a in node.names):
                    offenders.append(f"{path}:{node.lineno} from {node.module} import load")
    assert offenders == []


BAD_MODEL_REFS = ["https://evil.example/org/name", "http://x/y", "file:///etc/passwd", "../../etc/passwd",
                  "/etc/passwd", "org/../name", "org/name/extra", "org/na me", "~/models/x", "C:\\models\\x",
                  ".hidden/name", "org/" + "a" * 100, "", "org/name?x=1", "org/name#frag",
                  "git@github.com:org/name", "s3://bucket/model"]


@pytest.mark.parametrize("ref", BAD_MODEL_REFS)
def test_bad_hub_ids_and_paths_are_refused(api_settings, ref):
    with make_client(api_settings) as c:
        r = c.post("/v1/jobs", json={"model": ref, "dataset": "tweet-sentiment", "budget": {"kind": "flops", "target": 0.5}})
    assert_problem(r, 422, "model")


def test_a_bare_word_is_a_model_name_and_unknown_names_are_404(api_settings):
    # since issue #14 "org" is a model name (latest version of an upload named org), not a path
    with make_client(api_settings) as c:
        r = c.post("/v1/jobs", json={"model": "org", "dataset": "tweet-sentiment", "budget": {"kind": "flops", "target": 0.5}})
    assert_problem(r, 404, "model")


def test_local_paths_are_refused_even_when_they_exist(api_settings, tiny_model_dir, tiny_dataset_csv):
    with make_client(api_settings) as c:
        for body in ({"model": str(tiny_model_dir), "dataset": "tweet-sentiment"},
                     {"model": "org/name", "dataset": str(tiny_dataset_csv)}):
            r = c.post("/v1/jobs", json={**body, "budget": {"kind": "flops", "target": 0.5}})
            assert r.status_code == 422, r.text


def test_a_hub_id_is_never_fetched_at_submit(api_settings, monkeypatch):
    def no_network(*_a, **_k):
        raise AssertionError("the API opened a network connection for a hub ID")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    with make_client(api_settings) as c:
        r = c.post("/v1/jobs", json={"model": "some-org/some-model", "dataset": "tweet-sentiment",
                                     "budget": {"kind": "flops", "target": 0.5}})
    assert r.status_code == 202, r.text


def test_artifact_names_cannot_escape_the_job(api_settings):
    """A finished job with one artifact; the store also holds another job's file and a file at
    its root. No spelling of a path (raw, %-encoded, double-encoded, absolute) reaches them."""
    from api import jobstore
    from api.artifacts import ArtifactStore, UnsafeKey
    from api.db import session_scope
    from api.models import Job, new_id

    store = ArtifactStore(api_settings.artifacts)
    job_id, other = new_id("job"), new_id("job")
    root = Path(store.root)
    (root / "jobs" / job_id / "attempt-1" / "model").mkdir(parents=True)
    (root / "jobs" / job_id / "attempt-1" / "model" / "config.json").write_text('{"ok": 1}')
    (root / "jobs" / other).mkdir(parents=True)
    (root / "jobs" / other / "secret.txt").write_text("OTHER-TENANT-SECRET")
    (root / "root-secret.txt").write_text("ROOT-SECRET")
    with session_scope(api_settings.db_url) as s:
        s.add(Job(id=job_id, status="queued", model="org/x", dataset="tweet-sentiment", request={}))
    claim = jobstore.claim(api_settings.db_url, job_id, "w", 60, 3)
    assert jobstore.finish(api_settings.db_url, claim, "succeeded", metrics={}, artifacts=[
        {"name": "model/config.json", "storage_key": f"jobs/{job_id}/attempt-1/model/config.json",
         "size_bytes": 9, "media_type": "application/json"}])
    base = f"/v1/jobs/{job_id}/artifacts/"
    with make_client(api_settings) as c:
        assert c.get(base + "model/config.json").json() == {"ok": 1}
        for name in (f"../../{other}/secret.txt", f"..%2F..%2F{other}%2Fsecret.txt", f"%2e%2e/%2e%2e/{other}/secret.txt",
                     f"model/../../../{other}/secret.txt", f"model%2F..%2F..%2F..%2F{other}%2Fsecret.txt",
                     "..%2F..%2F..%2Froot-secret.txt", "%252e%252e%252froot-secret.txt", "/etc/passwd",
                     "%2Fetc%2Fpasswd", "model/..%5C..%5Croot-secret.txt", "model/config.json%00.txt"):
            r = c.get(base + name)
            assert r.status_code in (400, 404, 422), (name, r.status_code)
            assert b"SECRET" not in r.content and b"root:" not in r.content, name
    for key in ("../x", "jobs/../../x", "/abs", "jobs/a/../../b", "jobs\\..\\x"):
        with pytest.raises(UnsafeKey):
            store.local_path(key)


@pytest.mark.parametrize("filename,content,line", [
    ("d.csv", "text,label\ngood movie,positive\n,negative\n", 3),
    ("d.csv", "text,label\ngood,positive\nbad,negative,extra\n", 3),
    ("d.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "label": "y"}\n{not json\n', 3),
    ("d.jsonl", '{"text": "a", "label": "x"}\n\n["a list"]\n', 3),
    ("d.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "label": true}\n', 2),
])
def test_malformed_dataset_rows_are_reported_with_line_numbers(api_settings, filename, content, line):
    with make_client(api_settings) as c:
        body = assert_problem(c.post("/v1/datasets", files={"file": (filename, content.encode(), "text/plain")}), 422, "file")
    assert f"line {line}" in body["detail"], body["detail"]


def test_dataset_row_and_size_limits(service_settings, tiny_dataset_csv):
    few_rows = service_settings.model_copy(update={"max_dataset_rows": 10, "max_active_jobs": 10_000})
    with make_client(few_rows) as c:
        body = assert_problem(c.post("/v1/datasets", files={"file": ("d.csv", tiny_dataset_csv.read_bytes(), "text/csv")}), 413)
        assert "more than 10 rows" in body["detail"]
        big = b"text,label\n" + b"so good movie,positive\nso bad movie,negative\n" * 8000   # > 256 KiB
        assert_problem(c.post("/v1/datasets", files={"file": ("d.csv", big, "text/csv")}), 413, "file")
        assert_problem(c.post("/v1/datasets", files={"file": ("d.csv", b"text,label\n\xff\xfe,x\n", "text/csv")}), 422)


def test_nul_bytes_in_parameters_are_client_errors(api_settings):
    """Postgres cannot store or compare NUL: such input was a 500 before (found by this suite)."""
    import base64
    import json

    cursor = base64.urlsafe_b64encode(json.dumps(["2026-01-01T00:00:00+00:00", "job\x00x"]).encode()).decode()
    with make_client(api_settings) as c:
        for path in ("/v1/jobs?model=org%00name", "/v1/jobs/job_%00", "/v1/models/mdl%00", "/v1/datasets/ds%00",
                     f"/v1/jobs?cursor={cursor}", "/v1/jobs/job_%00/events?format=json"):
            r = c.get(path)
            assert 400 <= r.status_code < 500, (path, r.status_code, r.text)

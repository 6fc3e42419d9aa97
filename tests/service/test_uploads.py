"""POST /v1/models and POST /v1/datasets: every validation rule answers problem+json and leaves
nothing behind (no row, no stored file, no temp folder); valid uploads are stored."""
from __future__ import annotations

import io
import json
import shutil
import tarfile
import zipfile

import pytest

from .conftest import assert_problem, tar_gz_of


def _post_model(client, data: bytes, filename: str = "model.tar.gz"):
    return client.post("/v1/models", files={"file": (filename, data, "application/octet-stream")})


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, payload in members:
            if payload is not None:
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
            else:
                tar.addfile(info)
    return buf.getvalue()


def _model_copy(tiny_model_dir, tmp_path):
    dest = tmp_path / "m"
    shutil.copytree(tiny_model_dir, dest)
    return dest


def test_model_upload_tar_gz_is_stored_and_listed(client, tiny_model_dir, service_settings):
    r = _post_model(client, tar_gz_of(tiny_model_dir))
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["id"].startswith("mdl_") and body["model_type"] == "bert"
    names = {f["name"] for f in body["files"]}
    assert {"config.json", "model.safetensors"} <= names
    stored = service_settings.resolved_data_dir() / "artifacts" / "uploads" / "models" / body["id"]
    assert (stored / "config.json").read_bytes() == (tiny_model_dir / "config.json").read_bytes()
    assert client.get(f"/v1/models/{body['id']}").json()["id"] == body["id"]
    assert body["id"] in [m["id"] for m in client.get("/v1/models").json()["data"]]


def test_model_upload_zip_without_top_folder(client, tiny_model_dir):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in tiny_model_dir.iterdir():
            zf.write(p, p.name)
    r = _post_model(client, buf.getvalue(), "model.zip")
    assert r.status_code == 201, r.text


def test_model_upload_made_with_tar_dash_c_dot(client, tiny_model_dir, tmp_path):
    """`tar czf m.tar.gz -C my-model .` writes a '.' directory entry and './config.json' members."""
    archive = tmp_path / "m.tar.gz"
    if shutil.which("tar"):
        import subprocess

        subprocess.run(["tar", "czf", str(archive), "-C", str(tiny_model_dir), "."], check=True)
    else:
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(tiny_model_dir, arcname=".")
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert names[0] in (".", "./") and "./config.json" in names
    r = _post_model(client, archive.read_bytes())
    assert r.status_code == 201, r.text
    assert {"config.json", "model.safetensors"} <= {f["name"] for f in r.json()["files"]}


@pytest.mark.parametrize("name", ["./../evil.txt", "./", "."])
def test_dot_entries_that_are_files_or_escape_are_refused(client, snapshot, tiny_model_dir, name):
    members = [(tarfile.TarInfo(f"./{p.name}"), p.read_bytes()) for p in tiny_model_dir.iterdir()]
    members.append((tarfile.TarInfo(name), b"owned"))  # a regular FILE named '.', or a climb out
    _refused_model(client, snapshot, _tar(members))


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_dot_entry_as_link_is_refused(client, snapshot, tiny_model_dir, kind):
    link = tarfile.TarInfo(".")
    link.type, link.linkname = kind, "/etc"
    members = [(link, None)] + [(tarfile.TarInfo(f"./{p.name}"), p.read_bytes()) for p in tiny_model_dir.iterdir()]
    _refused_model(client, snapshot, _tar(members))


def test_pickle_weights_are_dropped_when_safetensors_exist(client, tiny_model_dir, tmp_path):
    d = _model_copy(tiny_model_dir, tmp_path)
    (d / "pytorch_model.bin").write_bytes(b"not really a pickle")
    r = _post_model(client, tar_gz_of(d))
    assert r.status_code == 201
    assert r.json()["ignored_files"] == ["pytorch_model.bin"]
    assert "pytorch_model.bin" not in {f["name"] for f in r.json()["files"]}


def _refused_model(client, snapshot, data: bytes, status: int = 422, filename: str = "model.tar.gz") -> dict:
    before = snapshot()
    body = assert_problem(_post_model(client, data, filename), status, "file")
    assert snapshot() == before
    return body


def test_bin_only_model_is_refused(client, snapshot, tiny_model_dir, tmp_path):
    d = _model_copy(tiny_model_dir, tmp_path)
    (d / "model.safetensors").unlink()
    (d / "pytorch_model.bin").write_bytes(b"\x80\x02pickle")
    body = _refused_model(client, snapshot, tar_gz_of(d))
    assert "pickle" in body["detail"] and "safetensors" in body["detail"]


@pytest.mark.parametrize("case", ["no_config", "bad_json", "auto_map", "unsupported", "no_tokenizer",
                                  "bad_safetensors"])
def test_bad_model_directories_are_refused(client, snapshot, tiny_model_dir, tmp_path, case):
    d = _model_copy(tiny_model_dir, tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    expect = {"no_config": "config.json", "bad_json": "not valid JSON", "auto_map": "auto_map",
              "unsupported": "gpt_neox", "no_tokenizer": "tokenizer", "bad_safetensors": "safetensors"}[case]
    if case == "no_config":
        (d / "config.json").unlink()
    elif case == "bad_json":
        (d / "config.json").write_text("{not json")
    elif case == "auto_map":
        cfg["auto_map"] = {"AutoModel": "modeling_evil.EvilModel"}
        (d / "config.json").write_text(json.dumps(cfg))
    elif case == "unsupported":
        cfg["model_type"] = "gpt_neox"
        cfg["architectures"] = ["GPTNeoXForCausalLM"]
        (d / "config.json").write_text(json.dumps(cfg))
    elif case == "no_tokenizer":
        for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
            (d / name).unlink(missing_ok=True)
    elif case == "bad_safetensors":
        (d / "model.safetensors").write_bytes(b"\xff" * 64)
    body = _refused_model(client, snapshot, tar_gz_of(d))
    assert expect in body["detail"], body


def test_not_an_archive(client, snapshot):
    body = _refused_model(client, snapshot, b"just some text, not an archive", filename="model.txt")
    assert "neither" in body["detail"]


@pytest.mark.parametrize("name", ["../evil.txt", "model/../../evil.txt", "/etc/evil.txt"])
def test_archive_path_traversal_is_refused(client, snapshot, tiny_model_dir, service_settings, name):
    members = [(tarfile.TarInfo(f"model/{p.name}"), p.read_bytes()) for p in tiny_model_dir.iterdir()]
    members.append((tarfile.TarInfo(name), b"owned"))
    _refused_model(client, snapshot, _tar(members))
    assert not (service_settings.resolved_data_dir() / "evil.txt").exists()


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_archive_links_are_refused(client, snapshot, tiny_model_dir, kind):
    members = [(tarfile.TarInfo(f"model/{p.name}"), p.read_bytes()) for p in tiny_model_dir.iterdir()]
    link = tarfile.TarInfo("model/tokenizer_link.json")
    link.type, link.linkname = kind, "/etc/passwd"
    members.append((link, None))
    body = _refused_model(client, snapshot, _tar(members))
    assert "link" in body["detail"]


def test_zip_symlink_is_refused(client, snapshot, tiny_model_dir):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in tiny_model_dir.iterdir():
            zf.write(p, p.name)
        info = zipfile.ZipInfo("vocab2.txt")
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, "/etc/passwd")
    _refused_model(client, snapshot, buf.getvalue(), filename="m.zip")


def test_zip_bomb_is_stopped_by_unpacked_size(client, snapshot, tiny_model_dir, service_settings):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for p in tiny_model_dir.iterdir():
            zf.write(p, p.name)
        zf.writestr("padding.bin.txt", b"\0" * (service_settings.max_model_unpacked_bytes + 1))
    data = buf.getvalue()
    assert len(data) < service_settings.max_model_upload_bytes  # small on the wire, huge unpacked
    body = _refused_model(client, snapshot, data, status=413, filename="m.zip")
    assert "unpacks to more than" in body["detail"]


def test_too_many_members(client, snapshot, tiny_model_dir, service_settings):
    members = [(tarfile.TarInfo(f"model/{p.name}"), p.read_bytes()) for p in tiny_model_dir.iterdir()]
    members += [(tarfile.TarInfo(f"model/extra/{i}.txt"), b"x") for i in range(service_settings.max_archive_members)]
    _refused_model(client, snapshot, _tar(members), status=413)


@pytest.mark.parametrize("extra", [1000, 200_000])
def test_model_upload_size_limit(client, snapshot, service_settings, extra):
    # +1000: within the Content-Length slack, so the counting copy refuses it;
    # +200000: refused from the Content-Length header before the body is read.
    _refused_model(client, snapshot, b"\x1f\x8b" + b"\0" * (service_settings.max_model_upload_bytes + extra), status=413)


def test_missing_file_field_is_problem_json(client, snapshot):
    before = snapshot()
    assert_problem(client.post("/v1/models", data={"nothing": "here"}), 422, "file")
    assert snapshot() == before


# ----------------------------------------------------------------------------------- datasets

def _post_ds(client, content: bytes, filename: str):
    return client.post("/v1/datasets", files={"file": (filename, content, "text/plain")})


def test_dataset_csv_upload(client, tiny_dataset_csv):
    r = _post_ds(client, tiny_dataset_csv.read_bytes(), "tiny.csv")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["id"].startswith("ds_") and body["rows"] == 96 and body["labels"] == ["negative", "positive"]
    listing = client.get("/v1/datasets").json()
    assert body["id"] in [d["id"] for d in listing["data"]]
    assert "tweet-sentiment" in [d["id"] for d in listing["builtin"]]


def test_dataset_jsonl_upload_with_pairs(client):
    lines = [json.dumps({"text": f"premise {i}", "text_pair": f"hypothesis {i}", "label": i % 3}) for i in range(12)]
    r = _post_ds(client, "\n".join(lines).encode(), "nli.jsonl")
    assert r.status_code == 201, r.text
    assert r.json()["rows"] == 12 and r.json()["has_text_pair"] is True
    assert [str(x) for x in r.json()["labels"]] == ["0", "1", "2"]


def _csv(rows: list[str]) -> bytes:
    return ("\n".join(rows) + "\n").encode()


GOOD_ROWS = [f"sentence {i},{'pos' if i % 2 else 'neg'}" for i in range(10)]


@pytest.mark.parametrize("filename,content,status,expect", [
    ("data.xml", _csv(["text,label"] + GOOD_ROWS), 422, "*.csv or *.jsonl"),   # .txt is plain text (issue #13)
    ("data.csv", "text,label\ncaf\xe9,pos\n".encode("latin-1") * 1, 422, "UTF-8"),
    ("data.csv", _csv(["sentence,label"] + GOOD_ROWS), 422, "'text'"),
    ("data.csv", _csv(["text,target"] + GOOD_ROWS), 422, "'label'"),
    ("data.csv", _csv(["text,label", " ,pos"] + GOOD_ROWS), 422, "line 2"),
    ("data.csv", _csv(["text,label", "hello,"] + GOOD_ROWS), 422, "line 2"),
    ("data.csv", _csv(["text,label"] + [f"s {i},same" for i in range(10)]), 422, "2 distinct labels"),
    ("data.csv", _csv(["text,label"] + GOOD_ROWS[:3]), 422, "at least 8"),
    ("data.jsonl", b'{"text": "a", "label": "x"}\nnot json\n', 422, "line 2"),
    ("data.jsonl", b'["a", "x"]\n', 422, "line 1"),
    ("data.jsonl", b'{"text": "a", "label": true}\n', 422, "line 1"),
    ("data.csv", b"", 422, "empty"),
    ("data.csv", _csv(["text,label"] + [f"{'w' * 200} {i},{i % 2}" for i in range(2000)]), 413, "limit"),
])
def test_bad_datasets_are_refused(client, snapshot, filename, content, status, expect):
    before = snapshot()
    body = assert_problem(_post_ds(client, content, filename), status, "file")
    assert expect in body["detail"], body
    assert snapshot() == before


def test_unknown_ids_are_404_problems(client):
    assert_problem(client.get("/v1/models/mdl_00000000000000000000"), 404)
    assert_problem(client.get("/v1/datasets/ds_00000000000000000000"), 404)

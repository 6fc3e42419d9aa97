"""The artifact store works the same on a local folder and on a non-local fsspec store
(memory:// stands in for s3:// here), and refuses keys that could escape its root."""
from __future__ import annotations

import secrets

import pytest

from api.artifacts import ArtifactStore, UnsafeKey, check_key


@pytest.fixture(params=["file", "memory"])
def store(request, tmp_path):
    url = f"file://{tmp_path / 'store'}" if request.param == "file" else f"memory://vtrans-{secrets.token_hex(4)}"
    return ArtifactStore(url)


def test_round_trip_of_a_model_directory(store, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "config.json").write_text('{"a": 1}')
    (src / "sub" / "w.safetensors").write_bytes(b"\x00" * 3000)
    listed = store.put_dir(src, "jobs/job_1/attempt-1/model")
    assert sorted(listed) == [("config.json", 8), ("sub/w.safetensors", 3000)]
    assert store.exists("jobs/job_1/attempt-1/model/config.json")
    assert store.size("jobs/job_1/attempt-1/model/sub/w.safetensors") == 3000
    assert b"".join(store.iter_bytes("jobs/job_1/attempt-1/model/config.json", chunk=3)) == b'{"a": 1}'
    back = store.get_dir("jobs/job_1/attempt-1/model", tmp_path / "back")
    assert (back / "sub" / "w.safetensors").read_bytes() == b"\x00" * 3000
    assert (store.local_path("jobs/job_1/attempt-1/model/config.json") is not None) == store.is_local
    store.delete_prefix("jobs/job_1/attempt-1")
    assert not store.exists("jobs/job_1/attempt-1/model/config.json")


@pytest.mark.parametrize("key", ["../x", "a/../../x", "/etc/passwd", "a//b", "a/./b", "a\\b", "", "a/\x00b"])
def test_unsafe_keys_are_refused(store, key, tmp_path):
    with pytest.raises(UnsafeKey):
        check_key(key)
    (tmp_path / "f").write_bytes(b"x")
    with pytest.raises(UnsafeKey):
        store.put_file(tmp_path / "f", key)

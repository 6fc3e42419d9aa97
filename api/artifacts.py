"""One small interface over wherever files live, addressed by a URL.

`file:///srv/vtrans/artifacts` (default) or `s3://bucket/prefix` (any fsspec protocol, e.g.
with s3fs installed), so production switches stores by configuration alone. Keys are relative
POSIX paths; a key that could escape the store root is refused.
"""
from __future__ import annotations

import hashlib
import os
import posixpath
import re
import shutil
from pathlib import Path
from typing import IO, Iterator

import fsspec
from fsspec.implementations.local import LocalFileSystem

REMOTE_BLOCK = 8 * 1024 * 1024
PUT_PART = 64 * 1024 * 1024
_SEGMENT = re.compile(r"^[A-Za-z0-9._+@=-][A-Za-z0-9._+@= -]*$")


class UnsafeKey(ValueError):
    pass


def check_key(key: str) -> str:
    """Relative, no '..' or '.', no backslashes or control characters, nothing absolute."""
    if not key or key.startswith("/") or "\\" in key or len(key) > 512:
        raise UnsafeKey(f"unsafe storage key {key!r}")
    for seg in key.split("/"):
        if seg in ("", ".", "..") or not _SEGMENT.match(seg):
            raise UnsafeKey(f"unsafe storage key {key!r}")
    return key


class ArtifactStore:
    def __init__(self, url: str):
        self.url = url
        self.fs, root = fsspec.core.url_to_fs(url, **_storage_options(url))
        self.root = root.rstrip("/")
        self.is_local = isinstance(self.fs, LocalFileSystem)
        if self.is_local:
            Path(self.root).mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> str:
        return posixpath.join(self.root, check_key(key))

    def local_path(self, key: str) -> Path | None:
        """The file on local disk when the store is a local folder (lets us skip copies)."""
        return Path(self._path(key)) if self.is_local else None

    def put_file(self, local: Path, key: str) -> None:
        dest = self._path(key)
        if self.is_local:
            Path(dest).parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(dest + ".partial")
            shutil.copyfile(local, tmp)
            tmp.replace(dest)   # readers never see a half-copied file
        else:  # streamed from disk; s3fs goes multipart from 2 x PUT_PART bytes (S3's parts: 5 MiB .. 5 GiB)
            self.fs.put_file(str(local), dest, chunksize=PUT_PART)

    def put_dir(self, local_dir: Path, prefix: str) -> list[tuple[str, int]]:
        """Upload every file below local_dir; returns [(relative name, size)]."""
        return [(rel, size) for rel, size, _ in self.put_dir_checked(local_dir, prefix)]

    def put_dir_checked(self, local_dir: Path, prefix: str) -> list[tuple[str, int, str]]:
        """put_dir that also returns each file's sha256 (hex), read from the local copy."""
        out = []
        for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
            rel = path.relative_to(local_dir).as_posix()
            self.put_file(path, f"{prefix}/{rel}")
            out.append((rel, path.stat().st_size, sha256_file(path)))
        return out

    def get_dir(self, prefix: str, local_dir: Path) -> Path:
        """Copy everything below prefix into local_dir (for workers on another machine)."""
        local_dir.mkdir(parents=True, exist_ok=True)
        base = self._path(prefix)
        for path in self.fs.find(base):
            rel = posixpath.relpath(path, base)
            check_key(rel)
            dest = local_dir / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            self.fs.get_file(path, str(dest))
        return local_dir

    def get_file(self, key: str, dest: Path) -> Path:
        dest.parent.mkdir(parents=True, exist_ok=True)
        self.fs.get_file(self._path(key), str(dest))
        return dest

    def exists(self, key: str) -> bool:
        return self.fs.exists(self._path(key))

    def size(self, key: str) -> int:
        return int(self.fs.size(self._path(key)))

    def open(self, key: str) -> IO[bytes]:
        if self.is_local:
            return self.fs.open(self._path(key), "rb")
        # Remote: ranged GETs of REMOTE_BLOCK bytes, so serving a multi-GB file holds one block, not the file.
        return self.fs.open(self._path(key), "rb", block_size=REMOTE_BLOCK)

    def iter_bytes(self, key: str, chunk: int = 1 << 20) -> Iterator[bytes]:
        with self.open(key) as fh:
            while block := fh.read(chunk):
                yield block

    def iter_range(self, key: str, start: int, length: int, chunk: int = 1 << 20) -> Iterator[bytes]:
        """`length` bytes from offset `start`, in chunks (a resumed download of a remote file)."""
        with self.open(key) as fh:
            fh.seek(start)
            while length > 0 and (block := fh.read(min(chunk, length))):
                length -= len(block)
                yield block

    def keys(self, prefix: str) -> list[str]:
        """Keys of the files below `prefix` (relative to the store root), sorted."""
        base = self._path(prefix)
        if not self.fs.exists(base):
            return []
        root = self.root + "/"
        return sorted(p[len(root):] if p.startswith(root) else posixpath.relpath(p, self.root)
                      for p in (self.fs.find(base) or []) if not p.endswith(".partial"))

    def delete(self, key: str) -> None:
        path = self._path(key)
        if self.fs.exists(path):
            self.fs.rm(path)

    def delete_prefix(self, prefix: str) -> None:
        path = self._path(prefix)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)


def checkpoint_prefix(job_id: str) -> str:
    """Where a running job keeps its (latest) checkpoint (worker/checkpoints.py); removed when it ends."""
    return f"jobs/{job_id}/checkpoint"


def _storage_options(url: str) -> dict:
    """s3:// takes its endpoint from the standard AWS_ENDPOINT_URL(_S3) variable (MinIO, Ceph, moto);
    recent botocore reads it too, older ones need it passed. Credentials: the usual AWS_* chain."""
    if not url.startswith(("s3://", "s3a://")):
        return {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return {"client_kwargs": {"endpoint_url": endpoint}} if endpoint else {}


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()

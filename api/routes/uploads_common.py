"""Shared by the model and dataset upload routes: copy the upload to a private temp folder with a
size limit, and clean up whatever happens."""
from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from fastapi import UploadFile

from ..limits import too_large
from ..problems import Problem, field_problem
from ..uploads import UploadError


@contextmanager
def temp_workspace(base: Path) -> Iterator[Path]:
    base.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="upload-", dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


BLOCK = 1 << 20   # bytes in memory at a time, whatever the file's size


async def save_limited(upload: UploadFile, dest: Path, limit: int) -> int:
    """Copy the upload to `dest` block by block, counting the bytes really received (the
    Content-Length check before the body was read can be lied to): 413 past `limit`."""
    size = 0
    with dest.open("wb") as out:
        while block := await upload.read(BLOCK):
            size += len(block)
            if size > limit:
                raise too_large(limit, safe_filename(upload.filename))
            out.write(block)
    if size == 0:
        raise field_problem(422, "file", "the uploaded file is empty", slug="invalid-upload")
    return size


def upload_problem(err: UploadError, filename: str | None = None, unpacked_limit: int | None = None) -> Problem:
    if err.unpacked and unpacked_limit is not None:
        return too_large(unpacked_limit, filename, "unpacked")
    slug = "upload-too-large" if err.status == 413 else "invalid-upload"
    return Problem(err.status, f"{err.field}: {err.message}", slug=slug, title="Invalid upload",
                   errors=[{"field": err.field, "message": err.message}])


def safe_filename(name: str | None) -> str:
    # Only for display; storage keys never use the client's file name.
    return Path(name or "upload").name[:200] or "upload"

"""Shared by the model and dataset upload routes: copy the upload to a private temp folder with a
size limit, and clean up whatever happens."""
from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from fastapi import UploadFile

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


async def save_limited(upload: UploadFile, dest: Path, limit: int) -> int:
    size = 0
    with dest.open("wb") as out:
        while block := await upload.read(1 << 20):
            size += len(block)
            if size > limit:
                raise too_large(limit)
            out.write(block)
    if size == 0:
        raise field_problem(422, "file", "the uploaded file is empty", slug="invalid-upload")
    return size


def too_large(limit: int) -> Problem:
    return Problem(413, f"file: the upload is larger than the limit of {limit} bytes", slug="upload-too-large",
                   errors=[{"field": "file", "message": f"larger than the limit of {limit} bytes"}])


def upload_problem(err: UploadError) -> Problem:
    slug = "upload-too-large" if err.status == 413 else "invalid-upload"
    return Problem(err.status, f"{err.field}: {err.message}", slug=slug, title="Invalid upload",
                   errors=[{"field": err.field, "message": err.message}])


def safe_filename(name: str | None) -> str:
    # Only for display; storage keys never use the client's file name.
    return Path(name or "upload").name[:200] or "upload"

"""The dashboard: GET / serves the page, GET /static/<file> its scripts and styles.

Plain files shipped inside the package (api/static/, listed in pyproject's package-data),
so the installed service needs no build step, no Node and no CDN.
"""
from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from ..problems import Problem

router = APIRouter(include_in_schema=False)

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
               ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png",
               ".ico": "image/x-icon"}
# The page is tiny; revalidating on every load (ETag) keeps an upgraded service from
# running with yesterday's scripts.
HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}


def _static_file(name: str) -> Path:
    path = (STATIC_DIR / name).resolve()
    # Only plain files of known types directly under or below static/: no "../" escapes.
    if (STATIC_DIR not in path.parents or not path.is_file() or path.suffix not in MEDIA_TYPES):
        raise Problem(404, f"no static file {name!r}", slug="not-found")
    return path


@router.get("/")
def dashboard() -> FileResponse:
    return FileResponse(_static_file("index.html"), media_type=MEDIA_TYPES[".html"], headers=HEADERS)


@router.get("/static/{name:path}")
def static_file(name: str) -> FileResponse:
    path = _static_file(name)
    return FileResponse(path, media_type=MEDIA_TYPES[path.suffix], headers=HEADERS)

"""RFC 9457 problem details for every 4xx/5xx answer, FastAPI's own errors included.

Body: {"type", "title", "status", "detail", "instance", "errors": [{"field", "message"}]};
`field` names the offending input in the request's own terms ("budget.target", "file").
"""
from __future__ import annotations

import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import schemas

PROBLEM_MEDIA_TYPE = "application/problem+json"
log = logging.getLogger("vtrans.api")


class Problem(Exception):
    """Raise anywhere in a route to answer with a problem+json body."""

    def __init__(self, status: int, detail: str, *, slug: str | None = None, title: str | None = None,
                 errors: list[dict[str, str]] | None = None, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status, self.detail, self.slug, self.errors, self.headers = status, detail, slug, errors, headers
        self.title = title or HTTPStatus(status).phrase


def field_problem(status: int, field: str, message: str, slug: str = "invalid-request") -> Problem:
    return Problem(status, f"{field}: {message}", slug=slug, title="Invalid request",
                   errors=[{"field": field, "message": message}])


def problem_response(request: Request, status: int, detail: str, *, title: str | None = None,
                     slug: str | None = None, errors: list[dict[str, str]] | None = None,
                     headers: dict[str, str] | None = None) -> JSONResponse:
    body = schemas.Problem(
        # "about:blank" means: nothing beyond the HTTP status; our own kinds get a stable URN.
        type=f"urn:vtrans:problem:{slug}" if slug else "about:blank", title=title or HTTPStatus(status).phrase,
        status=status, detail=detail, instance=request.url.path,
        errors=[schemas.FieldError(**e) for e in errors] if errors else None)
    # exclude_none: `errors` is left out when there are none (the schema's default), as before.
    return JSONResponse(body.model_dump(mode="json", exclude_none=True), status_code=status,
                        media_type=PROBLEM_MEDIA_TYPE, headers=headers)


def _field_from_loc(loc: tuple | list) -> str:
    # ("body", "budget", "target") -> "budget.target"; list indices become [i].
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header", "cookie"):
        parts = parts[1:]
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def install(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem):
        return problem_response(request, exc.status, exc.detail, title=exc.title, slug=exc.slug,
                                errors=exc.errors, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"No resource at {request.url.path}"
        return problem_response(request, exc.status_code, detail, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        errors = [{"field": _field_from_loc(e.get("loc", ())), "message": e.get("msg", "invalid")}
                  for e in exc.errors()]
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors) or "invalid request"
        return problem_response(request, 422, detail, title="Invalid request", slug="invalid-request",
                                errors=errors)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s", request.url.path)
        return problem_response(request, 500, "An internal error occurred; it has been logged.")

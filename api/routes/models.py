"""POST/GET /v1/models: uploaded Hugging Face model directories (safetensors only).

Uploads under a `name` are immutable numbered versions of that model (issue #14); a new version
fires the schedules watching the name (`on_new_version`) right after it is stored.
"""
from __future__ import annotations

import logging

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .. import contract, schemas
from ..artifacts import ArtifactStore
from ..deps import get_app_settings, get_db, get_store, owned_or_404
from ..job_requests import check_model_name
from ..limits import tenant_limit
from ..models import Model, new_id
from ..problems import Problem
from ..settings import Settings
from ..tenancy import get_tenant
from ..uploads import UploadError, extract_archive, validate_model_dir
from .uploads_common import safe_filename, save_limited, temp_workspace, upload_problem

router = APIRouter(prefix="/v1/models", tags=["models"])
log = logging.getLogger("vtrans.api")


def model_out(m: Model, cls: type[schemas.Model] = schemas.Model, **extra) -> schemas.Model:
    files = [schemas.ModelFile.model_validate(f) for f in m.files]  # parsed, not built: the row's stored JSON
    return cls(id=m.id, name=m.name, version=m.version, filename=m.filename, model_type=m.model_type,
               architectures=m.architectures, files=files,
               size_bytes=m.size_bytes, created_at=m.created_at, **extra)


def _insert_version(db: Session, row: Model) -> None:
    """Number the upload max+1 under its name; the unique (tenant, name, version) constraint
    turns a concurrent upload under the same name into a retry with the next number."""
    for _ in range(5):
        if row.name is not None:
            latest = db.scalar(select(func.max(Model.version)).where(Model.tenant_id == row.tenant_id,
                                                                      Model.name == row.name))
            row.version = (latest or 0) + 1
        try:
            db.add(row)
            db.commit()
            return
        except IntegrityError:
            db.rollback()
    raise Problem(409, f"name: too many concurrent uploads under {row.name!r}; try again", slug="conflict")


@router.post("", status_code=201, operation_id="uploadModel", response_model=schemas.ModelUploaded,
             summary="Upload a model", responses=contract.problems(401, 409, 411, 413, 422))
async def upload_model(request: Request,
                       file: UploadFile = File(..., description="a .tar.gz or .zip of a Hugging Face model directory"),
                       name: str | None = Form(None, description="a stable name: each upload under it is a new "
                                               "version (1, 2, ...); jobs may then reference `name` or "
                                               "`name@version`"),
                       settings: Settings = Depends(get_app_settings), store: ArtifactStore = Depends(get_store),
                       db: Session = Depends(get_db),
                       tenant: str = Depends(get_tenant)) -> schemas.Model:
    if name is not None:
        check_model_name(name)
    unpacked_limit = tenant_limit(settings, tenant, "max_model_unpacked_bytes")
    with temp_workspace(settings.tmp_dir) as work:
        archive = work / "upload"
        await save_limited(file, archive, tenant_limit(settings, tenant, "max_model_upload_bytes"))
        try:
            extract_archive(archive, work / "x", unpacked_limit, settings.max_archive_members)
            upload = validate_model_dir(work / "x")
        except UploadError as err:
            raise upload_problem(err, safe_filename(file.filename), unpacked_limit) from None
        model_id = new_id("mdl")
        key = f"uploads/models/{model_id}"
        # Files first, row last: a crash in between leaves unreferenced files, never a row
        # pointing at half a model.
        store.put_dir(upload.root, key)
        row = Model(id=model_id, tenant_id=tenant, filename=safe_filename(file.filename), storage_key=key,
                    model_type=str(upload.config.get("model_type")),
                    architectures=list(upload.config.get("architectures") or []), config=upload.config,
                    files=upload.files, size_bytes=sum(f["size"] for f in upload.files), name=name)
        try:
            _insert_version(db, row)
        except Exception:
            store.delete_prefix(key)
            raise
    if row.name is not None:
        _fire_watching_schedules(request, tenant, row)
    return model_out(row, schemas.ModelUploaded, ignored_files=upload.ignored)


def _fire_watching_schedules(request: Request, tenant: str, row: Model) -> None:
    # Prompt path: fire now. Durable path: the scheduler's own scan finds any new version whose
    # firing did not happen here (API died, database blip) — the same (schedule, due time) row
    # guards both, so a version never fires a schedule twice.
    from ..scheduler import fire_new_version

    try:
        fire_new_version(request.app.state.settings, request.app.state.enqueue, tenant, row.name, row.id)
    except Exception:
        log.exception("firing on_new_version schedules for %s v%s; the scheduler will retry", row.name, row.version)


@router.get("/{name}/versions", response_model=schemas.ModelVersionList, operation_id="listModelVersions",
            summary="List the versions of a named model", responses=contract.problems(401, 404))
def list_model_versions(name: str, db: Session = Depends(get_db),
                        tenant: str = Depends(get_tenant)) -> schemas.ModelVersionList:
    """Every upload under `name`, newest first. A job may reference `name` (the latest version
    when the job is created) or `name@version`."""
    rows = db.scalars(select(Model).where(Model.tenant_id == tenant, Model.name == name)
                      .order_by(Model.version.desc())).all()
    if not rows:
        raise Problem(404, f"no model named {name!r}", slug="not-found")
    return schemas.ModelVersionList(name=name, data=[model_out(m) for m in rows])


@router.get("", operation_id="listModels", response_model=schemas.ModelList, summary="List uploaded models",
            responses=contract.problems(401))
def list_models(db: Session = Depends(get_db), tenant: str = Depends(get_tenant)) -> schemas.ModelList:
    rows = db.scalars(select(Model).where(Model.tenant_id == tenant).order_by(Model.created_at.desc())).all()
    return schemas.ModelList(data=[model_out(m) for m in rows])


@router.get("/{model_id}", operation_id="getModel", response_model=schemas.Model, summary="Get an uploaded model",
            responses=contract.problems(401, 404))
def get_model(model_id: str, db: Session = Depends(get_db), tenant: str = Depends(get_tenant)) -> schemas.Model:
    return model_out(owned_or_404(db, Model, model_id, tenant, "model"))

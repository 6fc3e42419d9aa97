"""POST/GET /v1/models: uploaded Hugging Face model directories (safetensors only)."""
from __future__ import annotations

from fastapi import APIRouter, Depends, File, UploadFile
from sqlalchemy import select
from sqlalchemy.orm import Session

from .. import contract, schemas
from ..artifacts import ArtifactStore
from ..deps import get_app_settings, get_db, get_store, owned_or_404
from ..models import Model, new_id
from ..settings import Settings
from ..tenancy import get_tenant
from ..uploads import UploadError, extract_archive, validate_model_dir
from .uploads_common import safe_filename, save_limited, temp_workspace, upload_problem

router = APIRouter(prefix="/v1/models", tags=["models"])


def model_out(m: Model, cls: type[schemas.Model] = schemas.Model, **extra) -> schemas.Model:
    return cls(id=m.id, filename=m.filename, model_type=m.model_type, architectures=m.architectures,
               files=[schemas.ModelFile(**f) for f in m.files], size_bytes=m.size_bytes, created_at=m.created_at,
               **extra)


@router.post("", status_code=201, operation_id="uploadModel", response_model=schemas.ModelUploaded,
             summary="Upload a model", responses=contract.problems(401, 411, 413, 422))
async def upload_model(file: UploadFile = File(..., description="a .tar.gz or .zip of a Hugging Face model directory"),
                       settings: Settings = Depends(get_app_settings), store: ArtifactStore = Depends(get_store),
                       db: Session = Depends(get_db), tenant: str = Depends(get_tenant)) -> schemas.Model:
    with temp_workspace(settings.tmp_dir) as work:
        archive = work / "upload"
        await save_limited(file, archive, settings.max_model_upload_bytes)
        try:
            extract_archive(archive, work / "x", settings.max_model_unpacked_bytes, settings.max_archive_members)
            upload = validate_model_dir(work / "x")
        except UploadError as err:
            raise upload_problem(err) from None
        model_id = new_id("mdl")
        key = f"uploads/models/{model_id}"
        # Files first, row last: a crash in between leaves unreferenced files, never a row
        # pointing at half a model.
        store.put_dir(upload.root, key)
        row = Model(id=model_id, tenant_id=tenant, filename=safe_filename(file.filename), storage_key=key,
                    model_type=str(upload.config.get("model_type")),
                    architectures=list(upload.config.get("architectures") or []), config=upload.config,
                    files=upload.files, size_bytes=sum(f["size"] for f in upload.files))
        try:
            db.add(row)
            db.commit()
        except Exception:
            store.delete_prefix(key)
            raise
    return model_out(row, schemas.ModelUploaded, ignored_files=upload.ignored)


@router.get("", operation_id="listModels", response_model=schemas.ModelList, summary="List uploaded models",
            responses=contract.problems(401))
def list_models(db: Session = Depends(get_db), tenant: str = Depends(get_tenant)) -> schemas.ModelList:
    rows = db.scalars(select(Model).where(Model.tenant_id == tenant).order_by(Model.created_at.desc())).all()
    return schemas.ModelList(data=[model_out(m) for m in rows])


@router.get("/{model_id}", operation_id="getModel", response_model=schemas.Model, summary="Get an uploaded model",
            responses=contract.problems(401, 404))
def get_model(model_id: str, db: Session = Depends(get_db), tenant: str = Depends(get_tenant)) -> schemas.Model:
    return model_out(owned_or_404(db, Model, model_id, tenant, "model"))

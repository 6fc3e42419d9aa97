"""POST/GET /v1/datasets: uploaded CSV/JSONL files and the built-in tasks."""
from __future__ import annotations

from fastapi import APIRouter, Depends, File, UploadFile
from sqlalchemy import select
from sqlalchemy.orm import Session

from .. import core_bridge
from ..artifacts import ArtifactStore
from ..deps import get_app_settings, get_db, get_store, owned_or_404
from ..models import Dataset, new_id
from ..settings import Settings
from ..tenancy import get_tenant
from ..uploads import UploadError, dataset_format, validate_dataset
from .uploads_common import safe_filename, save_limited, temp_workspace, upload_problem

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


def dataset_to_dict(d: Dataset) -> dict:
    return {"id": d.id, "kind": "uploaded", "filename": d.filename, "format": d.format, "rows": d.rows,
            "labels": d.labels, "has_text_pair": d.has_text_pair, "size_bytes": d.size_bytes,
            "created_at": d.created_at.isoformat()}


@router.post("", status_code=201)
async def upload_dataset(file: UploadFile = File(..., description="CSV or JSONL with text, optional text_pair, label"),
                         settings: Settings = Depends(get_app_settings), store: ArtifactStore = Depends(get_store),
                         db: Session = Depends(get_db), tenant: str = Depends(get_tenant)) -> dict:
    filename = safe_filename(file.filename)
    with temp_workspace(settings.tmp_dir) as work:
        try:
            path = work / f"data.{dataset_format(filename)}"
            size = await save_limited(file, path, settings.max_dataset_upload_bytes)
            info = validate_dataset(path, filename, settings.min_dataset_rows, settings.max_dataset_rows)
        except UploadError as err:
            raise upload_problem(err) from None
        dataset_id = new_id("ds")
        key = f"uploads/datasets/{dataset_id}/data.{info.format}"
        store.put_file(path, key)
        row = Dataset(id=dataset_id, tenant_id=tenant, filename=filename, storage_key=key, format=info.format,
                      rows=info.rows, labels=info.labels, has_text_pair=info.has_text_pair, size_bytes=size)
        try:
            db.add(row)
            db.commit()
        except Exception:
            store.delete_prefix(f"uploads/datasets/{dataset_id}")
            raise
    return dataset_to_dict(row)


@router.get("")
def list_datasets(db: Session = Depends(get_db), tenant: str = Depends(get_tenant)) -> dict:
    rows = db.scalars(select(Dataset).where(Dataset.tenant_id == tenant).order_by(Dataset.created_at.desc())).all()
    builtins = [{"id": name, "kind": "builtin", "description": desc}
                for name, desc in core_bridge.builtin_datasets().items()]
    return {"data": [dataset_to_dict(d) for d in rows], "builtin": builtins}


@router.get("/{dataset_id}")
def get_dataset(dataset_id: str, db: Session = Depends(get_db), tenant: str = Depends(get_tenant)) -> dict:
    return dataset_to_dict(owned_or_404(db, Dataset, dataset_id, tenant, "dataset"))

"""POST/GET /v1/datasets: uploaded CSV/JSONL files and the built-in tasks."""
from __future__ import annotations

from fastapi import APIRouter, Depends, File, UploadFile
from sqlalchemy import select
from sqlalchemy.orm import Session

from .. import contract, core_bridge, schemas
from ..artifacts import ArtifactStore
from ..deps import get_app_settings, get_db, get_store, owned_or_404
from ..limits import tenant_limit
from ..models import Dataset, new_id
from ..settings import Settings
from ..tenancy import get_tenant
from ..uploads import UploadError, dataset_format, validate_dataset
from .uploads_common import safe_filename, save_limited, temp_workspace, upload_problem

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


def dataset_out(d: Dataset, tokens: int | None = None) -> schemas.Dataset:
    return schemas.Dataset(id=d.id, filename=d.filename, format=d.format, rows=d.rows, labels=d.labels,
                           has_text_pair=d.has_text_pair, size_bytes=d.size_bytes, created_at=d.created_at,
                           tokens=tokens)


@router.post("", status_code=201, operation_id="uploadDataset", response_model=schemas.Dataset,
             summary="Upload a dataset", responses=contract.problems(401, 411, 413, 422))
async def upload_dataset(file: UploadFile = File(..., description="CSV or JSONL with text, optional text_pair, label; "
                                                                    "or .txt plain text for a language model"),
                         settings: Settings = Depends(get_app_settings), store: ArtifactStore = Depends(get_store),
                         db: Session = Depends(get_db),
                         tenant: str = Depends(get_tenant)) -> schemas.Dataset:
    filename = safe_filename(file.filename)
    with temp_workspace(settings.tmp_dir) as work:
        try:
            path = work / f"data.{dataset_format(filename)}"
            size = await save_limited(file, path, tenant_limit(settings, tenant, "max_dataset_upload_bytes"))
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
    return dataset_out(row, info.tokens)


@router.get("", operation_id="listDatasets", response_model=schemas.DatasetList,
            summary="List uploaded datasets and the built-in tasks", responses=contract.problems(401))
def list_datasets(db: Session = Depends(get_db), tenant: str = Depends(get_tenant)) -> schemas.DatasetList:
    rows = db.scalars(select(Dataset).where(Dataset.tenant_id == tenant).order_by(Dataset.created_at.desc())).all()
    builtins = [schemas.BuiltinDataset(id=name, description=desc)
                for name, desc in core_bridge.builtin_datasets().items()]
    return schemas.DatasetList(data=[dataset_out(d) for d in rows], builtin=builtins)


@router.get("/{dataset_id}", operation_id="getDataset", response_model=schemas.Dataset,
            summary="Get an uploaded dataset", responses=contract.problems(401, 404))
def get_dataset(dataset_id: str, db: Session = Depends(get_db), tenant: str = Depends(get_tenant)) -> schemas.Dataset:
    return dataset_out(owned_or_404(db, Dataset, dataset_id, tenant, "dataset"))

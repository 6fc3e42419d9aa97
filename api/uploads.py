"""Validation of uploaded models (archives) and datasets, before anything is stored.

Everything is unpacked into a private temporary folder and checked there; only a complete,
valid upload is moved into the store (see routes). Archive rules: members must be regular files
or folders with relative paths that stay inside (no '..', no absolute paths, no links or
devices), at most N members and a bounded unpacked size, counted while extracting (headers lie).
"""
from __future__ import annotations

import csv
import io
import json
import stat
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from . import core_bridge

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".h5", ".msgpack", ".joblib")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model",
                   "tokenizer.model")


class UploadError(ValueError):
    """`status` is 422 (bad content) or 413 (too large); `field` names the form field; `unpacked`:
    the archive unpacks past its size limit (the route names the tenant's limit)."""

    def __init__(self, message: str, field: str = "file", status: int = 422, unpacked: bool = False):
        super().__init__(message)
        self.message, self.field, self.status, self.unpacked = message, field, status, unpacked


@dataclass
class ModelUpload:
    root: Path                       # folder holding config.json, *.safetensors, tokenizer files
    config: dict[str, Any]
    files: list[dict[str, Any]]      # [{"name", "size"}] kept files
    ignored: list[str] = field(default_factory=list)   # pickle checkpoints we never store


def _safe_member_path(name: str, is_dir: bool = False) -> PurePosixPath | None:
    """The member's relative path; None for the archive root itself ('.' or './', the entry
    `tar czf m.tar.gz -C dir .` writes first), which is a directory and creates nothing."""
    if "\\" in name or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise UploadError(f"archive member {name!r} has an absolute path; only relative paths are allowed")
    parts = [p for p in PurePosixPath(name).parts if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise UploadError(f"archive member {name!r} points outside the archive ('..')")
    if not parts:
        if is_dir:
            return None
        raise UploadError(f"archive member {name!r} has an empty path")
    return PurePosixPath(*parts)


class _Budget:
    """Counts members and bytes actually written, so a bomb is stopped mid-stream."""

    def __init__(self, max_bytes: int, max_members: int):
        self.max_bytes, self.max_members, self.bytes, self.members = max_bytes, max_members, 0, 0

    def member(self) -> None:
        self.members += 1
        if self.members > self.max_members:
            raise UploadError(f"archive has more than {self.max_members} members", status=413)

    def copy(self, src, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with dest.open("xb") as out:  # "x": a duplicate member name cannot overwrite an earlier file
            while block := src.read(1 << 20):
                self.bytes += len(block)
                if self.bytes > self.max_bytes:
                    raise UploadError(f"archive unpacks to more than {self.max_bytes} bytes", status=413, unpacked=True)
                out.write(block)


def extract_archive(archive: Path, dest: Path, max_bytes: int, max_members: int) -> None:
    with archive.open("rb") as fh:
        magic = fh.read(4)
    budget = _Budget(max_bytes, max_members)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if magic[:2] == b"\x1f\x8b":
            _extract_tar(archive, dest, budget)
        elif magic == b"PK\x03\x04":
            _extract_zip(archive, dest, budget)
        else:
            raise UploadError("the upload is neither a .tar.gz nor a .zip archive")
    except FileExistsError as exc:
        raise UploadError(f"archive contains the same file twice ({Path(exc.filename).name})") from None
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
        raise UploadError(f"the archive could not be read: {exc}") from None


def _extract_tar(archive: Path, dest: Path, budget: _Budget) -> None:
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            budget.member()
            rel = _safe_member_path(member.name, member.isdir())
            if member.isdir():
                if rel is not None:
                    (dest / rel).mkdir(parents=True, exist_ok=True)
                continue
            if member.issym() or member.islnk():
                raise UploadError(f"archive member {member.name!r} is a link; links are not allowed")
            if not member.isfile():
                raise UploadError(f"archive member {member.name!r} is not a regular file")
            src = tar.extractfile(member)
            budget.copy(src, dest / rel)


def _extract_zip(archive: Path, dest: Path, budget: _Budget) -> None:
    with zipfile.ZipFile(archive) as zf:
        # A zip declares every member and its size up front: refuse a bomb before writing a byte.
        # (The declared sizes may lie; _Budget still counts what is really written.)
        infos = zf.infolist()
        if len(infos) > budget.max_members:
            raise UploadError(f"archive has more than {budget.max_members} members", status=413)
        if sum(i.file_size for i in infos) > budget.max_bytes:
            raise UploadError(f"archive unpacks to more than {budget.max_bytes} bytes", status=413,
                              unpacked=True)
        for info in infos:
            budget.member()
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise UploadError(f"archive member {info.filename!r} is a link; links are not allowed")
            rel = _safe_member_path(info.filename, info.is_dir())
            if info.is_dir():
                if rel is not None:
                    (dest / rel).mkdir(parents=True, exist_ok=True)
                continue
            with zf.open(info) as src:
                budget.copy(src, dest / rel)


def _model_root(extracted: Path) -> Path:
    """The folder holding config.json: the archive root or its single top-level folder."""
    if (extracted / "config.json").is_file():
        return extracted
    entries = [p for p in extracted.iterdir() if not p.name.startswith((".", "__MACOSX"))]
    if len(entries) == 1 and entries[0].is_dir() and (entries[0] / "config.json").is_file():
        return entries[0]
    raise UploadError("config.json not found at the top of the archive (or in its single top-level folder)")


def _check_safetensors(path: Path) -> None:
    """Parse the header (8-byte little-endian length + JSON): cheap proof it is a safetensors file."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n <= 1 or n > min(size - 8, 100 * 1024**2):
            raise UploadError(f"{path.name} is not a valid safetensors file (bad header length)")
        try:
            header = json.loads(fh.read(n))
        except (ValueError, UnicodeDecodeError):
            raise UploadError(f"{path.name} is not a valid safetensors file (header is not JSON)") from None
    if not isinstance(header, dict) or not any(k != "__metadata__" for k in header):
        raise UploadError(f"{path.name} holds no tensors")


def validate_model_dir(extracted: Path) -> ModelUpload:
    root = _model_root(extracted)
    try:
        config = json.loads((root / "config.json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise UploadError(f"config.json is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise UploadError("config.json must hold a JSON object")
    if "auto_map" in config:
        raise UploadError("config.json has 'auto_map' (custom model code); remote code is never run here")
    problem = core_bridge.unsupported_config(config)
    if problem:
        raise UploadError(problem)

    files, ignored, weights = [], [], []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if path.suffix.lower() in PICKLE_SUFFIXES:
            ignored.append(rel)
            path.unlink()  # never stored, never loaded
            continue
        if path.suffix == ".safetensors":
            _check_safetensors(path)
            weights.append(rel)
        files.append({"name": rel, "size": path.stat().st_size})
    if not weights:
        if ignored:
            raise UploadError(f"no *.safetensors weights found, only pickle checkpoints ({', '.join(ignored)}); "
                              "pickle files can run code when loaded and are refused: save the model with "
                              "save_pretrained(..., safe_serialization=True) and upload again")
        raise UploadError("no *.safetensors weights found in the archive")
    if not any((root / name).is_file() for name in TOKENIZER_FILES):
        raise UploadError(f"no tokenizer files found (one of {', '.join(TOKENIZER_FILES)}); "
                          "save the tokenizer with the model")
    return ModelUpload(root=root, config=config, files=files, ignored=ignored)


@dataclass
class DatasetUpload:
    format: str
    rows: int
    labels: list
    has_text_pair: bool
    tokens: int | None = None   # plain text only: whitespace-separated words of all documents


def dataset_format(filename: str) -> str:
    name = filename.lower()
    if name.endswith(".csv"):
        return "csv"
    if name.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    if name.endswith(".txt"):
        return "txt"
    raise UploadError("the dataset file must be named *.csv or *.jsonl (labelled rows), or *.txt (plain text "
                      "for a language model)")


def validate_dataset(path: Path, filename: str, min_rows: int, max_rows: int) -> DatasetUpload:
    fmt = dataset_format(filename)
    if fmt == "txt":   # documents for a causal LM (blank-line separated, else one per line)
        documents, tokens = core_bridge.inspect_text(path)
        if documents > max_rows:
            raise UploadError(f"the text has more than {max_rows} documents", status=413)
        return DatasetUpload(format="txt", rows=documents, labels=[], has_text_pair=False, tokens=tokens)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UploadError(f"the file is not UTF-8 (invalid byte at offset {exc.start})") from None
    rows = _csv_rows(text, max_rows) if fmt == "csv" else _jsonl_rows(text, max_rows)
    labels: set = set()
    has_pair = False
    count = 0
    for where, row in rows:
        t = row.get("text")
        if not isinstance(t, str) or not t.strip():
            raise UploadError(f"{where}: 'text' is missing or empty")
        if "text_pair" in row and row["text_pair"] not in (None, ""):
            if not isinstance(row["text_pair"], str):
                raise UploadError(f"{where}: 'text_pair' must be a string")
            has_pair = True
        label = row.get("label")
        if isinstance(label, bool) or not isinstance(label, (str, int)) or (isinstance(label, str) and not label.strip()):
            raise UploadError(f"{where}: 'label' must be a non-empty string or an integer, got {label!r}")
        labels.add(label.strip() if isinstance(label, str) else label)
        count += 1
    if count < min_rows:
        raise UploadError(f"the dataset has {count} rows; at least {min_rows} are needed")
    if len(labels) < 2:
        raise UploadError(f"the dataset needs at least 2 distinct labels, found {sorted(labels, key=str)}")
    # vtrans_core reads the file at run time: let it confirm now that it will accept it, and
    # report the labels the way it will name them.
    core_labels = core_bridge.inspect_dataset(path)
    labels_out = core_labels if core_labels is not None else sorted(labels, key=str)
    return DatasetUpload(format=fmt, rows=count, labels=labels_out, has_text_pair=has_pair)


def _csv_rows(text: str, max_rows: int):
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = reader.fieldnames or []
    for required in ("text", "label"):
        if required not in header:
            raise UploadError(f"the CSV header has no '{required}' column (found: {', '.join(header) or 'nothing'})")
    try:
        for i, row in enumerate(reader, start=2):
            if i - 1 > max_rows:
                raise UploadError(f"the dataset has more than {max_rows} rows", status=413)
            if None in row:
                raise UploadError(f"line {i}: more fields than the header has")
            yield f"line {i}", row
    except csv.Error as exc:
        raise UploadError(f"the CSV could not be parsed: {exc}") from None


def _jsonl_rows(text: str, max_rows: int):
    n = 0
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        n += 1
        if n > max_rows:
            raise UploadError(f"the dataset has more than {max_rows} rows", status=413)
        try:
            row = json.loads(line)
        except ValueError:
            raise UploadError(f"line {i}: not valid JSON") from None
        if not isinstance(row, dict):
            raise UploadError(f"line {i}: must be a JSON object with 'text' and 'label'")
        yield f"line {i}", row

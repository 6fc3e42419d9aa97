"""Fetch the exact hub revision a job recorded, so the worker compresses the bytes the job
record names rather than whatever the hub's `main` points at when the job runs.

The job's `request.model_source.revision` is the commit sha resolved at submit/firing time.
The worker downloads that revision into the attempt's work directory (removed with it when the
attempt ends, so recurring jobs leave no growing cache behind) and hands the folder to
vtrans_core.compress, which stays free of hub revisions. Only safetensors weights, JSON configs
and tokenizer files are fetched: never pickled weights (*.bin, *.pt, ...) nor code (*.py).

huggingface_hub reads HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE and HF_HOME / HF_HUB_CACHE from the
environment as everywhere else in the service. When the hub cannot be used (HF_HUB_OFFLINE=1,
or unreachable), the HF cache is searched for that same commit, as from_pretrained would.
"""
from __future__ import annotations

from pathlib import Path

from vtrans_core.errors import CompressionError

# Top-level files from_pretrained reads for a safetensors model and its tokenizer. A sentencepiece
# `.model` is a protobuf, vocab/merges `.txt` and `.tiktoken` are text, a chat template `.jinja`
# is rendered in transformers' sandbox: none of them can run code when loaded.
ALLOW_PATTERNS = ["*.safetensors", "*.json", "*.txt", "tokenizer.model", "spiece.model",
                  "sentencepiece.bpe.model", "*.tiktoken", "*.jinja"]
# from_pretrained on a folder reads only its top level: sub-folders (onnx/, original/, other
# precisions) would be downloaded for nothing.
IGNORE_PATTERNS = ["*/*"]


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    lines = [line for line in text.splitlines() if line.strip() and "Client Error" not in line]
    return (lines[0] if lines else text or type(err).__name__)[:300]


def _from_cache(repo_id: str, revision: str, cache_dir: str | Path | None) -> Path | None:
    """That commit's snapshot in the HF cache, or None (never touches the network)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, local_files_only=True,
                                      allow_patterns=ALLOW_PATTERNS, ignore_patterns=IGNORE_PATTERNS))
    except Exception:
        return None


def download_revision(repo_id: str, revision: str, dest: Path, *, endpoint: str | None = None,
                      cache_dir: str | Path | None = None) -> Path:
    """The folder holding `repo_id` at commit `revision`: downloaded into `dest`, or the HF cache's
    snapshot of that commit when the hub cannot be used. Raises CompressionError("model", ...) with
    a message for the job's user when neither works (the runner reports it as the job's error)."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.utils import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    where = f"{repo_id!r} at revision {revision}"
    unreachable: BaseException | None = None
    if constants.HF_HUB_OFFLINE:   # set from HF_HUB_OFFLINE when huggingface_hub is imported
        unreachable = RuntimeError("HF_HUB_OFFLINE is set")
    else:
        try:
            folder = Path(snapshot_download(repo_id, revision=revision, local_dir=dest, endpoint=endpoint,
                                            allow_patterns=ALLOW_PATTERNS, ignore_patterns=IGNORE_PATTERNS))
            return _checked(folder, where)
        except RevisionNotFoundError:
            raise CompressionError("model", f"could not download {where} from the Hugging Face hub: the hub has no "
                                   "such revision (deleted, or history rewritten since the job recorded it)") from None
        except GatedRepoError as err:
            raise CompressionError("model", f"could not download {where} from the Hugging Face hub: the repository "
                                   f"is gated and the worker's token (HF_TOKEN) has no access ({_first_line(err)})") from None
        except RepositoryNotFoundError as err:
            raise CompressionError("model", f"could not download {where} from the Hugging Face hub: repository not "
                                   f"found, or private without a token giving access ({_first_line(err)})") from None
        except CompressionError:
            raise
        except Exception as err:   # unreachable hub, server errors, a broken transfer: try the cache
            unreachable = err
    cached = _from_cache(repo_id, revision, cache_dir)
    if cached is not None:
        return _checked(cached, where)
    raise CompressionError("model", f"could not download {where} from the Hugging Face hub "
                           f"({type(unreachable).__name__}: {_first_line(unreachable)}), and the local Hugging Face "
                           "cache has no copy of that revision")


def _checked(folder: Path, where: str) -> Path:
    """vtrans loads safetensors only: say so in terms of the hub repo, not of a scratch folder."""
    if not any(folder.glob("*.safetensors")):
        raise CompressionError("model", f"{where} has no safetensors weights (model.safetensors); vtrans does not "
                               "load pickled weights (*.bin)")
    return folder


__all__ = ["ALLOW_PATTERNS", "IGNORE_PATTERNS", "download_revision"]

"""`vtrans jobs ...`: drive a vtrans service from a shell or CI step (built on api/client.py).

    vtrans jobs submit --model ./my-bert --dataset train.csv --budget flops:0.5 --method fast \\
        --wait --timeout 3600 --download out/
    vtrans jobs get|list|cancel|events|wait|download ...

Settings: --url / VTRANS_URL, --key / VTRANS_API_KEY. --json prints machine-readable output on
stdout (one JSON document; `events` prints one JSON object per line). Messages go to stderr.
The exit code tells a CI step what happened (see EXIT_CODES).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import httpx

from . import client as vc

EXIT_OK, EXIT_FAILED, EXIT_BAD_REQUEST, EXIT_CANCELLED, EXIT_TIMEOUT, EXIT_ERROR = 0, 1, 2, 3, 4, 5
EXIT_CODES = f"""exit codes:
  {EXIT_OK}  succeeded (or, for commands that do not wait, the request worked)
  {EXIT_FAILED}  the job failed
  {EXIT_BAD_REQUEST}  bad request: invalid arguments or input refused by the service (4xx other than below)
  {EXIT_CANCELLED}  the job was cancelled
  {EXIT_TIMEOUT}  --timeout passed before the job ended (the job keeps running)
  {EXIT_ERROR}  the service could not be used: unreachable, 401, 404, 409, 429/5xx after retries,
     or a download that failed its checksum"""
STATUS_EXIT = {"succeeded": EXIT_OK, "failed": EXIT_FAILED, "cancelled": EXIT_CANCELLED}
UPLOAD_SUFFIXES = (".tar.gz", ".tgz", ".zip")
# What POST /v1/datasets takes (api/uploads.py dataset_format): .txt is a language model's corpus.
DATASET_SUFFIXES = (".csv", ".jsonl", ".ndjson", ".txt")


def add_parser(sub) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help="service URL (default VTRANS_URL or http://127.0.0.1:8000)")
    common.add_argument("--key", help="API key (default VTRANS_API_KEY)")
    common.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    j = sub.add_parser("jobs", help="submit, follow and download compression jobs on a vtrans service",
                       epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    js = j.add_subparsers(dest="jobs_command", metavar="ACTION", required=True)

    s = js.add_parser("submit", parents=[common], help="submit a job (uploads local model/dataset files first)",
                      epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--model", required=True, help="a model folder, a .tar.gz/.zip of one, an uploaded id "
                                                  "(mdl_...) or a hub ID")
    s.add_argument("--dataset", required=True, help="a .csv/.jsonl/.txt file, an uploaded id (ds_...) or a built-in task")
    s.add_argument("--eval-dataset", help="rows to report quality on, never trained on: a file, an uploaded id or a "
                                          "built-in task (without it: a split carved from --dataset)")
    s.add_argument("--budget", required=True, help="KIND:TARGET, e.g. flops:0.5 or params:0.4 (fraction that remains)")
    s.add_argument("--seq-len", type=int, help="sequence length the FLOPs budget is counted at")
    s.add_argument("--method", default="vtrans", choices=["vtrans", "fast", "faster"])
    s.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a compression option (repeatable); VALUE is read as JSON when it parses, e.g. "
                        "--option layout=per_layer --option mask_steps=200")
    s.add_argument("--export", action="append", choices=["onnx"], metavar="FORMAT",
                   help="also deliver the pruned model as onnx (artifact onnx/model.onnx, checked with onnxruntime)")
    s.add_argument("--idempotency-key", help="retrying with the same key returns the same job, never a second one")
    s.add_argument("--wait", action="store_true", help="follow the job until it ends (exit code by its status)")
    s.add_argument("--timeout", type=float, help="with --wait: give up after this many seconds (exit 4)")
    s.add_argument("--download", metavar="DIR", help="after a successful wait: download the results into DIR")
    for name, helptext in (("get", "show a job"), ("cancel", "cancel a job")):
        p = js.add_parser(name, parents=[common], help=helptext)
        p.add_argument("job")
    ls = js.add_parser("list", parents=[common], help="list jobs, newest first")
    ls.add_argument("--status", help="comma-separated statuses")
    ls.add_argument("--limit", type=int, default=20, help="at most this many jobs (default 20)")
    e = js.add_parser("events", parents=[common], help="print a job's events until it ends")
    e.add_argument("job")
    w = js.add_parser("wait", parents=[common], help="wait for a job to end (exit code by its status)",
                      epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    w.add_argument("job")
    w.add_argument("--timeout", type=float)
    d = js.add_parser("download", parents=[common], help="download a job's results (resumable, checksum-verified)")
    d.add_argument("job")
    d.add_argument("dir")
    d.add_argument("--name", action="append", help="one artifact (repeatable); default: model.tar.gz, metrics.json, "
                                                   "plan.json, README.md and onnx/model.onnx when exported")


def run(args: argparse.Namespace) -> int:
    client = vc.Client(args.url, args.key)
    try:
        with client:
            return COMMANDS[args.jobs_command](client, args)
    except vc.WaitTimeout as exc:
        if args.json:
            print(json.dumps(exc.job.model_dump(mode="json")))
        print(f"vtrans: timed out: {exc}", file=sys.stderr)
        return EXIT_TIMEOUT
    except vc.ApiError as exc:
        _problem(args, exc)
        bad_request = 400 <= exc.status < 500 and exc.status not in (401, 404, 409, 429)
        return EXIT_BAD_REQUEST if bad_request else EXIT_ERROR
    except vc.ChecksumMismatch as exc:
        print(f"vtrans: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except (ValueError, FileNotFoundError) as exc:  # our own argument checks
        print(f"vtrans: {exc}", file=sys.stderr)
        return EXIT_BAD_REQUEST
    except httpx.HTTPError as exc:
        print(f"vtrans: cannot reach the service at {client.url}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR


def _problem(args, exc: vc.ApiError) -> None:
    if args.json:
        print(json.dumps({"error": {"status": exc.status, **exc.body}}))
    print(f"vtrans: {exc}", file=sys.stderr)
    for err in exc.errors:
        print(f"  {err.get('field')}: {err.get('message')}", file=sys.stderr)


def _emit(args, data: Any, human: str) -> None:
    if args.json:
        print(json.dumps(data))
    else:
        print(human)


def _job_line(job) -> str:
    extra = f" ({job.stage} {job.progress:.0%})" if job.status == "running" else ""
    err = f" - {job.error.type}: {job.error.message}" if job.error else ""
    return f"{job.id}  {job.status}{extra}  {job.request.model} on {job.request.dataset}{err}"


def _options(pairs: list[str]) -> dict[str, Any] | None:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--option: expected KEY=VALUE, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out or None


def _model_ref(client: vc.Client, ref: str) -> str:
    path = Path(ref)
    if path.is_dir() or (path.is_file() and ref.endswith(UPLOAD_SUFFIXES)):
        model = client.upload_model(path)
        print(f"vtrans: uploaded model {ref} as {model.id}", file=sys.stderr)
        return model.id
    return ref


def _dataset_ref(client: vc.Client, ref: str) -> str:
    path = Path(ref)
    if path.is_file() and ref.lower().endswith(DATASET_SUFFIXES):
        dataset = client.upload_dataset(path)
        print(f"vtrans: uploaded dataset {ref} as {dataset.id} ({dataset.rows} rows)", file=sys.stderr)
        return dataset.id
    return ref


def _submit(client: vc.Client, args) -> int:
    if (args.download or args.timeout) and not args.wait:
        raise ValueError("--download and --timeout need --wait")
    budget = vc.parse_budget(args.budget, args.seq_len)
    options = _options(args.option)
    model, dataset = _model_ref(client, args.model), _dataset_ref(client, args.dataset)
    fields: dict[str, Any] = {}
    if args.eval_dataset:
        fields["eval_dataset"] = _dataset_ref(client, args.eval_dataset)
    if args.export:
        fields["export"] = args.export
    job = client.submit(model, dataset, budget, args.method, options, idempotency_key=args.idempotency_key, **fields)
    print(f"vtrans: submitted {job.id}", file=sys.stderr)
    if not args.wait:
        _emit(args, job.model_dump(mode="json"), job.id)
        return EXIT_OK
    return _finish(client, args, client.wait(job, args.timeout))


def _finish(client: vc.Client, args, job) -> int:
    """Print the ended job (and download it on success); the exit code follows its status."""
    paths = []
    if job.status == "succeeded" and getattr(args, "download", None):
        paths = [str(p) for p in client.download(job, args.download)]
        print(f"vtrans: downloaded {len(paths)} files into {args.download}", file=sys.stderr)
    data = job.model_dump(mode="json")
    if paths:
        data["downloaded"] = paths
    _emit(args, data, _job_line(job))
    return STATUS_EXIT[job.status]


def _get(client: vc.Client, args) -> int:
    job = client.get(args.job)
    _emit(args, job.model_dump(mode="json"), _job_line(job))
    return EXIT_OK


def _cancel(client: vc.Client, args) -> int:
    job = client.cancel(args.job)
    _emit(args, job.model_dump(mode="json"), _job_line(job))
    return EXIT_OK


def _list(client: vc.Client, args) -> int:
    jobs = list(client.list(status=args.status, limit=args.limit, page_size=min(100, max(1, args.limit))))
    if args.json:
        print(json.dumps([j.model_dump(mode="json") for j in jobs]))
    for job in [] if args.json else jobs:
        print(_job_line(job))
    return EXIT_OK


def _events(client: vc.Client, args) -> int:
    for event in client.events(args.job):
        if args.json:
            print(json.dumps(event.model_dump(mode="json", exclude_none=True)), flush=True)
        else:
            what = event.status if event.kind == "status" else f"{event.stage} {event.fraction or 0:.0%}"
            print(f"{event.seq:>5} {event.created_at:%H:%M:%S} {event.kind:<8} {what}"
                  + (f"  {event.message}" if event.message else ""), flush=True)
    return EXIT_OK


def _wait(client: vc.Client, args) -> int:
    return _finish(client, args, client.wait(args.job, args.timeout))


def _download(client: vc.Client, args) -> int:
    paths = client.download(args.job, args.dir, args.name)
    _emit(args, [str(p) for p in paths], "\n".join(str(p) for p in paths))
    return EXIT_OK


COMMANDS = {"submit": _submit, "get": _get, "cancel": _cancel, "list": _list, "events": _events, "wait": _wait,
            "download": _download}

"""The README's CI step is real: its `vtrans jobs submit` line parses with the CLI as shipped,
and the whole `run:` block (minus the pip install) compresses a model through the running
service and gates on the downloaded metrics.json, the way a CI runner's bash would run it."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest

from service.jobpath import FAST_OPTIONS

README = Path(__file__).resolve().parents[2] / "README.md"


def ci_run_block() -> str:
    """The `run: |` script of the README's CI example, dedented, without its pip install line."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("**A CI step**"):]
    yaml = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    run = textwrap.dedent(yaml.split("run: |\n", 1)[1])
    return "\n".join(line for line in run.splitlines() if not line.startswith("pip install"))


def submit_argv(script: str) -> list[str]:
    joined = script.replace("\\\n", " ")
    line = next(x for x in joined.splitlines() if x.strip().startswith("vtrans jobs submit"))
    return shlex.split(line)[1:]   # without the program name


def test_the_ci_command_parses_with_the_shipped_cli():
    from api.cli import _parser
    from api.client import parse_budget

    args = _parser().parse_args(submit_argv(ci_run_block()))
    assert args.command == "jobs" and args.jobs_command == "submit"
    assert args.wait and args.timeout and args.download == "compressed/" and args.idempotency_key
    assert args.eval_dataset, "the gate should judge rows the job never trained on"
    assert parse_budget(args.budget)["kind"] == "flops"


@pytest.mark.slow
def test_the_ci_step_compresses_and_gates_on_metrics(live_api, celery_worker, tiny_model_dir, tiny_dataset_csv,
                                                     tmp_path):
    from conftest import write_tiny_dataset   # tests/conftest.py (tests/ is on sys.path)

    heldout = write_tiny_dataset(tmp_path / "heldout.csv", rows=24, seed=7)
    script = ci_run_block()
    # The example's paths -> this test's files; the tiny job's speed options go on the submit line.
    script = (script.replace("build/model", str(tiny_model_dir)).replace("data/train.csv", str(tiny_dataset_csv))
              .replace("data/heldout.csv", str(heldout)))
    speed = " ".join(shlex.quote(f"--option={k}={json.dumps(v)}") for k, v in FAST_OPTIONS.items())
    script = script.replace("--download compressed/", f"--download compressed/ --seq-len 16 {speed}")
    env = dict(os.environ, VTRANS_URL=live_api.url, VTRANS_API_KEY=live_api.settings.api_key,
               GITHUB_RUN_ID="4711", GITHUB_RUN_ATTEMPT="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    # bash -e: how GitHub Actions runs a step's script (a failing vtrans ends the step).
    r = subprocess.run(["bash", "-e", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=1500)
    metrics_file = tmp_path / "compressed" / "metrics.json"
    assert metrics_file.is_file(), (r.stdout, r.stderr, celery_worker.output()[-3000:])
    m = json.loads(metrics_file.read_text())
    drop = m["dense"]["accuracy"] - m["pruned"]["accuracy"]
    assert r.returncode == (1 if drop > 1.5 else 0), (r.stdout, r.stderr)
    assert f"(drop {drop:.2f})" in r.stdout
    assert m["evaluation"]["source"] == "eval_data" and m["eval_examples"] == 16   # the held-out file, capped
    assert "uploaded model" in r.stderr and r.stderr.count("uploaded dataset") == 2
    assert {"model.tar.gz", "metrics.json", "plan.json", "README.md"} <= {p.name for p in (tmp_path / "compressed").iterdir()}
    with tarfile.open(tmp_path / "compressed" / "model.tar.gz") as tar:
        assert "model/config.json" in tar.getnames()

    # A re-run of the same CI attempt (same idempotency key) gets the same job, not a second one.
    from .test_cli_jobs import vtrans

    job_line = r.stdout.splitlines()[0]
    job_id = job_line.split()[0]
    again = vtrans(live_api, "get", job_id, "--json")
    job = json.loads(again.stdout)
    assert job["status"] == "succeeded" and job["request"]["eval_dataset"].startswith("ds_")
    options = [f"--option={k}={json.dumps(v)}" for k, v in FAST_OPTIONS.items()]
    resubmit = vtrans(live_api, "submit", "--model", job["request"]["model"], "--dataset", job["request"]["dataset"],
                      "--eval-dataset", job["request"]["eval_dataset"], "--budget", "flops:0.5", "--seq-len", "16",
                      "--method", "fast", *options, "--idempotency-key", "4711-1", "--json")
    assert resubmit.returncode == 0 and json.loads(resubmit.stdout)["id"] == job_id

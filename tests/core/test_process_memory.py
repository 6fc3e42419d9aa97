"""keep_freed_memory(): a forward's buffers come from a heap that keeps them (process_memory.py).

Each case runs in its own interpreter: the setting is process-wide and cannot be undone."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PROBE = textwrap.dedent("""
    import json, resource, sys, torch
    from transformers import BertConfig, BertForSequenceClassification
    torch.set_num_threads(1)
    kept = None
    if sys.argv[1] == "keep":
        from vtrans_core.process_memory import keep_freed_memory
        kept = keep_freed_memory()
    cfg = BertConfig(hidden_size=384, num_hidden_layers=2, num_attention_heads=12, intermediate_size=1536,
                     vocab_size=1000)
    model = BertForSequenceClassification(cfg).eval()
    x = torch.randint(0, 1000, (32, 128))   # activation buffers of 6-25 MB, as at the latency setting
    counts = []
    with torch.inference_mode():
        for _ in range(3):
            model(input_ids=x)
        for _ in range(7):   # the median forward: a stray fault burst (a busy machine) moves one, not it
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            model(input_ids=x)
            counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(json.dumps({"kept": kept, "faults_per_forward": sorted(counts)[3]}))
""")


def _probe(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_forwards_stop_page_faulting_their_buffers_once_freed_memory_is_kept():
    default, kept = _probe("default"), _probe("keep")
    assert kept["kept"] is True
    # glibc's defaults: the buffers are mapped and unmapped around every forward (12k-34k faults measured)
    assert default["faults_per_forward"] > 1000, default
    assert kept["faults_per_forward"] < default["faults_per_forward"] / 10, (default, kept)

"""Issue #16: the routing rule (api/routing.py) on its own, without a broker."""
from __future__ import annotations

from api import routing
from api.settings import Settings

BERT_BASE = {"model_type": "bert", "architectures": ["BertForSequenceClassification"], "hidden_size": 768,
             "num_hidden_layers": 12, "intermediate_size": 3072, "vocab_size": 30522}
BERT_LARGE = dict(BERT_BASE, hidden_size=1024, num_hidden_layers=24, intermediate_size=4096)
TINY_GPT2 = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_embd": 32, "n_layer": 2,
             "vocab_size": 100}
ROUTED = Settings(queue="default-q", gpu_queue="gpu", cpu_queue="cpu")


def test_routing_is_off_until_a_gpu_or_cpu_queue_is_set():
    plain = Settings(queue="only")
    assert routing.choose_queue(plain, "t", ["org/llama"], TINY_GPT2) == "only"
    assert routing.all_queues(plain) == ["only"]


def test_decoders_and_big_models_go_to_gpu_small_encoders_to_cpu():
    assert 100e6 < routing.estimated_params(BERT_BASE) < 120e6        # bert-base: ~110M
    assert 320e6 < routing.estimated_params(BERT_LARGE) < 345e6       # bert-large: ~335M
    assert routing.choose_queue(ROUTED, "t", ["mdl_1"], BERT_BASE) == "cpu"
    assert routing.choose_queue(ROUTED, "t", ["mdl_1"], BERT_LARGE) == "gpu"   # >= 300M parameters
    assert routing.choose_queue(ROUTED, "t", ["mdl_1"], TINY_GPT2) == "gpu"    # a decoder, however small
    assert routing.choose_queue(ROUTED, "t", ["org/x"], None) == "cpu"          # nothing known: the cheap kind
    lower = ROUTED.model_copy(update={"gpu_min_params": 50_000_000})
    assert routing.choose_queue(lower, "t", ["mdl_1"], BERT_BASE) == "gpu"


def test_operator_overrides_win_first_match_first():
    s = ROUTED.model_copy(update={"queue_overrides": {"tenant:vip-*": "gpu-a100", "org/tiny-*": "gpu",
                                                      "mdl_small": "cpu"}})
    assert routing.choose_queue(s, "vip-acme", ["mdl_small"], BERT_BASE) == "gpu-a100"   # tenant rule first
    assert routing.choose_queue(s, "other", ["org/tiny-llm"], BERT_BASE) == "gpu"
    assert routing.choose_queue(s, "other", ["mdl_small", "my-model"], TINY_GPT2) == "cpu"  # forced off the gpu
    assert routing.all_queues(s) == ["default-q", "gpu", "cpu", "gpu-a100"]


def test_an_empty_queue_falls_back_to_the_default():
    only_gpu = Settings(queue="main", gpu_queue="gpu")
    assert routing.choose_queue(only_gpu, "t", ["m"], TINY_GPT2) == "gpu"
    assert routing.choose_queue(only_gpu, "t", ["m"], BERT_BASE) == "main"


def test_the_api_stores_the_route_and_says_when_no_worker_serves_it(service_settings):
    """Routing through POST /v1/jobs (a hub ID whose config is unknown goes to cpu; the override sends
    it to gpu) and the waiting_reason of a queued job, from the workers table."""
    from fastapi.testclient import TestClient

    from api import worker_registry
    from api.app import create_app

    from .conftest import Recorder, auth

    settings = service_settings.model_copy(update={"gpu_queue": "rt-gpu", "cpu_queue": "rt-cpu",
                                                   "queue_overrides": {"org/big-*": "rt-gpu"},
                                                   "worker_stale_seconds": 60})
    sent = Recorder()
    with TestClient(create_app(settings, enqueue=sent), headers=auth(settings)) as c:
        def submit(model):
            r = c.post("/v1/jobs", json={"model": model, "dataset": "tweet-sentiment",
                                         "budget": {"kind": "params", "target": 0.5}})
            assert r.status_code == 202, r.text
            return r.json()

        small, big = submit("org/small-bert"), submit("org/big-bert")
        assert (small["queue"], big["queue"]) == ("rt-cpu", "rt-gpu")
        worker_registry.beat(settings.db_url, "test-host:1:cpuonly", "test-host", ["rt-cpu"])
        try:
            got_small, got_big = c.get(f"/v1/jobs/{small['id']}").json(), c.get(f"/v1/jobs/{big['id']}").json()
            assert got_small["waiting_reason"] is None
            assert "rt-gpu" in got_big["waiting_reason"] and "no live worker" in got_big["waiting_reason"]
            listed = {j["id"]: j for j in c.get("/v1/jobs", params={"status": "queued", "limit": 100}).json()["data"]}
            assert listed[big["id"]]["waiting_reason"] == got_big["waiting_reason"]
            metrics = c.get("/metrics").text
            assert 'vtrans_queue_depth_per_queue{queue="rt-gpu"} ' in metrics
            assert 'vtrans_queue_live_workers{queue="rt-cpu"} 1.0' in metrics
            assert 'vtrans_queue_live_workers{queue="rt-gpu"} 0.0' in metrics
            worker_registry.beat(settings.db_url, "test-host:2:gpu", "test-host", ["rt-gpu"])
            assert c.get(f"/v1/jobs/{big['id']}").json()["waiting_reason"] is None
        finally:
            worker_registry.forget(settings.db_url, "test-host:1:cpuonly")
            worker_registry.forget(settings.db_url, "test-host:2:gpu")
        assert "rt-gpu" in c.get(f"/v1/jobs/{big['id']}").json()["waiting_reason"]  # gone again

"""The dashboard's compare view with both kinds of job, in Debian's chromium (Playwright) against a
real `vtrans api` process on Postgres: a language-model job shows perplexity with its window
length (on a plot of its own), classification jobs show accuracy. The kind is read from the
metrics (classification metrics carry no `task` key).

No compression runs here (tests/live/test_dashboard_browser.py runs real ones): the jobs are
submitted over the API and finished through the service's own state functions (api.jobstore),
as a worker would, with metrics shaped like the pipelines' (vtrans_core/pipeline_lm.py and
pipeline.py). Screenshots go to test-artifacts/.
"""
from __future__ import annotations

import pytest

from .conftest import screenshot_path
from .test_dashboard_browser import BLUE, INK_PIXELS, ORANGE, browser  # noqa: F401  (the chromium fixture)

pytestmark = pytest.mark.slow

LM_METRICS = {
    "task": "language-modeling", "method": "faster", "flops_fraction": 0.71, "params_fraction": 0.8, "speedup": 1.31,
    "evaluation": {"metric": "perplexity", "window": 512, "stride": 512, "tokens_scored": 40880},
    "dense": {"perplexity": 18.4321, "nll": 2.9140, "params": 134_515_008, "flops": 139_000_000_000},
    "pruned": {"perplexity": 24.9876, "nll": 3.2184, "params": 107_612_006, "flops": 98_690_000_000},
}


def _cls_metrics(acc: float, flops_fraction: float) -> dict:
    dense_flops = 2_900_000_000
    return {"method": "vtrans", "flops_fraction": flops_fraction, "params_fraction": flops_fraction + 0.05,
            "speedup": 1 / flops_fraction, "dense": {"accuracy": 0.7625, "flops": dense_flops, "params": 22_700_000},
            "pruned": {"accuracy": acc, "flops": int(dense_flops * flops_fraction), "params": 17_000_000}}


def _finished_job(http, settings, body: dict, metrics: dict) -> str:
    from api import jobstore

    r = http.post("/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    claim = jobstore.claim(settings.db_url, job_id, "test-worker", 60, 3)
    assert claim is not None
    assert jobstore.finish(settings.db_url, claim, "succeeded", metrics=metrics, artifacts=[])
    return job_id


def test_compare_shows_perplexity_for_lm_jobs_and_accuracy_for_classifiers(browser, live_api):  # noqa: F811
    http = live_api.client()
    cls_body = {"model": "org/tiny-bert", "dataset": "tweet-sentiment", "method": "vtrans",
                "budget": {"kind": "flops", "target": 0.6}}
    lm_body = {"model": "org/tiny-llama", "dataset": "tweet-sentiment", "method": "faster",
               "budget": {"kind": "params", "target": 0.8}}
    lm = _finished_job(http, live_api.settings, lm_body, LM_METRICS)
    cls1 = _finished_job(http, live_api.settings, cls_body, _cls_metrics(0.7505, 0.6))
    cls2 = _finished_job(http, live_api.settings, {**cls_body, "budget": {"kind": "flops", "target": 0.4}},
                         _cls_metrics(0.7215, 0.4))

    page = browser.new_page(viewport={"width": 1400, "height": 1200})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    page.on("console", lambda m: m.type == "error" and "status of 401" not in m.text and errors.append(m.text))
    page.goto(live_api.url + "/")
    page.fill("#api-key", live_api.settings.api_key)
    page.click("#key-form button")

    page.goto(f"{live_api.url}/#/compare?ids={lm},{cls1},{cls2}")
    page.wait_for_function("document.querySelectorAll('#cmp-table tr').length === 4")
    row = lambda job: page.locator(f'#cmp-table tr[data-job-id="{job}"]')
    cell = lambda job, c: row(job).locator(f"td.{c}").inner_text()
    # the language model: perplexity with its window, from the metrics' evaluation block
    assert row(lm).get_attribute("data-kind") == "lm"
    assert cell(lm, "metric") == "perplexity (512-token windows)"
    assert (cell(lm, "dense"), cell(lm, "pruned")) == ("18.43", "24.99")
    # the classifiers: accuracy, although their metrics name no task
    for job, acc in ((cls1, "75.05%"), (cls2, "72.15%")):
        assert row(job).get_attribute("data-kind") == "classification"
        assert (cell(job, "metric"), cell(job, "dense"), cell(job, "pruned")) == ("accuracy", "76.25%", acc)
    # each kind on its own plot, in the job's colour (table order: lm blue, cls1 orange, ...)
    assert page.is_visible("#c-compare") and page.is_visible("#c-compare-ppl")
    assert page.evaluate(INK_PIXELS, ["c-compare-ppl", BLUE]) > 20
    assert page.evaluate(INK_PIXELS, ["c-compare-ppl", ORANGE]) == 0
    assert page.evaluate(INK_PIXELS, ["c-compare", ORANGE]) > 20 and page.evaluate(INK_PIXELS, ["c-compare", BLUE]) == 0
    assert "required" not in page.inner_text("#banner")     # the key was taken: no stale 401 notice
    page.screenshot(path=str(screenshot_path("dashboard-compare-lm.png")), full_page=True)

    # untick the language model: its plot goes away, the accuracy plot stays
    page.locator(f'#cmp-list input[value="{lm}"]').uncheck()
    page.wait_for_function("document.querySelectorAll('#cmp-table tr').length === 3")
    assert page.is_hidden("#c-compare-ppl") and page.is_visible("#c-compare")
    # only the language model: the accuracy plot is hidden
    page.locator(f'#cmp-list input[value="{lm}"]').check()
    for job in (cls1, cls2):
        page.locator(f'#cmp-list input[value="{job}"]').uncheck()
    page.wait_for_function("document.querySelectorAll('#cmp-table tr').length === 2")
    assert page.is_hidden("#c-compare") and page.is_visible("#c-compare-ppl")
    assert not errors, errors

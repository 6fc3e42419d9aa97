"""The dashboard in a real browser: Debian's chromium driven by Playwright (never a downloaded
browser) against a real `vtrans api` process (Postgres, Redis pub/sub) and a real `vtrans
worker` running a real tiny compression submitted through the page's form.

Screenshots go to test-artifacts/ (gitignored).
"""
from __future__ import annotations

import json
import os
import re

import pytest

from service.conftest import tar_gz_of
from service.jobpath import FAST_OPTIONS

from .conftest import chromium_path, screenshot_path

pytestmark = pytest.mark.slow

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
JOB_TIMEOUT_MS = 600_000
# The service tests' fast options, with enough steps for loss curves worth looking at.
OPTIONS = {**FAST_OPTIONS, "mask_steps": 40, "finetune_steps": 20}


def _need(what: str, how: str):
    # In CI a missing browser is a broken set-up, not a reason to skip.
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {what} is missing: {how}")
    pytest.skip(f"{what} is not installed ({how})")


@pytest.fixture
def browser():
    path = chromium_path()
    if path is None:
        _need("Debian's chromium", "apt-get install -y chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _need("the playwright Python package", "pip install playwright; never `playwright install`")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


# Records every width the job page's progress bar takes and every status it shows, so the test
# sees the bar advance however fast the job runs.
RECORDER = """() => {
  window.__bars = []; window.__statuses = [];
  const bar = document.getElementById('j-bar'), badge = document.getElementById('j-status');
  new MutationObserver(() => window.__bars.push(parseFloat(bar.style.width))).observe(bar, {attributes: true});
  new MutationObserver(() => window.__statuses.push(badge.textContent)).observe(badge, {childList: true, characterData: true, subtree: true});
}"""

# Counts the canvas pixels drawn in a given colour (the chart series colours of plots.js).
INK_PIXELS = """([id, rgb]) => {
  const c = document.getElementById(id), d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 0; i < d.length; i += 4)
    if (Math.abs(d[i] - rgb[0]) < 40 && Math.abs(d[i+1] - rgb[1]) < 40 && Math.abs(d[i+2] - rgb[2]) < 40 && d[i+3] > 200) n++;
  return n;
}"""
BLUE, ORANGE = (0x2f, 0x6f, 0xdf), (0xe0, 0x7b, 0x39)


def _fixed(v: float, digits: int) -> str:
    """JavaScript's Number.prototype.toFixed: the float's exact value rounded half away from zero
    (Python's format rounds half to even: 1.125 is "1.12" there and "1.13" on the page)."""
    from decimal import ROUND_HALF_UP, Decimal

    return str(Decimal(v).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP))


def _pct(v: float) -> str:
    return f"{_fixed((v / 100 if v > 1 else v) * 100, 2)}%"


def test_submit_follow_and_compare_in_chromium(browser, live_api, celery_worker, tiny_model_dir,
                                               tiny_dataset_csv, tmp_path):
    archive = tmp_path / "tiny-model.tar.gz"
    archive.write_bytes(tar_gz_of(tiny_model_dir))
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    page.on("console", lambda m: m.type == "error" and "status of 401" not in m.text and errors.append(m.text))
    failed: list[str] = []
    page.on("response", lambda r: r.status >= 400 and r.status != 401 and failed.append(f"{r.status} {r.url}"))

    page.goto(live_api.url + "/")
    # Without a key the API answers 401 and the page says what to do.
    page.wait_for_selector("#banner:not(.hidden)")
    assert "API key" in page.inner_text("#banner")
    page.fill("#api-key", live_api.settings.api_key)
    page.click("#key-form button")
    assert page.evaluate("localStorage.getItem('vtrans.apiKey')") == live_api.settings.api_key

    # Submit through the form: uploads of both files, budget, method, options.
    page.set_input_files("#f-model-file", str(archive))
    page.set_input_files("#f-dataset-file", str(tiny_dataset_csv))
    page.select_option("#f-budget-kind", "flops")
    page.fill("#f-budget-target", "0.6")
    page.fill("#f-budget-seq", "16")
    page.select_option("#f-method", "vtrans")
    page.fill("#f-options", json.dumps(OPTIONS))
    page.evaluate(RECORDER)
    page.click("#f-submit")
    page.wait_for_url(re.compile(r"#/jobs/job_[0-9a-f]+$"))
    job_id = page.url.rsplit("/", 1)[-1]
    assert page.inner_text("#j-id") == job_id

    page.wait_for_function("document.getElementById('j-status').textContent === 'succeeded'",
                           timeout=JOB_TIMEOUT_MS)
    page.wait_for_selector("#j-final:not(.hidden)")
    page.wait_for_selector("#j-artifacts a.artifact")
    http = live_api.client()
    job = http.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded", job
    assert job["request"]["budget"]["seq_len"] == 16 and job["request"]["options"]["mask_steps"] == OPTIONS["mask_steps"]

    # The bar advanced: several increasing widths on the way, ending full; status went through running.
    bars = page.evaluate("window.__bars")
    statuses = page.evaluate("window.__statuses")
    assert bars == sorted(bars) and bars[-1] == 100.0, bars
    assert len({b for b in bars if 0 < b < 100}) >= 3, bars
    assert "running" in statuses and statuses[-1] == "succeeded", statuses
    assert page.inner_text("#j-pct") == "100.0%" and page.inner_text("#j-stream") == "ended"

    # Final numbers on the page are the job's metrics.
    m = job["metrics"]
    cells = lambda metric: page.locator(f'#j-final-table tr[data-metric="{metric}"] td').all_inner_texts()
    assert cells("accuracy")[1:3] == [_pct(m["dense"]["accuracy"]), _pct(m["pruned"]["accuracy"])]
    assert len(cells("params")) == 4 and cells("params")[3] == _fixed(m["pruned"]["params"] / m["dense"]["params"], 3)
    assert cells("latency (ms)")[1:3] == [_fixed(m["dense"]["latency_ms"], 1), _fixed(m["pruned"]["latency_ms"], 1)]
    assert page.inner_text("#j-final-table .speedup") == f"{_fixed(m['speedup'], 2)}x"
    # The plots were drawn: loss line (blue), kept-fraction line (orange), per-layer bars.
    assert page.evaluate(INK_PIXELS, ["c-loss", BLUE]) > 50
    assert page.evaluate(INK_PIXELS, ["c-kept", ORANGE]) > 50
    if any(m["kept"]["heads_per_layer"]):
        assert page.evaluate(INK_PIXELS, ["c-heads", BLUE]) > 50
    # Artifact links point at the job's files and download with the key.
    links = page.locator("#j-artifacts a.artifact").all_inner_texts()
    assert {"model.tar.gz", "metrics.json", "plan.json", "README.md"} <= set(links)
    with page.expect_download() as dl:
        page.click('#j-artifacts a.artifact:text-is("metrics.json")')
    saved = tmp_path / "metrics.json"
    dl.value.save_as(saved)
    assert json.loads(saved.read_text())["pruned"] == m["pruned"]
    assert page.locator("#j-cancel").is_disabled()
    page.screenshot(path=str(screenshot_path("dashboard-job.png")), full_page=True)

    # A second job (submitted over the API) for the comparison view; then the list shows both.
    # the echo also carries what the server resolved (model_source); a resubmit sends the request fields
    fields = ("model", "dataset", "method", "options")
    second = http.post("/v1/jobs", json={**{k: job["request"][k] for k in fields},
                                         "budget": {"kind": "flops", "target": 0.8, "seq_len": 16}})
    assert second.status_code == 202, second.text
    second_id = second.json()["id"]
    page.goto(f"{live_api.url}/#/")
    row = page.locator(f'#jobs-body tr[data-job-id="{job_id}"]')
    row.wait_for()
    assert row.get_attribute("data-status") == "succeeded" and "100%" in row.inner_text()
    page.wait_for_selector(f'#jobs-body tr[data-job-id="{second_id}"][data-status="succeeded"]',
                           timeout=JOB_TIMEOUT_MS)
    # The pickers offer what the service knows: built-in tasks and this tenant's uploads.
    options = lambda dl: page.eval_on_selector_all(f"#{dl} option", "els => els.map(e => e.value)")
    assert "tweet-sentiment" in options("dataset-options") and job["request"]["dataset"] in options("dataset-options")
    assert job["request"]["model"] in options("model-options")
    page.screenshot(path=str(screenshot_path("dashboard-list.png")), full_page=True)
    page.goto(f"{live_api.url}/#/compare?ids={job_id},{second_id}")
    page.wait_for_function("document.querySelectorAll('#cmp-table tr').length === 3")
    assert page.evaluate(INK_PIXELS, ["c-compare", BLUE]) > 20 and page.evaluate(INK_PIXELS, ["c-compare", ORANGE]) > 20
    page.screenshot(path=str(screenshot_path("dashboard-compare.png")), full_page=True)

    # Cancel from the job page: a long job is stopped at its next progress point.
    long = http.post("/v1/jobs", json={**{k: job["request"][k] for k in fields}, "budget": job["request"]["budget"],
                                       "options": {**OPTIONS, "mask_steps": 20000}})
    assert long.status_code == 202, long.text
    long_id = long.json()["id"]
    page.goto(f"{live_api.url}/#/jobs/{long_id}")
    page.wait_for_function("document.getElementById('j-status').textContent === 'running' && "
                           "parseFloat(document.getElementById('j-bar').style.width) > 0", timeout=JOB_TIMEOUT_MS)
    # Let a few live reports arrive, so the screenshot shows curves drawn while the job runs.
    page.wait_for_function("(window.__vtrans.views.job.series.loss.masks || []).length >= 6", timeout=120_000)
    assert page.inner_text("#j-eta") not in ("-", "")
    page.screenshot(path=str(screenshot_path("dashboard-running.png")), full_page=True)
    page.click("#j-cancel")
    page.wait_for_function("document.getElementById('j-status').textContent === 'cancelled'", timeout=120_000)
    assert http.get(f"/v1/jobs/{long_id}").json()["status"] == "cancelled"
    assert page.inner_text("#j-stream") == "ended" and page.locator("#j-cancel").is_disabled()
    assert not failed, failed
    assert not errors, errors

"""The dashboard's schedules page (issue #14) in Debian's chromium (Playwright) against a real
`vtrans api` process on Postgres: a schedule created from a finished job's page ("recompress
this on every new version"), fired by an upload of version 2, its run linking to the job it
created, the model's versions with the jobs built from each, pause/resume, a cron schedule
with a refused then a valid expression, and delete.

No compression runs here (the dashboard test next to this one runs real ones): the first job
is driven to `succeeded` through the service's own state functions (api.jobstore), as a worker
would, and the scheduled job only needs to exist. Screenshots go to test-artifacts/.
"""
from __future__ import annotations

import re

import pytest

from service.conftest import tar_gz_of

from .conftest import screenshot_path
from .test_dashboard_browser import browser  # noqa: F401  (the chromium fixture)

pytestmark = pytest.mark.slow
NAME = "support-bert"


def _upload_version(http, model_dir) -> dict:
    r = http.post("/v1/models", files={"file": ("support.tar.gz", tar_gz_of(model_dir), "application/gzip")},
                  data={"name": NAME})
    assert r.status_code == 201, r.text
    return r.json()


def _finished_job(http, settings, model_ref: str, dataset: str) -> str:
    """A job submitted over the API, then claimed and finished the way the worker does it."""
    from api import jobstore

    r = http.post("/v1/jobs", json={"model": model_ref, "dataset": dataset, "method": "fast",
                                    "budget": {"kind": "flops", "target": 0.6, "seq_len": 16},
                                    "options": {"mask_steps": 3}})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    claim = jobstore.claim(settings.db_url, job_id, "test-worker", 60, 3)
    assert claim is not None
    assert jobstore.finish(settings.db_url, claim, "succeeded", metrics={"method": "fast"}, artifacts=[])
    return job_id


def test_schedules_page_in_chromium(browser, live_api, tiny_model_dir, tiny_dataset_csv):  # noqa: F811
    http = live_api.client()
    v1 = _upload_version(http, tiny_model_dir)
    assert v1["version"] == 1
    d = http.post("/v1/datasets", files={"file": ("d.csv", tiny_dataset_csv.read_bytes(), "text/csv")})
    assert d.status_code == 201, d.text
    first_job = _finished_job(http, live_api.settings, NAME, d.json()["id"])

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    page.on("console", lambda m: m.type == "error" and "status of 4" not in m.text and errors.append(m.text))
    failed: list[str] = []
    # (401s: the page's first requests, before the key is typed in)
    page.on("response", lambda r: r.status >= 400 and r.status != 401
            and failed.append(f"{r.status} {r.request.method} {r.url}"))
    page.on("dialog", lambda dialog: dialog.accept())   # the delete confirmation
    page.goto(live_api.url + "/")
    page.fill("#api-key", live_api.settings.api_key)
    page.click("#key-form button")

    # From the finished job's page: "Recompress on schedule" prefills the form with its request,
    # the model by name, on every new version.
    page.goto(f"{live_api.url}/#/jobs/{first_job}")
    page.wait_for_function("document.getElementById('j-status').textContent === 'succeeded'")
    page.click("#j-schedule")
    page.wait_for_url(re.compile(r"#/schedules\?from=job_"))
    page.wait_for_selector("#s-from:not(.hidden)")
    assert page.input_value("#s-model") == NAME and page.is_checked("#s-on-new-version")
    assert page.input_value("#s-dataset") == d.json()["id"] and page.input_value("#s-method") == "fast"
    assert page.input_value("#s-budget-target") == "0.6" and page.input_value("#s-budget-seq") == "16"
    page.click("#s-submit")
    page.wait_for_url(re.compile(r"#/schedules/sch_[0-9a-f]+$"))
    sch_id = page.url.rsplit("/", 1)[-1]
    sch = http.get(f"/v1/schedules/{sch_id}").json()
    assert sch["on_new_version"] and sch["cron"] is None and sch["template"]["model"] == NAME
    assert sch["template"]["options"]["mask_steps"] == 3
    page.wait_for_selector("#sch-detail:not(.hidden)")
    assert page.inner_text("#sd-id") == sch_id and page.inner_text("#sd-state") == "active"
    page.wait_for_selector(f'#sd-versions-body tr[data-version="1"] a[href="#/jobs/{first_job}"]')

    # Version 2 is uploaded: the schedule fires (a run, then the job); the page shows the run
    # with a link to that job, and the new version with the job built from it.
    v2 = _upload_version(http, tiny_model_dir)
    assert v2["version"] == 2
    runs = http.get(f"/v1/schedules/{sch_id}/runs").json()["data"]
    assert [r["outcome"] for r in runs] == ["job_created"], runs
    new_job = runs[0]["job_id"]
    link = page.locator(f'#sd-runs-body tr[data-outcome="job_created"] a[href="#/jobs/{new_job}"]')
    link.wait_for(timeout=15_000)
    assert "new version" in page.inner_text("#sd-runs-body")
    page.wait_for_selector(f'#sd-versions-body tr[data-version="2"][data-model-id="{v2["id"]}"] '
                           f'a[href="#/jobs/{new_job}"]', timeout=15_000)
    page.screenshot(path=str(screenshot_path("dashboard-schedule.png")), full_page=True)
    link.click()
    page.wait_for_url(re.compile(rf"#/jobs/{new_job}$"))
    page.wait_for_function(f"document.getElementById('j-id').textContent === '{new_job}'")
    assert http.get(f"/v1/jobs/{new_job}").json()["request"]["model"] == v2["id"]

    # Pause and resume from the detail pane; the API agrees each time.
    page.goto(f"{live_api.url}/#/schedules/{sch_id}")
    page.wait_for_function("document.getElementById('sd-state').textContent === 'active'")
    page.click("#sd-toggle")
    page.wait_for_function("document.getElementById('sd-state').textContent === 'paused'")
    assert http.get(f"/v1/schedules/{sch_id}").json()["paused"] is True
    assert page.get_attribute(f'#sch-body tr[data-schedule-id="{sch_id}"]', "data-state") == "paused"
    page.click("#sd-toggle")
    page.wait_for_function("document.getElementById('sd-state').textContent === 'active'")
    assert http.get(f"/v1/schedules/{sch_id}").json()["paused"] is False

    # A cron-only schedule from the form (still holding the last values): a bad expression is refused naming the field, a
    # good one in a time zone is listed with its next due time.
    page.goto(f"{live_api.url}/#/schedules")
    page.wait_for_selector(f'#sch-body tr[data-schedule-id="{sch_id}"]')
    page.fill("#s-name", "weekly")
    page.fill("#s-model", NAME)
    page.fill("#s-dataset", "tweet-sentiment")
    page.fill("#s-cron", "61 * * * *")
    page.fill("#s-timezone", "Europe/Berlin")
    page.uncheck("#s-on-new-version")
    page.click("#s-submit")
    # the banner may still show an earlier message (the key was saved): wait for the refusal's text
    page.wait_for_function("!document.getElementById('banner').classList.contains('hidden') && "
                           "document.getElementById('banner').textContent.includes('cron')")
    assert "cron" in page.inner_text("#banner")
    assert failed and failed[-1].startswith("422 POST") and "/v1/schedules" in failed[-1]
    failed.clear()
    page.fill("#s-cron", "0 3 * * 1")
    page.click("#s-submit")
    page.wait_for_url(re.compile(r"#/schedules/sch_[0-9a-f]+$"))
    cron_id = page.url.rsplit("/", 1)[-1]
    assert cron_id != sch_id
    row = page.locator(f'#sch-body tr[data-schedule-id="{cron_id}"]')
    row.wait_for()
    assert "cron 0 3 * * 1 (Europe/Berlin)" in row.inner_text()
    cron = http.get(f"/v1/schedules/{cron_id}").json()
    assert cron["cron"] == "0 3 * * 1" and cron["timezone"] == "Europe/Berlin" and cron["next_due_at"]
    assert cron["on_new_version"] is False and cron["name"] == "weekly"
    page.screenshot(path=str(screenshot_path("dashboard-schedules.png")), full_page=True)

    # Delete from the list (confirmed): gone from the page and from the API; the other stays.
    row.locator("button.delete").click()
    page.wait_for_url(re.compile(r"#/schedules$"))
    page.wait_for_selector(f'#sch-body tr[data-schedule-id="{cron_id}"]', state="detached")
    assert http.get(f"/v1/schedules/{cron_id}").status_code == 404
    assert http.get(f"/v1/schedules/{sch_id}").status_code == 200
    assert page.locator(f'#sch-body tr[data-schedule-id="{sch_id}"]').count() == 1
    assert not failed, failed
    assert not errors, errors

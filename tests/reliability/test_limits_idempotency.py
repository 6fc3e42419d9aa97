"""Issue #5: per-tenant limits (active jobs -> 429 + Retry-After, upload size -> 413, chunked
uploads -> 411) and Idempotency-Key on POST /v1/jobs (same key + body -> same job, different
body -> 409, scoped per tenant, safe under concurrent duplicates)."""
from __future__ import annotations

import threading

from sqlalchemy import func, select

from .conftest import Recorder, assert_problem, make_client, new_tenant

BODY = {"model": "org/tiny", "dataset": "tweet-sentiment", "budget": {"kind": "flops", "target": 0.5}}


def _jobs_of(settings, tenant: str) -> int:
    from api.db import session_scope
    from api.models import Job

    with session_scope(settings.db_url) as s:
        return s.scalar(select(func.count()).select_from(Job).where(Job.tenant_id == tenant))


def test_active_job_quota_is_per_tenant_and_answers_429(service_settings):
    settings = service_settings.model_copy(update={"max_active_jobs": 2})
    a_name, a_auth = new_tenant(settings, "quota")
    _, b_auth = new_tenant(settings, "other")
    with make_client(settings, a_auth) as a, make_client(settings, b_auth) as b:
        ids = [a.post("/v1/jobs", json=BODY).json()["id"] for _ in range(2)]
        r = a.post("/v1/jobs", json=BODY)
        body = assert_problem(r, 429)
        assert int(r.headers["retry-after"]) > 0 and "limit 2" in body["detail"]
        # the request is checked before the quota (the tenant's submit lock is only held for the
        # count and the commit): a wrong request says what is wrong with it even at the limit
        bad = assert_problem(a.post("/v1/jobs", json={**BODY, "budget": {"kind": "flops", "target": 1.5}}), 422)
        assert any(e.get("field", "").startswith("budget") for e in bad.get("errors", [])) or "budget" in bad["detail"]
        assert _jobs_of(settings, a_name) == 2  # the refused submit wrote nothing
        assert b.post("/v1/jobs", json=BODY).status_code == 202  # another tenant has its own quota
        assert a.post(f"/v1/jobs/{ids[0]}/cancel").json()["status"] == "cancelled"
        assert a.post("/v1/jobs", json=BODY).status_code == 202  # a freed slot can be used again


def test_a_submit_refused_at_the_quota_keeps_no_idempotency_key(service_settings):
    """The quota is checked after the job row and the key's record are flushed (the tenant's lock
    is held only to the commit): a 429 must roll both back, so the same key works once a slot
    frees up."""
    settings = service_settings.model_copy(update={"max_active_jobs": 1})
    name, headers = new_tenant(settings, "quota-idem")
    with make_client(settings, headers) as c:
        first = c.post("/v1/jobs", json=BODY).json()["id"]
        refused = c.post("/v1/jobs", json=BODY, headers={"Idempotency-Key": "retry-me"})
        assert_problem(refused, 429)
        assert _jobs_of(settings, name) == 1
        assert c.post(f"/v1/jobs/{first}/cancel").json()["status"] == "cancelled"
        again = c.post("/v1/jobs", json=BODY, headers={"Idempotency-Key": "retry-me"})
        assert again.status_code == 202 and "idempotent-replayed" not in again.headers
        assert _jobs_of(settings, name) == 2


def test_tenant_override_of_the_quota(service_settings):
    name, headers = new_tenant(service_settings, "big")
    settings = service_settings.model_copy(update={"max_active_jobs": 1, "tenant_limits": {name: {"max_active_jobs": 3}}})
    with make_client(settings, headers) as c:
        assert [c.post("/v1/jobs", json=BODY).status_code for _ in range(4)] == [202, 202, 202, 429]


def test_concurrent_submits_cannot_overshoot_the_quota(service_settings):
    settings = service_settings.model_copy(update={"max_active_jobs": 3})
    name, headers = new_tenant(settings, "race")
    codes: list[int] = []
    barrier = threading.Barrier(8)

    def submit():
        with make_client(settings, headers) as c:
            barrier.wait()
            codes.append(c.post("/v1/jobs", json=BODY).status_code)

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(codes) == [202] * 3 + [429] * 5
    assert _jobs_of(settings, name) == 3


def test_upload_limits_per_tenant_413_and_411(service_settings, tiny_dataset_csv):
    small, small_auth = new_tenant(service_settings, "small")
    settings = service_settings.model_copy(update={"tenant_limits": {small: {"max_dataset_upload_bytes": 1024}}})
    data = tiny_dataset_csv.read_bytes()
    big = data * (80 * 1024 // len(data) + 1)  # > 1 KiB + multipart slack, < the default limit
    with make_client(settings, small_auth) as c, make_client(settings) as default:
        r = c.post("/v1/datasets", files={"file": ("d.csv", big, "text/csv")})
        assert_problem(r, 413, "file")
        assert default.post("/v1/datasets", files={"file": ("d.csv", big, "text/csv")}).status_code == 201

        def chunks():
            yield data

        r = default.post("/v1/datasets", content=chunks(),
                         headers={"Content-Type": "multipart/form-data; boundary=x"})
        assert_problem(r, 411)
        # An unauthenticated upload is refused before its body is read.
        r = default.post("/v1/datasets", files={"file": ("d.csv", big, "text/csv")}, headers={"Authorization": ""})
        assert_problem(r, 401)


def test_idempotent_submit_returns_the_same_job(api_settings):
    name, headers = new_tenant(api_settings, "idem")
    enqueued = Recorder()
    with make_client(api_settings, headers, enqueue=enqueued) as c:
        first = c.post("/v1/jobs", json=BODY, headers={"Idempotency-Key": "k-1"})
        assert first.status_code == 202
        # Same meaning, different key order: still the same request.
        again = c.post("/v1/jobs", json=dict(reversed(list(BODY.items()))), headers={"Idempotency-Key": "k-1"})
        assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
        assert again.headers["idempotent-replayed"] == "true"
        assert enqueued == [first.json()["id"]] and _jobs_of(api_settings, name) == 1
        other = dict(BODY, budget={"kind": "flops", "target": 0.4})
        r = c.post("/v1/jobs", json=other, headers={"Idempotency-Key": "k-1"})
        assert_problem(r, 409, "Idempotency-Key")
        assert _jobs_of(api_settings, name) == 1
        # A new key, or no key, is a new job.
        assert c.post("/v1/jobs", json=BODY, headers={"Idempotency-Key": "k-2"}).json()["id"] != first.json()["id"]
        assert c.post("/v1/jobs", json=BODY).status_code == 202
        assert_problem(c.post("/v1/jobs", json=BODY, headers={"Idempotency-Key": "bad key\t"}), 422)
    # Keys are scoped per tenant: the same key elsewhere is unrelated.
    _, other_auth = new_tenant(api_settings, "idem2")
    with make_client(api_settings, other_auth) as c2:
        r = c2.post("/v1/jobs", json=other, headers={"Idempotency-Key": "k-1"})
        assert r.status_code == 202 and r.json()["id"] != first.json()["id"]


def test_failed_enqueue_frees_the_idempotency_key(api_settings):
    name, headers = new_tenant(api_settings, "idemfail")

    def broken(_job_id):
        raise ConnectionError("broker down")

    with make_client(api_settings, headers, enqueue=broken) as c:
        r = c.post("/v1/jobs", json=BODY, headers={"Idempotency-Key": "retry-me"})
        assert_problem(r, 503)
        assert int(r.headers["retry-after"]) > 0
    with make_client(api_settings, headers) as c:
        r = c.post("/v1/jobs", json=BODY, headers={"Idempotency-Key": "retry-me"})
        assert r.status_code == 202 and r.json()["status"] == "queued"  # a fresh job, not the failed one


def test_concurrent_duplicates_create_one_job(api_settings):
    """8 identical requests at once, from 8 threads with their own connections: one job row, one
    enqueue, every answer names it. This goes through the unique key, not a check-then-insert."""
    name, headers = new_tenant(api_settings, "idemrace")
    enqueued = Recorder()
    answers = _racing_submits(api_settings, headers, enqueued, "same", 8)
    ids = {job_id for _, job_id in answers}
    assert len(answers) == 8 and len(ids) == 1, answers
    assert sorted(code for code, _ in answers) == [200] * 7 + [202]
    assert len(enqueued) == 1 and _jobs_of(api_settings, name) == 1


def test_idempotency_and_quota_on_the_embedded_sqlite_default(tmp_path, service_settings):
    """The embedded default (SQLite, no advisory locks): the unique key still collapses
    concurrent duplicates into one job, and the quota still holds."""
    from api.db import migrate
    from api.settings import Settings

    settings = Settings(data_dir=tmp_path / "var", api_key=service_settings.api_key, max_active_jobs=2)
    migrate(settings.db_url)
    enqueued = Recorder()
    answers = _racing_submits(settings, None, enqueued, "lite", 4)
    assert len({job_id for _, job_id in answers}) == 1 and len(enqueued) == 1, answers
    with make_client(settings) as c:
        assert c.post("/v1/jobs", json=BODY).status_code == 202
        assert_problem(c.post("/v1/jobs", json=BODY), 429)
    from api.db import get_engine

    get_engine(settings.db_url).dispose()


def _racing_submits(settings, headers, enqueued, key: str, n: int) -> list[tuple[int, str]]:
    """n clients released at once by a barrier, each POSTing the same body with the same
    Idempotency-Key; returns (status, job id) per answer."""
    answers: list[tuple[int, str]] = []
    barrier = threading.Barrier(n)

    def submit():
        with make_client(settings, headers, enqueue=enqueued) as c:
            barrier.wait()
            r = c.post("/v1/jobs", json=BODY, headers={"Idempotency-Key": key})
            answers.append((r.status_code, r.json().get("id")))

    threads = [threading.Thread(target=submit) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return answers

"""Issue #5, access: Bearer API keys per tenant, stored hashed, managed with the CLI; another
tenant's ids answer 404; only /healthz, /readyz, /metrics, / and /openapi.json are open."""
from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest
from sqlalchemy import text

from .conftest import (REPO, assert_problem, make_client, new_tenant, settings_env, tar_gz_of)


def _v1_routes(app) -> list[tuple[str, str]]:
    """Every /v1 operation in the OpenAPI document, with placeholder ids filled in."""
    out = []
    for path, ops in app.openapi()["paths"].items():
        if path.startswith("/v1"):
            name = "model/config.json" if "/artifacts/" in path else "my-model"   # artifact path or model name
            concrete = path.replace("{job_id}", "job_00000000000000000000").replace(
                "{model_id}", "mdl_00000000000000000000").replace(
                "{dataset_id}", "ds_00000000000000000000").replace("{name}", name)
            out += [(method.upper(), concrete) for method in ops]
    return out


def test_every_v1_route_requires_a_bearer_key(api_settings):
    with make_client(api_settings, headers={}) as c:
        routes = _v1_routes(c.app)
        assert len(routes) >= 10  # every resource is covered, not just a sample
        for method, path in routes:
            for headers in ({}, {"Authorization": "Bearer vt_not_a_key"}, {"Authorization": "Basic dXNlcjpwdw=="},
                            {"Authorization": f"Bearer {api_settings.api_key}x"}):
                r = c.request(method, path, headers=headers)
                body = assert_problem(r, 401)
                assert r.headers["www-authenticate"].lower().startswith("bearer"), (method, path)
                assert body["type"] == "urn:vtrans:problem:unauthorized"


def test_open_routes_need_no_key(api_settings):
    with make_client(api_settings, headers={}) as c:
        for path in ("/healthz", "/openapi.json", "/metrics", "/"):
            assert c.get(path).status_code == 200, path
        assert c.get("/readyz").status_code in (200, 503)  # never 401
        spec = c.get("/openapi.json").json()
        assert "bearerAuth" in spec["components"]["securitySchemes"]


def test_env_key_is_tenant_default(api_settings):
    with make_client(api_settings) as c:
        r = c.post("/v1/jobs", json={"model": "org/tiny", "dataset": "tweet-sentiment",
                                     "budget": {"kind": "flops", "target": 0.5}})
        assert r.status_code == 202, r.text
    from .conftest import job_row

    assert job_row(api_settings, r.json()["id"]).tenant_id == "default"


def test_keys_are_stored_hashed_with_a_display_prefix(api_settings):
    from api.auth import create_key
    from api.db import get_engine

    created = create_key(api_settings.db_url, "hashcheck")
    assert created.key.startswith("vt_") and len(created.key) >= 40
    with get_engine(api_settings.db_url).connect() as conn:
        row = conn.execute(text("SELECT * FROM api_keys WHERE id = :i"), {"i": created.id}).mappings().one()
    assert row["hashed_key"] == hashlib.sha256(created.key.encode()).hexdigest()
    assert created.key not in " ".join(str(v) for v in row.values())  # the key itself is nowhere
    assert created.key.startswith(row["prefix"]) and len(row["prefix"]) < 16


def _cli(settings, *args: str) -> subprocess.CompletedProcess:
    env = settings_env(settings)
    return subprocess.run([sys.executable, "-m", "api.cli", *args], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_cli_creates_lists_and_revokes_keys(api_settings):
    r = _cli(api_settings, "keys", "create", "--tenant", "clitenant")
    assert r.returncode == 0, r.stderr
    key = r.stdout.strip()
    key_id = r.stderr.split("created key ")[1].split()[0]
    with make_client(api_settings, headers={"Authorization": f"Bearer {key}"}) as c:
        assert c.get("/v1/jobs").status_code == 200
        listing = _cli(api_settings, "keys", "list")
        assert key_id in listing.stdout and key[:10] in listing.stdout and key not in listing.stdout
        assert _cli(api_settings, "keys", "revoke", key_id).returncode == 0
        assert_problem(c.get("/v1/jobs"), 401)  # revocation takes effect at once
    assert "REVOKED" in _cli(api_settings, "keys", "list").stdout
    assert _cli(api_settings, "keys", "revoke", key_id).returncode == 1  # already revoked
    assert _cli(api_settings, "keys", "create", "--tenant", "../Bad Name").returncode == 2


def test_another_tenants_ids_answer_404(api_settings, tiny_model_dir, tiny_dataset_csv):
    from api import jobstore
    from api.models import Artifact
    from api.db import session_scope
    from .conftest import make_client as mk

    _, a_auth = new_tenant(api_settings, "alice")
    _, b_auth = new_tenant(api_settings, "bob")
    with mk(api_settings, a_auth) as a, mk(api_settings, b_auth) as b:
        m = a.post("/v1/models", files={"file": ("m.tar.gz", tar_gz_of(tiny_model_dir), "application/gzip")}).json()
        d = a.post("/v1/datasets", files={"file": ("d.csv", tiny_dataset_csv.read_bytes(), "text/csv")}).json()
        job = a.post("/v1/jobs", json={"model": m["id"], "dataset": d["id"],
                                       "budget": {"kind": "flops", "target": 0.5}}).json()
        # Give the job a final artifact so the download route has something to protect.
        claim = jobstore.claim(api_settings.db_url, job["id"], "w", 60, 3)
        assert jobstore.finish(api_settings.db_url, claim, "succeeded", metrics={}, artifacts=[
            {"name": "metrics.json", "storage_key": f"uploads/models/{m['id']}/config.json", "size_bytes": 1,
             "media_type": "application/json"}])
        owner_paths = [f"/v1/models/{m['id']}", f"/v1/datasets/{d['id']}", f"/v1/jobs/{job['id']}",
                       f"/v1/jobs/{job['id']}/artifacts", f"/v1/jobs/{job['id']}/artifacts/metrics.json",
                       f"/v1/jobs/{job['id']}/events?format=json"]
        for path in owner_paths:
            assert a.get(path).status_code == 200, path
            assert_problem(b.get(path), 404)  # not 403: B cannot even learn that the id exists
        assert_problem(b.post(f"/v1/jobs/{job['id']}/cancel"), 404)
        # B cannot build on A's uploads either, and A's things are not in B's listings.
        r = b.post("/v1/jobs", json={"model": m["id"], "dataset": "tweet-sentiment",
                                     "budget": {"kind": "flops", "target": 0.5}})
        assert_problem(r, 404, "model")
        r = b.post("/v1/jobs", json={"model": "org/tiny", "dataset": d["id"], "budget": {"kind": "flops", "target": 0.5}})
        assert_problem(r, 404, "dataset")
        for listing in ("/v1/jobs", "/v1/models", "/v1/datasets"):
            assert b.get(listing).json()["data"] == [] and a.get(listing).json()["data"], listing
    with session_scope(api_settings.db_url) as s:
        assert s.query(Artifact).filter_by(job_id=job["id"]).one().tenant_id.startswith("alice")


@pytest.mark.slow
def test_embedded_serve_prints_a_local_key_and_reuses_it(start_proc, tmp_path):
    import httpx

    from .conftest import free_port, wait_for

    data_dir, port = tmp_path / "var", free_port()
    env = {k: v for k, v in settings_env(_Blank()).items() if not k.startswith("VTRANS_")}
    env.update(VTRANS_DATA_DIR=str(data_dir), VTRANS_PORT=str(port))
    keys = []
    for run in range(2):
        proc = start_proc([sys.executable, "-m", "api.cli", "serve"], env, f"serve{run}")
        wait_for(lambda: "serving at" in proc.output() or proc.p.poll() is not None, 120, what="serve up")
        line = next(ln for ln in proc.output().splitlines() if "API key (" in ln)
        keys.append(line.rsplit(": ", 1)[1].strip())
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _answers(httpx, url), 60, what="http")
        assert httpx.get(url + "/v1/jobs", headers={"Authorization": f"Bearer {keys[-1]}"}).status_code == 200
        assert httpx.get(url + "/v1/jobs").status_code == 401
        proc.stop()
    assert keys[0] == keys[1]  # a restart reuses the key stored in DATA_DIR
    assert (data_dir / "api-key").read_text().strip() == keys[0]
    assert (data_dir / "api-key").stat().st_mode & 0o077 == 0  # readable by the owner only


class _Blank:
    def model_dump(self):
        return {}


def _answers(httpx, url: str) -> bool:
    try:
        return httpx.get(url + "/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False

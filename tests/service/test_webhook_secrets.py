"""Webhook signing secrets encrypted at rest with VTRANS_SECRET_KEY (issue #14): the database
never holds the secret the client was shown, deliveries are still signed with it (checked with
the Standard Webhooks verifier), a wrong key never signs, and plain rows from before a key was
set keep working and can be encrypted in place."""
from __future__ import annotations

import json

import pytest
from pydantic import SecretStr
from sqlalchemy import select

from api import secretbox, webhook_delivery
from api.db import migrate, session_scope
from api.models import WebhookAttempt, WebhookEndpoint, WebhookMessage

KEY = "test-key-3c1f9a7e5b2d4c6e8f0a1b2c3d4e5f60"


def test_sealed_secret_round_trips_and_is_bound_to_its_row_and_key():
    sealed = secretbox.seal("whsec_abc", "wh_1", KEY)
    assert sealed.startswith("v1:") and "whsec_abc" not in sealed
    assert secretbox.seal("whsec_abc", "wh_1", KEY) != sealed          # fresh nonce every time
    assert secretbox.open_(sealed, "wh_1", KEY) == "whsec_abc"
    with pytest.raises(secretbox.SecretKeyError, match="copied from another row"):
        secretbox.open_(sealed, "wh_2", KEY)
    with pytest.raises(secretbox.SecretKeyError, match="does not decrypt"):
        secretbox.open_(sealed, "wh_1", "another key")
    with pytest.raises(secretbox.SecretKeyError, match="VTRANS_SECRET_KEY is not set"):
        secretbox.open_(sealed, "wh_1", None)
    # without a key: stored as is; plain (legacy) values read back with or without one
    assert secretbox.seal("whsec_abc", "wh_1", None) == "whsec_abc"
    assert secretbox.open_("whsec_abc", "wh_1", KEY) == "whsec_abc"


@pytest.fixture
def app_settings(tmp_path):
    from api.settings import Settings

    settings = Settings(data_dir=tmp_path, api_key="vt_test_secrets", webhook_allow_private=True,
                        secret_key=SecretStr(KEY))
    migrate(settings.db_url)
    return settings


def _client(settings):
    from fastapi.testclient import TestClient

    from api.app import create_app

    return TestClient(create_app(settings, enqueue=lambda job_id: None),
                      headers={"Authorization": f"Bearer {settings.api_key}"})


def _emit(settings, data: dict) -> list[str]:
    from api import webhooks

    with session_scope(settings.db_url) as s:
        return webhooks.emit(s, "default", "schedule.run", data)


def _deliver(settings, monkeypatch) -> list[tuple[str, dict]]:
    sent: list[tuple[str, dict]] = []

    def fake_post(url, body, headers, _settings):
        sent.append((body, headers))
        return webhook_delivery.Outcome(True, 204, 1.0, None)

    monkeypatch.setattr(webhook_delivery, "post", fake_post)
    webhook_delivery.deliver_due(settings)
    return sent


def test_secret_is_encrypted_at_rest_and_deliveries_verify(app_settings, monkeypatch):
    from standardwebhooks.webhooks import Webhook

    with _client(app_settings) as http:
        r = http.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/hook", "events": ["schedule.run"]})
        assert r.status_code == 201, r.text
    shown, wh_id = r.json()["secret"], r.json()["id"]
    assert shown.startswith("whsec_")
    with session_scope(app_settings.db_url) as s:
        stored = s.get(WebhookEndpoint, wh_id).secret
    assert stored.startswith("v1:") and shown not in stored and shown[6:] not in stored

    _emit(app_settings, {"schedule_id": "sch_x", "outcome": "job_created"})
    sent = _deliver(app_settings, monkeypatch)
    assert len(sent) == 1
    body, headers = sent[0]
    assert Webhook(shown).verify(body, headers)["data"]["schedule_id"] == "sch_x"


def test_a_wrong_key_never_signs_and_logs_why(app_settings, monkeypatch):
    with _client(app_settings) as http:
        wh_id = http.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/hook", "events": ["schedule.run"]}).json()["id"]
    (msg_id,) = _emit(app_settings, {"schedule_id": "sch_y"})
    wrong = app_settings.model_copy(update={"secret_key": SecretStr("not the key")})
    assert _deliver(wrong, monkeypatch) == []
    with session_scope(app_settings.db_url) as s:
        msg = s.get(WebhookMessage, msg_id)
        attempts = s.scalars(select(WebhookAttempt).where(WebhookAttempt.message_id == msg_id)).all()
        assert msg.status == "pending" and msg.attempts == 1           # retried later, on the usual backoff
        assert len(attempts) == 1 and "does not decrypt" in attempts[0].error and wh_id in attempts[0].error


def test_plain_secrets_from_before_the_key_keep_working_and_can_be_sealed(app_settings, monkeypatch):
    from standardwebhooks.webhooks import Webhook

    plain = app_settings.model_copy(update={"secret_key": None})
    with _client(plain) as http:
        r = http.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/hook", "events": ["schedule.run"]})
    shown, wh_id = r.json()["secret"], r.json()["id"]
    with session_scope(app_settings.db_url) as s:
        assert s.get(WebhookEndpoint, wh_id).secret == shown            # no key: stored as before

    _emit(app_settings, {"n": 1})
    body, headers = _deliver(app_settings, monkeypatch)[0]               # a key is set now: still signs
    assert Webhook(shown).verify(body, headers)["data"] == {"n": 1}

    assert webhook_delivery.seal_plain_secrets(app_settings.db_url, KEY) == 1
    assert webhook_delivery.seal_plain_secrets(app_settings.db_url, KEY) == 0
    with session_scope(app_settings.db_url) as s:
        assert secretbox.open_(s.get(WebhookEndpoint, wh_id).secret, wh_id, KEY) == shown
    _emit(app_settings, {"n": 2})
    body, headers = _deliver(app_settings, monkeypatch)[0]
    assert json.loads(body)["data"] == {"n": 2} and Webhook(shown).verify(body, headers)

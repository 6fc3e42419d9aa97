"""/v1/webhooks: endpoints that receive signed event notifications, and their delivery log.

Signing, the outbox and delivery are in api/webhooks.py and api/webhook_delivery.py.
"""
from __future__ import annotations

import json
from typing import Literal

from fastapi import APIRouter, Depends, Query, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from .. import contract, secretbox, webhook_delivery, webhooks
from ..automation_schemas import (WebhookAttemptOut, WebhookCreate, WebhookCreated, WebhookDeliveryList,
                                  WebhookDeliveryOut, WebhookList, WebhookOut)
from ..deps import get_app_settings, get_db, owned_or_404
from ..models import WebhookAttempt, WebhookEndpoint, WebhookMessage, new_id, utcnow
from ..problems import Problem, field_problem
from ..settings import Settings
from ..tenancy import get_tenant

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])
MAX_ENDPOINTS = 20  # per tenant: each event is sent to every endpoint subscribed to it


def webhook_out(ep: WebhookEndpoint, cls: type[WebhookOut] = WebhookOut, **extra) -> WebhookOut:
    return cls(id=ep.id, url=ep.url, events=ep.events, description=ep.description,
               created_at=ep.created_at, **extra)


def _get(db: Session, tenant: str, webhook_id: str) -> WebhookEndpoint:
    return owned_or_404(db, WebhookEndpoint, webhook_id, tenant, "webhook")


@router.post("", status_code=201, response_model=WebhookCreated, operation_id="createWebhook",
             responses=contract.problems(401, 409, 422))
def create_webhook(body: WebhookCreate, db: Session = Depends(get_db), tenant: str = Depends(get_tenant),
                   settings: Settings = Depends(get_app_settings)) -> WebhookCreated:
    """The answer holds the signing secret (whsec_...): it is shown only here."""
    url = str(body.url)
    if len(url) > 2048:
        raise field_problem(422, "url", "is longer than 2048 characters")
    try:
        webhook_delivery.check_url(url, settings.webhook_allow_private)
    except webhook_delivery.UnsafeURL as exc:
        raise field_problem(422, "url", str(exc)) from None
    count = len(db.scalars(select(WebhookEndpoint.id).where(WebhookEndpoint.tenant_id == tenant)).all())
    if count >= MAX_ENDPOINTS:
        raise Problem(409, f"this tenant already has {count} webhook endpoints (limit {MAX_ENDPOINTS})",
                      slug="too-many-webhooks")
    secret, ep_id = webhooks.new_secret(), new_id("wh")
    ep = WebhookEndpoint(id=ep_id, tenant_id=tenant, url=url, events=sorted(set(body.events)),
                         secret=secretbox.seal(secret, ep_id, settings.secret_key_value),
                         description=body.description, created_at=utcnow())
    db.add(ep)
    db.commit()
    return webhook_out(ep, WebhookCreated, secret=secret)


@router.get("", response_model=WebhookList, operation_id="listWebhooks", responses=contract.problems(401))
def list_webhooks(db: Session = Depends(get_db), tenant: str = Depends(get_tenant)) -> WebhookList:
    rows = db.scalars(select(WebhookEndpoint).where(WebhookEndpoint.tenant_id == tenant)
                      .order_by(WebhookEndpoint.created_at.desc())).all()
    return WebhookList(data=[webhook_out(ep) for ep in rows])


@router.get("/{webhook_id}", response_model=WebhookOut, operation_id="getWebhook", responses=contract.problems(401, 404))
def get_webhook(webhook_id: str, db: Session = Depends(get_db),
                tenant: str = Depends(get_tenant)) -> WebhookOut:
    return webhook_out(_get(db, tenant, webhook_id))


@router.delete("/{webhook_id}", status_code=204, operation_id="deleteWebhook", responses=contract.problems(401, 404))
def delete_webhook(webhook_id: str, db: Session = Depends(get_db), tenant: str = Depends(get_tenant)) -> Response:
    """Undelivered messages to it are dropped with it."""
    db.delete(_get(db, tenant, webhook_id))
    db.commit()
    return Response(status_code=204)


def delivery_out(m: WebhookMessage, attempts: list[WebhookAttempt]) -> WebhookDeliveryOut:
    return WebhookDeliveryOut(
        id=m.id, event_type=m.event_type, status=m.status, attempts=m.attempts,
        next_attempt_at=m.next_attempt_at if m.status == "pending" else None,
        created_at=m.created_at, delivered_at=m.delivered_at,
        payload=json.loads(m.body),  # the body exactly as signed and sent
        attempt_log=[WebhookAttemptOut(attempt=a.attempt, status_code=a.status_code, latency_ms=a.latency_ms,
                                       error=a.error, created_at=a.created_at) for a in attempts])


@router.get("/{webhook_id}/deliveries", response_model=WebhookDeliveryList, operation_id="listWebhookDeliveries", responses=contract.problems(401, 404))
def list_deliveries(webhook_id: str,
                    # the enum of WebhookDeliveryOut.status, so generated clients get the choices
                    status: Literal["pending", "delivered", "failed"] | None = Query(None),
                    limit: int = Query(50, ge=1, le=200), db: Session = Depends(get_db),
                    tenant: str = Depends(get_tenant)) -> WebhookDeliveryList:
    """Newest first: each message (its webhook-id, payload, status) with every attempt to send
    it (status code, latency, error)."""
    _get(db, tenant, webhook_id)
    q = select(WebhookMessage).where(WebhookMessage.endpoint_id == webhook_id, WebhookMessage.tenant_id == tenant)
    if status:
        q = q.where(WebhookMessage.status == status)
    msgs = db.scalars(q.order_by(WebhookMessage.created_at.desc(), WebhookMessage.id.desc()).limit(limit)).all()
    attempts: dict[str, list[WebhookAttempt]] = {m.id: [] for m in msgs}
    if msgs:
        for a in db.scalars(select(WebhookAttempt).where(WebhookAttempt.message_id.in_(list(attempts)))
                            .order_by(WebhookAttempt.id)):
            attempts[a.message_id].append(a)
    return WebhookDeliveryList(data=[delivery_out(m, attempts[m.id]) for m in msgs])


@router.post("/{webhook_id}/deliveries/{message_id}/redeliver", status_code=202, response_model=WebhookDeliveryOut,
             operation_id="redeliverWebhookMessage", responses=contract.problems(401, 404))
def redeliver(webhook_id: str, message_id: str, db: Session = Depends(get_db), tenant: str = Depends(get_tenant),
              settings: Settings = Depends(get_app_settings)) -> WebhookDeliveryOut:
    """Send a message again, with the same webhook-id, starting a fresh round of retries."""
    _get(db, tenant, webhook_id)
    if not webhook_delivery.redeliver(settings.db_url, tenant, webhook_id, message_id):
        raise Problem(404, f"webhook {webhook_id} has no message {message_id!r}", slug="not-found")
    db.expire_all()
    m = db.get(WebhookMessage, message_id)
    attempts = db.scalars(select(WebhookAttempt).where(WebhookAttempt.message_id == message_id)
                          .order_by(WebhookAttempt.id)).all()
    return delivery_out(m, list(attempts))

"""Delivery of a spend alert to its budget's webhook and email addresses (docs/alerts.md).

The webhook is signed and posted as aperture/webhooks.py does every webhook: `webhook-id` is
the alert's id (the same on every retry, so a receiver can drop a duplicate), and each
attempt is cut off when its time is up. Each call of `deliver` is one attempt at whatever is
still pending; billing/tasks.py retries.

An email carries public ids and figures only, never a name a tenant chose: its addresses are
the tenant's to set and nobody confirms them. A workspace's alerts are emailed at most
ALERT_EMAILS_PER_DAY times a day.
"""

from __future__ import annotations

import json
import logging
import smtplib
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from aperture import mail
from aperture.api_fields import usd
from aperture.db import release_connection
from aperture.webhooks import post_signed
from aperture.webhooks import signed_headers as signed_headers  # kept where tests use it
from billing.alerts import queue_delivery
from billing.models import SpendAlert
from tenants.audit import audit_record
from tenants.webhook_secrets import webhook_secret_of

logger = logging.getLogger(__name__)

EVENT_TYPE = "budget.threshold_crossed"
# With a Celery worker: connect and read timeouts (their sum bounds a whole attempt), and
# retries at 1, 2, 4, 8, 16 minutes and then every 30 (below the Redis broker's one-hour
# visibility timeout, past which a waiting retry would be handed out twice): 50 retries,
# about 23 hours.
TIMEOUT = (3.0, 10.0)
RETRIES = 50
# The embedded default runs tasks eagerly, in the request whose settlement crossed the
# threshold: a few quick tries at once, so that a slow receiver delays that one request by
# seconds at most.
EAGER_ATTEMPTS = 3
EAGER_TIMEOUT = (1.0, 2.0)
Delivery = SpendAlert.Delivery


def backoff(retries: int) -> int:
    """Seconds before retry number `retries + 1`."""
    return int(min(60 * 2**retries, 1800))


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def payload(alert: SpendAlert) -> dict[str, Any]:
    """The webhook's JSON body: what crossed which threshold, with the figures at that moment."""
    budget = alert.budget
    return {
        "type": EVENT_TYPE,
        "id": alert.public_id,
        "workspace": alert.workspace.public_id,
        "budget": {
            "id": budget.public_id,
            "scope": budget.scope,
            "team": budget.team.public_id if budget.scope == "team" and budget.team else None,
            "key": budget.key.public_id if budget.key else None,
            "period": budget.period,
            "limit_usd": usd(alert.limit_micro),
            "limit_images": alert.limit_images,
        },
        "threshold": alert.threshold,
        "spent_usd": usd(alert.used_micro),
        "spent_images": alert.used_images,
        "period_start": _iso(alert.period_start),
        "fired_at": _iso(alert.fired_at),
    }


def deliver(*, alert_id: int, final: bool, quick: bool = False) -> bool:
    """One attempt at each channel still pending; on the `final` attempt a failure is final.
    Returns whether one is still pending (to be tried again)."""
    alert = (
        SpendAlert.objects.select_related("workspace", "budget", "budget__team", "budget__key")
        .filter(pk=alert_id)
        .first()
    )
    if alert is None:  # its budget was deleted meanwhile
        return False
    pending = False
    if alert.email_status == Delivery.PENDING:
        pending |= _email(alert, final=final)
    if alert.webhook_status == Delivery.PENDING:
        pending |= _webhook(alert, final=final, quick=quick)
    return pending


def deliver_at_once(*, alert_id: int) -> None:
    """Up to EAGER_ATTEMPTS quick attempts in a row, for a process with no worker to wait."""
    for attempt in range(1, EAGER_ATTEMPTS + 1):
        if not deliver(alert_id=alert_id, final=attempt == EAGER_ATTEMPTS, quick=True):
            return


def _bound_to(alert: SpendAlert) -> str:
    budget = alert.budget
    if budget.scope == "team" and budget.team is not None:
        return f" for team {budget.team.public_id}"
    if budget.key is not None:
        return f" for key {budget.key.public_id}"
    return ""


def _over_daily_cap(alert: SpendAlert) -> bool:
    """Whether the workspace's alerts of the last 24 hours were emailed ALERT_EMAILS_PER_DAY
    times already (one query, on the workspace's newest alerts)."""
    emailed = SpendAlert.objects.filter(
        workspace_id=alert.workspace_id,
        fired_at__gte=timezone.now() - timedelta(days=1),
        email_status=Delivery.DELIVERED,
    ).exclude(pk=alert.pk)
    return emailed.count() >= int(settings.ALERT_EMAILS_PER_DAY)


def _email(alert: SpendAlert, *, final: bool) -> bool:
    recipients = [e for e in alert.budget.alert_emails if isinstance(e, str)]
    if not recipients:
        SpendAlert.objects.filter(pk=alert.pk).update(email_status=Delivery.NONE)
        return False
    if _over_daily_cap(alert):
        logger.warning(
            "spend alert %s: not emailed, the workspace's alerts were emailed %s times today",
            alert.public_id,
            settings.ALERT_EMAILS_PER_DAY,
        )
        SpendAlert.objects.filter(pk=alert.pk).update(email_status=Delivery.FAILED)
        return False
    body = payload(alert)
    budget = alert.budget
    limit = " and ".join(
        part
        for part in (
            f"${body['budget']['limit_usd']}" if alert.limit_micro is not None else "",
            f"{alert.limit_images} images" if alert.limit_images is not None else "",
        )
        if part
    )
    subject = (
        f"Aperture: {budget.scope} {budget.period} budget {budget.public_id} "
        f"reached {alert.threshold}%"
    )
    text = (
        f"The {budget.period} budget {budget.public_id} of workspace {alert.workspace.public_id}"
        f"{_bound_to(alert)} has reached {alert.threshold}% of its limit of {limit}.\n\n"
        f"Spent this period: ${body['spent_usd']} and {alert.used_images} images.\n"
        f"Period started: {body['period_start']}\nAlert {alert.public_id} at {body['fired_at']}\n"
    )
    release_connection()  # not held while the mail server answers
    try:
        send_mail(subject, text, None, recipients, connection=mail.connection())
    except (smtplib.SMTPException, OSError):
        logger.exception("could not email spend alert %s", alert.public_id)
        status = Delivery.FAILED if final else Delivery.PENDING
    else:
        status = Delivery.DELIVERED
    SpendAlert.objects.filter(pk=alert.pk).update(email_status=status)
    return status == Delivery.PENDING


def _webhook(alert: SpendAlert, *, final: bool, quick: bool) -> bool:
    url = alert.budget.alert_webhook_url
    if not url:
        SpendAlert.objects.filter(pk=alert.pk).update(webhook_status=Delivery.NONE)
        return False
    secret = webhook_secret_of(alert.workspace)
    if secret is None:  # the URL is refused without one; an operator may have set it
        _record(alert, Delivery.FAILED, "The workspace has no webhook signing secret.")
        return False
    body = json.dumps(payload(alert), separators=(",", ":"))
    attempt = post_signed(
        url,
        secret=secret,
        msg_id=alert.public_id,
        timestamp=timezone.now().replace(microsecond=0),
        body=body,
        timeout=EAGER_TIMEOUT if quick else TIMEOUT,
    )
    error = attempt.error
    if not error:
        status = Delivery.DELIVERED
    else:
        status = Delivery.FAILED if final or attempt.permanent else Delivery.PENDING
        logger.warning("spend alert %s: webhook attempt failed: %s", alert.public_id, error)
    _record(alert, status, error)
    return status == Delivery.PENDING


def _record(alert: SpendAlert, status: str, error: str) -> None:
    SpendAlert.objects.filter(pk=alert.pk).update(
        webhook_status=status,
        webhook_attempts=F("webhook_attempts") + 1,
        webhook_last_error=error[:300],
    )


@transaction.atomic
def alert_redeliver(*, actor: str, alert: SpendAlert) -> bool:
    """Try a failed delivery again from the start (an operator's action); False if nothing
    had failed."""
    fields: dict[str, Any] = {}
    if alert.webhook_status == Delivery.FAILED:
        fields.update(webhook_status=Delivery.PENDING, webhook_attempts=0, webhook_last_error="")
    if alert.email_status == Delivery.FAILED:
        fields["email_status"] = Delivery.PENDING
    if not fields:
        return False
    SpendAlert.objects.filter(pk=alert.pk).update(**fields)
    audit_record(
        actor=actor,
        event="spend_alert.redelivered",
        target=alert,
        workspace_id=alert.workspace_id,
        data={"channels": sorted(k.split("_")[0] for k in fields if k.endswith("_status"))},
    )
    transaction.on_commit(partial(queue_delivery, alert.pk), robust=True)
    return True

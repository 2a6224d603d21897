"""Spend alerts: each of a budget's thresholds (percentages of its limits) fires once per
period, and the alert is then delivered to the budget's webhook and email addresses.

Firing rides on settlement. The settling UPDATE returns each budget's counters, limits and
thresholds (billing/budgets.py), so which thresholds a budget has reached is arithmetic on
numbers already at hand. This process remembers which ones it knows have fired in the
budget's current period; only a threshold it does not know of touches the database: one
`INSERT … ON CONFLICT DO NOTHING RETURNING id`, whose unique constraint (`spend_alert_once`)
lets exactly one of any number of concurrent requests insert the row. Delivery is queued once
the settlement commits (billing/alert_delivery.py). A change of a budget's limits or
thresholds fires what its spend already stands at, the same way.

This module also holds the alerts' configuration: validated, and audited.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any
from urllib.parse import urlsplit

from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from aperture.ids import public_id
from aperture.outbound import public_url_problem
from aperture.webhooks import NO_SIGNING_KEY
from billing.models import Budget, SpendAlert
from tenants.audit import audit_record
from tenants.models import Workspace

logger = logging.getLogger(__name__)

MAX_THRESHOLDS = 10
MAX_EMAILS = 5
ALERT_FIELDS = ("alert_thresholds", "alert_webhook_url", "alert_emails")
# A budget's columns that say which thresholds it stands at.
_STANDING = ("period_start", "used_micro", "used_images", "limit_micro", "limit_images")

# --- Firing (the hot path) ----------------------------------------------------------------


@dataclass(frozen=True)
class Spend:
    """One budget right after a settlement charged it, as the settling UPDATE returned it."""

    period_start: datetime
    budget_id: int
    budget_public_id: str
    workspace_id: int
    used_micro: int
    used_images: int
    limit_micro: int | None
    limit_images: int | None
    thresholds: Any  # the JSON column as the driver returns it: text, or already a list

    @classmethod
    def from_row(cls, period_start: datetime, row: Sequence[Any]) -> Spend:
        """From the settling UPDATE's RETURNING: the fields after period_start, in order."""
        return cls(period_start, *row)

    def threshold_list(self) -> list[int]:
        value = json.loads(self.thresholds) if isinstance(self.thresholds, str) else self.thresholds
        if not isinstance(value, list):
            return []
        return [t for t in value if isinstance(t, int) and not isinstance(t, bool)]


def reached(
    thresholds: Iterable[int],
    *,
    used_micro: int,
    used_images: int,
    limit_micro: int | None,
    limit_images: int | None,
) -> frozenset[int]:
    """The thresholds (percent) that spend has reached on either limit. Integer arithmetic:
    80% of a $0.03 limit is reached at 24,000 µUSD, not a float's rounding of it. A limit of
    0 (free models only, say) has no percentages: every spend would reach all of them."""
    return frozenset(
        t
        for t in thresholds
        if (limit_micro is not None and limit_micro > 0 and used_micro * 100 >= t * limit_micro)
        or (limit_images is not None and limit_images > 0 and used_images * 100 >= t * limit_images)
    )


# (budget public id, period start) → the thresholds known to have fired in that period. Keyed
# by the public id, which is never reused; bounded, and a forgotten entry costs one no-op
# INSERT. Written only once the firing transaction commits.
_fired: dict[tuple[str, datetime], frozenset[int]] = {}
_FIRED_MAX_ENTRIES = 10_000

_FIRE = """
INSERT INTO billing_spendalert (
    public_id, workspace_id, budget_id, period_start, threshold, used_micro, used_images,
    limit_micro, limit_images, fired_at, webhook_status, webhook_attempts, webhook_last_error,
    email_status
)
VALUES {rows}
ON CONFLICT (budget_id, period_start, threshold) DO NOTHING
RETURNING id
"""
_ROW = "(" + ", ".join(["%s"] * 14) + ")"


def fire_reached(spends: Sequence[Spend]) -> None:
    """Record the alerts of thresholds these budgets have newly reached (within the caller's
    transaction) and queue their delivery for after its commit. Costs no query unless a
    threshold this process does not know to have fired is reached; never raises."""
    for spend in spends:
        now_reached = reached(
            spend.threshold_list(),
            used_micro=spend.used_micro,
            used_images=spend.used_images,
            limit_micro=spend.limit_micro,
            limit_images=spend.limit_images,
        )
        key = (spend.budget_public_id, spend.period_start)
        new = now_reached - _fired.get(key, frozenset())
        if not new:
            continue
        try:
            with transaction.atomic():  # a savepoint: a failure here never undoes the charge
                ids = _insert(spend, sorted(new))
        except DatabaseError:
            logger.exception("could not record the spend alerts of budget %s", spend.budget_id)
            continue
        transaction.on_commit(partial(_remember, key, now_reached))
        for alert_id in ids:
            logger.info("budget %s reached an alert threshold: alert %s", spend.budget_id, alert_id)
            transaction.on_commit(partial(queue_delivery, alert_id), robust=True)


def fire_standing(budget: Budget, period_start: datetime) -> None:
    """Fire the thresholds a budget's spend already stands at, after its limits or thresholds
    changed (within the caller's transaction): a budget a lowered limit made full charges no
    further request, so the settlement that would otherwise fire them never comes. `budget`
    as just read; its counters count only if `period_start` is the current period's."""
    if budget.period_start != period_start:
        return  # a past period's counters: this period has spent nothing yet
    fire_reached(
        [
            Spend(
                period_start,
                budget.pk,
                budget.public_id,
                budget.workspace_id,
                budget.used_micro,
                budget.used_images,
                budget.limit_micro,
                budget.limit_images,
                budget.alert_thresholds,
            )
        ]
    )


def _insert(spend: Spend, thresholds: list[int]) -> list[int]:
    adapt = connection.ops.adapt_datetimefield_value
    start, now = adapt(spend.period_start), adapt(timezone.now())
    params: list[Any] = []
    for threshold in thresholds:
        params += [
            public_id(),
            spend.workspace_id,
            spend.budget_id,
            start,
            threshold,
            spend.used_micro,
            spend.used_images,
            spend.limit_micro,
            spend.limit_images,
            now,
            SpendAlert.Delivery.PENDING,
            0,
            "",
            SpendAlert.Delivery.PENDING,
        ]
    with connection.cursor() as cursor:
        cursor.execute(_FIRE.format(rows=", ".join([_ROW] * len(thresholds))), params)
        return [row[0] for row in cursor.fetchall()]


def _remember(key: tuple[str, datetime], thresholds: frozenset[int]) -> None:
    if len(_fired) >= _FIRED_MAX_ENTRIES:
        _fired.clear()
    _fired[key] = _fired.get(key, frozenset()) | thresholds


def queue_delivery(alert_id: int) -> None:
    from billing.tasks import deliver_spend_alert  # the tasks module imports the budgets

    deliver_spend_alert.delay(alert_id)


# --- Configuration --------------------------------------------------------------------------


def clean_thresholds(value: Any) -> list[int]:
    """1 to 100 each, no repeats, at most ten; stored in ascending order."""
    if not isinstance(value, list) or not all(
        isinstance(t, int) and not isinstance(t, bool) for t in value
    ):
        raise ValidationError({"alert_thresholds": "Must be a list of whole percentages."})
    if len(value) > MAX_THRESHOLDS:
        raise ValidationError({"alert_thresholds": f"At most {MAX_THRESHOLDS} thresholds."})
    if any(not 1 <= t <= 100 for t in value):
        raise ValidationError({"alert_thresholds": "Each threshold is from 1 to 100 (percent)."})
    if len(set(value)) != len(value):
        raise ValidationError({"alert_thresholds": "A threshold appears twice."})
    return sorted(value)


def clean_emails(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(e, str) for e in value):
        raise ValidationError({"alert_emails": "Must be a list of email addresses."})
    if len(value) > MAX_EMAILS:
        raise ValidationError({"alert_emails": f"At most {MAX_EMAILS} addresses."})
    for address in value:
        try:
            validate_email(address)
        except ValidationError:
            raise ValidationError(
                {"alert_emails": f"{address!r} is not an email address."}
            ) from None
    return list(dict.fromkeys(value))


def clean_webhook_url(url: str) -> str:
    """https (http only for a host an operator allowlists), no user info or fragment, on a
    host that resolves to public addresses unless allowlisted (APERTURE_FETCH_ALLOWED_HOSTS).
    Delivery checks the address again when it connects (aperture/outbound.py)."""
    if not url:
        return ""
    problem = public_url_problem(url, query_allowed=True)
    if problem is not None:
        raise ValidationError({"alert_webhook_url": problem})
    return url


def masked_webhook_url(url: str) -> str:
    """The webhook URL as a key that cannot change it reads it: scheme and host only (its
    path or query often carries the receiver's token)."""
    if not url:
        return ""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}/…"


def masked_emails(addresses: Iterable[str]) -> list[str]:
    """The alert addresses as a key that cannot change them reads them: their domains."""
    return [f"…@{address.rpartition('@')[2]}" for address in addresses]


def clean_alert_fields(workspace: Workspace, fields: dict[str, Any]) -> dict[str, Any]:
    """The alert settings to store, or a ValidationError naming the field."""
    unknown = set(fields) - set(ALERT_FIELDS)
    if unknown:
        raise ValueError(f"not alert settings: {sorted(unknown)}")
    cleaned: dict[str, Any] = {}
    if "alert_thresholds" in fields:
        cleaned["alert_thresholds"] = clean_thresholds(fields["alert_thresholds"])
    if "alert_emails" in fields:
        cleaned["alert_emails"] = clean_emails(fields["alert_emails"])
    if "alert_webhook_url" in fields:
        cleaned["alert_webhook_url"] = clean_webhook_url(fields["alert_webhook_url"] or "")
        if cleaned["alert_webhook_url"] and not workspace.webhook_secret_ciphertext:
            raise ValidationError({"alert_webhook_url": NO_SIGNING_KEY})
    return cleaned


@transaction.atomic
def budget_set_alerts(*, actor: str, budget: Budget, fields: dict[str, Any]) -> Budget:
    """Set any of a budget's alert thresholds, webhook URL and email addresses. Writes only
    these columns (requests move the counters meanwhile). A threshold that spend has already
    passed this period fires at once."""
    from billing.budgets import period_start  # the budgets module imports this one

    cleaned = clean_alert_fields(budget.workspace, fields)
    if not cleaned:
        return budget
    Budget.objects.filter(pk=budget.pk).update(**cleaned, updated_at=timezone.now())
    for name, value in cleaned.items():
        setattr(budget, name, value)
    if "alert_thresholds" in cleaned:
        budget.refresh_from_db(fields=[*_STANDING])
        fire_standing(budget, period_start(budget.period, timezone.now()))
    data: dict[str, Any] = {"fields": sorted(cleaned)}
    if "alert_thresholds" in cleaned:
        data["alert_thresholds"] = cleaned["alert_thresholds"]
    if "alert_webhook_url" in cleaned:  # its host only: a query may carry the receiver's token
        data["alert_webhook_host"] = urlsplit(cleaned["alert_webhook_url"]).hostname or ""
    audit_record(
        actor=actor, event="budget.updated", target=budget, workspace=budget.workspace, data=data
    )
    return budget

"""Deployment health as operators and callers see it: each deployment's state in words (the
admin, `manage.py health`) and which aliases have every circuit open (`/v1/models`).

Every read here asks routing/health.py once for a whole list of deployments: one round trip
to Redis for a changelist page, a table or a model list, never one per row.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from django.utils import timezone

from routing import health
from routing.models import Deployment

_ATTACHED = "_aperture_health"  # where attach() leaves a deployment's health


def when(timestamp: float) -> str:
    """A health timestamp (the gateway's clock) in the site's time zone, to the second."""
    moment = timezone.localtime(datetime.fromtimestamp(timestamp, tz=UTC))
    return moment.strftime("%Y-%m-%d %H:%M:%S %Z")


@dataclass(frozen=True)
class Health:
    status: str  # health.CLOSED, health.OPEN or health.HALF_OPEN
    open_until: float
    failures: int  # in the current window
    last_error: str
    last_failure_at: float

    @property
    def label(self) -> str:
        """ "closed", "open until 2026-12-02 14:03:22 UTC" or "half-open"."""
        if self.status == health.OPEN:
            return f"open until {when(self.open_until)}"
        return self.status


def health_of(deployment_ids: Sequence[int]) -> dict[int, Health]:
    """Each deployment's health now (one read of the shared state for all of them)."""
    now = time.time()
    return {
        deployment_id: Health(
            status=state.status(now),
            open_until=state.open_until,
            failures=state.failures,
            last_error=state.last_error,
            last_failure_at=state.last_failure_at,
        )
        for deployment_id, state in health.states(list(deployment_ids)).items()
    }


def attach(deployments: Iterable[Deployment]) -> None:
    """Read the health of these deployments at once and keep it on each (for `of`)."""
    rows = [d for d in deployments if d.pk is not None]
    found = health_of([d.pk for d in rows])
    for deployment in rows:
        setattr(deployment, _ATTACHED, found[deployment.pk])


def of(deployment: Deployment) -> Health:
    """The health `attach` left on this deployment; read alone if it left none."""
    found = getattr(deployment, _ATTACHED, None)
    if not isinstance(found, Health):
        found = health_of([deployment.pk])[deployment.pk]
        setattr(deployment, _ATTACHED, found)
    return found


def all_open(deployments_by_alias: Mapping[int, Sequence[Deployment]]) -> set[int]:
    """The aliases whose every deployment's circuit is open (cooling down, not half-open)."""
    found = health_of([d.pk for rows in deployments_by_alias.values() for d in rows])
    return {
        alias_id
        for alias_id, rows in deployments_by_alias.items()
        if rows and all(found[d.pk].status == health.OPEN for d in rows)
    }


@dataclass(frozen=True)
class Row:
    alias: str
    credential: str
    provider: str
    model: str
    health: Health


def table() -> list[Row]:
    """Every enabled deployment with its health, by scope, alias and fallback order."""
    deployments = list(
        Deployment.objects.filter(enabled=True)
        .select_related("alias__workspace", "credential")
        .order_by("alias__workspace__slug", "alias__name", "priority", "id")
    )
    found = health_of([d.pk for d in deployments])
    return [
        Row(
            alias=str(d.alias),
            credential=d.credential.name,
            provider=d.credential.provider,
            model=d.upstream_model,
            health=found[d.pk],
        )
        for d in deployments
    ]

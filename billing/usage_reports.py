"""Reads of usage for the management API: records and their aggregates, scoped by workspace.

Aggregates are computed from the usage records themselves, so they are exact up to the
last request (the daily rollup serves the operators' dashboards).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.db.models import Count, F, Q, QuerySet, Sum
from django.db.models.functions import TruncDate

from billing.models import UsageRecord

GROUPS = ("day", "alias", "key", "team")


@dataclass(frozen=True)
class UsageQuery:
    """Which records: always one workspace; optionally a team, a key, an alias, a status
    (an HTTP status, or `success` / `error`), and a time range [start, end)."""

    workspace_id: int
    team_id: int | None = None
    key_id: int | None = None
    alias: str | None = None
    status: str | None = None
    start: datetime | None = None
    end: datetime | None = None


@dataclass(frozen=True)
class SummaryRow:
    group: str
    label: str
    requests: int
    images: int
    errors: int
    cost_micro: int


def _status_filter(status: str) -> Q:
    if status == "success":
        return Q(status__lt=400)
    if status == "error":
        return Q(status__gte=400)
    return Q(status=int(status))


def usage_records(query: UsageQuery) -> QuerySet[UsageRecord]:
    records = UsageRecord.objects.filter(workspace_id=query.workspace_id)
    if query.team_id is not None:
        records = records.filter(team_id=query.team_id)
    if query.key_id is not None:
        records = records.filter(key_id=query.key_id)
    if query.alias is not None:
        records = records.filter(alias=query.alias)
    if query.status is not None:
        records = records.filter(_status_filter(query.status))
    if query.start is not None:
        records = records.filter(created_at__gte=query.start)
    if query.end is not None:
        records = records.filter(created_at__lt=query.end)
    return records


_GROUP_COLUMNS: dict[str, tuple[Any, Any]] = {
    # group → (the grouped value, its human label)
    "day": (TruncDate("created_at", tzinfo=UTC), None),
    "alias": (F("alias"), None),
    "key": (F("key__public_id"), F("key__name")),
    "team": (F("team__public_id"), F("team__slug")),
}


def usage_summary(query: UsageQuery, group_by: str) -> list[SummaryRow]:
    """Requests, images, errors (status ≥ 400) and cost per day, alias, key or team."""
    value, label = _GROUP_COLUMNS[group_by]
    annotations = {"group": value, **({"label": label} if label is not None else {})}
    rows = (
        usage_records(query)
        .annotate(**annotations)
        .values(*annotations)
        .annotate(
            requests=Count("id"),
            images=Sum("images"),
            errors=Count("id", filter=Q(status__gte=400)),
            cost=Sum("cost_micro"),
        )
        .order_by("group")
    )
    return [
        SummaryRow(
            group=str(row["group"]),
            label=str(row.get("label", row["group"])),
            requests=row["requests"],
            images=row["images"] or 0,
            errors=row["errors"],
            cost_micro=row["cost"] or 0,
        )
        for row in rows
    ]


def totals(rows: list[SummaryRow]) -> dict[str, int]:
    return {
        "requests": sum(r.requests for r in rows),
        "images": sum(r.images for r in rows),
        "errors": sum(r.errors for r in rows),
        "cost_micro": sum(r.cost_micro for r in rows),
    }

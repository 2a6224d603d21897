"""Reads of usage for the management API: records and their aggregates, scoped by workspace.

Aggregates are computed from the usage records themselves, so they are exact up to the
last request (the daily rollup serves the operators' dashboards).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from django.db.models import Count, F, Q, QuerySet, Sum
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import TruncDate

from aperture.api_fields import usd
from billing.models import UsageRecord
from tenants.models import ApiKey, Team

GROUPS = ("day", "alias", "key", "team", "user")
# A request's metadata keys (routing/images/attribution.py checks them against this); a summary
# groups by one as `metadata.<key>`, and the records filter on one as `metadata.<key>=<value>`.
METADATA_KEY = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
METADATA_PREFIX = "metadata."


@dataclass(frozen=True)
class UsageQuery:
    """Which records: always one workspace; optionally a team, a key, an alias, a status
    (an HTTP status, or `success` / `error`), a time range [start, end), an end user, and
    metadata values (key, value): every one of them."""

    workspace_id: int
    team_id: int | None = None
    key_id: int | None = None
    alias: str | None = None
    status: str | None = None
    start: datetime | None = None
    end: datetime | None = None
    end_user: str | None = None
    metadata: tuple[tuple[str, str], ...] = ()


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
    if query.end_user is not None:
        records = records.filter(end_user=query.end_user)
    for index, (key, value) in enumerate(query.metadata):
        # Annotated, not `metadata__<key>`: a key may hold "__", which a lookup would split.
        name = f"_metadata_{index}"
        records = records.alias(**{name: KeyTextTransform(key, "metadata")})
        records = records.filter(**{name: value})
    return records


# group → the grouped column; keys and teams group on their integer id (no join), then
# are named with one query. `metadata.<key>` groups on that key's value ("" where unset).
_GROUP_COLUMNS: dict[str, Any] = {
    "day": TruncDate("created_at", tzinfo=UTC),
    "alias": F("alias"),
    "key": F("key_id"),
    "team": F("team_id"),
    "user": F("end_user"),
}


def _group_column(group_by: str) -> Any:
    if group_by.startswith(METADATA_PREFIX):
        return KeyTextTransform(group_by.removeprefix(METADATA_PREFIX), "metadata")
    return _GROUP_COLUMNS[group_by]


def _names(group_by: str, ids: list[Any]) -> dict[Any, tuple[str, str]]:
    """id → (public id, label) for the key or team groups."""
    rows: Iterable[tuple[Any, str, str]]
    if group_by == "key":
        rows = ApiKey.objects.filter(pk__in=ids).values_list("pk", "public_id", "name")
    elif group_by == "team":
        rows = Team.objects.filter(pk__in=ids).values_list("pk", "public_id", "slug")
    else:
        return {value: ("" if value is None else str(value),) * 2 for value in ids}
    return {pk: (public_id, label) for pk, public_id, label in rows}


def usage_summary(query: UsageQuery, group_by: str) -> list[SummaryRow]:
    """Requests, images, errors (status ≥ 400) and cost per day, alias, key, team, end user
    or metadata value."""
    rows = list(
        usage_records(query)
        .annotate(group=_group_column(group_by))
        .values("group")
        .annotate(
            requests=Count("id"),
            images=Sum("images"),
            errors=Count("id", filter=Q(status__gte=400)),
            cost=Sum("cost_micro"),
        )
        .order_by()
    )
    names = _names(group_by, [row["group"] for row in rows])
    summary = [
        SummaryRow(
            group=names[row["group"]][0],
            label=names[row["group"]][1],
            requests=row["requests"],
            images=row["images"] or 0,
            errors=row["errors"],
            cost_micro=row["cost"] or 0,
        )
        for row in rows
    ]
    return sorted(summary, key=lambda row: row.group)


# The records' CSV: the JSON record's fields, read as plain tuples (no serializer per row).
# `cost_*` is what the tenant was charged; the provider's cost (`provider_cost_micro`) and the
# price applied (`price_snapshot`) are the operator's, never in the tenant's API.
RECORD_COLUMNS = (
    "request_id",
    "client_request_id",
    "created_at",
    "team",
    "key",
    "alias",
    "provider",
    "upstream_model",
    "endpoint",
    "method",
    "path",
    "status",
    "error_code",
    "images",
    "size",
    "quality",
    "input_tokens",
    "output_tokens",
    "cost_micro",
    "cost_usd",
    "total_ms",
    "upstream_ms",
    "bytes_in",
    "bytes_out",
    "user",
    "metadata",
)
_SOURCE = {
    "team": "team__public_id",
    "key": "key__public_id",
    "cost_usd": "cost_micro",
    "user": "end_user",
}


def record_rows(query: UsageQuery, chunk_size: int = 5000) -> Iterator[list[Any]]:
    """Every matching record, oldest first, as rows of RECORD_COLUMNS."""
    fields = [_SOURCE.get(column, column) for column in RECORD_COLUMNS]
    created, cost = RECORD_COLUMNS.index("created_at"), RECORD_COLUMNS.index("cost_usd")
    metadata = RECORD_COLUMNS.index("metadata")
    ordered = usage_records(query).order_by("created_at", "id").values_list(*fields)
    for values in ordered.iterator(chunk_size=chunk_size):
        row = list(values)
        row[created] = row[created].isoformat().replace("+00:00", "Z")
        row[cost] = usd(row[cost])
        row[metadata] = orjson.dumps(row[metadata] or {}, option=orjson.OPT_SORT_KEYS).decode()
        yield row


def totals(rows: list[SummaryRow]) -> dict[str, int]:
    return {
        "requests": sum(r.requests for r in rows),
        "images": sum(r.images for r in rows),
        "errors": sum(r.errors for r in rows),
        "cost_micro": sum(r.cost_micro for r in rows),
    }

"""What the dashboard reads of the hourly rollup: its rows summed per period and group, in
three grouped queries (usage by workspace, alias and provider; spend by key; upstream errors
by deployment).

The last 24 hours are read live, per hour: about a day of rows. The last 30 days are made of
one summary per day, each kept in the shared cache under the mark that its day's last rollup
left (billing.rollups.rolled_marks): a past day is summed once and read back after that,
today again after each rollup (every 5 minutes). So a page reads a day of rows, not a month.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import reduce
from operator import or_
from typing import Any, cast

from django.core.cache import cache
from django.db.models import F, IntegerField, Q, QuerySet, Sum
from django.db.models.fields.json import KT
from django.db.models.functions import Cast, TruncDay

from billing.models import HourlyUsage
from billing.rollups import LATENCY_BUCKETS, rolled_marks

# requests, images, errors, upstream errors, cost (µUSD), total ms, then the latency buckets
Measures = tuple[int, ...]
MEASURES = ("requests", "images", "errors", "upstream_errors", "cost_micro", "total_ms")
_SUMMARY = "dashboard:v1:day:{day}:{mark}"
SUMMARY_SECONDS = 32 * 86400
UNMARKED_SECONDS = 3600


@dataclass
class Sums:
    """Rollup rows of some periods (hours or days), summed per period and: workspace, alias
    and provider; workspace and key; workspace, deployment and provider (where upstream
    errors were counted)."""

    usage: list[tuple[datetime, int, str, str, Measures]] = field(default_factory=list)
    # day (None: the whole range), workspace, key, cost (µUSD), requests, images
    keys: list[tuple[datetime | None, int, int, int, int, int]] = field(default_factory=list)
    # day (None: the whole range), workspace, deployment (0: none), provider, upstream
    # errors, requests served
    deployments: list[tuple[datetime | None, int, int, str, int, int]] = field(default_factory=list)

    def extend(self, other: Sums) -> None:
        self.usage += other.usage
        self.keys += other.keys
        self.deployments += other.deployments

    def of_workspace(self, workspace_id: int) -> Sums:
        return Sums(
            usage=[row for row in self.usage if row[1] == workspace_id],
            keys=[row for row in self.keys if row[1] == workspace_id],
            deployments=[row for row in self.deployments if row[1] == workspace_id],
        )


def _measures() -> dict[str, Any]:
    """The sums of a grouped query, the latency buckets summed element by element in SQL."""
    return {
        **{f"{name}_sum": Sum(name) for name in MEASURES},
        **{
            f"bucket_{i}": Sum(Cast(KT(f"latency_buckets__{i}"), IntegerField()))
            for i in range(LATENCY_BUCKETS)
        },
    }


def _read(rows: QuerySet[HourlyUsage], period: Any, *, daily: bool) -> Sums:
    """Three grouped queries over `rows`: usage per `period` (the hour, or its day); keys and
    deployments per day too if `daily` (a day's summary), else over the whole range."""
    usage = rows.values("workspace_id", "alias", "provider", period=period).annotate(**_measures())
    per_day = {"period": period} if daily else {}
    keys = rows.values("workspace_id", "key_id", **per_day).annotate(
        cost=Sum("cost_micro"), requests_sum=Sum("requests"), images_sum=Sum("images")
    )
    deployments = (
        rows.values("workspace_id", "deployment_id", "provider", **per_day)
        .annotate(failed=Sum("upstream_errors"), served=Sum("requests"))
        .filter(failed__gt=0)
    )
    return Sums(
        usage=[
            (
                r["period"],
                r["workspace_id"],
                r["alias"],
                r["provider"],
                tuple(r[f"{name}_sum"] or 0 for name in MEASURES)
                + tuple(r[f"bucket_{i}"] or 0 for i in range(LATENCY_BUCKETS)),
            )
            for r in cast("Iterable[dict[str, Any]]", usage)
        ],
        keys=[
            (
                r.get("period"),
                r["workspace_id"],
                r["key_id"],
                r["cost"] or 0,
                r["requests_sum"] or 0,
                r["images_sum"] or 0,
            )
            for r in cast("Iterable[dict[str, Any]]", keys)
        ],
        deployments=[
            (
                r.get("period"),
                r["workspace_id"],
                r["deployment_id"],
                r["provider"],
                r["failed"],
                r["served"] or 0,
            )
            for r in cast("Iterable[dict[str, Any]]", deployments)
        ],
    )


def hourly(start: datetime, end: datetime, workspace_id: int | None = None) -> Sums:
    """The rows of [start, end) summed per hour, read live."""
    rows = HourlyUsage.objects.filter(hour__gte=start, hour__lt=end).order_by()
    if workspace_id is not None:
        rows = rows.filter(workspace_id=workspace_id)
    return _read(rows, F("hour"), daily=False)


def _read_days(days: list[datetime]) -> dict[date, Sums]:
    """These days (midnights, UTC) summed per day, read live in one set of queries."""
    found = {day.date(): Sums() for day in days}
    if not days:
        return found
    rows = HourlyUsage.objects.filter(
        reduce(or_, (Q(hour__gte=day, hour__lt=day + timedelta(days=1)) for day in days))
    ).order_by()
    read = _read(rows, TruncDay("hour", tzinfo=UTC), daily=True)
    for usage in read.usage:
        found[usage[0].date()].usage.append(usage)
    for key in read.keys:
        assert key[0] is not None
        found[key[0].date()].keys.append(key)
    for deployment in read.deployments:
        assert deployment[0] is not None
        found[deployment[0].date()].deployments.append(deployment)
    return found


def _names(days: list[datetime]) -> tuple[dict[datetime, str], set[datetime]]:
    """Each day's cache key under its current mark, and the days that have a mark."""
    marks = rolled_marks([day.date() for day in days])
    names = {
        day: _SUMMARY.format(day=day.date().isoformat(), mark=marks.get(day.date(), "none"))
        for day in days
    }
    return names, {day for day in days if day.date() in marks}


def _read_and_keep(
    missing: list[datetime], names: dict[datetime, str], marked: set[datetime]
) -> dict[date, Sums]:
    read = _read_days(missing)
    for with_mark in (True, False):
        keep = {names[d]: read[d.date()] for d in missing if (d in marked) is with_mark}
        if keep:
            cache.set_many(keep, SUMMARY_SECONDS if with_mark else UNMARKED_SECONDS)
    return read


def warm(days: list[datetime]) -> int:
    """Read and keep the summaries of these days that the cache lacks; how many."""
    names, marked = _names(days)
    kept = cache.get_many(list(names.values()))
    missing = [day for day in days if names[day] not in kept]
    _read_and_keep(missing, names, marked)
    return len(missing)


def daily(days: list[datetime], workspace_id: int | None = None) -> Sums:
    """These days (midnights, UTC) summed per day: each from the cache where its summary
    under its current mark is kept, else read (every such day at once) and kept. A day
    without a mark (no rollup since the cache began) is kept for an hour only: its mark may
    have been evicted after a rollup."""
    names, marked = _names(days)
    kept: dict[str, Sums] = cache.get_many(list(names.values()))
    missing = [day for day in days if names[day] not in kept]
    read = _read_and_keep(missing, names, marked)
    total = Sums()
    for day in days:
        summary = kept[names[day]] if names[day] in kept else read[day.date()]
        total.extend(summary if workspace_id is None else summary.of_workspace(workspace_id))
    return total

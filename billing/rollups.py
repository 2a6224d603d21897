"""Aggregates of usage records for dashboards: per day (DailyUsage, the management API's
usage reports) and per hour (HourlyUsage, the operators' dashboard), written by Celery."""

import time as clock
import uuid
import zlib
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, cast

from django.core.cache import cache
from django.db import connection, transaction
from django.db.models import Case, CharField, Count, F, Max, Min, Q, QuerySet, Sum, Value, When
from django.db.models.functions import Coalesce

from billing.models import DailyUsage, HourlyUsage, UsageRecord


def _percentile(values: list[int], p: float) -> int:
    if not values:
        return 0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


@transaction.atomic
def rollup_day(day: date) -> int:
    """Recompute the day's rows (idempotent); returns how many groups were written."""
    start = datetime.combine(day, time.min, tzinfo=UTC)
    records = UsageRecord.objects.filter(
        created_at__gte=start, created_at__lt=start + timedelta(days=1)
    )
    groups = records.values("workspace_id", "team_id", "key_id", "alias").annotate(
        requests=Count("id"),
        images=Sum("images"),
        errors=Count("id", filter=Q(status__gte=400)),
        cost=Sum("cost_micro"),
    )
    latencies: dict[tuple[int, int, int, str], list[int]] = {}
    for row in records.values_list("workspace_id", "team_id", "key_id", "alias", "total_ms"):
        latencies.setdefault(row[:4], []).append(row[4])
    DailyUsage.objects.filter(day=day).delete()
    DailyUsage.objects.bulk_create(
        DailyUsage(
            day=day,
            workspace_id=g["workspace_id"],
            team_id=g["team_id"],
            key_id=g["key_id"],
            alias=g["alias"],
            requests=g["requests"],
            images=g["images"] or 0,
            errors=g["errors"],
            cost_micro=g["cost"] or 0,
            p50_ms=_percentile(
                latencies[(g["workspace_id"], g["team_id"], g["key_id"], g["alias"])], 50
            ),
            p95_ms=_percentile(
                latencies[(g["workspace_id"], g["team_id"], g["key_id"], g["alias"])], 95
            ),
        )
        for g in groups
    )
    return len(groups)


# --- Hourly rollup ----------------------------------------------------------------------

# Latency buckets, in ms: bucket i counts requests with LATENCY_BOUNDS_MS[i-1] < total_ms <=
# LATENCY_BOUNDS_MS[i]; one more bucket counts the slower ones. Counts add up over any range,
# so a percentile of a day or a month merges the hours' buckets instead of reading records.
# Finer where image generation spends its time (1-60 s); refusals take milliseconds.
LATENCY_BOUNDS_MS: tuple[int, ...] = (
    50,
    100,
    250,
    500,
    1_000,
    2_000,
    3_000,
    5_000,
    7_500,
    10_000,
    15_000,
    20_000,
    30_000,
    45_000,
    60_000,
    90_000,
    120_000,
    300_000,
)
LATENCY_BUCKETS = len(LATENCY_BOUNDS_MS) + 1

# A failed upstream call through the upstream's fault (routing.router.outcome_of): the failures
# that count against a deployment's health. "rejected" and "moderated" are the request's own.
UPSTREAM_FAILED_OUTCOMES = frozenset(
    {"failed", "timeout", "unreachable", "rate_limited", "auth_failed"}
)

# workspace, team, key, alias, provider, deployment (0: none): one HourlyUsage row of an hour
_Group = tuple[int, int, int, str, str, int]


# The gateway's codes for a request that failed through its upstream (routing.providers.errors,
# routing.relay); "upstream_rejected" is the request's own fault.
UPSTREAM_ERROR_CODES = frozenset(
    {
        "upstream_error",
        "upstream_timeout",
        "upstream_auth_failed",
        "upstream_rate_limited",
        "upstream_stream_broken",
    }
)


def failed_upstream(status: int, error_code: str) -> bool:
    """Whether a request failed through its upstream: the gateway answered with one of its
    upstream codes, or a passthrough relayed an upstream's 5xx (which carries no code of the
    gateway's own)."""
    return error_code in UPSTREAM_ERROR_CODES or (status >= 500 and not error_code)


def latency_bucket(ms: int) -> int:
    """The bucket that counts a request of `ms` milliseconds."""
    return bisect_left(LATENCY_BOUNDS_MS, ms)


def latency_percentile(buckets: Sequence[int], p: float) -> int | None:
    """The p-th percentile (ms) of bucket counts, interpolated linearly inside its bucket
    (as Prometheus' histogram_quantile does); the open-ended slowest bucket answers its lower
    bound. None when nothing was counted."""
    total = sum(buckets)
    if total == 0:
        return None
    rank = p / 100 * total
    seen = 0
    for index, count in enumerate(buckets):
        if count and seen + count >= rank:
            if index >= len(LATENCY_BOUNDS_MS):
                return LATENCY_BOUNDS_MS[-1]
            lower = LATENCY_BOUNDS_MS[index - 1] if index else 0
            upper = LATENCY_BOUNDS_MS[index]
            return round(lower + (upper - lower) * (rank - seen) / count)
        seen += count
    return LATENCY_BOUNDS_MS[-1]


def hour_start(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


@dataclass
class _Row:
    requests: int = 0
    images: int = 0
    errors: int = 0
    upstream_errors: int = 0
    cost_micro: int = 0
    total_ms: int = 0
    latency_buckets: list[int] = field(default_factory=lambda: [0] * LATENCY_BUCKETS)


def _bucket_counts() -> dict[str, Count]:
    """One filtered COUNT per latency bucket, computed by the grouped query itself."""
    counts = {}
    lower = None
    for index in range(LATENCY_BUCKETS):
        upper = LATENCY_BOUNDS_MS[index] if index < len(LATENCY_BOUNDS_MS) else None
        condition = Q()
        if lower is not None:
            condition &= Q(total_ms__gt=lower)
        if upper is not None:
            condition &= Q(total_ms__lte=upper)
        counts[f"bucket_{index}"] = Count("id", filter=condition)
        lower = upper
    return counts


# A model name no alias has is the caller's own text: its record keeps it, but the rollup
# (and so the dashboard) groups every such request under "", so random names add no rows.
ROLLED_ALIAS = Case(
    When(error_code="model_not_found", then=Value("")),
    default=F("alias"),
    output_field=CharField(),
)


def _upstream_failures(records: QuerySet[UsageRecord]) -> Counter[_Group]:
    """Failed upstream calls per row. Each failed attempt counts on the deployment (and
    provider) it was made to, so a primary failing behind a successful fallback shows; a
    request that failed upstream without a failed attempt (a passthrough's 5xx, a stream
    broken midway) counts once on the deployment that answered."""
    failures: Counter[_Group] = Counter()
    # Only a request that failed, or fell back (it has a second attempt), holds a failure.
    suspected = records.filter(Q(status__gte=400) | Q(attempts__1__isnull=False))
    suspects = suspected.annotate(rolled_alias=ROLLED_ALIAS).values_list(
        "workspace_id",
        "team_id",
        "key_id",
        "rolled_alias",
        "provider",
        "deployment_id",
        "status",
        "error_code",
        "attempts",
    )
    for ws, team, key, alias, provider, deployment, status, code, attempts in suspects.iterator(
        chunk_size=2000
    ):
        failed = [a for a in attempts or [] if _failed_attempt(a)]
        for attempt in failed:
            called = str(attempt.get("provider") or provider)
            failures[(ws, team, key, alias, called, int(attempt.get("deployment") or 0))] += 1
        if not failed and failed_upstream(status, code):
            failures[(ws, team, key, alias, provider, deployment or 0)] += 1
    return failures


def _failed_attempt(attempt: Any) -> bool:
    return isinstance(attempt, dict) and attempt.get("outcome") in UPSTREAM_FAILED_OUTCOMES


@transaction.atomic
def rollup_hour(hour: datetime) -> int:
    """Recompute the HourlyUsage rows of the hour that holds `hour` from its usage records
    (idempotent): one grouped query that also counts the latency buckets, and one pass over
    the requests that failed or fell back for the upstream errors. Returns the rows written."""
    start = hour_start(hour)
    _lock_hour(start)
    records = UsageRecord.objects.filter(
        created_at__gte=start, created_at__lt=start + timedelta(hours=1)
    )
    groups = (
        records.order_by()
        .annotate(rolled_alias=ROLLED_ALIAS)
        .values(
            "workspace_id",
            "team_id",
            "key_id",
            "rolled_alias",
            "provider",
            deployment=Coalesce("deployment_id", Value(0)),
        )
        .annotate(
            requests=Count("id"),
            images_sum=Sum("images"),
            errors=Count("id", filter=Q(status__gte=400)),
            cost=Sum("cost_micro"),
            ms=Sum("total_ms"),
            **_bucket_counts(),
        )
    )
    rows: dict[_Group, _Row] = {}
    for g in cast("Iterable[dict[str, Any]]", groups):
        group = (
            g["workspace_id"],
            g["team_id"],
            g["key_id"],
            g["rolled_alias"],
            g["provider"],
            g["deployment"],
        )
        rows[group] = _Row(
            requests=g["requests"],
            images=g["images_sum"] or 0,
            errors=g["errors"],
            cost_micro=g["cost"] or 0,
            total_ms=g["ms"] or 0,
            latency_buckets=[g[f"bucket_{i}"] for i in range(LATENCY_BUCKETS)],
        )
    for group, count in _upstream_failures(records).items():
        # A deployment that failed and served nothing this hour gets a row of its own.
        rows.setdefault(group, _Row()).upstream_errors += count
    HourlyUsage.objects.filter(hour=start).delete()
    transaction.on_commit(lambda: _mark_rolled(start))
    HourlyUsage.objects.bulk_create(
        (
            HourlyUsage(
                hour=start,
                workspace_id=ws,
                team_id=team,
                key_id=key,
                alias=alias,
                provider=provider,
                deployment_id=deployment,
                requests=row.requests,
                images=row.images,
                errors=row.errors,
                upstream_errors=row.upstream_errors,
                cost_micro=row.cost_micro,
                total_ms=row.total_ms,
                latency_buckets=row.latency_buckets,
            )
            for (ws, team, key, alias, provider, deployment), row in rows.items()
        ),
        batch_size=1000,
    )
    return len(rows)


# Any int4 of this project's own, for pg_advisory_xact_lock(namespace, hour).
_HOUR_LOCK_NAMESPACE = zlib.crc32(b"billing.rollups.rollup_hour") >> 1


def _lock_hour(start: datetime) -> None:
    """Rollups of one hour take turns (the beat's and an operator's backfill, two page loads):
    the second waits for the first to commit, then recomputes the hour from what it sees,
    instead of failing on the first's rows. SQLite has one writer at a time already."""
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_advisory_xact_lock(%s, %s)",
            [_HOUR_LOCK_NAMESPACE, int(start.timestamp()) // 3600],
        )


def catch_up(now: datetime, *, days: int = 30) -> int:
    """Roll up every hour from the one before the hour the last catch-up reached (records of
    a request that ended late land there) to now's, at most `days` back: the beat's run, and
    the dashboard's without a beat (the embedded default). Hours missed while neither ran are
    rolled up then, and idle hours are not rolled up again. Without a mark (the first run, a
    cache flushed): from the hour before the newest rolled up, else from the oldest record."""
    oldest = now - timedelta(days=days)
    reached = rolled_to()
    if reached is None:
        reached = HourlyUsage.objects.aggregate(newest=Max("hour"))["newest"]
    if reached is not None:
        since = max(reached - timedelta(hours=1), oldest)
    else:  # nothing rolled up yet: no hour has rows to replace before the first record
        first = UsageRecord.objects.filter(created_at__gte=oldest).aggregate(
            first=Min("created_at")
        )["first"]
        since = first or now
    written = rollup_hours(since, now)
    cache.set(_REACHED, hour_start(now), MARK_SECONDS)
    return written


def rollup_hours(since: datetime, until: datetime) -> int:
    """Roll up every hour from the one holding `since` to the one holding `until` (a
    backfill, e.g. after an upgrade: each hour is its own transaction). Rows written."""
    hour, last, written = hour_start(since), hour_start(until), 0
    while hour <= last:
        written += rollup_hour(hour)
        hour += timedelta(hours=1)
    return written


# --- Marks: when each day's hourly rows last changed ---------------------------------------
# Each rollup of an hour leaves a new mark on its day, in the shared cache, once committed: a
# reader may keep what it summed of a day under the day's mark, and knows it stale when the
# mark moves. A day without a mark (never rolled, or evicted) is to be read afresh.

_MARK = "billing:hourly-usage:rolled:{day}"
_LAST = "billing:hourly-usage:rolled-at"
_REACHED = "billing:hourly-usage:caught-up-to"  # the hour the last catch_up reached
MARK_SECONDS = 40 * 86400  # longer than any range a dashboard shows


def _mark_rolled(hour: datetime) -> None:
    cache.set_many(
        {_MARK.format(day=hour.date().isoformat()): uuid.uuid4().hex, _LAST: clock.time()},
        MARK_SECONDS,
    )


def rolled_marks(days: Sequence[date]) -> dict[date, str]:
    """The current mark of each day that has one (one round trip to the cache)."""
    keys = {_MARK.format(day=day.isoformat()): day for day in days}
    return {keys[key]: mark for key, mark in cache.get_many(list(keys)).items()}


def rolled_within(seconds: float) -> bool:
    """Whether any hour was rolled up in the last `seconds` (in any process)."""
    last = cache.get(_LAST)
    return isinstance(last, float) and clock.time() - last < seconds


def rolled_to() -> datetime | None:
    """The hour the last catch-up reached (its current hour then), if the cache knows it."""
    reached = cache.get(_REACHED)
    return reached if isinstance(reached, datetime) else None

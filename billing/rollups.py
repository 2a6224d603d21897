"""Daily aggregates of usage records, per workspace/team/key/alias, for dashboards."""

from datetime import UTC, date, datetime, time, timedelta

from django.db import transaction
from django.db.models import Count, Q, Sum

from billing.models import DailyUsage, UsageRecord


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

"""Celery housekeeping: release orphaned reservations; roll usage up per day."""

from datetime import date, timedelta

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from billing import budgets, rollups


@shared_task(name="billing.tasks.reap_reservations")
def reap_reservations() -> int:
    return budgets.reap_orphaned_reservations(
        older_than=timedelta(seconds=settings.RESERVATION_TTL_SECONDS)
    )


@shared_task(name="billing.tasks.rollup_daily_usage")
def rollup_daily_usage(day: str | None = None) -> int:
    """Roll up `day` (ISO date), or today and yesterday (late records land in both)."""
    if day is not None:
        return rollups.rollup_day(date.fromisoformat(day))
    today = timezone.now().date()
    return rollups.rollup_day(today - timedelta(days=1)) + rollups.rollup_day(today)

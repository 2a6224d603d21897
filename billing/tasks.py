"""Celery housekeeping: release orphaned reservations and expired budget slices; roll usage up
per day and per hour."""

from datetime import date, datetime, timedelta

from celery import Task, shared_task
from django.conf import settings
from django.utils import timezone

from billing import alert_delivery, budgets, leases, rollups


@shared_task(name="billing.tasks.reap_reservations")
def reap_reservations() -> int:
    """Release the holds of crashed workers and the expired slices of stopped processes."""
    return (
        budgets.reap_orphaned_reservations(
            older_than=timedelta(seconds=settings.RESERVATION_TTL_SECONDS)
        )
        + leases.reap_expired()
    )


@shared_task(name="billing.tasks.rollup_daily_usage")
def rollup_daily_usage(day: str | None = None) -> int:
    """Roll up `day` (ISO date), or today and yesterday (late records land in both)."""
    if day is not None:
        return rollups.rollup_day(date.fromisoformat(day))
    today = timezone.now().date()
    return rollups.rollup_day(today - timedelta(days=1)) + rollups.rollup_day(today)


@shared_task(name="billing.tasks.rollup_hourly_usage")
def rollup_hourly_usage(hour: str | None = None, hours: int | None = None) -> int:
    """Roll up `hour` (ISO datetime within it); the last `hours` hours up to the current one
    (a backfill, e.g. `hours=720` after an upgrade); or by default (the beat's run) every hour
    since the one the last run reached, and the one before it, which catches records written
    late (a request is recorded when it ends) and hours missed while the beat was down."""
    if hour is not None:
        return rollups.rollup_hour(datetime.fromisoformat(hour))
    now = timezone.now()
    if hours is None:
        return rollups.catch_up(now)
    return rollups.rollup_hours(now - timedelta(hours=max(hours, 1) - 1), now)


@shared_task(
    bind=True,
    name="billing.tasks.deliver_spend_alert",
    max_retries=alert_delivery.RETRIES,
    # A backstop: an attempt is bounded by its own deadline and the email timeout, so a
    # tenant's slow receivers cannot hold the worker's slots from the reaper and rollups.
    soft_time_limit=60,
    time_limit=90,
)
def deliver_spend_alert(self: Task, alert_id: int) -> None:
    """Deliver a spend alert; a worker retries with backoff while a channel is still pending.
    Run eagerly (the embedded default) there is no worker to wait: a few tries at once."""
    if self.request.is_eager:
        alert_delivery.deliver_at_once(alert_id=alert_id)
        return
    tries = self.request.retries
    if alert_delivery.deliver(alert_id=alert_id, final=tries >= alert_delivery.RETRIES):
        raise self.retry(countdown=alert_delivery.backoff(tries))

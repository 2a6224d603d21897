"""Celery tasks of the gateway layer: keep the dashboard's month of day summaries warm."""

from celery import shared_task
from django.utils import timezone

from gateway.dashboard import selectors


@shared_task(name="gateway.tasks.warm_dashboard")
def warm_dashboard() -> int:
    """Sum the days of the dashboard's month that the cache lacks (after a restart, a day
    rolled up again, today), so that no page load has to: how many days were read."""
    return selectors.warm(timezone.now())

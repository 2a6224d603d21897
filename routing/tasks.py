"""Celery tasks of routing: the periodic probes of deployments whose circuit is open."""

from celery import shared_task

from routing import probes


@shared_task(name="routing.tasks.probe_open_deployments", ignore_result=True)
def probe_open_deployments() -> int:
    """Probe open deployments (bounded: routing/probes.py); returns how many answered."""
    return sum(1 for probe in probes.open_deployments_probe() if probe.ok)

"""Celery tasks of routing: async image jobs (routing/jobs) and their webhooks, retention,
and the periodic probes of deployments whose circuit is open."""

from typing import Any

from celery import current_app, shared_task
from django.utils import timezone

from routing import probes
from routing.jobs import retention, run, webhooks


@shared_task(name="routing.tasks.probe_open_deployments", ignore_result=True)
def probe_open_deployments() -> int:
    """Probe open deployments (bounded: routing/probes.py); returns how many answered."""
    return sum(1 for probe in probes.open_deployments_probe() if probe.ok)


@shared_task(name="routing.tasks.run_image_job", ignore_result=True, acks_late=True)
def run_image_job(job_id: int) -> None:
    """Run one job. Acknowledged when it ends: a worker that dies with it leaves the message
    to be handed out again after the visibility timeout, and the job, found running, then
    fails `worker_lost` instead of calling the upstream a second time."""
    run.run_job(job_id)


@shared_task(name="routing.tasks.sweep_image_jobs", ignore_result=True)
def sweep_image_jobs() -> int:
    """Hand out again the messages of workers that died (past the visibility timeout);
    restart webhook deliveries whose next attempt never came; fail running jobs whose worker
    fell silent (`worker_lost`) and queued ones past their deadline (`job_expired`)."""
    _restore_unacknowledged()
    now = timezone.now()
    webhooks.resume_orphaned(now)  # deliveries whose next attempt never came
    return run.sweep(now=now)


def _restore_unacknowledged() -> None:
    """Kombu's Redis transport puts a dead worker's unacknowledged messages back on their
    queue after the visibility timeout, but only from a consumer loop whose poll comes back
    empty, which a worker on the gevent pool (`make serve`'s) never sees while its BRPOP
    times out and returns: so the beat does it, with kombu's own restore."""
    with current_app.connection_for_write() as connection:
        restore = getattr(connection.default_channel.qos, "restore_visible", None)
        if restore is not None:  # a broker without visibility timeouts has nothing to restore
            restore(num=1000, interval=1)


@shared_task(name="routing.tasks.delete_expired", ignore_result=True)
def delete_expired() -> dict[str, Any]:
    """Retention: expired jobs and their files, idempotency records, hosted images."""
    return retention.delete_expired(now=timezone.now())


@shared_task(
    name="routing.tasks.deliver_job_webhook",
    bind=True,
    ignore_result=True,
    max_retries=None,
    soft_time_limit=60,
    time_limit=90,
)
def deliver_job_webhook(self: Any, job_id: int) -> None:
    """One delivery attempt of a finished job to its webhook; retried with backoff."""
    webhooks.deliver_task(self, job_id)

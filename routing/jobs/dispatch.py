"""Handing a job to whatever runs it: a Celery worker (through the broker, once the job's
row is committed), or, in the embedded default with no broker, a background thread of this
web process (aperture/background.py), which also does the beat's housekeeping there."""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from aperture import background
from aperture.errors import QueueUnavailable
from routing.models import ImageJob

logger = logging.getLogger(__name__)
HOUSEKEEPING_SECONDS = 60.0
RETENTION_EVERY = 5  # housekeeping rounds (5 minutes)
_started_here: set[int] = set()  # in-process: the jobs handed over here and not yet ended
_lock = threading.Lock()
_housekeeping = {"started": False, "rounds": 0}


def start(job_id: int) -> None:
    """Run the job once its row is committed."""
    if settings.JOBS_IN_PROCESS:
        transaction.on_commit(lambda: _in_process(job_id), robust=True)
        _start_housekeeping()
        return
    if transaction.get_connection().in_atomic_block:
        transaction.on_commit(lambda: _publish(job_id), robust=True)
    else:  # committed: a broker that cannot take it is the caller's 503, not a lost job
        _publish(job_id)


def _publish(job_id: int) -> None:
    """Hand the job to the broker; if it cannot be, the job fails (its hold released) and
    the submit answers 503 `queue_unavailable`."""
    from routing.jobs.run import fail, not_queued
    from routing.tasks import run_image_job

    try:
        run_image_job.delay(job_id)
    except Exception:
        logger.exception("async job %s could not be queued", job_id)
        job = ImageJob.objects.select_related("key").get(pk=job_id)
        fail(job, not_queued(), from_status=ImageJob.Status.QUEUED)
        raise QueueUnavailable(
            "The gateway could not queue the job (its broker is unavailable); nothing was "
            "charged. Retry after the time in Retry-After.",
            headers={"Retry-After": "5"},
        ) from None


def _in_process(job_id: int) -> None:
    with _lock:
        if job_id in _started_here:
            return
        _started_here.add(job_id)
    background.submit(_run_here, job_id)


def _run_here(job_id: int) -> None:
    from routing.jobs.run import run_job

    try:
        run_job(job_id)
    finally:
        with _lock:
            _started_here.discard(job_id)


def _start_housekeeping() -> None:
    with _lock:
        if _housekeeping["started"]:
            return
        _housekeeping["started"] = True
    background.later(HOUSEKEEPING_SECONDS, _housekeep)


def _housekeep() -> None:
    """What the beat does with a broker: sweep, retention; and jobs a previous process of
    the embedded default left queued are picked up."""
    from routing.jobs import retention, webhooks
    from routing.jobs.run import sweep

    try:
        now = timezone.now()
        sweep(now=now)
        webhooks.resume_orphaned(now)
        _housekeeping["rounds"] += 1
        if _housekeeping["rounds"] % RETENTION_EVERY == 1:
            retention.delete_expired(now=now)
        left = ImageJob.objects.filter(
            status=ImageJob.Status.QUEUED, created_at__lt=now - timedelta(seconds=30)
        ).values_list("pk", flat=True)[:1000]
        for job_id in left:
            _in_process(job_id)
    except Exception:
        logger.exception("in-process job housekeeping failed")
    finally:
        background.later(HOUSEKEEPING_SECONDS, _housekeep)

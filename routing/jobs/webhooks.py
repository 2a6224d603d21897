"""Webhooks of async image jobs (docs/webhooks.md): a finished job is POSTed to its
`webhook_url` (the request's, or its key's), signed per Standard Webhooks with the workspace's
secret (aperture/webhooks.py), and retried with exponential backoff for
JOB_WEBHOOK_RETRY_SECONDS.

Each attempt is a JobDelivery row, claimed before the POST: its (job, attempt) unique
constraint lets one attempt number be made once, however many copies of a message the broker
hands out. With a broker the retries are Celery's (`routing.tasks.deliver_job_webhook`, the
attempt number is the task's retry count); in the embedded default, background timers of the
web process (aperture/background.py), and `resume_orphaned` picks up what a stopped process
left.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from aperture import background
from aperture.errors import InvalidRequest
from aperture.webhooks import NO_SIGNING_KEY, post_signed, url_problem
from routing.jobs.objects import FINAL, job_object
from routing.models import ImageJob, JobDelivery
from tenants.models import Workspace
from tenants.webhook_secrets import webhook_secret_of

logger = logging.getLogger(__name__)
Hook = ImageJob.Webhook
EVENT_TYPES = {
    ImageJob.Status.SUCCEEDED: "image.job.succeeded",
    ImageJob.Status.FAILED: "image.job.failed",
    ImageJob.Status.CANCELLED: "image.job.cancelled",
}
# Connect and read timeouts: their sum bounds a whole attempt.
TIMEOUT = (3.0, 10.0)
# Retries after 30 s, 1, 2, 4, 8, 16 minutes, then every 30 minutes (at most half the broker's
# visibility timeout: a retry waiting longer would be handed out a second time).
MAX_RETRY_SECONDS = 1800
# What an attempt's row says until its answer is recorded (and forever if its process died).
NO_ANSWER = "No answer recorded."
# An attempt this much later than planned was lost with its process (resume_orphaned).
ORPHANED_AFTER = timedelta(minutes=5)


# --- At submit ----------------------------------------------------------------------------


def checked_url(url: str) -> str:
    """A request's `webhook_url`, or a 400 naming it (aperture/webhooks.py: url_problem)."""
    problem = url_problem(url)
    if problem is not None:
        raise InvalidRequest(f"webhook_url: {problem}", param="webhook_url")
    return url


def require_secret(workspace_id: int) -> None:
    """A 400 unless the workspace has a signing secret: a webhook is never sent unsigned."""
    has_secret = (
        Workspace.objects.filter(pk=workspace_id).exclude(webhook_secret_ciphertext="").exists()
    )
    if not has_secret:
        raise InvalidRequest(f"webhook_url: {NO_SIGNING_KEY}", param="webhook_url")


# --- When a job ends ----------------------------------------------------------------------


def queue(job: ImageJob) -> None:
    """Deliver a job that reached a final state to its webhook, once (a second call, or one
    for a job without a webhook, does nothing); the first attempt starts after the commit."""
    if not job.webhook_url:
        return
    if job.status not in FINAL:
        raise ValueError(f"job {job.public_id} is {job.status}: only a finished job is delivered")
    marked = ImageJob.objects.filter(pk=job.pk, webhook_status=Hook.NONE).update(
        webhook_status=Hook.PENDING
    )
    if not marked:
        return
    job.webhook_status = Hook.PENDING
    transaction.on_commit(partial(_start, job.pk), robust=True)


def _start(job_id: int, number: int = 1) -> None:
    """Make attempt `number` now: in the background, or a Celery message whose retry count
    says which attempt it is."""
    if settings.JOBS_IN_PROCESS:
        background.submit(deliver_in_background, job_id, number)
        return
    from routing.tasks import deliver_job_webhook  # the tasks module imports this one

    deliver_job_webhook.apply_async(args=[job_id], retries=number - 1)


def deliver_task(task: Any, job_id: int) -> None:
    """The Celery task's body: attempt number `retries + 1`, then a retry with backoff while
    the delivery is still pending."""
    delay = attempt(job_id, task.request.retries + 1)
    if delay is not None:
        raise task.retry(countdown=delay)


def deliver_in_background(job_id: int, number: int) -> None:
    """The same schedule on a web process's background timers (no broker)."""
    delay = attempt(job_id, number)
    if delay is not None:
        background.later(delay, deliver_in_background, job_id, number + 1)


# --- One attempt --------------------------------------------------------------------------


def backoff(number: int) -> int:
    """Seconds from failed attempt `number` (1, 2, …) to the next one."""
    ceiling = min(MAX_RETRY_SECONDS, settings.CELERY_VISIBILITY_TIMEOUT // 2)
    first = settings.JOB_WEBHOOK_FIRST_RETRY_SECONDS
    return int(min(first * 2 ** min(number - 1, 20), ceiling))


def gives_up(number: int, first_at: datetime, now: datetime) -> bool:
    """Whether, after failed attempt `number` (now; the first was at `first_at`), the next
    one would start past the retry window. Measured on the clock, and also on the planned
    schedule, so that retries made early (a task run eagerly) end after as many attempts."""
    window = int(settings.JOB_WEBHOOK_RETRY_SECONDS)
    late = (now - first_at).total_seconds() + backoff(number)
    planned = sum(backoff(n) for n in range(1, number + 1))
    return max(late, planned) > window


def payload(job: ImageJob) -> dict[str, Any]:
    """Standard Webhooks' shape: the event's type and time, and the job object as
    GET /v1/images/jobs/{id} answers it."""
    ended = job.finished_at or job.created_at
    return {
        "type": EVENT_TYPES[ImageJob.Status(job.status)],
        "timestamp": ended.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "data": job_object(job),
    }


def message_id(job: ImageJob) -> str:
    """`webhook-id`: the same on every attempt, so that a receiver can drop a duplicate."""
    return f"msg_{job.public_id}"


def attempt(job_id: int, number: int) -> int | None:
    """Attempt number `number` at delivering the job; returns the seconds to wait before the
    next one, or None when there is none (delivered, failed for good, or not pending)."""
    job = ImageJob.objects.select_related("workspace").filter(pk=job_id).first()
    if job is None or job.webhook_status != Hook.PENDING:
        return None  # deleted by retention, or a copy of a message that already ended it
    now = timezone.now().replace(microsecond=0)
    try:
        with transaction.atomic():
            row = JobDelivery.objects.create(
                job=job, attempt=number, url=job.webhook_url, error=NO_ANSWER, created_at=now
            )
    except IntegrityError:
        return None  # this attempt was made already (the broker handed its message out twice)
    secret = webhook_secret_of(job.workspace)
    if secret is None:  # refused at submit without one; cannot happen unless set by hand
        _record(
            job,
            row,
            Hook.FAILED,
            status_code=None,
            error="The workspace has no webhook signing secret.",
        )
        return None
    result = post_signed(
        job.webhook_url,
        secret=secret,
        msg_id=message_id(job),
        timestamp=now,
        body=json.dumps(payload(job), separators=(",", ":")),
        timeout=TIMEOUT,
    )
    row.duration_ms = result.duration_ms
    if result.delivered:
        _record(job, row, Hook.DELIVERED, status_code=result.status_code, error="")
        return None
    logger.warning("job %s: webhook attempt %s failed: %s", job.public_id, number, result.error)
    first_at = now if number == 1 else _first_attempt_at(job) or now
    if result.permanent or gives_up(number, first_at, now):
        _record(job, row, Hook.FAILED, status_code=result.status_code, error=result.error)
        return None
    _record(job, row, Hook.PENDING, status_code=result.status_code, error=result.error)
    return backoff(number)


def _first_attempt_at(job: ImageJob) -> datetime | None:
    attempts = JobDelivery.objects.filter(job=job).order_by("attempt")
    first: datetime | None = attempts.values_list("created_at", flat=True).first()
    return first


def _record(
    job: ImageJob, row: JobDelivery, status: str, *, status_code: int | None, error: str
) -> None:
    row.status_code, row.error, row.delivered = status_code, error[:300], status == Hook.DELIVERED
    row.save(update_fields=["status_code", "error", "delivered", "duration_ms"])
    if status != Hook.PENDING:
        ImageJob.objects.filter(pk=job.pk, webhook_status=Hook.PENDING).update(
            webhook_status=status
        )


# --- Recovery -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Orphan:
    job_id: int
    next_number: int
    due: datetime


def orphaned(now: datetime, *, limit: int = 1000) -> list[Orphan]:
    """Pending deliveries whose next attempt is ORPHANED_AFTER late: their process stopped
    with them (the embedded default's timers), or their first message never left."""
    pending = ImageJob.objects.filter(webhook_status=Hook.PENDING, status__in=FINAL).annotate(
        made=Max("deliveries__attempt"), last_at=Max("deliveries__created_at")
    )
    found = []
    for job_id, finished_at, made, last_at in pending.values_list(
        "pk", "finished_at", "made", "last_at"
    ).order_by("pk")[:limit]:
        if made is None:  # not even the first attempt was made
            made, due = 0, finished_at or now
        else:
            due = last_at + timedelta(seconds=backoff(made))
        if due + ORPHANED_AFTER < now:
            found.append(Orphan(job_id, made + 1, due))
    return found


def resume_orphaned(now: datetime) -> int:
    """Start again the deliveries that `orphaned` finds (for the housekeeping: the embedded
    default's, or the beat's sweep); returns how many. One that was not orphaned after all
    gains no second POST: each attempt number is made once."""
    found = orphaned(now)
    for orphan in found:
        _start(orphan.job_id, orphan.next_number)
    return len(found)

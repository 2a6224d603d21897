"""Running a job (a Celery worker, or the embedded default's background thread): steps 4-8
of the pipeline on the hold taken at submit, then the result stored, the record written and
the webhook queued.

A job is called upstream at most once per deployment attempt. It is claimed (queued →
running, before its deadline) before anything is called, and while it runs its worker beats
(JOB_HEARTBEAT_SECONDS): the job's `heartbeat_at`, and its hold kept from the reaper. A job
found running whose worker has not beaten for JOB_LOST_AFTER_SECONDS ended with its worker:
it fails `worker_lost`, its hold released, and is never run a second time — whether its
message came again (the broker's redelivery) or the sweep found it. One found running with
a live worker is left to it. A job still queued at its deadline fails `job_expired`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connections
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone

from aperture import safe_cache
from aperture.errors import ApiError, Cancelled, Conflict, error_body
from billing import admission, budgets
from billing.metering import Meter, record_usage, rewrite_usage
from routing import pipeline
from routing.images.results import UrlBuilder
from routing.jobs import files, submit, webhooks
from routing.metered import log_request
from routing.models import ImageJob
from tenants.key_auth import KeyPrincipal, principal_of

logger = logging.getLogger(__name__)
Status = ImageJob.Status
CANCELLED_STATUS = 499  # the usage record of a job cancelled before it ran


def run_job(job_id: int) -> None:
    now = timezone.now()
    claimed = ImageJob.objects.filter(
        pk=job_id, status=Status.QUEUED, created_at__gte=_deadline_passed(now)
    ).update(status=Status.RUNNING, started_at=now, heartbeat_at=now)
    job = ImageJob.objects.select_related("key").filter(pk=job_id).first()
    if job is None:
        return  # deleted (its workspace or key was)
    if not claimed:
        if job.status == Status.QUEUED:  # past its deadline: its hold may be gone
            fail(job, _expired(), from_status=Status.QUEUED)
        elif job.status == Status.RUNNING:  # handed out again: lost if its worker is silent
            fail(job, _lost(), from_status=Status.RUNNING, silent_since=_lost_if_before(now))
        return  # a duplicate of a job that ended, or one its live worker is running
    meter = meter_of(job)
    with _beating(job):
        try:
            result = _produce(job, meter)
        except ApiError as error:
            meter.error_code = meter.error_code or str(error.code or error.type)
            ended = Status.CANCELLED if isinstance(error, Cancelled) else Status.FAILED
            _ended(job, meter, ended, code=error.status, error=error.body())
        except Exception:
            logger.exception("async job %s failed", job.public_id)
            meter.error_code = "server_error"
            _ended(job, meter, Status.FAILED, code=500, error=_server_error())
        else:
            _ended(job, meter, Status.SUCCEEDED, code=200, result=result)


def _deadline_passed(now: datetime) -> datetime:
    """Jobs submitted before this are past their deadline to start."""
    return now - timedelta(seconds=settings.JOB_MAX_SECONDS)


def _lost_if_before(now: datetime) -> datetime:
    """A running job whose worker last beat before this is lost."""
    return now - timedelta(seconds=settings.JOB_LOST_AFTER_SECONDS)


@contextmanager
def _beating(job: ImageJob) -> Iterator[None]:
    """While the job runs: its heartbeat, and its hold kept from the reaper (a while past
    the moment it would be found lost), every JOB_HEARTBEAT_SECONDS, from a thread of its
    own (a greenlet under gevent) with a connection of its own, returned after each beat."""
    stopped = threading.Event()
    hold = admission.load(job.admission).hold

    def beat() -> None:
        while not stopped.wait(settings.JOB_HEARTBEAT_SECONDS):  # the claim was its first
            now = timezone.now()
            try:
                ImageJob.objects.filter(pk=job.pk, status=Status.RUNNING).update(heartbeat_at=now)
                budgets.keep(hold, until=now + _hold_lease())
            except Exception:  # a database blip: the next beat tries again
                logger.exception("async job %s: a heartbeat failed", job.public_id)
            finally:
                connections.close_all()

    beating = threading.Thread(target=beat, name=f"heartbeat-{job.public_id}", daemon=True)
    beating.start()
    try:
        yield
    finally:
        stopped.set()
        beating.join(timeout=30)


def _silent(since: datetime) -> Q:
    """Jobs whose worker has not beaten since `since` (or never did)."""
    return Q(heartbeat_at__lt=since) | Q(heartbeat_at__isnull=True)


def _hold_lease() -> timedelta:
    return timedelta(seconds=settings.JOB_LOST_AFTER_SECONDS + 60)


def _produce(job: ImageJob, meter: Meter) -> dict[str, Any]:
    """Steps 4-7 on the submit's hold (released if anything fails before a settle)."""
    held = admission.load(job.admission)
    try:
        principal = principal_of(job.key.public_id)  # revoked meanwhile: it stops here
    except BaseException:
        admission.settle(held, images=0, cost_micro=0)
        raise
    ticket = pipeline.Ticket(meter=meter, admitted=held, principal=principal)
    with pipeline.released_if_failed(ticket):
        admitted = pipeline.resume(
            principal=principal,
            ticket=ticket,
            body=job.request,
            alias_name=job.model,
            edit=submit.input_images(job),
            stop_requested=lambda: cancel_requested(job),
        )
        if ticket.admitted is not held:  # grown to a worst case that rose: kept as it is now
            ImageJob.objects.filter(pk=job.pk).update(admission=admission.dump(ticket.admitted))
    answer = pipeline.produce(admitted, _url_builder(job))
    assert isinstance(answer, dict)  # never a stream: refused at submit
    return answer


def meter_of(job: ImageJob) -> Meter:
    """The job's meter, as the submit left it: its record is the submit's request's."""
    context = job.context
    meter = Meter(
        request_id=job.request_id,
        endpoint=job.endpoint,
        bytes_in=int(context.get("bytes_in", 0)),
        client_request_id=str(context.get("client_request_id", "")),
    )
    meter.alias = job.model
    meter.end_user = str(context.get("end_user", ""))
    meter.metadata = dict(context.get("metadata") or {})
    meter.guardrails = list(context.get("guardrails") or [])
    meter.headers = dict(context.get("headers") or {})
    meter.admitted = True
    return meter


def _url_builder(job: ImageJob) -> UrlBuilder:
    base = str(job.context.get("base_url", "")).rstrip("/")

    def build(token: str) -> str:
        return base + reverse("hosted-image", args=[token])

    return build


def _ended(
    job: ImageJob,
    meter: Meter,
    status: str,
    *,
    code: int,
    result: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
) -> None:
    """Store the answer, end the job (if it is still running), write its record. A result
    that cannot be stored fails the job, charged as the call was (the upstream made it)."""
    if result is not None:
        try:
            result_name = files.save_result(job, result)
        except Exception:
            logger.exception("async job %s: its result could not be stored", job.public_id)
            status, code, result, result_name = Status.FAILED, 503, None, ""
            meter.error_code = "result_not_stored"
            error = error_body(
                "The job's result could not be stored; it was charged for what the upstream "
                "made. Submit it again.",
                type_="server_error",
                code="result_not_stored",
            )
    fields: dict[str, Any] = {
        "status": status,
        "finished_at": timezone.now(),
        "cost_micro": meter.cost_micro,
        "error": error,
        "error_status": code if error is not None else None,
    }
    if result is not None:
        fields["result_name"] = result_name
    meter.finish()
    error_code = meter.error_code if code >= 400 else ""
    if ImageJob.objects.filter(pk=job.pk, status=Status.RUNNING).update(**fields):
        _record(job, meter, status=code, error_code=error_code)
        _queue_webhook(job.pk)
        return
    # Failed as lost while it ran (its worker silent past JOB_LOST_AFTER_SECONDS), and the
    # call ended after all, settled on what it made: the job and its record say so.
    if ImageJob.objects.filter(pk=job.pk, status=Status.FAILED, error_status=503).update(**fields):
        logger.warning("async job %s ended after it was failed as lost", job.public_id)
        _principal_of_record(job, meter)
        rewrite_usage(meter, status=code, error_code=error_code)


def _record(job: ImageJob, meter: Meter, *, status: int, error_code: str) -> None:
    """The one usage record of the submit's request, written as the job ends, against its
    key (as it was: a key revoked meanwhile still has its record)."""
    _principal_of_record(job, meter)
    record_usage(meter, status=status, error_code=error_code, bytes_out=0)
    log_request(meter, status=status, error_code=error_code)


def _principal_of_record(job: ImageJob, meter: Meter) -> None:
    key = job.key
    meter.principal = KeyPrincipal(
        key_id=key.pk,
        public_id=key.public_id,
        team_id=key.team_id,
        workspace_id=job.workspace_id,
        scopes=(),
        allowed_aliases=(),
        rpm_limit=None,
        ipm_limit=None,
    )


def _queue_webhook(job_id: int) -> None:
    job = ImageJob.objects.filter(pk=job_id).first()
    if job is not None and job.webhook_url:
        webhooks.queue(job)


def _lost() -> tuple[dict[str, Any], int, str]:
    return (
        error_body(
            "The worker running this job stopped before it ended. It was not run again, so "
            "that the upstream is never called twice; nothing was charged. Submit it again.",
            type_="server_error",
            code="worker_lost",
        ),
        503,
        "worker_lost",
    )


def _expired() -> tuple[dict[str, Any], int, str]:
    return (
        error_body(
            "The job was not started before its deadline (the workers are overloaded or "
            "stopped); nothing was charged. Submit it again.",
            type_="server_error",
            code="job_expired",
        ),
        503,
        "job_expired",
    )


def not_queued() -> tuple[dict[str, Any], int, str]:
    return (
        error_body(
            "The job could not be queued (the broker is unavailable); nothing was charged.",
            type_="server_error",
            code="queue_unavailable",
        ),
        503,
        "queue_unavailable",
    )


def _server_error() -> dict[str, Any]:
    return error_body(
        "The job failed inside the gateway; nothing was charged.",
        type_="server_error",
        code="server_error",
    )


def fail(
    job: ImageJob,
    why: tuple[dict[str, Any], int, str],
    *,
    from_status: str,
    silent_since: datetime | None = None,
) -> bool:
    """End a job that never produced anything: its hold released, its record written, its
    webhook queued. False if it was no longer `from_status` (someone else ended it), or,
    with `silent_since`, if its worker has beaten since (it is alive)."""
    error, status, code = why
    still = ImageJob.objects.filter(pk=job.pk, status=from_status)
    if silent_since is not None:
        still = still.filter(_silent(silent_since))
    ended = still.update(
        status=Status.CANCELLED if code == "cancelled" else Status.FAILED,
        finished_at=timezone.now(),
        error=error,
        error_status=status,
    )
    if not ended:
        return False
    admission.settle(admission.load(job.admission), images=0, cost_micro=0)
    meter = meter_of(job)
    meter.error_code = code
    _record(job, meter, status=status, error_code=code)
    _queue_webhook(job.pk)
    return True


def job_cancel(job: ImageJob) -> bool:
    """A caller's cancel: a queued job ends `cancelled`, charged nothing (again: answered
    as it is); a running one its provider can stop is asked to (True: it is stopping, see
    `job` refreshed); anything else is a 409. `job` is refreshed to how it stands."""
    cancelled = cancel(job)
    job.refresh_from_db()
    if cancelled or job.status == Status.CANCELLED:
        return False
    if job.status == Status.RUNNING:
        if request_cancel(job):  # stopped at the adapter's next poll
            return True
        raise Conflict(
            "The job is running and its provider cannot stop a call under way, so it will "
            "be charged for what it produces.",
            code="job_running",
        )
    raise Conflict(f"The job has already {job.status}.", code="job_finished")


def _cancel_key(job: ImageJob) -> str:
    return f"job-cancel:{job.public_id}"


def request_cancel(job: ImageJob) -> bool:
    """Ask a running job to stop, if every deployment it may use can stop a call under way
    (the worker's adapter sees it at its next poll: routing/providers/replicate.py); False
    if it cannot be stopped."""
    if not job.context.get("cancellable"):
        return False
    safe_cache.set(_cancel_key(job), 1, settings.JOB_MAX_SECONDS)
    return True


def cancel_requested(job: ImageJob) -> bool:
    """Whether the job's caller asked it to stop (read from the shared cache: no database
    connection is taken while the upstream works)."""
    return safe_cache.get(_cancel_key(job)) is not None


def cancel(job: ImageJob) -> bool:
    """Cancel a queued job (nothing was called, nothing is charged); False if it is not
    queued any more."""
    why = (
        error_body("The job was cancelled.", type_="invalid_request_error", code="cancelled"),
        CANCELLED_STATUS,
        "cancelled",
    )
    return fail(job, why, from_status=Status.QUEUED)


def sweep(*, now: datetime) -> int:
    """Fail jobs still queued past their deadline (never started), and running jobs whose
    worker fell silent (lost with it, its message not handed out again). Returns how many."""
    ended = 0
    silent_since = _lost_if_before(now)
    late = ImageJob.objects.select_related("key").filter(
        Q(status=Status.QUEUED, created_at__lt=_deadline_passed(now))
        | (Q(status=Status.RUNNING) & _silent(silent_since))
    )
    for job in late.order_by("id")[:1000]:
        if job.status == Status.QUEUED:
            ended += fail(job, _expired(), from_status=Status.QUEUED)
        else:
            ended += fail(job, _lost(), from_status=Status.RUNNING, silent_since=silent_since)
    return ended

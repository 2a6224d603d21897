"""Running a job (a Celery worker, or the embedded default's background thread): steps 4-8
of the pipeline on the hold taken at submit, then the result stored, the record written and
the webhook queued.

A job is called upstream at most once per deployment attempt. It is claimed (queued →
running) before anything is called; a job found running when its message comes again was
being run by a worker that died (the broker hands a message out again only after its
visibility timeout, which no job outlives: JOB_MAX_SECONDS), so it fails `worker_lost`, its
hold released, and is never run a second time. The sweep fails what ran out of time.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.urls import reverse
from django.utils import timezone

from aperture import safe_cache
from aperture.errors import ApiError, Cancelled, error_body
from billing import admission
from billing.metering import Meter, record_usage
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
    claimed = ImageJob.objects.filter(pk=job_id, status=Status.QUEUED).update(
        status=Status.RUNNING, started_at=timezone.now()
    )
    job = ImageJob.objects.select_related("key").filter(pk=job_id).first()
    if job is None:
        return  # deleted (its workspace or key was)
    if not claimed:
        if job.status == Status.RUNNING:  # handed out again: its worker died mid-run
            fail(job, _lost(), from_status=Status.RUNNING)
        return  # a duplicate of a job that ended
    meter = meter_of(job)
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
    """Store the answer, end the job (if it is still running), write its record."""
    fields: dict[str, Any] = {
        "status": status,
        "finished_at": timezone.now(),
        "cost_micro": meter.cost_micro,
        "error": error,
        "error_status": code if error is not None else None,
    }
    if result is not None:
        fields["result_name"] = files.save_result(job, result)
    if not ImageJob.objects.filter(pk=job.pk, status=Status.RUNNING).update(**fields):
        logger.warning("async job %s ended after it was failed as lost", job.public_id)
        return
    meter.finish()
    _record(job, meter, status=code, error_code=meter.error_code if code >= 400 else "")
    _queue_webhook(job.pk)


def _record(job: ImageJob, meter: Meter, *, status: int, error_code: str) -> None:
    """The one usage record of the submit's request, written as the job ends, against its
    key (as it was: a key revoked meanwhile still has its record)."""
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
    record_usage(meter, status=status, error_code=error_code, bytes_out=0)
    log_request(meter, status=status, error_code=error_code)


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


def _server_error() -> dict[str, Any]:
    return error_body(
        "The job failed inside the gateway; nothing was charged.",
        type_="server_error",
        code="server_error",
    )


def fail(job: ImageJob, why: tuple[dict[str, Any], int, str], *, from_status: str) -> bool:
    """End a job that never produced anything: its hold released, its record written, its
    webhook queued. False if it was no longer `from_status` (someone else ended it)."""
    error, status, code = why
    ended = ImageJob.objects.filter(pk=job.pk, status=from_status).update(
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
    """Fail jobs past their deadline: still queued (never started) or still running (lost
    with their worker, its message not handed out again). Returns how many."""
    cutoff = now - timedelta(seconds=settings.JOB_MAX_SECONDS)
    ended = 0
    late = ImageJob.objects.select_related("key").filter(
        status__in=[Status.QUEUED, Status.RUNNING], created_at__lt=cutoff
    )
    for job in late.order_by("id")[:1000]:
        why = _expired() if job.status == Status.QUEUED else _lost()
        ended += fail(job, why, from_status=job.status)
    return ended

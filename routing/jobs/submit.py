"""Submitting an async job: everything a synchronous call checks before it calls upstream
(auth, the body, the price, guardrails, rate limits, the budget hold) is checked here, so a
bad request is a 4xx at submit, never a failed job. The hold lasts until the job's deadline
(JOB_MAX_SECONDS); the worker settles it (routing/jobs/run.py)."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.http import HttpRequest
from django.utils import timezone

from aperture.db import waiting_on_network
from aperture.errors import InvalidRequest
from billing import admission
from billing.metering import Meter
from routing import pipeline
from routing.images.edit_form import EditForm
from routing.images.hosting import EXTENSIONS
from routing.jobs import dispatch, files, webhooks
from routing.models import ImageJob
from routing.providers.base import InputImage
from routing.providers.registry import adapter_for
from tenants.key_auth import KeyPrincipal
from tenants.models import ApiKey

# RFC 7240: `Prefer: respond-async`, among other preferences, any case, with parameters.
_RESPOND_ASYNC = re.compile(r"(?:^|[,\s])respond-async\s*(?:[;,]|$)", re.IGNORECASE)
HOLD_MARGIN = timedelta(seconds=60)


def wants_async(request: HttpRequest) -> bool:
    return any(
        _RESPOND_ASYNC.search(value) for value in request.META.get("HTTP_PREFER", "").split("\n")
    )


def take_webhook_url(body: dict[str, Any], *, is_async: bool) -> str:
    """The request's own `webhook_url`, taken out of the body (it is the gateway's, never
    forwarded): checked by the private-address guard; only with `Prefer: respond-async`."""
    if "webhook_url" not in body:
        return ""
    value = body.pop("webhook_url")
    if not is_async:
        raise InvalidRequest(
            "'webhook_url' is for async jobs: send the request with 'Prefer: respond-async'.",
            param="webhook_url",
        )
    if not isinstance(value, str) or not value:
        raise InvalidRequest("'webhook_url' must be a URL.", param="webhook_url")
    return webhooks.checked_url(value)


def submit(
    *,
    principal: KeyPrincipal,
    meter: Meter,
    body: dict[str, Any],
    base_url: str,
    alias_name: str | None = None,
    edit: EditForm | None = None,
    webhook_url: str = "",
) -> ImageJob:
    """Let the request in (1-3 of the pipeline) and queue it; the job, or a 4xx."""
    if body.get("stream") is True:
        raise InvalidRequest(
            "An async job cannot stream: drop 'stream' or 'Prefer: respond-async'.",
            param="stream",
        )
    _refuse_nul(body)  # the job's row could not keep it (PostgreSQL's text refuses NUL)
    webhook_url = webhook_url or _key_webhook_url(principal)
    if webhook_url:
        webhooks.require_secret(principal.workspace_id)
    now = timezone.now()
    deadline = now + timedelta(seconds=settings.JOB_MAX_SECONDS)
    admitted = pipeline.let_in(
        principal=principal,
        meter=meter,
        body=body,
        alias_name=alias_name,
        edit=edit,
        held_until=deadline + HOLD_MARGIN,
    )
    ticket = admitted.ticket
    with pipeline.released_if_failed(ticket):
        job = ImageJob(
            workspace_id=principal.workspace_id,
            key_id=principal.key_id,
            request_id=meter.request_id,
            endpoint=meter.endpoint,
            model=meter.alias,
            request=body,  # as let in: the end user hashed, no metadata
            admission=admission.dump(ticket.admitted),
            context={
                **_context(meter, base_url, alias_name, edit),
                # Every deployment it may go to can stop a call under way (Replicate).
                "cancellable": all(
                    adapter_for(a.target.provider).cancels_running for a in admitted.plan.attempts
                ),
            },
            webhook_url=webhook_url,
            created_at=now,
            expires_at=now + timedelta(seconds=settings.JOB_RESULT_TTL_SECONDS),
        )
        if edit is not None:
            with waiting_on_network():  # the images go to storage (S3, say)
                job.inputs = _stored_inputs(job, edit)
        try:
            job.save()
        except BaseException:
            files.delete_files(job)  # nothing half-written
            raise
    meter.deferred = True  # the job's record is written when it ends
    dispatch.start(job.pk)
    return job


def _refuse_nul(value: Any, name: str | None = None) -> None:
    """A 400 naming the first field with a NUL character in it (in a key or a value)."""
    if isinstance(value, str):
        if "\x00" in value:
            raise InvalidRequest(
                f"'{name}' must not contain NUL characters." if name else "NUL in the body.",
                param=name,
            )
    elif isinstance(value, dict):
        for key, inner in value.items():
            _refuse_nul(str(key), name or str(key))
            _refuse_nul(inner, name or str(key))
    elif isinstance(value, list):
        for inner in value:
            _refuse_nul(inner, name)


def _key_webhook_url(principal: KeyPrincipal) -> str:
    return str(
        ApiKey.objects.filter(pk=principal.key_id).values_list("webhook_url", flat=True).first()
        or ""
    )


def _context(
    meter: Meter, base_url: str, alias_name: str | None, edit: EditForm | None
) -> dict[str, Any]:
    """What the worker's meter and answer need from the submit."""
    return {
        "base_url": base_url,
        "alias_name": alias_name or "",
        "edit": edit is not None,
        "client_request_id": meter.client_request_id,
        "bytes_in": meter.bytes_in,
        "end_user": meter.end_user,
        "metadata": meter.metadata,
        "guardrails": meter.guardrails,
        "headers": meter.headers,
    }


def _stored_inputs(job: ImageJob, edit: EditForm) -> list[dict[str, Any]]:
    """An edit's images (and mask) in storage, for the worker (deleted with the job)."""
    parts = [("image", image) for image in edit.images]
    if edit.mask is not None:
        parts.append(("mask", edit.mask))
    stored = []
    for number, (role, image) in enumerate(parts):
        with image.open() as handle:
            data = handle.read()
        name = files.save_input(job, number, data, EXTENSIONS.get(image.media_type, "bin"))
        stored.append(
            {
                "role": role,
                "name": name,
                "filename": image.filename,
                "media_type": image.media_type,
                "width": image.width,
                "height": image.height,
                "size_bytes": image.size_bytes,
            }
        )
    return stored


def input_images(job: ImageJob) -> EditForm | None:
    """The edit a job was submitted with, its images read back from storage."""
    if not job.context.get("edit"):
        return None
    images, mask = [], None
    for stored in job.inputs:
        image = InputImage(
            filename=stored["filename"],
            media_type=stored["media_type"],
            width=stored["width"],
            height=stored["height"],
            size_bytes=stored["size_bytes"],
            data=files.load_input(stored["name"]),
        )
        if stored["role"] == "mask":
            mask = image
        else:
            images.append(image)
    return EditForm(fields=job.request, images=tuple(images), mask=mask)

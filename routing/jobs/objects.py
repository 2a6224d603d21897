"""The job object the API answers and webhooks carry:
`{id, object: "image.job", status, model, created_at, started_at, finished_at, expires_at,
result, error}` with Unix times; `result` is exactly the synchronous response body once the
job succeeded, `error` exactly the envelope a synchronous call would have answered."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from aperture.errors import NotFound
from routing.jobs import files
from routing.models import ImageJob
from tenants.key_auth import KeyPrincipal

OBJECT = "image.job"
JOB_ID = re.compile(r"job_[A-Za-z0-9]{1,64}")
FINAL = (ImageJob.Status.SUCCEEDED, ImageJob.Status.FAILED, ImageJob.Status.CANCELLED)


def unix(moment: datetime | None) -> int | None:
    return int(moment.timestamp()) if moment is not None else None


def job_object(job: ImageJob, *, with_result: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": job.public_id,
        "object": OBJECT,
        "status": job.status,
        "model": job.model,
        "created_at": unix(job.created_at),
        "started_at": unix(job.started_at),
        "finished_at": unix(job.finished_at),
        "expires_at": unix(job.expires_at),
        "result": None,
        "error": job.error
        if job.status in (ImageJob.Status.FAILED, ImageJob.Status.CANCELLED)
        else None,
    }
    if with_result and job.status == ImageJob.Status.SUCCEEDED:
        body["result"] = files.load_result(job)
    return body


def job_of(principal: KeyPrincipal, public_id: str) -> ImageJob:
    """The workspace's job with this id, or a 404 (whoever's it is otherwise)."""
    if not JOB_ID.fullmatch(public_id):  # never a query with what no id can be (a NUL)
        raise NotFound("No such job.", param="id", code="job_not_found")
    job = (
        ImageJob.objects.select_related("key")
        .filter(public_id=public_id, workspace_id=principal.workspace_id)
        .first()
    )
    if job is None:
        raise NotFound(f"No job '{public_id}'.", param="id", code="job_not_found")
    return job

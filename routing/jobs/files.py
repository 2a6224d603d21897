"""Where a job's files live in the configured storage (filesystem in the embedded default,
S3 in production): its result body and an edit's input images, under one prefix per job so
that retention deletes them together (routing/jobs/retention.py)."""

from __future__ import annotations

from typing import Any

import orjson
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

from routing.models import ImageJob

PREFIX = "jobs"


def job_dir(job: ImageJob) -> str:
    return f"{PREFIX}/{job.created_at:%Y/%m/%d}/{job.public_id}"


def save_result(job: ImageJob, body: dict[str, Any]) -> str:
    """The synchronous response body, stored as its JSON; returns the storage name."""
    return default_storage.save(f"{job_dir(job)}/result.json", ContentFile(orjson.dumps(body)))


def load_result(job: ImageJob) -> dict[str, Any] | None:
    """The stored result, or None once retention deleted it."""
    if not job.result_name:
        return None
    try:
        with default_storage.open(job.result_name, "rb") as handle:
            loaded = orjson.loads(handle.read())
    except (FileNotFoundError, OSError):
        return None
    return loaded if isinstance(loaded, dict) else None


def save_input(job: ImageJob, number: int, data: bytes, extension: str) -> str:
    return default_storage.save(f"{job_dir(job)}/input-{number}.{extension}", ContentFile(data))


def load_input(name: str) -> bytes:
    with default_storage.open(name, "rb") as handle:
        return bytes(handle.read())


def delete_files(job: ImageJob) -> None:
    """The job's result and inputs (a missing one is no error)."""
    names = [job.result_name, *(i.get("name", "") for i in job.inputs if isinstance(i, dict))]
    for name in names:
        if name:
            default_storage.delete(name)

"""Retention: what the gateway keeps for a while is deleted, files and rows, once it expired —
finished async jobs with their result and inputs, idempotency records with the bodies they
replay, and hosted images once their signed links are dead (docs/retention.md).

Files go before rows, so that a run that dies half-way leaves a row to retry, never a file
that nothing points to; a file already gone is no error, and two overlapping runs only
delete the same things twice. Every comparison is against the `now` passed in.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from datetime import UTC, date, datetime, timedelta

from django.conf import settings
from django.core.files.storage import FileSystemStorage, default_storage

from routing.jobs import files
from routing.jobs.objects import FINAL
from routing.models import IdempotentRequest, ImageJob

logger = logging.getLogger(__name__)

BATCH = 500  # rows per query and per DELETE; names per lookup of the rows that own them
# A hosted image is signed as it is stored, so its link is dead IMAGE_URL_TTL_SECONDS after
# the file's modified time; the margin covers the storage's clock against ours.
IMAGE_MARGIN = timedelta(minutes=5)
IMAGES = "images"  # routing/images/hosting.py: images/YYYY/MM/DD/<uuid>.<ext>
IDEMPOTENCY = "idempotency"  # idempotency/YYYY/MM/DD/<uuid>, the row's response_name


def delete_expired(*, now: datetime) -> dict[str, int]:
    """Delete what expired by `now`; returns how many of each were deleted (`orphans`: job
    and idempotency files whose row is gone, e.g. with a deleted key)."""
    now = now.astimezone(UTC)  # the date directories are UTC days
    idempotency = _delete_idempotency(now)
    jobs, replays = _delete_jobs(now)
    counts = {
        "jobs": jobs,
        "idempotency": idempotency + replays,
        "images": _delete_images(now),
        "orphans": _delete_orphaned_job_files(now) + _delete_orphaned_bodies(now),
    }
    logger.info(
        "retention: deleted %d job(s), %d idempotency record(s), %d hosted image(s), "
        "%d orphaned file(s)",
        counts["jobs"],
        counts["idempotency"],
        counts["images"],
        counts["orphans"],
    )
    return counts


# --- Rows and the files they name ------------------------------------------------------


def _delete_idempotency(now: datetime) -> int:
    expired = IdempotentRequest.objects.filter(expires_at__lte=now)
    deleted = last_id = 0
    while batch := list(
        expired.filter(pk__gt=last_id).order_by("pk").values_list("pk", "response_name")[:BATCH]
    ):
        last_id = batch[-1][0]
        for _, name in batch:
            if name:
                default_storage.delete(name)
        count, _ = expired.filter(pk__in=[pk for pk, _ in batch]).delete()
        deleted += count
    return deleted


def _delete_jobs(now: datetime) -> tuple[int, int]:
    """Expired jobs that ended, with their files; returns (jobs, idempotency records that
    pointed at them and went with them). A job still queued or running past its expiry is
    the sweep's to fail first (routing/jobs/run.py): it is left alone, and so is one whose
    webhook is still being retried (until it is delivered or given up on)."""
    expired = ImageJob.objects.filter(expires_at__lte=now, status__in=FINAL).exclude(
        webhook_status=ImageJob.Webhook.PENDING
    )
    jobs = replays = last_id = 0
    while batch := list(
        expired.filter(pk__gt=last_id)
        .order_by("pk")
        .only("pk", "public_id", "created_at", "result_name", "inputs")[:BATCH]
    ):
        last_id = batch[-1].pk
        ids = [job.pk for job in batch]
        for job in batch:
            files.delete_files(job)
        # The records replaying these jobs' submits are deleted with them (CASCADE).
        bodies = (
            IdempotentRequest.objects.filter(job_id__in=ids)
            .exclude(response_name="")
            .values_list("response_name", flat=True)
        )
        for name in bodies:
            default_storage.delete(name)
        _, per_model = expired.filter(pk__in=ids).delete()
        jobs += per_model.get(ImageJob._meta.label, 0)
        replays += per_model.get(IdempotentRequest._meta.label, 0)
    return jobs, replays


# --- Files without rows: found through their date directories --------------------------


def _delete_images(now: datetime) -> int:
    """Hosted images whose links are dead: whole days before the cutoff's, and the files of
    the cutoff's day written before it."""
    cutoff = now - timedelta(seconds=settings.IMAGE_URL_TTL_SECONDS) - IMAGE_MARGIN
    deleted = 0
    for day, path in _days_through(IMAGES, cutoff.date()):
        if day < cutoff.date():
            deleted += _delete_tree(path)
            continue
        for name in _listdir(path)[1]:
            modified = _modified(f"{path}/{name}")
            if modified is not None and modified <= cutoff:
                default_storage.delete(f"{path}/{name}")
                deleted += 1
    return deleted


def _delete_orphaned_job_files(now: datetime) -> int:
    """Job directories of days whose jobs have all expired, that no job row names any more.
    A row still there keeps its files, whatever its expiry."""
    deleted = 0
    for _, path in _days_through(
        files.PREFIX, _last_expired_day(now, settings.JOB_RESULT_TTL_SECONDS)
    ):
        for chunk in _chunks(_listdir(path)[0], BATCH):
            alive = set(
                ImageJob.objects.filter(public_id__in=chunk).values_list("public_id", flat=True)
            )
            for public_id in chunk:
                if public_id not in alive:
                    deleted += _delete_tree(f"{path}/{public_id}")
        _remove_directory(path)
    return deleted


def _delete_orphaned_bodies(now: datetime) -> int:
    """Idempotency bodies of days whose records have all expired, that no record names."""
    deleted = 0
    for _, path in _days_through(
        IDEMPOTENCY, _last_expired_day(now, settings.IDEMPOTENCY_TTL_SECONDS)
    ):
        names = [f"{path}/{name}" for name in _listdir(path)[1]]
        for chunk in _chunks(names, BATCH):
            kept = set(
                IdempotentRequest.objects.filter(response_name__in=chunk).values_list(
                    "response_name", flat=True
                )
            )
            for name in chunk:
                if name not in kept:
                    default_storage.delete(name)
                    deleted += 1
        _remove_directory(path)
    return deleted


def _last_expired_day(now: datetime, ttl_seconds: int) -> date:
    """The last day all of whose rows have expired by `now` (a row expires ttl_seconds after
    the moment that dated its directory)."""
    return (now - timedelta(seconds=ttl_seconds)).date() - timedelta(days=1)


def _days_through(prefix: str, last: date) -> Iterator[tuple[date, str]]:
    """The day directories `<prefix>/YYYY/MM/DD` up to `last` included, oldest first. Only
    directories are listed, and none of a later month; a month or year that ends before
    `last` is removed once emptied (the filesystem keeps empty directories)."""
    for year, year_name in _numbered(_listdir(prefix)[0]):
        if year > last.year:
            break
        year_dir = f"{prefix}/{year_name}"
        for month, month_name in _numbered(_listdir(year_dir)[0]):
            if (year, month) > (last.year, last.month):
                break
            month_dir = f"{year_dir}/{month_name}"
            for day_number, day_name in _numbered(_listdir(month_dir)[0]):
                try:
                    day = date(year, month, day_number)
                except ValueError:
                    continue  # not a directory of ours
                if day > last:
                    break
                yield day, f"{month_dir}/{day_name}"
            if (year, month) < (last.year, last.month):
                _remove_directory(month_dir)
        if year < last.year:
            _remove_directory(year_dir)


def _numbered(names: Sequence[str]) -> list[tuple[int, str]]:
    return sorted((int(name), name) for name in names if name.isdigit())


def _delete_tree(path: str) -> int:
    """Every file under `path`; returns how many."""
    directories, names = _listdir(path)
    for name in names:
        default_storage.delete(f"{path}/{name}")
    deleted = len(names) + sum(_delete_tree(f"{path}/{child}") for child in directories)
    _remove_directory(path)
    return deleted


def _listdir(path: str) -> tuple[list[str], list[str]]:
    """(directories, files) in `path`; a missing directory is empty (the filesystem raises,
    an object store has nothing under the prefix)."""
    try:
        directories, names = default_storage.listdir(path)
    except FileNotFoundError:
        return [], []
    return list(directories), list(names)


def _modified(name: str) -> datetime | None:
    """When the file was written, or None if it is gone (an overlapping run deleted it)."""
    try:
        return default_storage.get_modified_time(name)
    except Exception:
        if default_storage.exists(name):
            raise
        return None


def _remove_directory(path: str) -> None:
    """The filesystem keeps emptied directories; an object store has none (a DELETE of the
    prefix would be a request for nothing, or a delete marker in a versioned bucket)."""
    if isinstance(default_storage, FileSystemStorage):
        with contextlib.suppress(OSError):  # not empty: a file kept, or a new one
            default_storage.delete(path)


def _chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]

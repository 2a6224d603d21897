"""Retention (routing/jobs/retention.py): expired jobs, idempotency records and hosted images
are deleted, files and rows, and what has not expired stays — on the filesystem and on a real
S3 endpoint (moto's server on loopback, through django-storages). The clock is `now`, and
files are written at set moments (time-machine; the filesystem's mtime set to match)."""

import logging
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import boto3
import pytest
import time_machine
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.test import override_settings
from moto.server import ThreadedMotoServer

from aperture.errors import NotFound
from routing.images import hosting
from routing.jobs import files, retention
from routing.models import IdempotentRequest, ImageJob, JobDelivery
from tenants.models import Workspace
from tenants.services import CreatedKey

NOW = datetime(2030, 6, 15, 12, 0, tzinfo=UTC)
NOTHING = {"jobs": 0, "idempotency": 0, "images": 0, "orphans": 0}


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on a free loopback port, one per module (and per xdist worker)."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@dataclass(frozen=True)
class Store:
    """The storage under test, and every file name it holds, read past Django's storage."""

    kind: str
    stored: Callable[[], set[str]]


@pytest.fixture(params=["filesystem", "s3"])
def store(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Store]:
    if request.param == "filesystem":
        backend: dict[str, Any] = {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(tmp_path)},
        }

        def stored() -> set[str]:
            return {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}

    else:
        endpoint = request.getfixturevalue("s3_endpoint")
        for variable in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
            monkeypatch.delenv(variable, raising=False)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
        bucket = f"aperture-{uuid.uuid4().hex}"
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        client.create_bucket(Bucket=bucket)
        # As aperture/settings.py configures it from APERTURE_S3_BUCKET and friends.
        backend = {
            "BACKEND": "storages.backends.s3.S3Storage",
            "OPTIONS": {
                "bucket_name": bucket,
                "endpoint_url": endpoint,
                "region_name": "us-east-1",
                "default_acl": "private",
                "querystring_auth": False,
            },
        }

        def stored() -> set[str]:
            pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            return {entry["Key"] for page in pages for entry in page.get("Contents", [])}

    # The setting_changed signal resets the storages handler and the lazy default_storage.
    with override_settings(STORAGES={**settings.STORAGES, "default": backend}):
        assert default_storage.__class__.__name__ == backend["BACKEND"].rsplit(".", 1)[1]
        yield Store(kind=request.param, stored=stored)


def _written_at(store: Store, at: datetime, write: Callable[[], str]) -> str:
    """Write a file as if at `at`: the clock the writer and an object store read is moved;
    the filesystem's modified time is set (the kernel does not follow time-machine)."""
    with time_machine.travel(at, tick=False):
        name = write()
    if store.kind == "filesystem":
        os.utime(default_storage.path(name), (at.timestamp(), at.timestamp()))
    assert default_storage.get_modified_time(name) == at
    return name


def _job(
    workspace: Workspace,
    api_key: CreatedKey,
    *,
    status: str,
    created_at: datetime,
    expires_at: datetime,
    result: bool = False,
    inputs: int = 0,
) -> ImageJob:
    job = ImageJob.objects.create(
        workspace=workspace,
        key=api_key.key,
        request_id=f"req_{uuid.uuid4().hex}",
        endpoint="images.generations",
        model="image-local",
        status=status,
        created_at=created_at,
        expires_at=expires_at,
    )
    if result:
        job.result_name = files.save_result(job, {"created": 1, "data": [{"b64_json": "AA=="}]})
    job.inputs = [
        {"name": files.save_input(job, number, b"\x89PNG", "png")} for number in range(inputs)
    ]
    job.save(update_fields=["result_name", "inputs"])
    return job


def _body(day: datetime) -> str:
    return default_storage.save(
        f"idempotency/{day:%Y/%m/%d}/{uuid.uuid4().hex}", ContentFile(b'{"created": 1}')
    )


def _record(
    api_key: CreatedKey,
    *,
    expires_at: datetime,
    response_name: str = "",
    job: ImageJob | None = None,
) -> IdempotentRequest:
    return IdempotentRequest.objects.create(
        key=api_key.key,
        idempotency_key=uuid.uuid4().hex,
        fingerprint="0" * 64,
        status=IdempotentRequest.Status.DONE
        if response_name
        else IdempotentRequest.Status.IN_FLIGHT,
        job=job,
        response_status=202 if job else (200 if response_name else None),
        response_name=response_name,
        created_at=expires_at - timedelta(seconds=settings.IDEMPOTENCY_TTL_SECONDS),
        expires_at=expires_at,
    )


def _store_image(store: Store, at: datetime) -> str:
    return _written_at(store, at, lambda: hosting.store(b"\x89PNG image", "image/png"))


def test_expired_finished_jobs_go_with_their_files_and_unfinished_or_unexpired_ones_stay(
    store: Store, workspace: Workspace, api_key: CreatedKey, caplog: pytest.LogCaptureFixture
) -> None:
    done = _job(
        workspace,
        api_key,
        status=ImageJob.Status.SUCCEEDED,
        created_at=NOW - timedelta(hours=25),
        expires_at=NOW - timedelta(hours=1),
        result=True,
        inputs=2,
    )
    JobDelivery.objects.create(
        job=done, attempt=1, url="https://hooks.example.com/", delivered=True, created_at=NOW
    )
    # The record that replays done's submit goes with it, though it would outlive it.
    replay = _record(
        api_key, expires_at=NOW + timedelta(hours=1), response_name=_body(NOW), job=done
    )
    failed = _job(
        workspace,
        api_key,
        status=ImageJob.Status.FAILED,
        created_at=NOW - timedelta(hours=30),
        expires_at=NOW - timedelta(hours=6),
        inputs=1,
    )
    stuck = _job(  # the sweep fails it first; retention does not judge it
        workspace,
        api_key,
        status=ImageJob.Status.RUNNING,
        created_at=NOW - timedelta(hours=26),
        expires_at=NOW - timedelta(hours=2),
        inputs=1,
    )
    fresh = _job(
        workspace,
        api_key,
        status=ImageJob.Status.SUCCEEDED,
        created_at=NOW - timedelta(hours=1),
        expires_at=NOW + timedelta(hours=23),
        result=True,
    )
    everything = {
        done.result_name,
        *(i["name"] for i in done.inputs),
        replay.response_name,
        failed.inputs[0]["name"],
        stuck.inputs[0]["name"],
        fresh.result_name,
    }
    assert store.stored() == everything

    assert retention.delete_expired(now=NOW - timedelta(hours=7)) == NOTHING
    assert store.stored() == everything
    assert ImageJob.objects.count() == 4

    caplog.set_level(logging.INFO, logger="routing.jobs.retention")
    caplog.clear()
    assert retention.delete_expired(now=NOW) == {
        "jobs": 2,
        "idempotency": 1,
        "images": 0,
        "orphans": 0,
    }
    assert store.stored() == {stuck.inputs[0]["name"], fresh.result_name}
    assert set(ImageJob.objects.values_list("public_id", flat=True)) == {
        stuck.public_id,
        fresh.public_id,
    }
    assert not JobDelivery.objects.exists()
    assert not IdempotentRequest.objects.exists()
    assert [r.getMessage() for r in caplog.records if r.name == "routing.jobs.retention"] == [
        "retention: deleted 2 job(s), 1 idempotency record(s), 0 hosted image(s), "
        "0 orphaned file(s)"
    ]


def test_expired_idempotency_records_go_with_the_bodies_they_replay(
    store: Store, api_key: CreatedKey
) -> None:
    answered = _record(
        api_key, expires_at=NOW - timedelta(hours=1), response_name=_body(NOW - timedelta(days=1))
    )
    _record(api_key, expires_at=NOW - timedelta(minutes=1))  # in flight when it was given up
    kept = _record(api_key, expires_at=NOW + timedelta(hours=1), response_name=_body(NOW))
    assert store.stored() == {answered.response_name, kept.response_name}

    assert retention.delete_expired(now=NOW - timedelta(hours=2)) == NOTHING
    assert IdempotentRequest.objects.count() == 3

    assert retention.delete_expired(now=NOW) == {**NOTHING, "idempotency": 2}
    assert store.stored() == {kept.response_name}
    assert list(IdempotentRequest.objects.all()) == [kept]


@pytest.mark.django_db
def test_hosted_images_go_once_their_links_are_dead_by_day_and_on_the_cutoffs_day_by_time(
    store: Store,
) -> None:
    older = {
        _store_image(store, datetime(2029, 12, 31, 23, 30, tzinfo=UTC)),
        _store_image(store, datetime(2030, 5, 31, 8, 0, tzinfo=UTC)),
        _store_image(store, datetime(2030, 6, 14, 23, 59, 59, tzinfo=UTC)),
    }
    nine = datetime(2030, 6, 15, 9, 0, tzinfo=UTC)
    at_nine = _store_image(store, nine)
    with time_machine.travel(nine, tick=False):
        link = hosting.sign(at_nine)
    recent = _store_image(store, datetime(2030, 6, 15, 11, 30, tzinfo=UTC))
    assert at_nine.startswith("images/2030/06/15/")
    assert store.stored() == {*older, at_nine, recent}

    # 10:00: nine's link is still good (its last second); earlier days are all dead.
    ten = datetime(2030, 6, 15, 10, 0, tzinfo=UTC)
    with time_machine.travel(ten, tick=False):
        assert hosting.resolve(link).name == at_nine
    assert retention.delete_expired(now=ten) == {**NOTHING, "images": 3}
    assert store.stored() == {at_nine, recent}
    assert default_storage.listdir("images") == (["2030"], [])
    assert default_storage.listdir("images/2030") == (["06"], [])
    assert default_storage.listdir("images/2030/06") == (["15"], [])

    # The link died at 10:00:01; the file goes after the margin.
    just_before = ten + retention.IMAGE_MARGIN - timedelta(seconds=1)
    assert retention.delete_expired(now=just_before) == NOTHING
    assert store.stored() == {at_nine, recent}

    just_after = ten + retention.IMAGE_MARGIN + timedelta(seconds=1)
    with time_machine.travel(just_after, tick=False), pytest.raises(NotFound):
        hosting.resolve(link)
    assert retention.delete_expired(now=just_after) == {**NOTHING, "images": 1}
    assert store.stored() == {recent}


def test_files_no_row_names_are_deleted_once_all_of_their_day_has_expired(
    store: Store, workspace: Workspace, api_key: CreatedKey
) -> None:
    old_day, recent_day = NOW - timedelta(days=5), NOW - timedelta(days=1)
    orphans = {
        default_storage.save(f"jobs/{old_day:%Y/%m/%d}/job_gone/result.json", ContentFile(b"{}")),
        default_storage.save(f"jobs/{old_day:%Y/%m/%d}/job_gone/input-0.png", ContentFile(b"x")),
        _body(old_day),
    }
    # Submitted when results were kept longer: its row still holds its files.
    long_kept = _job(
        workspace,
        api_key,
        status=ImageJob.Status.SUCCEEDED,
        created_at=old_day,
        expires_at=NOW + timedelta(days=1),
        result=True,
    )
    long_kept_body = _record(
        api_key, expires_at=NOW + timedelta(hours=1), response_name=_body(old_day)
    ).response_name
    # Too recent to judge: a job or record of that day may still be being written.
    recent = {
        default_storage.save(f"jobs/{recent_day:%Y/%m/%d}/job_new/result.json", ContentFile(b"{}")),
        _body(recent_day),
    }
    kept = {long_kept.result_name, long_kept_body, *recent}
    assert store.stored() == orphans | kept

    assert retention.delete_expired(now=NOW) == {**NOTHING, "orphans": 3}
    assert store.stored() == kept
    assert default_storage.listdir(f"jobs/{old_day:%Y/%m/%d}") == ([long_kept.public_id], [])
    assert ImageJob.objects.get() == long_kept


def test_a_file_already_gone_is_no_error(
    store: Store, workspace: Workspace, api_key: CreatedKey
) -> None:
    job = _job(
        workspace,
        api_key,
        status=ImageJob.Status.SUCCEEDED,
        created_at=NOW - timedelta(days=2),
        expires_at=NOW - timedelta(days=1),
        result=True,
        inputs=1,
    )
    default_storage.delete(job.result_name)
    _record(api_key, expires_at=NOW - timedelta(hours=1), response_name="idempotency/gone")

    assert retention.delete_expired(now=NOW) == {**NOTHING, "jobs": 1, "idempotency": 1}
    assert store.stored() == set()
    assert not ImageJob.objects.exists()
    assert not IdempotentRequest.objects.exists()


def test_rows_are_taken_in_batches_until_none_is_left(
    store: Store,
    workspace: Workspace,
    api_key: CreatedKey,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(retention, "BATCH", 2)
    for hours in range(5):
        _job(
            workspace,
            api_key,
            status=ImageJob.Status.CANCELLED,
            created_at=NOW - timedelta(hours=30 + hours),
            expires_at=NOW - timedelta(hours=6 + hours),
            result=True,
        )
        _record(api_key, expires_at=NOW - timedelta(hours=hours), response_name=_body(NOW))

    assert retention.delete_expired(now=NOW) == {**NOTHING, "jobs": 5, "idempotency": 5}
    assert store.stored() == set()
    assert not ImageJob.objects.exists()
    assert not IdempotentRequest.objects.exists()


def test_a_run_that_fails_on_a_file_leaves_the_row_for_the_next_run(
    store: Store, workspace: Workspace, api_key: CreatedKey
) -> None:
    job = _job(
        workspace,
        api_key,
        status=ImageJob.Status.SUCCEEDED,
        created_at=NOW - timedelta(days=2),
        expires_at=NOW - timedelta(days=1),
        result=True,
        inputs=1,
    )
    delete = default_storage.delete

    def failing_on_the_input(name: str) -> None:
        if name == job.inputs[0]["name"]:
            raise OSError("storage unavailable")
        delete(name)

    with (
        mock.patch.object(default_storage, "delete", failing_on_the_input),
        pytest.raises(OSError, match="storage unavailable"),
    ):
        retention.delete_expired(now=NOW)
    assert ImageJob.objects.get() == job  # still there to point at what is left
    assert store.stored() == {job.inputs[0]["name"]}

    assert retention.delete_expired(now=NOW) == {**NOTHING, "jobs": 1}
    assert store.stored() == set()
    assert not ImageJob.objects.exists()


def test_a_run_lists_only_the_date_directories_it_may_delete_from(
    store: Store, workspace: Workspace, api_key: CreatedKey
) -> None:
    """Never the whole store: the days of jobs and records that may still be alive are not
    listed, nor any directory above a day beyond its own."""
    _job(
        workspace,
        api_key,
        status=ImageJob.Status.SUCCEEDED,
        created_at=NOW - timedelta(hours=20),
        expires_at=NOW + timedelta(hours=4),
        result=True,
    )
    _record(api_key, expires_at=NOW + timedelta(hours=1), response_name=_body(NOW))
    _store_image(store, NOW - timedelta(minutes=10))

    with mock.patch.object(default_storage, "listdir", wraps=default_storage.listdir) as listdir:
        assert retention.delete_expired(now=NOW) == NOTHING
    assert sorted(call.args[0] for call in listdir.call_args_list) == [
        "idempotency",
        "idempotency/2030",
        "idempotency/2030/06",
        "images",
        "images/2030",
        "images/2030/06",
        "images/2030/06/15",
        "jobs",
        "jobs/2030",
        "jobs/2030/06",
    ]

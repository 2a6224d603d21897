"""Async image jobs end to end: a live gunicorn, real Celery workers on the Redis broker,
PostgreSQL, and a slow loopback upstream. Each test has a queue of its own."""

import contextlib
import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from django.db import connection

from billing.models import Budget, UsageRecord
from routing.models import ImageJob, ModelAlias
from tenants.services import CreatedKey
from tests.billing.conftest import budget
from tests.fakes.upstream import FakeUpstream
from tests.support import ROOT, VENV_BIN, gunicorn, subprocess_database_url, wait_for

BODY = {"model": "priced", "prompt": "a lighthouse", "size": "1024x1024", "quality": "low"}


@pytest.fixture
def live_env() -> dict[str, str]:
    if connection.vendor != "postgresql":
        pytest.skip("the worker process needs PostgreSQL")
    return {
        "DATABASE_URL": subprocess_database_url(),
        "CELERY_TASK_ALWAYS_EAGER": "false",
        "CELERY_TASK_DEFAULT_QUEUE": f"test-jobs-{uuid.uuid4().hex}",
    }


@contextlib.contextmanager
def _celery(env: dict[str, str], log: Path, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        process = subprocess.Popen(
            [str(VENV_BIN / "celery"), "-A", "aperture", *args, "--loglevel", "INFO"],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def celery_worker(env: dict[str, str], log: Path) -> Any:
    """A Celery worker on the gevent pool (as `make serve` runs it), on the test's queue."""
    queue = env["CELERY_TASK_DEFAULT_QUEUE"]
    return _celery(
        env,
        log,
        *("worker", "--pool", "gevent", "--concurrency", "20", "-Q", queue),
        *("--without-heartbeat", "--without-gossip", "--without-mingle"),
    )


def celery_beat(env: dict[str, str], log: Path, schedule: Path) -> Any:
    return _celery(env, log, "beat", "--schedule", str(schedule))


def _submit(base: str, secret: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    answer = requests.post(
        f"{base}/v1/images/generations",
        json=body or BODY,
        headers={"Authorization": f"Bearer {secret}", "Prefer": "respond-async"},
        timeout=30,
    )
    assert answer.status_code == 202, answer.text
    assert answer.headers["Location"] == f"{base}/v1/images/jobs/{answer.json()['id']}"
    return dict(answer.json())


def _poll(base: str, secret: str, job_id: str) -> dict[str, Any]:
    answer = requests.get(
        f"{base}/v1/images/jobs/{job_id}",
        headers={"Authorization": f"Bearer {secret}"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


@pytest.mark.django_db(transaction=True)
def test_a_30_second_job_runs_on_the_worker_while_the_web_worker_serves_others(
    live_env: dict[str, str],
    api_key: CreatedKey,
    priced_alias: ModelAlias,
    platform_alias: ModelAlias,
    fake_upstream: FakeUpstream,
    tmp_path: Path,
) -> None:
    secret = api_key.secret
    fake_upstream.delay = 30.0
    with gunicorn(live_env, workers=1) as base, celery_worker(live_env, tmp_path / "w.log"):
        job = _submit(base, secret)
        wait_for(lambda: len(fake_upstream.requests) == 1, timeout=60, what="the upstream call")
        assert _poll(base, secret, job["id"])["status"] == "running"
        # Meanwhile the one web worker answers other calls, a synchronous generation too.
        quick = requests.post(
            f"{base}/v1/images/generations",
            json={"model": "demo-image", "prompt": "meanwhile", "size": "256x256"},
            headers={"Authorization": f"Bearer {secret}"},
            timeout=10,
        )
        assert quick.status_code == 200, quick.text
        assert _poll(base, secret, job["id"])["status"] == "running"
        wait_for(
            lambda: _poll(base, secret, job["id"])["status"] != "running",
            timeout=90,
            what="the job to end",
        )
        ended = _poll(base, secret, job["id"])
        assert ended["status"] == "succeeded", (ended, (tmp_path / "w.log").read_text()[-3000:])
        fake_upstream.delay = 0.0
        synchronous = requests.post(
            f"{base}/v1/images/generations",
            json=BODY,
            headers={"Authorization": f"Bearer {secret}"},
            timeout=30,
        ).json()
    assert {k: v for k, v in ended["result"].items() if k != "created"} == {
        k: v for k, v in synchronous.items() if k != "created"
    }
    assert len(fake_upstream.requests) == 2
    record = UsageRecord.objects.get(
        request_id=ImageJob.objects.get(public_id=job["id"]).request_id
    )
    assert (record.status, record.images) == (200, 1)
    assert record.upstream_ms >= 30_000


@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_mid_call_fails_the_job_worker_lost_with_one_upstream_call(
    live_env: dict[str, str],
    api_key: CreatedKey,
    priced_alias: ModelAlias,
    fake_upstream: FakeUpstream,
    tmp_path: Path,
) -> None:
    row = budget(workspace=api_key.key.workspace, period="month", limit_micro=10_000_000)
    secret = api_key.secret
    fake_upstream.delay = 120.0  # the call is under way when the worker dies
    # A short visibility window and heartbeat, and a beat that sweeps every second.
    worker_env = {
        **live_env,
        "CELERY_VISIBILITY_TIMEOUT": "4",
        "APERTURE_JOB_HEARTBEAT_SECONDS": "0.5",
        "APERTURE_JOB_LOST_AFTER_SECONDS": "3",
        "APERTURE_JOB_SWEEP_SECONDS": "1",
    }
    log = tmp_path / "w.log"
    with gunicorn(live_env, workers=1) as base:
        with celery_worker(worker_env, log) as doomed:
            job = _submit(base, secret)
            wait_for(lambda: len(fake_upstream.requests) == 1, timeout=60, what="the call")
            assert _poll(base, secret, job["id"])["status"] == "running"
            os.killpg(doomed.pid, signal.SIGKILL)
            doomed.wait()
        row.refresh_from_db()
        assert row.reserved_micro > 0  # still held: nobody knows yet
        with (
            celery_worker(worker_env, log),
            celery_beat(worker_env, log, tmp_path / "beat"),
        ):
            wait_for(
                lambda: _poll(base, secret, job["id"])["status"] != "running",
                timeout=60,
                what="the job to be found lost",
            )
        ended = _poll(base, secret, job["id"])
    assert ended["status"] == "failed", log.read_text()[-3000:]
    assert ended["error"]["error"]["code"] == "worker_lost"
    assert len(fake_upstream.requests) == 1
    row = Budget.objects.get(pk=row.pk)
    assert (row.reserved_micro, row.used_micro) == (0, 0)

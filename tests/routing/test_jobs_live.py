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


@pytest.mark.django_db(transaction=True)
def test_a_real_worker_delivers_the_signed_job_and_a_receiver_failing_twice_gets_the_third(
    live_env: dict[str, str],
    api_key: CreatedKey,
    priced_alias: ModelAlias,
    fake_upstream: FakeUpstream,
    tmp_path: Path,
) -> None:
    from standardwebhooks.webhooks import Webhook, WebhookVerificationError

    from tenants import webhook_secrets
    from tests.billing.test_spend_alerts import receiver
    from tests.conftest import ACTOR

    secret = webhook_secrets.webhook_secret_rotate(actor=ACTOR, workspace=api_key.key.workspace)
    env = {
        **live_env,
        "APERTURE_FETCH_ALLOWED_HOSTS": "127.0.0.1",  # the receiver listens on loopback
        "APERTURE_JOB_WEBHOOK_FIRST_RETRY_SECONDS": "1",  # retries after 1 s, then 2 s
    }
    log = tmp_path / "w.log"
    with (
        receiver(statuses=[500, 500]) as hooks,
        gunicorn(env, workers=1) as base,
        celery_worker(env, log),
    ):
        job = _submit(base, api_key.secret, {**BODY, "webhook_url": hooks.url})
        wait_for(lambda: len(hooks.received) == 3, timeout=60, what="the third delivery")
        deliveries = requests.get(
            f"{base}/v1/images/jobs/{job['id']}/deliveries",
            headers={"Authorization": f"Bearer {api_key.secret}"},
            timeout=10,
        ).json()["data"]
    assert [(d["attempt"], d["status_code"], d["delivered"]) for d in deliveries] == [
        (1, 500, False),
        (2, 500, False),
        (3, 204 if deliveries[2]["status_code"] == 204 else 200, True),
    ], log.read_text()[-2000:]
    third = hooks.received[2]
    event = Webhook(secret).verify(third.body, third.headers)
    assert event["type"] == "image.job.succeeded" and event["data"]["id"] == job["id"]
    assert event["data"]["result"]["data"][0]["b64_json"]
    assert {r.headers["webhook-id"] for r in hooks.received} == {f"msg_{job['id']}"}
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + "A" * 43 + "=").verify(third.body, third.headers)
    assert ImageJob.objects.get(public_id=job["id"]).webhook_status == "delivered"


@pytest.mark.django_db(transaction=True)
def test_one_idempotency_key_on_two_parallel_async_submits_makes_one_job_and_one_charge(
    live_env: dict[str, str],
    api_key: CreatedKey,
    priced_alias: ModelAlias,
    fake_upstream: FakeUpstream,
    tmp_path: Path,
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    row = budget(workspace=api_key.key.workspace, period="month", limit_micro=10_000_000)
    headers = {
        "Authorization": f"Bearer {api_key.secret}",
        "Prefer": "respond-async",
        "Idempotency-Key": "batch-7",
    }
    with gunicorn(live_env, workers=2) as base, celery_worker(live_env, tmp_path / "w.log"):

        def submit(_: int) -> requests.Response:
            return requests.post(
                f"{base}/v1/images/generations", json=BODY, headers=headers, timeout=30
            )

        with ThreadPoolExecutor(max_workers=2) as pool:
            first, second = pool.map(submit, range(2))
        statuses = sorted([first.status_code, second.status_code])
        assert statuses in ([202, 202], [202, 409]), (first.text, second.text)
        accepted = [a.json()["id"] for a in (first, second) if a.status_code == 202]
        assert len(set(accepted)) == 1  # the replay names the same job
        job_id = accepted[0]
        wait_for(
            lambda: _poll(base, api_key.secret, job_id)["status"] == "succeeded",
            timeout=60,
            what="the job",
        )
        replay = submit(0)
    assert replay.status_code == 202 and replay.headers["Idempotent-Replayed"] == "true"
    assert replay.json()["id"] == job_id and replay.json()["status"] == "succeeded"
    assert ImageJob.objects.count() == 1
    assert len(fake_upstream.requests) == 1
    row = Budget.objects.get(pk=row.pk)
    # The job's record; a 409 answered while it was in flight has its own, charged nothing.
    assert row.used_micro == UsageRecord.objects.get(status=200).cost_micro > 0
    assert not UsageRecord.objects.exclude(status__in=[200, 409]).exists()
    assert row.reserved_micro == 0

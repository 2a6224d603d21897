"""Webhooks of async image jobs: the signed delivery (verified by a receiver with the
workspace's secret, refused with another), retries with backoff for a day, the private-address
guard, per-key and per-request URLs, the deliveries endpoint and the admin."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine
from celery.exceptions import Retry
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from aperture.errors import InvalidRequest
from aperture.webhooks import NO_SIGNING_KEY
from routing.jobs import files, webhooks
from routing.jobs.objects import job_object
from routing.models import ImageJob, JobDelivery, ModelAlias
from routing.tasks import deliver_job_webhook
from tenants import webhook_secrets
from tenants.models import ApiKey, AuditEvent, Workspace
from tenants.services import CreatedKey
from tests.billing.test_spend_alerts import receiver
from tests.conftest import ACTOR
from tests.openapi_check import SchemaCheckedClient, checked_client_for
from tests.support import wait_for

Hook = ImageJob.Webhook
FAILED_ERROR = {
    "error": {
        "message": "The upstream refused the prompt.",
        "type": "invalid_request_error",
        "param": "prompt",
        "code": "content_policy_violation",
    }
}


@pytest.fixture
def loopback_allowed(settings: Any) -> None:
    """The receivers listen on loopback: the operator allowlists it, as for real receivers."""
    settings.FETCH_ALLOWED_HOSTS = ["127.0.0.1"]


@pytest.fixture
def signing_secret(workspace: Workspace) -> str:
    return webhook_secrets.webhook_secret_rotate(actor=ACTOR, workspace=workspace)


def _job(key: ApiKey, url: str, *, status: str = "failed", **fields: Any) -> ImageJob:
    """A finished job, as the worker leaves it, waiting for its webhook."""
    ended = timezone.now().replace(microsecond=0)
    defaults: dict[str, Any] = {
        "error": FAILED_ERROR if status == "failed" else None,
        "error_status": 400 if status == "failed" else None,
        "webhook_status": Hook.PENDING,
    }
    return ImageJob.objects.create(
        workspace_id=key.workspace_id,
        key=key,
        request_id="req_test",
        endpoint="images.generations",
        model="demo-image",
        status=status,
        webhook_url=url,
        created_at=ended - timedelta(seconds=20),
        started_at=ended - timedelta(seconds=15),
        finished_at=ended,
        expires_at=ended + timedelta(days=1),
        **{**defaults, **fields},
    )


def _attempts(job: ImageJob) -> list[tuple[int, int | None, bool, str]]:
    return list(
        JobDelivery.objects.filter(job=job)
        .order_by("attempt")
        .values_list("attempt", "status_code", "delivered", "error")
    )


@dataclass
class Worker:
    """Runs the task as a Celery worker would (its request says which retry it is), each
    retry at once instead of after its countdown: records the countdowns asked for and moves
    the clock, if given, on by each. (Run eagerly, Celery propagates the first Retry.)"""

    monkeypatch: pytest.MonkeyPatch
    clock: Any = None
    countdowns: list[int] = field(default_factory=list)

    def retry(self, countdown: int) -> Retry:
        self.countdowns.append(countdown)
        return Retry()

    def run(self, job_id: int) -> None:
        self.monkeypatch.setattr(deliver_job_webhook, "retry", self.retry)
        retries = 0
        while True:
            deliver_job_webhook.push_request(retries=retries, is_eager=False)
            try:
                deliver_job_webhook.run(job_id)
                return
            except Retry:
                retries += 1
                if self.clock is not None:
                    self.clock.shift(self.countdowns[-1])
            finally:
                deliver_job_webhook.pop_request()


# --- The signed delivery ---------------------------------------------------------------------


def test_a_finished_job_is_posted_signed_and_only_the_workspaces_secret_verifies_it(
    api_key: CreatedKey, signing_secret: str, loopback_allowed: None, settings: Any, tmp_path: Any
) -> None:
    settings.MEDIA_ROOT = tmp_path
    result = {"created": 1_790_000_000, "data": [{"url": "https://gw.example/v1/images/files/t"}]}
    with receiver() as hooks:
        job = _job(api_key.key, hooks.url, status="succeeded")
        job.result_name = files.save_result(job, result)
        job.save(update_fields=["result_name"])
        deliver_job_webhook.apply(args=[job.pk])
    (hook,) = hooks.received
    assert job.finished_at is not None
    assert hook.headers["webhook-id"] == f"msg_{job.public_id}"
    assert hook.headers["Content-Type"] == "application/json"
    assert hook.headers["User-Agent"] == "Aperture-Webhooks/1"
    assert Webhook(signing_secret).verify(hook.body, hook.headers) == {
        "type": "image.job.succeeded",
        "timestamp": job.finished_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "data": {**job_object(job), "result": result},
    }
    with pytest.raises(WebhookVerificationError):
        Webhook(webhook_secrets.generate()).verify(hook.body, hook.headers)
    tampered = hook.body.replace("succeeded", "failed")
    with pytest.raises(WebhookVerificationError):
        Webhook(signing_secret).verify(tampered, hook.headers)
    job.refresh_from_db()
    assert job.webhook_status == Hook.DELIVERED
    assert _attempts(job) == [(1, 200, True, "")]
    assert JobDelivery.objects.get(job=job).url == hooks.url


def test_a_failed_job_carries_its_error_envelope(
    api_key: CreatedKey, signing_secret: str, loopback_allowed: None
) -> None:
    with receiver() as hooks:
        job = _job(api_key.key, hooks.url)
        deliver_job_webhook.apply(args=[job.pk])
    body = Webhook(signing_secret).verify(hooks.received[0].body, hooks.received[0].headers)
    assert (body["type"], body["data"]["status"], body["data"]["error"]) == (
        "image.job.failed",
        "failed",
        FAILED_ERROR,
    )
    assert body["data"] == job_object(job)


def test_a_receiver_that_answers_500_twice_gets_the_third_delivery(
    api_key: CreatedKey, signing_secret: str, loopback_allowed: None, monkeypatch: Any
) -> None:
    with receiver(statuses=[500, 500]) as hooks:
        job = _job(api_key.key, hooks.url)
        worker = Worker(monkeypatch)
        worker.run(job.pk)
    assert worker.countdowns == [30, 60]
    job.refresh_from_db()
    assert job.webhook_status == Hook.DELIVERED
    assert _attempts(job) == [
        (1, 500, False, "HTTP 500"),
        (2, 500, False, "HTTP 500"),
        (3, 200, True, ""),
    ]
    assert [r.headers["webhook-id"] for r in hooks.received] == [f"msg_{job.public_id}"] * 3
    assert len({r.body for r in hooks.received}) == 1  # the same message every time
    for r in hooks.received:
        assert Webhook(signing_secret).verify(r.body, r.headers)["data"]["id"] == job.public_id


def test_retries_back_off_from_30_seconds_to_30_minutes_and_give_up_after_a_day(
    api_key: CreatedKey,
    signing_secret: str,
    loopback_allowed: None,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    start = datetime(2026, 12, 17, 9, 0, tzinfo=UTC)
    with receiver(statuses=[503] * 100) as hooks, time_machine.travel(start, tick=False) as clock:
        job = _job(api_key.key, hooks.url)
        worker = Worker(monkeypatch, clock=clock)
        worker.run(job.pk)
    countdowns = worker.countdowns
    assert countdowns[:7] == [30, 60, 120, 240, 480, 960, 1800]
    assert set(countdowns[6:]) == {1800}
    assert max(countdowns) < settings.CELERY_VISIBILITY_TIMEOUT  # never handed out twice
    assert sum(countdowns) <= 24 * 3600 < sum(countdowns) + 1800  # the next would be too late
    job.refresh_from_db()
    assert job.webhook_status == Hook.FAILED
    attempts = _attempts(job)
    assert len(attempts) == len(hooks.received) == len(countdowns) + 1 == 53
    assert set(attempts[-1][1:]) == {503, False, "HTTP 503"}
    first, last = (
        JobDelivery.objects.filter(job=job).order_by(order).values_list("created_at", flat=True)[0]
        for order in ("attempt", "-attempt")
    )
    assert last - first == timedelta(seconds=sum(countdowns)) <= timedelta(days=1)


def test_retries_end_a_day_after_the_first_attempt_even_when_they_ran_late(
    api_key: CreatedKey, signing_secret: str, loopback_allowed: None
) -> None:
    """Workers stopped for a day: the next attempt, late, is the last."""
    with (
        receiver(statuses=[500, 500]) as hooks,
        time_machine.travel(datetime(2026, 12, 17, 9, 0, tzinfo=UTC), tick=False) as clock,
    ):
        job = _job(api_key.key, hooks.url)
        assert webhooks.attempt(job.pk, 1) == 30
        clock.shift(timedelta(hours=23, minutes=59, seconds=30))
        assert webhooks.attempt(job.pk, 2) is None  # its retry would start past the day
    job.refresh_from_db()
    assert (job.webhook_status, len(hooks.received)) == (Hook.FAILED, 2)


def test_an_attempt_is_made_once_however_often_its_message_comes(
    api_key: CreatedKey, signing_secret: str, loopback_allowed: None
) -> None:
    with receiver(statuses=[500]) as hooks:
        job = _job(api_key.key, hooks.url)
        assert webhooks.attempt(job.pk, 1) == 30
        assert webhooks.attempt(job.pk, 1) is None  # the broker handed it out twice
        assert webhooks.attempt(job.pk, 2) is None  # delivered
        assert webhooks.attempt(job.pk, 3) is None  # nothing pending any more
    assert len(hooks.received) == 2
    assert _attempts(job) == [(1, 500, False, "HTTP 500"), (2, 200, True, "")]


# --- The private-address guard ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("https://127.0.0.1:9/hook", "resolves to a private, loopback or link-local address"),
        ("https://10.0.0.1/hook", "resolves to a private, loopback or link-local address"),
        ("https://169.254.169.254/latest", "resolves to a private, loopback or link-local"),
        ("ftp://hooks.example.com/x", "Must be an https:// URL with a host name."),
        ("https://user:pw@hooks.example.com/x", "Must not carry user info or a fragment."),
        ("https://93.184.215.14/" + "a" * 2000, "Must be at most 2000 characters."),
    ],
)
def test_a_request_webhook_url_that_is_not_public_https_is_refused(url: str, problem: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        webhooks.checked_url(url)
    assert refused.value.param == "webhook_url"
    assert refused.value.message.startswith("webhook_url: ")
    assert problem in refused.value.message


def test_a_public_https_url_is_accepted_with_its_query() -> None:
    assert webhooks.checked_url("https://93.184.215.14/hooks?token=abc") == (
        "https://93.184.215.14/hooks?token=abc"
    )


def test_a_host_that_turned_private_is_refused_for_good_at_delivery(
    api_key: CreatedKey, signing_secret: str, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.FETCH_ALLOWED_HOSTS = []  # loopback is private unless allowlisted
    with receiver() as hooks:
        job = _job(api_key.key, hooks.url)
        worker = Worker(monkeypatch)
        worker.run(job.pk)
    assert (hooks.received, worker.countdowns) == ([], [])  # no retry
    job.refresh_from_db()
    assert job.webhook_status == Hook.FAILED
    assert _attempts(job) == [(1, None, False, "The host resolves to a private address.")]


def test_a_webhook_needs_the_workspaces_secret(workspace: Workspace) -> None:
    with pytest.raises(InvalidRequest) as refused:
        webhooks.require_secret(workspace.pk)
    assert (refused.value.param, refused.value.message) == (
        "webhook_url",
        f"webhook_url: {NO_SIGNING_KEY}",
    )
    assert "POST /api/v1/workspace/webhook-secret/rotate" in NO_SIGNING_KEY
    webhook_secrets.webhook_secret_rotate(actor=ACTOR, workspace=workspace)
    webhooks.require_secret(workspace.pk)


# --- Queueing --------------------------------------------------------------------------------


def test_a_finished_job_is_queued_once_after_the_commit(
    api_key: CreatedKey,
    signing_secret: str,
    loopback_allowed: None,
    monkeypatch: pytest.MonkeyPatch,
    django_capture_on_commit_callbacks: Any,
) -> None:
    sent: list[tuple[list[Any], int]] = []

    def to_a_worker(args: list[Any], retries: int) -> None:
        """The broker hands the message straight to a worker."""
        sent.append((args, retries))
        deliver_job_webhook.apply(args=args, retries=retries)

    monkeypatch.setattr(deliver_job_webhook, "apply_async", to_a_worker)
    with receiver() as hooks:
        job = _job(api_key.key, hooks.url, webhook_status=Hook.NONE)
        with django_capture_on_commit_callbacks(execute=False) as callbacks:
            webhooks.queue(job)
            webhooks.queue(job)  # a second call does nothing
        assert job.webhook_status == Hook.PENDING
        assert (len(callbacks), sent, hooks.received) == (1, [], [])  # not before the commit
        callbacks[0]()
    assert sent == [([job.pk], 0)]
    assert len(hooks.received) == 1
    job.refresh_from_db()
    assert job.webhook_status == Hook.DELIVERED


def test_a_job_without_a_webhook_is_not_queued(
    api_key: CreatedKey, django_capture_on_commit_callbacks: Any
) -> None:
    job = _job(api_key.key, "", webhook_status=Hook.NONE)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        webhooks.queue(job)
    assert callbacks == []
    job.refresh_from_db()
    assert job.webhook_status == Hook.NONE


@pytest.mark.django_db(transaction=True)
def test_without_a_broker_a_web_processs_background_delivers_and_retries(
    api_key: CreatedKey,
    signing_secret: str,
    loopback_allowed: None,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings.JOBS_IN_PROCESS = True
    settings.JOB_WEBHOOK_FIRST_RETRY_SECONDS = 0.2  # not half a minute in a test
    with receiver(statuses=[500]) as hooks:
        job = _job(api_key.key, hooks.url, webhook_status=Hook.NONE)
        webhooks.queue(job)  # no transaction: started at once, answered in the background
        wait_for(
            lambda: ImageJob.objects.get(pk=job.pk).webhook_status != Hook.PENDING,
            timeout=30,
            what="the background to deliver the webhook",
        )
    assert _attempts(job) == [(1, 500, False, "HTTP 500"), (2, 200, True, "")]
    assert ImageJob.objects.get(pk=job.pk).webhook_status == Hook.DELIVERED
    assert len(hooks.received) == 2


def test_deliveries_a_stopped_process_left_are_found_to_resume(api_key: CreatedKey) -> None:
    now = timezone.now()
    never_started = _job(api_key.key, "https://93.184.215.14/a")
    ImageJob.objects.filter(pk=never_started.pk).update(finished_at=now - timedelta(minutes=10))
    stalled = _job(api_key.key, "https://93.184.215.14/b")
    JobDelivery.objects.create(
        job=stalled, attempt=1, url=stalled.webhook_url, created_at=now - timedelta(minutes=10)
    )
    waiting = _job(api_key.key, "https://93.184.215.14/c")  # its retry is due in 30 s
    JobDelivery.objects.create(job=waiting, attempt=1, url=waiting.webhook_url, created_at=now)
    just_ended = _job(api_key.key, "https://93.184.215.14/d")
    delivered = _job(api_key.key, "https://93.184.215.14/e", webhook_status=Hook.DELIVERED)
    found = {(o.job_id, o.next_number) for o in webhooks.orphaned(now)}
    assert found == {(never_started.pk, 1), (stalled.pk, 2)}
    assert {just_ended.pk, delivered.pk, waiting.pk}.isdisjoint(o[0] for o in found)


# --- A key's webhook URL ---------------------------------------------------------------------


BODY = {"model": "image-openai", "prompt": "a lighthouse", "size": "1024x1024", "quality": "low"}


def test_a_key_takes_a_webhook_url_through_the_management_api_checked_and_audited(
    admin: SchemaCheckedClient, api_key: CreatedKey, workspace: Workspace, loopback_allowed: None
) -> None:
    url = f"/api/v1/keys/{api_key.key.public_id}"
    hook = "http://127.0.0.1:9/hooks/aperture?token=t0k"
    no_secret = admin.patch(url, {"webhook_url": hook}, format="json")
    assert (no_secret.status_code, no_secret.json()["error"]) == (
        400,
        {
            "message": f"webhook_url: {NO_SIGNING_KEY}",
            "type": "invalid_request_error",
            "param": "webhook_url",
            "code": None,
        },
    )
    webhook_secrets.webhook_secret_rotate(actor=ACTOR, workspace=workspace)
    private = admin.patch(url, {"webhook_url": "https://10.1.2.3/h"}, format="json")
    assert private.status_code == 400
    assert private.json()["error"]["param"] == "webhook_url"
    assert "private" in private.json()["error"]["message"]
    changed = admin.patch(url, {"webhook_url": hook}, format="json")
    assert changed.status_code == 200, changed.json()
    assert changed.json()["webhook_url"] == hook
    assert admin.get(url).json()["webhook_url"] == hook
    assert ApiKey.objects.get(pk=api_key.key.pk).webhook_url == hook
    event = AuditEvent.objects.filter(event="key.updated", target_id=api_key.key.public_id).get()
    assert event.data == {"fields": ["webhook_url"], "webhook_host": "127.0.0.1"}  # no token
    cleared = admin.patch(url, {"webhook_url": ""}, format="json")
    assert (cleared.status_code, cleared.json()["webhook_url"]) == (200, "")
    created = admin.post("/api/v1/keys", {"name": "hooked", "webhook_url": hook}, format="json")
    assert created.status_code == 201, created.json()
    assert created.json()["webhook_url"] == hook
    assert AuditEvent.objects.get(event="key.created", target_id=created.json()["id"]).data == {
        "name": "hooked",
        "team": "design",
        "scopes": ["images"],
        "webhook_host": "127.0.0.1",
    }


def test_a_keys_webhook_url_is_used_when_the_request_names_none(
    client: APIClient,
    api_key: CreatedKey,
    signing_secret: str,
    loopback_allowed: None,
    upstream_aliases: dict[str, ModelAlias],
) -> None:
    ApiKey.objects.filter(pk=api_key.key.pk).update(webhook_url="http://127.0.0.1:9/key")
    by_key = client.post("/v1/images/generations", BODY, format="json", HTTP_PREFER="respond-async")
    own_url = "http://127.0.0.1:9/request"
    own = client.post(
        "/v1/images/generations",
        {**BODY, "webhook_url": own_url},
        format="json",
        HTTP_PREFER="respond-async",
    )
    assert (by_key.status_code, own.status_code) == (202, 202)
    assert ImageJob.objects.get(public_id=by_key.json()["id"]).webhook_url == (
        "http://127.0.0.1:9/key"
    )
    assert ImageJob.objects.get(public_id=own.json()["id"]).webhook_url == own_url


def test_a_request_webhook_url_needs_the_secret_and_a_public_host(
    client: APIClient, upstream_aliases: dict[str, ModelAlias], settings: Any
) -> None:
    hook = {**BODY, "webhook_url": "https://93.184.215.14/hook"}
    no_secret = client.post(
        "/v1/images/generations", hook, format="json", HTTP_PREFER="respond-async"
    )
    assert no_secret.status_code == 400
    assert no_secret.json()["error"]["message"] == f"webhook_url: {NO_SIGNING_KEY}"
    private = {**BODY, "webhook_url": "https://192.168.1.10/hook"}
    refused = client.post(
        "/v1/images/generations", private, format="json", HTTP_PREFER="respond-async"
    )
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "webhook_url"
    assert not ImageJob.objects.exists()


# --- GET /v1/images/jobs/{id}/deliveries -----------------------------------------------------


@pytest.fixture
def attempted(
    api_key: CreatedKey,
    signing_secret: str,
    loopback_allowed: None,
    monkeypatch: pytest.MonkeyPatch,
) -> ImageJob:
    """A job delivered on its second attempt."""
    with receiver(statuses=[502]) as hooks:
        job = _job(api_key.key, hooks.url)
        Worker(monkeypatch).run(job.pk)
    return job


def test_the_deliveries_of_a_job_are_listed_first_first(
    api_key: CreatedKey, attempted: ImageJob
) -> None:
    response = checked_client_for(api_key.secret).get(
        f"/v1/images/jobs/{attempted.public_id}/deliveries"
    )
    assert response.status_code == 200, response.json()
    rows = JobDelivery.objects.filter(job=attempted).order_by("attempt")
    assert response.json() == {
        "object": "list",
        "data": [
            {
                "attempt": row.attempt,
                "status_code": code,
                "error": error,
                "delivered": delivered,
                "duration_ms": row.duration_ms,
                "created_at": int(row.created_at.timestamp()),
            }
            for row, (code, error, delivered) in zip(
                rows, [(502, "HTTP 502", False), (200, "", True)], strict=True
            )
        ],
    }


def test_another_workspaces_job_has_no_deliveries_to_show(
    attempted: ImageJob, outsider: APIClient, admin: SchemaCheckedClient
) -> None:
    url = f"/v1/images/jobs/{attempted.public_id}/deliveries"
    foreign = outsider.get(url)
    assert (foreign.status_code, foreign.json()["error"]) == (
        404,
        {
            "message": f"No job '{attempted.public_id}'.",
            "type": "invalid_request_error",
            "param": "id",
            "code": "job_not_found",
        },
    )
    without_scope = admin.get(url)  # a management key, no `images` scope
    assert (without_scope.status_code, without_scope.json()["error"]["code"]) == (
        403,
        "missing_scope",
    )


# --- The admin ------------------------------------------------------------------------------


def test_operators_see_jobs_by_status_and_each_jobs_delivery_attempts(
    admin_client: Client, attempted: ImageJob, django_assert_max_num_queries: Any
) -> None:
    others = [
        _job(attempted.key, "", status="succeeded", webhook_status=Hook.NONE) for _ in range(3)
    ]
    with django_assert_max_num_queries(10):  # whatever the number of jobs
        every = admin_client.get("/admin/routing/imagejob/")
    assert every.status_code == 200
    assert all(job.public_id in every.content.decode() for job in [attempted, *others])
    failed = admin_client.get("/admin/routing/imagejob/?status__exact=failed").content.decode()
    assert attempted.public_id in failed
    assert not any(job.public_id in failed for job in others)
    change = admin_client.get(f"/admin/routing/imagejob/{attempted.pk}/change/")
    assert change.status_code == 200
    detail = change.content.decode()
    assert "Webhook delivery attempts" in detail and "HTTP 502" in detail
    assert "&quot;code&quot;: &quot;content_policy_violation&quot;" in detail  # its envelope
    refused = admin_client.post(f"/admin/routing/imagejob/{attempted.pk}/change/", {})
    assert refused.status_code == 403  # read-only


def test_operators_set_a_keys_webhook_url_in_the_admin(
    admin_client: Client, api_key: CreatedKey, signing_secret: str, loopback_allowed: None
) -> None:
    key = api_key.key
    form = {"name": key.name, "scopes": ["images"], "allowed_aliases": ""}
    url = f"/admin/tenants/apikey/{key.pk}/change/"
    bad = admin_client.post(url, {**form, "webhook_url": "https://10.0.0.7/hook"})
    assert bad.status_code == 200
    assert "resolves to a private, loopback or link-local address" in bad.content.decode()
    saved = admin_client.post(url, {**form, "webhook_url": "http://127.0.0.1:9/hook"})
    assert saved.status_code == 302, saved.content.decode()[:2000]
    assert ApiKey.objects.get(pk=key.pk).webhook_url == "http://127.0.0.1:9/hook"
    event = AuditEvent.objects.filter(event="key.updated", target_id=key.public_id).get()
    assert event.data == {
        "fields": ["allowed_aliases", "name", "scopes", "webhook_url"],
        "webhook_host": "127.0.0.1",
    }

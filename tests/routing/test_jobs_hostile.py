"""Async image jobs attacked as a hostile tenant, a hostile upstream and a careless operator
would: what a job costs against what its budget and its usage record say, when a job may
still be run, what bad input at submit answers, and the isolation of idempotent submits.

Each test was written to fail on a defect the review found (its docstring says what the
defect was: "DEFECT (fixed)"); they now pin the fixes. "PINNED" tests held up from the start."""

from __future__ import annotations

import contextlib
import io
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.utils import timezone
from rest_framework.test import APIClient

from billing import budgets
from billing.models import Budget, Price, Reservation, UsageRecord
from routing import router
from routing.jobs import files, retention, run, webhooks
from routing.models import ImageJob, JobDelivery, ModelAlias
from tenants import services as tenant_services
from tenants import webhook_secrets
from tenants.models import Team, Workspace
from tenants.services import CreatedKey
from tests.billing.conftest import PRICE_MICRO, budget
from tests.conftest import ACTOR
from tests.fakes.upstream import FakeUpstream, png
from tests.support import client_for

ASYNC: dict[str, Any] = {"HTTP_PREFER": "respond-async"}
BODY = {"model": "priced", "prompt": "a lighthouse", "size": "1024x1024", "quality": "low"}


def _submit(client: APIClient, body: dict[str, Any] | None = None, **headers: Any) -> Any:
    return client.post("/v1/images/generations", body or BODY, format="json", **ASYNC, **headers)


def _job(response: Any) -> ImageJob:
    assert response.status_code == 202, response.content
    return ImageJob.objects.get(public_id=response.json()["id"])


def _during_the_upstream_call(monkeypatch: pytest.MonkeyPatch, action: Any) -> None:
    """Run `action` while the job's upstream call is under way (before it answers)."""
    real_call = router.call

    def call(*args: Any, **kwargs: Any) -> Any:
        action()
        return real_call(*args, **kwargs)

    monkeypatch.setattr(router, "call", call)


# --- What a job costs, against its budget and its record ------------------------------------


@pytest.mark.django_db
def test_a_job_that_started_late_and_is_swept_mid_call_is_recorded_as_charged(
    client: APIClient,
    workspace: Workspace,
    priced_alias: ModelAlias,
    fake_upstream: FakeUpstream,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """DEFECT (fixed). The sweep failed every job still `running` past created_at +
    JOB_MAX_SECONDS as `worker_lost`, but a worker may claim a queued job a moment before
    that deadline (a backlog) and then call an upstream that takes minutes. The sweep then
    released the hold, wrote a usage record of 503 / $0 and a webhook saying "nothing was
    charged"; the live worker's call completed, its settle charged the budget anyway (the
    hold being gone, as far as the room allowed), and its result was thrown away. The budget
    and the usage record disagreed, and the tenant paid for an image it never got."""
    row = budget(workspace=workspace, period="month", limit_micro=10_000_000)
    job = _job(_submit(client))
    almost_late = timezone.now() - timedelta(seconds=django_settings.JOB_MAX_SECONDS - 5)
    ImageJob.objects.filter(pk=job.pk).update(created_at=almost_late)
    # The beat's sweep runs while the upstream is still working on the image.
    _during_the_upstream_call(
        monkeypatch, lambda: run.sweep(now=timezone.now() + timedelta(seconds=30))
    )

    run.run_job(job.pk)

    assert len(fake_upstream.requests) == 1  # the upstream did make the image
    job.refresh_from_db()
    row.refresh_from_db()
    record = UsageRecord.objects.get(request_id=job.request_id)
    # What the budget was charged is what the request's one record says it cost ...
    assert row.used_micro == record.cost_micro, (
        f"budget charged {row.used_micro} µUSD, usage record says {record.cost_micro} "
        f"(status {record.status}, job {job.status}: {job.error})"
    )
    # ... and a job that says "nothing was charged" charged nothing.
    if job.status == ImageJob.Status.FAILED:
        assert row.used_micro == 0


@pytest.mark.django_db
def test_a_job_past_its_deadline_is_not_run_on_a_hold_already_reaped(
    client: APIClient,
    workspace: Workspace,
    priced_alias: ModelAlias,
    fake_upstream: FakeUpstream,
) -> None:
    """DEFECT (fixed). `run_job` claims any queued job, however old: nothing checks its deadline. A
    job whose message reaches a worker after the deadline (a backlog, the beat stopped or
    between two sweeps) runs on a hold the reaper already released and whose room another
    request has since taken: the upstream is called beyond the budget, and the job's record
    says one image for $0. A job past its deadline must fail `job_expired` without a call,
    as the sweep would have failed it."""
    row = budget(workspace=workspace, period="month", limit_micro=PRICE_MICRO)  # one image
    job = _job(_submit(client))
    late = timezone.now() - timedelta(seconds=django_settings.JOB_MAX_SECONDS + 120)
    ImageJob.objects.filter(pk=job.pk).update(created_at=late)
    Reservation.objects.update(held_until=timezone.now() - timedelta(seconds=60))
    assert budgets.reap_orphaned_reservations(older_than=timedelta(minutes=16)) == 1
    other = client.post("/v1/images/generations", BODY, format="json")  # takes the room
    assert other.status_code == 200, other.content
    assert len(fake_upstream.requests) == 1

    run.run_job(job.pk)

    assert len(fake_upstream.requests) == 1, "a job past its deadline called the upstream"
    job.refresh_from_db()
    assert job.status == ImageJob.Status.FAILED and job.error is not None
    assert job.error["error"]["code"] == "job_expired"
    row.refresh_from_db()
    assert (row.used_micro, row.reserved_micro) == (PRICE_MICRO, 0)


@pytest.mark.django_db
def test_a_second_hand_off_of_a_job_while_it_runs_does_not_fail_it_as_lost(
    client: APIClient,
    workspace: Workspace,
    priced_alias: ModelAlias,
    fake_upstream: FakeUpstream,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """DEFECT (fixed). Without a broker, every web process's housekeeping hands over the jobs
    it finds queued for more than 30 s (routing/jobs/dispatch.py). With more than one process
    (WEB_CONCURRENCY > 1, or eager tasks on a production database), a job another process is
    about to run is picked up too; the second `run_job` finds it `running` and fails it
    `worker_lost` while it runs. The first worker's call then charges the budget, its
    result is dropped, and the record says 503 / $0 — "a job found running is a dead worker's"
    holds only for a broker's redelivery after its visibility timeout."""
    row = budget(workspace=workspace, period="month", limit_micro=10_000_000)
    job = _job(_submit(client))
    # The other process's background thread runs its copy while this one's call is under way.
    _during_the_upstream_call(monkeypatch, lambda: run.run_job(job.pk))

    run.run_job(job.pk)

    assert len(fake_upstream.requests) == 1
    job.refresh_from_db()
    row.refresh_from_db()
    record = UsageRecord.objects.get(request_id=job.request_id)
    assert job.status == ImageJob.Status.SUCCEEDED, job.error
    assert (record.status, record.cost_micro) == (200, row.used_micro)


@pytest.mark.django_db
def test_a_job_whose_price_rose_after_submit_is_not_run_past_its_budget(
    client: APIClient,
    workspace: Workspace,
    priced_alias: ModelAlias,
    fake_upstream: FakeUpstream,
) -> None:
    """DEFECT (fixed). The worker re-plans the job (`pipeline.resume`) but keeps the hold estimated
    at submit. When the price (or the alias's deployments) changed in between, the upstream
    is called for a cost the job's budget cannot take — a synchronous call of the same body
    is refused 402 at that moment — and the settle then caps the charge at the budget's
    room: the upstream produced $0.05 against a $0.02 budget, and the caller is charged
    $0.02. Either the job is refused (402, no call) or it pays what was produced."""
    row = budget(workspace=workspace, period="month", limit_micro=2 * PRICE_MICRO)
    job = _job(_submit(client))  # holds one image at $0.01
    price = Price.objects.get(model_pattern="priced-model")
    price.per_image_micro = 5 * PRICE_MICRO  # the operator's new price: $0.05 an image
    price.save()
    refused = client.post("/v1/images/generations", BODY, format="json")
    assert refused.status_code == 402  # a synchronous call is not let past the budget

    run.run_job(job.pk)

    job.refresh_from_db()
    row.refresh_from_db()
    record = UsageRecord.objects.get(request_id=job.request_id)
    if fake_upstream.requests:  # called: it pays for what the upstream produced
        assert record.cost_micro == 5 * PRICE_MICRO, (
            f"produced $0.05, charged {record.cost_micro} µUSD on a {row.limit_micro} budget"
        )
    else:  # or refused as the synchronous call was, its hold released
        assert job.status == ImageJob.Status.FAILED and job.error_status == 402
        assert (row.used_micro, row.reserved_micro) == (0, 0)


@pytest.mark.django_db
def test_a_result_that_cannot_be_stored_does_not_leave_a_charged_job_running_as_free(
    client: APIClient,
    workspace: Workspace,
    priced_alias: ModelAlias,
    fake_upstream: FakeUpstream,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """DEFECT (fixed). `_ended` stores the result (storage: S3 in production) outside the job's
    error handling, after the call was settled. A storage error then escapes `run_job`: the
    job stays `running` (polls say so for 50 minutes), no record is written, and the sweep
    finally fails it `worker_lost` with a 503 / $0 record and "nothing was charged" — while
    the budget was charged for the image the upstream made."""
    row = budget(workspace=workspace, period="month", limit_micro=10_000_000)
    job = _job(_submit(client))

    def unavailable(*args: Any, **kwargs: Any) -> str:
        raise OSError("storage unavailable")

    monkeypatch.setattr(files, "save_result", unavailable)
    with contextlib.suppress(OSError):
        run.run_job(job.pk)
    job.refresh_from_db()
    assert job.status != ImageJob.Status.RUNNING, "left running after its call ended"
    run.sweep(now=timezone.now() + timedelta(seconds=django_settings.JOB_MAX_SECONDS + 1))

    row.refresh_from_db()
    record = UsageRecord.objects.get(request_id=job.request_id)
    assert row.used_micro == record.cost_micro


@pytest.mark.django_db
def test_retention_does_not_delete_a_job_whose_webhook_is_still_being_retried(
    api_key: CreatedKey, settings: Any, tmp_path: Any
) -> None:
    """DEFECT (fixed, low). A webhook is retried until 24 h after its first attempt
    (docs/webhooks.md), but retention deletes a finished job 24 h after its submission
    (docs/retention.md). A job that ended 50 minutes after its submit, whose receiver is
    down, is deleted with its pending delivery at 24 h: the last attempts are silently
    dropped, its `webhook_status` never becomes `failed`, and its deliveries endpoint
    answers 404."""
    settings.MEDIA_ROOT = tmp_path
    submitted = timezone.now() - timedelta(hours=24, seconds=1)
    ended = submitted + timedelta(minutes=50)
    job = ImageJob.objects.create(
        workspace_id=api_key.key.workspace_id,
        key=api_key.key,
        request_id="req_hostile",
        endpoint="images.generations",
        model="priced",
        status=ImageJob.Status.FAILED,
        error={"error": {"message": "x", "type": "server_error", "param": None, "code": "x"}},
        error_status=502,
        webhook_url="https://93.184.215.14/hook",
        webhook_status=ImageJob.Webhook.PENDING,
        created_at=submitted,
        started_at=submitted,
        finished_at=ended,
        expires_at=submitted + timedelta(seconds=django_settings.JOB_RESULT_TTL_SECONDS),
    )
    JobDelivery.objects.create(
        job=job,
        attempt=1,
        url=job.webhook_url,
        status_code=503,
        error="HTTP 503",
        created_at=ended,
    )
    now = timezone.now()
    # The next attempt is still inside the retry window that started with the first attempt.
    assert not webhooks.gives_up(1, ended, now)

    retention.delete_expired(now=now)

    assert ImageJob.objects.filter(pk=job.pk).exists(), "deleted with its webhook pending"


# --- Bad input at submit: a clear 4xx, never a 500 -------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({**BODY, "prompt": "a lighthouse\u0000 at dusk"}, id="prompt"),
        pytest.param({**BODY, "style_hint": "x\u0000y"}, id="extra-field"),
        pytest.param({**BODY, "webhook_url": "https://93.184.215.14/hook?t=\u0000"}, id="webhook"),
    ],
)
@pytest.mark.django_db
def test_a_nul_character_in_an_async_body_is_not_a_500(
    client: APIClient,
    workspace: Workspace,
    priced_alias: ModelAlias,
    fake_upstream: FakeUpstream,
    body: dict[str, Any],
) -> None:
    """DEFECT (fixed). The job keeps its body in a JSONB column (and its webhook URL in a varchar),
    which PostgreSQL refuses with a NUL in any string: the INSERT fails after the request
    was let in (rate limits taken, budget held) and the submit answers 500. The same body
    without `Prefer: respond-async` is served (the prompt, an extra field) or, for
    `webhook_url`, must be a 400 naming it; `user` and `metadata` already refuse NUL with a
    400."""
    webhook_secrets.webhook_secret_rotate(actor=ACTOR, workspace=workspace)
    answer = _submit(client, body)
    assert answer.status_code < 500, answer.content
    assert fake_upstream.requests == []


@pytest.mark.django_db
def test_an_async_edit_with_a_nul_in_a_field_is_not_a_500_and_leaves_no_input_file(
    client: APIClient,
    priced_alias: ModelAlias,
    fake_upstream: FakeUpstream,
    settings: Any,
    tmp_path: Path,
) -> None:
    """DEFECT (fixed). The same NUL in a multipart edit's text field: the edit's images are written
    to storage (`jobs/…/input-0.png`) before the job's row, whose INSERT then fails — a 500,
    and an input image that no row names is left behind (only the orphan sweep, a day or
    more later, deletes it): not "nothing half-written"."""
    settings.MEDIA_ROOT = tmp_path
    image = io.BytesIO(png(64, 64))
    image.name = "in.png"
    answer = client.post(
        "/v1/images/edits",
        {"model": "priced", "prompt": "add a boat\u0000", "image": image, "size": "1024x1024"},
        format="multipart",
        **ASYNC,
    )
    assert answer.status_code < 500, answer.content
    left = [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()]
    if answer.status_code >= 400:
        assert left == []


@pytest.mark.parametrize("url", ["https://[::1/hook", "https://[93.184.215.14/hook"])
@pytest.mark.django_db
def test_a_webhook_url_with_a_broken_bracketed_host_is_a_400(
    client: APIClient,
    workspace: Workspace,
    priced_alias: ModelAlias,
    fake_upstream: FakeUpstream,
    url: str,
) -> None:
    """DEFECT (fixed). `urlsplit` raises ValueError ("Invalid IPv6 URL") on an unclosed bracket; the
    guard (aperture/outbound.py public_url_problem) calls it outside its try, so the request's
    `webhook_url` — a new tenant-controlled input on every image route — answers 500."""
    webhook_secrets.webhook_secret_rotate(actor=ACTOR, workspace=workspace)
    answer = _submit(client, {**BODY, "webhook_url": url})
    assert answer.status_code == 400, answer.content
    assert answer.json()["error"]["param"] == "webhook_url"
    assert not ImageJob.objects.exists() and not Reservation.objects.exists()


@pytest.mark.parametrize("suffix", ["", "/cancel", "/deliveries"])
@pytest.mark.django_db
def test_a_job_id_with_a_nul_byte_is_a_404(
    client: APIClient, priced_alias: ModelAlias, suffix: str
) -> None:
    """DEFECT (fixed, low). `/v1/images/jobs/{id}` takes any string as the id and filters a varchar
    with it: a `%00` in it makes psycopg refuse the query and the route answer 500 (the
    management API's key routes share the pattern)."""
    method = client.post if suffix == "/cancel" else client.get
    answer = method(f"/v1/images/jobs/job_%00abc{suffix}")
    assert answer.status_code == 404, answer.content
    assert answer.json()["error"]["code"] == "job_not_found"


# --- Isolation: pinned -----------------------------------------------------------------------


@pytest.mark.django_db
def test_one_idempotency_key_on_two_workspaces_keys_makes_two_jobs_each_its_own(
    client: APIClient,
    team: Team,
    outsider_key: CreatedKey,
    priced_alias: ModelAlias,
    fake_upstream: FakeUpstream,
) -> None:
    """PINNED (holds). The same Idempotency-Key value sent by another workspace's key, and by
    a colleague's key, never replays this key's job: each submit is its own job; a replay by
    the first key after a cancel answers its own (cancelled) job, and no other key can read
    or cancel across workspaces."""
    outsider = client_for(outsider_key.secret)
    colleague = client_for(
        tenant_services.key_create(actor=ACTOR, team=team, name="colleague").secret
    )
    mine = _submit(client, HTTP_IDEMPOTENCY_KEY="order-1")
    theirs = _submit(outsider, HTTP_IDEMPOTENCY_KEY="order-1")
    colleagues = _submit(colleague, HTTP_IDEMPOTENCY_KEY="order-1")
    ids = {_job(r).public_id for r in (mine, theirs, colleagues)}
    assert len(ids) == 3
    assert "Idempotent-Replayed" not in theirs and "Idempotent-Replayed" not in colleagues
    mine_id = mine.json()["id"]
    assert outsider.get(f"/v1/images/jobs/{mine_id}").status_code == 404
    assert outsider.post(f"/v1/images/jobs/{mine_id}/cancel").status_code == 404
    assert outsider.get(f"/v1/images/jobs/{mine_id}/deliveries").status_code == 404
    assert client.post(f"/v1/images/jobs/{mine_id}/cancel").status_code == 200
    replay = _submit(client, HTTP_IDEMPOTENCY_KEY="order-1")
    assert replay.status_code == 202 and replay["Idempotent-Replayed"] == "true"
    assert replay.json()["id"] == mine_id and replay.json()["status"] == "cancelled"
    assert fake_upstream.requests == []
    # One record per submit: the cancelled one's, none for the replay.
    assert UsageRecord.objects.filter(request_id=_job(mine).request_id).count() == 1
    assert Budget.objects.count() == 0

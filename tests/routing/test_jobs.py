"""Async image jobs through the API, the worker's run called in the test (no broker):
submit checks everything a synchronous call checks, the hold lasts until the job ends, and
the job ends the way a synchronous call would have."""

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from billing import budgets, leases
from billing.models import Budget, Reservation, UsageRecord
from routing.jobs import run
from routing.models import ImageJob, ModelAlias
from tenants import services as tenant_services
from tenants.models import Team, Workspace
from tenants.services import CreatedKey
from tests.billing.conftest import budget
from tests.conftest import ACTOR
from tests.fakes.upstream import FakeUpstream
from tests.support import client_for, wait_for

ASYNC: dict[str, Any] = {"HTTP_PREFER": "respond-async"}
BODY = {"model": "priced", "prompt": "a lighthouse", "size": "1024x1024", "quality": "low"}


def _submit(client: APIClient, body: dict[str, Any] | None = None, **headers: Any) -> Any:
    return client.post("/v1/images/generations", body or BODY, format="json", **ASYNC, **headers)


def _job(response: Any) -> ImageJob:
    return ImageJob.objects.get(public_id=response.json()["id"])


@pytest.mark.django_db
def test_submit_answers_202_and_the_worker_ends_it_with_the_synchronous_body(
    client: APIClient, priced_alias: ModelAlias, fake_upstream: FakeUpstream
) -> None:
    submitted = _submit(client)
    assert submitted.status_code == 202, submitted.content
    job = submitted.json()
    assert {k: job[k] for k in ("object", "status", "model", "result", "error")} == {
        "object": "image.job",
        "status": "queued",
        "model": "priced",
        "result": None,
        "error": None,
    }
    assert job["id"].startswith("job_")
    assert job["expires_at"] - job["created_at"] == 24 * 3600
    assert submitted["Location"].endswith(f"/v1/images/jobs/{job['id']}")
    assert "x-aperture-cost-usd" not in submitted  # charged when it ends
    assert fake_upstream.requests == []  # nothing called at submit
    assert not UsageRecord.objects.exists()  # the record is written when the job ends

    run.run_job(_job(submitted).pk)

    polled = client.get(f"/v1/images/jobs/{job['id']}")
    assert polled.status_code == 200
    ended = polled.json()
    assert ended["status"] == "succeeded"
    assert ended["started_at"] is not None and ended["finished_at"] is not None
    synchronous = client.post("/v1/images/generations", BODY, format="json").json()
    assert {k: v for k, v in ended["result"].items() if k != "created"} == {
        k: v for k, v in synchronous.items() if k != "created"
    }
    assert len(fake_upstream.requests) == 2  # one for the job, one for the synchronous call
    record = UsageRecord.objects.get(request_id=submitted["x-request-id"])
    assert (record.status, record.images, record.endpoint) == (200, 1, "images.generations")
    assert record.cost_micro == int(float(ended["result"]["usage"]["cost"]) * 1_000_000)


@pytest.mark.django_db
def test_the_hold_lasts_until_the_job_ends_and_the_reaper_leaves_it(
    client: APIClient,
    workspace: Workspace,
    priced_alias: ModelAlias,
) -> None:
    row = budget(workspace=workspace, period="month", limit_micro=10_000_000)
    job = _job(_submit(client))
    row.refresh_from_db()
    assert row.reserved_micro > 0
    hold = Reservation.objects.get()
    assert hold.held_until is not None and hold.held_until > timezone.now() + timedelta(minutes=45)
    # Older than any request's hold: the reaper still leaves a job's hold alone.
    Reservation.objects.update(created_at=timezone.now() - timedelta(hours=1))
    assert budgets.reap_orphaned_reservations(older_than=timedelta(minutes=16)) == 0
    run.run_job(job.pk)
    row.refresh_from_db()
    assert row.reserved_micro == 0 and row.used_micro > 0
    assert not Reservation.objects.exists()


@pytest.mark.django_db
def test_twenty_jobs_against_a_budget_for_five_five_accepted_fifteen_402_at_submit(
    client: APIClient, workspace: Workspace, priced_alias: ModelAlias
) -> None:
    budget(workspace=workspace, period="month", limit_images=5)
    answers = [_submit(client).status_code for _ in range(20)]
    assert answers.count(202) == 5 and answers.count(402) == 15
    assert ImageJob.objects.count() == 5
    assert Budget.objects.get().reserved_images == 5


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({**BODY, "stream": True}, 400, "stream"),
        ({**BODY, "model": "no-such-model"}, 404, None),
        ({**BODY, "n": 0}, 400, "n"),
        ({k: v for k, v in BODY.items() if k != "prompt"}, 400, "prompt"),
        ({**BODY, "webhook_url": "http://10.0.0.1/hook"}, 400, "webhook_url"),
        ({**BODY, "webhook_url": 7}, 400, "webhook_url"),
    ],
)
@pytest.mark.django_db
def test_a_bad_request_is_a_4xx_at_submit_never_a_job(
    client: APIClient,
    priced_alias: ModelAlias,
    fake_upstream: FakeUpstream,
    body: dict[str, Any],
    status: int,
    param: str | None,
) -> None:
    answer = _submit(client, body)
    assert answer.status_code == status, answer.content
    if param:
        assert answer.json()["error"]["param"] == param
    assert not ImageJob.objects.exists() and not Reservation.objects.exists()
    assert fake_upstream.requests == []


@pytest.mark.django_db
def test_webhook_url_without_async_is_refused(
    client: APIClient, priced_alias: ModelAlias, fake_upstream: FakeUpstream
) -> None:
    answer = client.post(
        "/v1/images/generations",
        {**BODY, "webhook_url": "https://hooks.example.com/x"},
        format="json",
    )
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "webhook_url"
    assert fake_upstream.requests == []


@pytest.mark.django_db
def test_an_upstream_failure_ends_the_job_with_the_synchronous_envelope_and_no_charge(
    client: APIClient,
    workspace: Workspace,
    priced_alias: ModelAlias,
    fake_upstream: FakeUpstream,
) -> None:
    from tests.fakes.upstream import Misbehave

    row = budget(workspace=workspace, period="month", limit_micro=10_000_000)
    fake_upstream.misbehave(*[Misbehave(status=400, body={"error": {"message": "nope"}})] * 3)
    job = _job(_submit(client))
    run.run_job(job.pk)
    ended = client.get(f"/v1/images/jobs/{job.public_id}").json()
    fake_upstream.misbehave(*[Misbehave(status=400, body={"error": {"message": "nope"}})] * 3)
    synchronous = client.post("/v1/images/generations", BODY, format="json")
    assert ended["status"] == "failed" and ended["result"] is None
    assert ended["error"] == synchronous.json()
    leases.return_all()  # the synchronous call's idle budget slice
    row.refresh_from_db()
    assert (row.used_micro, row.reserved_micro) == (0, 0)
    record = UsageRecord.objects.get(request_id=job.request_id)
    assert (record.status, record.cost_micro) == (synchronous.status_code, 0)


@pytest.mark.django_db
def test_a_key_revoked_before_the_job_runs_stops_it_and_releases_its_hold(
    client: APIClient,
    api_key: CreatedKey,
    workspace: Workspace,
    priced_alias: ModelAlias,
    fake_upstream: FakeUpstream,
) -> None:
    row = budget(workspace=workspace, period="month", limit_micro=10_000_000)
    job = _job(_submit(client))
    tenant_services.key_revoke(actor=ACTOR, key=api_key.key)
    run.run_job(job.pk)
    job.refresh_from_db()
    assert job.status == "failed" and job.error is not None
    assert job.error["error"]["code"] == "invalid_api_key"
    assert fake_upstream.requests == []
    row.refresh_from_db()
    assert (row.used_micro, row.reserved_micro) == (0, 0)
    assert UsageRecord.objects.get(request_id=job.request_id).status == 401


@pytest.mark.django_db
def test_cancel_a_queued_job_costs_nothing_and_a_running_one_is_a_409(
    client: APIClient,
    workspace: Workspace,
    priced_alias: ModelAlias,
    fake_upstream: FakeUpstream,
) -> None:
    row = budget(workspace=workspace, period="month", limit_micro=10_000_000)
    first, second = _job(_submit(client)), _job(_submit(client))
    cancelled = client.post(f"/v1/images/jobs/{first.public_id}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["error"]["error"]["code"] == "cancelled"
    run.run_job(first.pk)  # its message still comes: nothing happens
    assert fake_upstream.requests == []
    ImageJob.objects.filter(pk=second.pk).update(status="running")
    refused = client.post(f"/v1/images/jobs/{second.public_id}/cancel")
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "job_running"
    again = client.post(f"/v1/images/jobs/{first.public_id}/cancel")
    assert again.status_code == 200 and again.json()["status"] == "cancelled"
    row.refresh_from_db()
    assert row.used_micro == 0 and row.reserved_micro == Reservation.objects.get().amount_micro
    assert UsageRecord.objects.get(request_id=first.request_id).error_code == "cancelled"


@pytest.mark.django_db
def test_a_job_found_running_when_handed_out_again_fails_worker_lost_without_a_call(
    client: APIClient,
    workspace: Workspace,
    priced_alias: ModelAlias,
    fake_upstream: FakeUpstream,
) -> None:
    row = budget(workspace=workspace, period="month", limit_micro=10_000_000)
    job = _job(_submit(client))
    ImageJob.objects.filter(pk=job.pk).update(status="running", started_at=timezone.now())
    run.run_job(job.pk)  # the broker's redelivery after the visibility timeout
    job.refresh_from_db()
    assert job.status == "failed" and job.error is not None
    assert job.error["error"]["code"] == "worker_lost"
    assert fake_upstream.requests == []
    row.refresh_from_db()
    assert (row.used_micro, row.reserved_micro) == (0, 0)
    run.run_job(job.pk)  # and once more: nothing
    assert UsageRecord.objects.filter(request_id=job.request_id).count() == 1


@pytest.mark.django_db
def test_the_sweep_fails_jobs_past_their_deadline_and_releases_their_holds(
    client: APIClient,
    workspace: Workspace,
    priced_alias: ModelAlias,
    settings: Any,
) -> None:
    row = budget(workspace=workspace, period="month", limit_micro=10_000_000)
    queued, running, fresh = (_job(_submit(client)) for _ in range(3))
    ImageJob.objects.filter(pk=running.pk).update(status="running")
    late = timezone.now() - timedelta(seconds=settings.JOB_MAX_SECONDS + 1)
    ImageJob.objects.filter(pk__in=[queued.pk, running.pk]).update(created_at=late)
    assert run.sweep(now=timezone.now()) == 2
    codes = {
        j.public_id: (j.status, (j.error or {}).get("error", {}).get("code"))
        for j in ImageJob.objects.all()
    }
    assert codes == {
        queued.public_id: ("failed", "job_expired"),
        running.public_id: ("failed", "worker_lost"),
        fresh.public_id: ("queued", None),
    }
    row.refresh_from_db()
    assert row.reserved_micro == Reservation.objects.get().amount_micro  # the fresh one's


@pytest.mark.django_db
def test_jobs_are_the_workspace_s_and_listed_per_key_by_status(
    client: APIClient,
    team: Team,
    outsider: APIClient,
    priced_alias: ModelAlias,
) -> None:
    mine = [_job(_submit(client)) for _ in range(3)]
    run.run_job(mine[0].pk)
    other_key = tenant_services.key_create(actor=ACTOR, team=team, name="other")
    colleague = client_for(other_key.secret)
    theirs = _job(_submit(colleague))
    assert outsider.get(f"/v1/images/jobs/{mine[0].public_id}").status_code == 404
    assert outsider.post(f"/v1/images/jobs/{mine[1].public_id}/cancel").status_code == 404
    assert colleague.get(f"/v1/images/jobs/{mine[0].public_id}").status_code == 200
    listed = client.get("/v1/images/jobs?limit=2").json()
    assert [j["id"] for j in listed["data"]] == [mine[2].public_id, mine[1].public_id]
    assert listed["has_more"] is True and listed["object"] == "list"
    following = client.get(listed["next"]).json()
    assert [j["id"] for j in following["data"]] == [mine[0].public_id]
    assert following["has_more"] is False
    done = client.get("/v1/images/jobs?status=succeeded").json()["data"]
    assert [j["id"] for j in done] == [mine[0].public_id] and done[0]["result"] is None
    assert theirs.public_id not in {j["id"] for j in client.get("/v1/images/jobs").json()["data"]}
    bad = client.get("/v1/images/jobs?status=done")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "status"


@pytest.mark.django_db
def test_an_async_edit_keeps_its_images_until_the_worker_runs_it(
    client: APIClient, priced_alias: ModelAlias, fake_upstream: FakeUpstream
) -> None:
    import io

    from tests.fakes.upstream import png

    image = io.BytesIO(png(64, 64))
    image.name = "in.png"
    submitted = client.post(
        "/v1/images/edits",
        {"model": "priced", "prompt": "add a boat", "image": image, "size": "1024x1024"},
        format="multipart",
        **ASYNC,
    )
    assert submitted.status_code == 202, submitted.content
    job = _job(submitted)
    assert [i["role"] for i in job.inputs] == ["image"]
    run.run_job(job.pk)
    ended = client.get(f"/v1/images/jobs/{job.public_id}").json()
    assert ended["status"] == "succeeded" and len(ended["result"]["data"]) == 1
    (call,) = fake_upstream.requests
    assert call.path.endswith("/images/edits") and png(64, 64) in call.raw


@pytest.mark.django_db(transaction=True)
def test_a_running_replicate_job_is_cancelled_upstream_and_charged_nothing(
    client: APIClient,
    workspace: Workspace,
    fake_upstream: FakeUpstream,
    monkeypatch: pytest.MonkeyPatch,
    settings: Any,
) -> None:
    import threading

    from django.db import connections

    from routing import services as routing_services
    from routing.jobs import dispatch
    from tests.conftest import UPSTREAM_SECRET, make_alias

    settings.UPSTREAM_POLL_INTERVAL_SECONDS = 0.01
    monkeypatch.setattr(dispatch, "start", lambda job_id: None)  # run below, in a thread
    credential = routing_services.credential_create(
        actor=ACTOR,
        name="replicate",
        provider="replicate",
        base_url=fake_upstream.url,
        secret=UPSTREAM_SECRET,
        free=True,
    )
    make_alias("slow-fox", credential, "stability-ai/sdxl:7762fd07")
    row = budget(workspace=workspace, period="month", limit_images=10)
    fake_upstream.replicate_processing = 100_000  # polled until cancelled
    job = _job(_submit(client, {"model": "slow-fox", "prompt": "a fox"}))
    assert job.context["cancellable"] is True

    def work() -> None:
        try:
            run.run_job(job.pk)
        finally:
            connections.close_all()

    worker = threading.Thread(target=work)
    worker.start()
    try:
        wait_for(lambda: any(c.method == "GET" for c in fake_upstream.requests), what="a poll")
        asked = client.post(f"/v1/images/jobs/{job.public_id}/cancel")
        assert asked.status_code == 202 and asked.json()["status"] == "running"
    finally:
        worker.join(timeout=30)
    ended = client.get(f"/v1/images/jobs/{job.public_id}").json()
    assert ended["status"] == "cancelled", ended
    assert ended["error"]["error"]["code"] == "cancelled"
    assert [c.path for c in fake_upstream.requests if c.path.endswith("/cancel")] == [
        f"/v1/predictions/{next(iter(fake_upstream.replicate_predictions))}/cancel"
    ]
    row.refresh_from_db()
    assert (row.used_images, row.reserved_images) == (0, 0)
    record = UsageRecord.objects.get(request_id=job.request_id)
    assert (record.status, record.images, record.error_code) == (499, 0, "cancelled")


@pytest.mark.django_db
def test_a_running_job_its_provider_cannot_stop_is_a_409(
    client: APIClient, priced_alias: ModelAlias
) -> None:
    job = _job(_submit(client))
    assert job.context["cancellable"] is False
    ImageJob.objects.filter(pk=job.pk).update(status="running")
    refused = client.post(f"/v1/images/jobs/{job.public_id}/cancel")
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "job_running"


@pytest.mark.django_db
def test_a_hold_grown_at_run_is_released_whole_even_from_the_submit_s_copy(
    client: APIClient, workspace: Workspace, priced_alias: ModelAlias
) -> None:
    """A worker that grew a job's hold and died before saving it: the sweep releases the
    hold from the submit's smaller copy, and the budget keeps nothing reserved."""
    from billing import admission

    row = budget(workspace=workspace, period="month", limit_micro=10_000_000)
    job = _job(_submit(client))
    held = admission.load(job.admission)
    budgets.enlarge(held.hold, amount_micro=5_000, images=1)  # and then the worker died
    admission.settle(held, images=0, cost_micro=0)
    row.refresh_from_db()
    assert (row.reserved_micro, row.reserved_images, row.used_micro) == (0, 0, 0)


@pytest.mark.django_db
def test_a_job_failed_as_lost_whose_call_then_ends_says_what_it_was_charged(
    client: APIClient,
    workspace: Workspace,
    priced_alias: ModelAlias,
    fake_upstream: FakeUpstream,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its worker silent too long (a stall), the sweep failed it; the call ended after all
    and was settled: the job, its one record and the budget agree."""
    from routing import router

    row = budget(workspace=workspace, period="month", limit_micro=10_000_000)
    job = _job(_submit(client))
    real_call = router.call

    def stalled(*args: Any, **kwargs: Any) -> Any:
        ImageJob.objects.filter(pk=job.pk).update(heartbeat_at=timezone.now() - timedelta(hours=1))
        assert run.sweep(now=timezone.now()) == 1
        return real_call(*args, **kwargs)

    monkeypatch.setattr(router, "call", stalled)
    run.run_job(job.pk)
    job.refresh_from_db()
    row.refresh_from_db()
    (record,) = UsageRecord.objects.filter(request_id=job.request_id)
    assert job.status == "succeeded" and job.error is None
    assert (record.status, record.images) == (200, 1)
    assert record.cost_micro == row.used_micro == job.cost_micro > 0


@pytest.mark.django_db(transaction=True)
def test_a_broker_that_cannot_take_the_job_is_a_503_and_costs_nothing(
    client: APIClient,
    workspace: Workspace,
    priced_alias: ModelAlias,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from kombu.exceptions import OperationalError

    from routing.tasks import run_image_job

    def down(*args: Any, **kwargs: Any) -> None:
        raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(run_image_job, "delay", down)
    row = budget(workspace=workspace, period="month", limit_micro=10_000_000)
    answer = _submit(client)
    assert answer.status_code == 503, answer.content
    assert answer.json()["error"]["code"] == "queue_unavailable"
    assert answer["Retry-After"] == "5"
    (job,) = ImageJob.objects.all()
    assert job.status == "failed" and job.error_status == 503
    row.refresh_from_db()
    assert (row.reserved_micro, row.used_micro) == (0, 0)
    assert UsageRecord.objects.get(request_id=job.request_id).status == 503


@pytest.mark.django_db
def test_the_job_s_result_is_the_synchronous_body_for_the_same_seed(
    client: APIClient, platform_alias: ModelAlias
) -> None:
    """On the `local` provider, which renders the same image for the same prompt and seed."""
    body = {"model": "demo-image", "prompt": "a lighthouse", "size": "256x256", "seed": 42}
    job = _job(_submit(client, body))
    run.run_job(job.pk)
    result = client.get(f"/v1/images/jobs/{job.public_id}").json()["result"]
    synchronous = client.post("/v1/images/generations", body, format="json").json()
    assert result["data"] == synchronous["data"] and result["data"][0]["b64_json"]
    other_seed = client.post("/v1/images/generations", {**body, "seed": 7}, format="json").json()
    assert other_seed["data"] != result["data"]

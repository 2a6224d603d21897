"""Probes 2."""
from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings as dj
from django.utils import timezone
from rest_framework.test import APIClient

from billing import budgets
from billing.models import Budget, Reservation, UsageRecord
from routing import router
from routing.jobs import run
from routing.models import ImageJob, ModelAlias, IdempotentRequest
from tenants import services as tenant_services
from tenants.models import Team, Workspace, ApiKey
from tenants.services import CreatedKey
from tests.billing.conftest import budget
from tests.conftest import ACTOR
from tests.fakes.upstream import FakeUpstream
from tests.support import client_for

ASYNC: dict[str, Any] = {"HTTP_PREFER": "respond-async"}
BODY = {"model": "priced", "prompt": "a lighthouse", "size": "1024x1024", "quality": "low"}


def _submit(client: APIClient, body: dict[str, Any] | None = None, **headers: Any) -> Any:
    return client.post("/v1/images/generations", body or BODY, format="json", **ASYNC, **headers)


def _job(response: Any) -> ImageJob:
    return ImageJob.objects.get(public_id=response.json()["id"])


@pytest.mark.django_db
def test_probe_sweep_while_running(client, workspace, priced_alias, fake_upstream, monkeypatch) -> None:
    row = budget(workspace=workspace, period="month", limit_micro=10_000_000)
    job = _job(_submit(client))
    # It waited in the queue until just before its deadline; the upstream takes a while.
    ImageJob.objects.filter(pk=job.pk).update(created_at=timezone.now() - timedelta(seconds=dj.JOB_MAX_SECONDS - 5))
    real_call = router.call

    def slow_call(*args, **kwargs):
        run.sweep(now=timezone.now() + timedelta(seconds=10))  # the beat's sweep, mid-call
        return real_call(*args, **kwargs)

    monkeypatch.setattr(router, "call", slow_call)
    run.run_job(job.pk)
    job.refresh_from_db()
    row.refresh_from_db()
    rec = UsageRecord.objects.get(request_id=job.request_id)
    print("job", job.status, job.error, job.cost_micro)
    print("budget used", row.used_micro, row.reserved_micro, "record", rec.status, rec.cost_micro)
    print("upstream calls", len(fake_upstream.requests))
    assert 0


@pytest.mark.django_db
def test_probe_run_after_deadline(client, workspace, priced_alias, fake_upstream) -> None:
    row = budget(workspace=workspace, period="month", limit_micro=10_000)  # one image
    job = _job(_submit(client))
    late = timezone.now() - timedelta(seconds=dj.JOB_MAX_SECONDS + 120)
    ImageJob.objects.filter(pk=job.pk).update(created_at=late)
    Reservation.objects.update(held_until=late + timedelta(seconds=dj.JOB_MAX_SECONDS + 60))
    print("reaped", budgets.reap_orphaned_reservations(older_than=timedelta(seconds=960)))
    sync = client.post("/v1/images/generations", BODY, format="json")
    print("sync", sync.status_code)
    run.run_job(job.pk)
    job.refresh_from_db(); row.refresh_from_db()
    print("job", job.status, job.error, "calls", len(fake_upstream.requests), "used", row.used_micro, row.limit_micro)
    rec = UsageRecord.objects.get(request_id=job.request_id)
    print("rec", rec.status, rec.cost_micro, rec.images)
    assert 0


@pytest.mark.django_db
def test_probe_scope_removed(client, api_key, workspace, priced_alias, fake_upstream) -> None:
    job = _job(_submit(client))
    tenant_services.key_change(actor=ACTOR, key=api_key.key, fields={"scopes": ["manage:team"]})
    print("sync now", client.post("/v1/images/generations", BODY, format="json").status_code)
    run.run_job(job.pk)
    job.refresh_from_db()
    print("job", job.status, job.error, "calls", len(fake_upstream.requests))
    assert 0


@pytest.mark.django_db
def test_probe_alias_removed(client, api_key, workspace, priced_alias, fake_upstream) -> None:
    job = _job(_submit(client))
    tenant_services.key_change(actor=ACTOR, key=api_key.key, fields={"allowed_aliases": ["other"]})
    print("sync now", client.post("/v1/images/generations", BODY, format="json").status_code)
    run.run_job(job.pk)
    job.refresh_from_db()
    print("job", job.status, job.error, "calls", len(fake_upstream.requests))
    assert 0

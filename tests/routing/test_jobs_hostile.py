"""Probes."""
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from billing import budgets
from billing.models import Budget, Reservation, UsageRecord
from routing.jobs import run
from routing.models import ImageJob, ModelAlias, IdempotentRequest
from tenants import services as tenant_services
from tenants.models import Team, Workspace
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


@pytest.mark.parametrize("body", [{**BODY, "prompt": "a\u0000b"}, {**BODY, "foo": "a\u0000b"}, {**BODY, "metadata": {"a": "x\u0000"}}, {**BODY, "user": "x\u0000"}])
@pytest.mark.django_db
def test_probe_nul_body(client: APIClient, priced_alias: ModelAlias, fake_upstream: FakeUpstream, body) -> None:
    r = _submit(client, body)
    print("ASYNC", r.status_code, r.content[:300])
    assert 0

@pytest.mark.parametrize("body", [{**BODY, "prompt": "a\u0000b"}, {**BODY, "foo": "a\u0000b"}, {**BODY, "metadata": {"a": "x\u0000"}}, {**BODY, "user": "x\u0000"}])
@pytest.mark.django_db
def test_probe_nul_body_sync(client: APIClient, priced_alias: ModelAlias, fake_upstream: FakeUpstream, body) -> None:
    r = client.post("/v1/images/generations", body, format="json")
    print("SYNC", r.status_code, r.content[:300])
    assert 0

@pytest.mark.parametrize("path", ["/v1/images/jobs/job_%00abc", "/v1/images/jobs/job_%00abc/deliveries", "/v1/images/jobs/" + "é" * 50, "/v1/images/jobs/" + "a" * 5000,
  "/v1/images/jobs?limit=abc", "/v1/images/jobs?limit=-1", "/v1/images/jobs?limit=0", "/v1/images/jobs?limit=99999999999999999999", "/v1/images/jobs?limit=1000", "/v1/images/jobs?status=%00",
  "/v1/images/jobs?cursor=cD0yMDI2", "/v1/images/jobs?cursor=cj0xJnA9MjAyNi0wMS0wMSswMCUzQTAw", "/v1/images/jobs?cursor=cD0lMDA=",])
@pytest.mark.django_db
def test_probe_get(client: APIClient, priced_alias: ModelAlias, path) -> None:
    r = client.get(path)
    print(path, r.status_code, r.content[:300])
    assert 0

@pytest.mark.django_db
def test_probe_cancel_nul(client: APIClient, priced_alias: ModelAlias) -> None:
    r = client.post("/v1/images/jobs/job_%00abc/cancel")
    print("cancel", r.status_code, r.content[:300])
    assert 0

@pytest.mark.django_db
def test_probe_key_nul(admin) -> None:
    r = admin.get("/api/v1/keys/key_%00abc")
    print("KEYNUL", r.status_code, r.content[:300])
    assert 0

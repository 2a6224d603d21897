"""Load shedding: past its capacity a process answers 503 `overloaded` with Retry-After,
before anything is held or called; a database pool that times out is the same 503, never a
500."""

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests
from django.db import connection
from django.db.utils import OperationalError
from psycopg_pool import PoolTimeout
from rest_framework.test import APIClient

from aperture.errors import exception_handler
from billing.models import Budget, UsageRecord
from routing.models import ModelAlias
from tenants.services import CreatedKey
from tests.billing.conftest import budget, priced_alias  # noqa: F401 - fixture
from tests.fakes.upstream import FakeUpstream
from tests.support import gunicorn, subprocess_database_url

BODY = {"model": "priced", "prompt": "a lighthouse", "size": "1024x1024"}


@pytest.mark.django_db
def test_past_its_capacity_a_process_sheds_with_503_overloaded_but_answers_health(
    client: APIClient, settings: Any
) -> None:
    settings.MAX_IN_FLIGHT = 0
    refused = client.post("/v1/images/generations", BODY, format="json")
    assert refused.status_code == 503
    assert refused["Retry-After"] == "1"
    assert refused.json()["error"]["code"] == "overloaded"
    assert client.get("/healthz").status_code == 200
    assert client.get("/v1/models").status_code == 200  # polls and lists are not shed


def test_a_database_pool_that_times_out_is_a_503_overloaded() -> None:
    wrapped = OperationalError("couldn't get a connection after 10.00 sec")
    wrapped.__cause__ = PoolTimeout("couldn't get a connection after 10.00 sec")
    for error in (wrapped, PoolTimeout("couldn't get a connection")):
        answer = exception_handler(error, {})
        assert answer.status_code == 503
        assert answer.data["error"]["code"] == "overloaded"
        assert answer["Retry-After"] == "1"


@pytest.mark.django_db(transaction=True)
def test_a_burst_past_the_limit_is_shed_before_any_hold_or_upstream_call(
    api_key: CreatedKey,
    priced_alias: ModelAlias,  # noqa: F811 - the fixture
    fake_upstream: FakeUpstream,
) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("the server needs PostgreSQL")
    row = budget(workspace=api_key.key.workspace, period="month", limit_micro=10_000_000)
    fake_upstream.delay = 2.0
    env = {"DATABASE_URL": subprocess_database_url(), "APERTURE_MAX_IN_FLIGHT": "5"}
    with gunicorn(env, workers=1) as base:

        def one(_: int) -> requests.Response:
            return requests.post(
                f"{base}/v1/images/generations",
                json=BODY,
                headers={"Authorization": f"Bearer {api_key.secret}"},
                timeout=60,
            )

        with ThreadPoolExecutor(max_workers=20) as pool:
            answers = list(pool.map(one, range(20)))
        assert requests.get(f"{base}/healthz", timeout=5).status_code == 200
        # Capacity again once the burst is served.
        assert one(0).status_code == 200
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200] * 5 + [503] * 15, [a.text for a in answers if a.status_code >= 500]
    shed = [a for a in answers if a.status_code == 503]
    assert {a.json()["error"]["code"] for a in shed} == {"overloaded"}
    assert {a.headers["Retry-After"] for a in shed} == {"1"}
    assert len(fake_upstream.requests) == 6
    row = Budget.objects.get(pk=row.pk)
    assert row.reserved_micro == 0
    assert UsageRecord.objects.filter(status=200).count() == 6
    assert row.used_micro == sum(UsageRecord.objects.values_list("cost_micro", flat=True))


@pytest.mark.django_db
def test_a_request_stops_counting_once_its_response_is_closed(
    client: APIClient,
    priced_alias: ModelAlias,  # noqa: F811 - the fixture
    fake_upstream: FakeUpstream,
) -> None:
    from aperture.load_shedding import GATE

    served = client.post("/v1/images/generations", BODY, format="json")
    refused = client.post("/v1/images/generations", {**BODY, "n": 0}, format="json")
    assert (served.status_code, refused.status_code) == (200, 400)
    assert GATE.in_flight == 0

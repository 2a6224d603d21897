"""Per-end-user limits on a key: `user` is then required, and requests per minute and images per
UTC day are exact for each end user under concurrency, through the real server."""

import base64
import json
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests
from django.conf import settings
from rest_framework.test import APIClient

from billing.models import Budget, Price, UsageRecord
from routing import services as routing_services
from routing.models import ModelAlias
from tenants import services
from tenants.models import Team
from tenants.services import CreatedKey
from tests.fakes.upstream import FakeUpstream, Misbehave, png
from tests.routing.passthrough_support import open_credential
from tests.support import Server, client_for, gunicorn, subprocess_database_url, wait_for

CONCURRENT = 100
ALICE, BOB = "alice@example.com", "bob@example.com"


@pytest.fixture(scope="module")
def server(django_db_setup: None, django_db_blocker) -> Iterator[Server]:
    """One gunicorn (gevent, 2 workers) for the module, on the test database."""
    with django_db_blocker.unblock():
        database_url = subprocess_database_url()
    env = {
        "DATABASE_URL": database_url,
        "REDIS_URL": settings.REDIS_URL,
        "APERTURE_DB_POOL_MAX_SIZE": "8",
    }
    with gunicorn(env, workers=2) as base:
        yield base


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream(delay=0.2) as fake:  # slow enough that the storm is in flight at once
        yield fake


@pytest.fixture
def alias(upstream: FakeUpstream) -> ModelAlias:
    credential = routing_services.credential_create(
        actor="t", name="up", provider="openai", base_url=upstream.url, secret="sk-up"
    )
    alias = routing_services.alias_create(actor="t", name="limited")
    routing_services.deployment_create(
        actor="t", alias=alias, credential=credential, upstream_model="gpt-image-2", free=True
    )
    return alias


def _key(team: Team, **limits: Any) -> CreatedKey:
    return services.key_create(actor="t", team=team, name="per user", **limits)


def _post(base: str, secret: str, user: str | None, n: int = 1) -> requests.Response:
    body: dict[str, object] = {"model": "limited", "prompt": "a fox", "size": "1024x1024", "n": n}
    if user is not None:
        body["user"] = user
    return requests.post(
        f"{base}/v1/images/generations",
        data=json.dumps(body),
        headers={"Authorization": f"Bearer {secret}", "Content-Type": "application/json"},
        timeout=120,
    )


def _storm(base: str, secret: str, user: str) -> Counter[tuple[int, str]]:
    """CONCURRENT requests of one end user at once: (status, error code) → how many."""

    def one(_: int) -> tuple[int, str]:
        response = _post(base, secret, user)
        code = "" if response.ok else response.json()["error"]["code"]
        if response.status_code == 429:
            assert int(response.headers["Retry-After"]) >= 1
        return response.status_code, code

    with ThreadPoolExecutor(max_workers=CONCURRENT) as pool:
        return Counter(pool.map(one, range(CONCURRENT)))


@pytest.mark.parametrize("limits", [{"per_user_rpm": 5}, {"per_user_limit_images": 5}])
def test_a_key_with_per_user_limits_refuses_a_request_without_user(
    team: Team, platform_alias: ModelAlias, limits: dict[str, int]
) -> None:
    client: APIClient = client_for(_key(team, **limits).secret)
    body = {"model": "demo-image", "prompt": "a fox", "size": "64x64"}
    for without in (body, {**body, "user": ""}):
        response = client.post(
            "/v1/images/generations", json.dumps(without), content_type="application/json"
        )
        assert response.status_code == 400
        assert response.json() == {
            "error": {
                "message": "This API key limits each end user: send your end user's id as 'user'.",
                "type": "invalid_request_error",
                "param": "user",
                "code": "user_required",
            }
        }
    served = client.post(
        "/v1/images/generations",
        json.dumps({**body, "user": ALICE}),
        content_type="application/json",
    )
    assert served.status_code == 200
    assert list(UsageRecord.objects.order_by("id").values_list("status", "end_user")) == [
        (400, ""),
        (400, ""),
        (200, ALICE),
    ]


def test_passthrough_on_a_key_with_per_user_limits_is_refused(
    team: Team, fake_upstream: FakeUpstream
) -> None:
    """A native body is not read, so it never says who its end user is."""
    open_credential(fake_upstream, free=True)
    response = client_for(_key(team, per_user_rpm=5).secret).get("/openai/v1/models")
    assert response.status_code == 400
    assert (response.json()["error"]["param"], response.json()["error"]["code"]) == (
        "user",
        "user_required",
    )
    assert fake_upstream.requests == []


@pytest.mark.django_db(transaction=True)
def test_per_user_rpm_is_exact_under_a_hundred_concurrent_requests_of_one_end_user(
    server: Server, team: Team, alias: ModelAlias, upstream: FakeUpstream
) -> None:
    created = _key(team, per_user_rpm=10)
    outcome = _storm(server, created.secret, ALICE)
    assert outcome == {(200, ""): 10, (429, "user_rate_limit_exceeded"): 90}
    assert len(upstream.requests) == 10
    other = _post(server, created.secret, BOB)
    assert other.status_code == 200, "another end user of the key has a minute of its own"
    assert other.headers["x-ratelimit-remaining-user-requests"] == "9"
    again = _post(server, created.secret, ALICE)
    assert again.status_code == 429
    assert again.json()["error"]["code"] == "user_rate_limit_exceeded"
    assert again.headers["x-ratelimit-limit-user-requests"] == "10"
    records = UsageRecord.objects.filter(end_user=ALICE)
    wait_for(lambda: records.count() == 101, what="the usage records")  # written after answering
    assert Counter(records.values_list("status", flat=True)) == {200: 10, 429: 91}


@pytest.mark.django_db(transaction=True)
def test_the_keys_own_rpm_still_applies_with_its_own_code(
    server: Server, team: Team, alias: ModelAlias
) -> None:
    created = _key(team, rpm_limit=2, per_user_rpm=5)
    assert [_post(server, created.secret, user).status_code for user in (ALICE, BOB)] == [200, 200]
    refused = _post(server, created.secret, "carol")
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"


@pytest.mark.django_db(transaction=True)
def test_per_user_images_per_day_are_exact_under_a_hundred_concurrent_requests(
    server: Server, team: Team, alias: ModelAlias, upstream: FakeUpstream
) -> None:
    created = _key(team, per_user_limit_images=25)
    outcome = _storm(server, created.secret, ALICE)
    assert outcome == {(200, ""): 25, (429, "user_daily_limit_exceeded"): 75}
    assert len(upstream.requests) == 25
    records = UsageRecord.objects.filter(end_user=ALICE)
    wait_for(lambda: records.count() == CONCURRENT, what="the usage records")
    assert sum(records.values_list("images", flat=True)) == 25
    other = _post(server, created.secret, BOB, n=2)
    assert other.status_code == 200, "another end user of the key has a day of its own"
    assert other.headers["x-ratelimit-remaining-user-images-day"] == "23"
    again = _post(server, created.secret, ALICE)
    assert again.status_code == 429
    assert again.headers["x-ratelimit-remaining-user-images-day"] == "0"
    assert 1 <= int(again.headers["Retry-After"]) <= 86_400


@pytest.mark.django_db(transaction=True)
def test_images_a_call_did_not_produce_are_given_back(
    server: Server, team: Team, alias: ModelAlias, upstream: FakeUpstream
) -> None:
    created = _key(team, per_user_limit_images=3)
    one_image = {"created": 1, "data": [{"b64_json": base64.b64encode(png(8, 8)).decode()}]}
    upstream.misbehave(Misbehave(body=one_image), Misbehave(status=500))
    short = _post(server, created.secret, ALICE, n=2)  # held 2, produced 1
    assert (short.status_code, len(short.json()["data"])) == (200, 1)
    assert short.headers["x-ratelimit-remaining-user-images-day"] == "1"  # as held
    failed = _post(server, created.secret, ALICE)
    assert failed.status_code == 502
    full = _post(server, created.secret, ALICE, n=2)  # 1 + 0 used: two are left
    assert full.status_code == 200
    assert full.headers["x-ratelimit-remaining-user-images-day"] == "0"
    refused = _post(server, created.secret, ALICE)
    assert refused.status_code == 429
    assert refused.json()["error"] == {
        "message": "This end user ('user') has 0 of 3 images left today (UTC) on this API key; "
        "this request may make 1.",
        "type": "rate_limit_error",
        "param": None,
        "code": "user_daily_limit_exceeded",
    }
    records = UsageRecord.objects.filter(end_user=ALICE).order_by("id")
    wait_for(lambda: records.count() == 4, what="the usage records")  # written after answering
    assert list(records.values_list("status", "images")) == [(200, 1), (502, 0), (200, 2), (429, 0)]


@pytest.mark.django_db(transaction=True)
def test_a_budget_refusal_takes_nothing_from_the_end_users_day(
    server: Server, team: Team, upstream: FakeUpstream
) -> None:
    credential = routing_services.credential_create(
        actor="t", name="priced-up", provider="openai", base_url=upstream.url, secret="sk-up"
    )
    priced = routing_services.alias_create(actor="t", name="limited")
    routing_services.deployment_create(
        actor="t", alias=priced, credential=credential, upstream_model="gpt-image-2"
    )
    Price.objects.create(provider="openai", model_pattern="gpt-image-2", per_image_micro=10_000)
    created = _key(team, per_user_limit_images=2)
    budget = Budget.objects.create(
        workspace=team.workspace, scope="key", key=created.key, period="day", limit_micro=5_000
    )
    assert _post(server, created.secret, ALICE).status_code == 402
    budget.limit_micro = 10**9
    budget.save()
    assert [_post(server, created.secret, ALICE).status_code for _ in range(3)] == [200, 200, 429]

"""Per-key rate limits in Redis: 429 with Retry-After, headers that count down, fail open."""

import json

from django.test import override_settings
from rest_framework.test import APIClient

from billing import ratelimit
from billing.models import UsageRecord
from routing.models import ModelAlias
from tenants.models import Team
from tenants.services import key_create
from tests.support import client_for

URL = "/v1/images/generations"
BODY = json.dumps({"model": "demo-image", "prompt": "x", "size": "64x64"})


def _post(client: APIClient):
    return client.post(URL, BODY, content_type="application/json")


def test_the_61st_request_in_a_minute_gets_429_with_retry_after(
    team: Team, platform_alias: ModelAlias
) -> None:
    created = key_create(actor="t", team=team, name="rl", rpm_limit=60)
    client = client_for(created.secret)
    remaining = []
    for _ in range(60):
        response = _post(client)
        assert response.status_code == 200
        assert response["x-ratelimit-limit-requests"] == "60"
        remaining.append(int(response["x-ratelimit-remaining-requests"]))
    assert remaining == list(range(59, -1, -1))
    refused = _post(client)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(refused["Retry-After"]) <= 60
    assert refused["x-ratelimit-remaining-requests"] == "0"
    assert UsageRecord.objects.filter(status=429).count() == 1


def test_images_per_minute_count_images(team: Team, platform_alias: ModelAlias) -> None:
    created = key_create(actor="t", team=team, name="ipm", ipm_limit=5)
    client = client_for(created.secret)
    body = json.dumps({"model": "demo-image", "prompt": "x", "size": "64x64", "n": 3})
    first = client.post(URL, body, content_type="application/json")
    assert first.status_code == 200
    assert first["x-ratelimit-remaining-images"] == "2"
    second = client.post(URL, body, content_type="application/json")
    assert second.status_code == 429
    assert int(second["Retry-After"]) >= 1


def test_with_redis_unreachable_requests_still_succeed(
    team: Team, platform_alias: ModelAlias
) -> None:
    created = key_create(actor="t", team=team, name="down", rpm_limit=1)
    ratelimit._redis.cache_clear()
    try:
        with override_settings(RATE_LIMIT_REDIS_URL="redis://127.0.0.1:1/0"):
            client = client_for(created.secret)
            assert [_post(client).status_code for _ in range(3)] == [200, 200, 200]
    finally:
        ratelimit._redis.cache_clear()


def test_keys_without_limits_get_no_rate_limit_headers(
    client: APIClient, platform_alias: ModelAlias
) -> None:
    response = _post(client)
    assert response.status_code == 200
    assert "x-ratelimit-limit-requests" not in response

"""Only http(s) image URLs ever reach a caller: an upstream's URL in another scheme is an
upstream failure (502), never handed on."""

import pytest
from rest_framework.test import APIClient

from billing.models import UsageRecord
from routing.models import ModelAlias
from tests.fakes.upstream import FakeUpstream, Misbehave


def _generate(client: APIClient):
    return client.post(
        "/v1/images/generations",
        {"model": "image-openai", "prompt": "x", "response_format": "url"},
        format="json",
    )


@pytest.mark.usefixtures("list_prices")
@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "javascript:alert(document.domain)",
        "ftp://files.example.com/a.png",
        "gopher://127.0.0.1:6379/_FLUSHALL",
        "//cdn.example.com/a.png",
    ],
)
def test_an_upstream_url_in_another_scheme_is_a_502_not_passed_on(
    client: APIClient,
    upstream_aliases: dict[str, ModelAlias],
    fake_upstream: FakeUpstream,
    url: str,
) -> None:
    fake_upstream.misbehave(Misbehave(body={"created": 1, "data": [{"url": url}]}))
    response = _generate(client)
    assert response.status_code == 502, response.content
    assert response.json() == {
        "error": {
            "message": "openai returned an image URL the gateway cannot fetch.",
            "type": "upstream_error",
            "param": None,
            "code": "upstream_error",
        }
    }
    assert url.encode() not in response.content.replace(b"\\/", b"/")
    assert UsageRecord.objects.get().cost_micro == 0


@pytest.mark.usefixtures("list_prices")
@pytest.mark.parametrize("url", ["https://cdn.example.com/a.png", "HTTP://cdn.example.com/b.png"])
def test_an_http_or_https_upstream_url_is_handed_on_as_it_is(
    client: APIClient,
    upstream_aliases: dict[str, ModelAlias],
    fake_upstream: FakeUpstream,
    url: str,
) -> None:
    fake_upstream.misbehave(Misbehave(body={"created": 1, "data": [{"url": url}]}))
    response = _generate(client)
    assert response.status_code == 200, response.content
    assert response.json()["data"] == [{"url": url}]

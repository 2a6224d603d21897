"""The upstream HTTP client: no state carried from one call to the next, and each provider's
errors read and mapped by what its adapter declares."""

from typing import Any

import pytest
import requests
from django.test import override_settings

from aperture.outbound import guarded_session
from routing.providers import http
from routing.providers.auth import credential_headers
from routing.providers.base import UpstreamModerated, UpstreamRejected
from tests.conftest import UPSTREAM_SECRET
from tests.fakes.upstream import FakeUpstream, Misbehave

COOKIES = [
    ("Set-Cookie", "sessionid=tenant-a; Path=/; HttpOnly"),
    ("Set-Cookie", "csrftoken=tenant-a-token; Path=/"),
]


def _post(
    fake: FakeUpstream, provider: str = "openai", *, guarded: bool = False
) -> requests.Response:
    response = http.send(
        provider,
        "POST",
        f"{fake.url}/v1/echo",
        timeout=10,
        headers=credential_headers(provider, UPSTREAM_SECRET),
        json_body={"prompt": "x"},
        guarded=guarded,
    )
    response.close()
    return response


@pytest.mark.parametrize("guarded", [False, True], ids=["operator", "workspace"])
def test_a_cookie_an_upstream_sets_is_never_sent_on_the_next_call(
    fake_upstream: FakeUpstream, guarded: bool
) -> None:
    fake_upstream.response_headers = list(COOKIES)
    with override_settings(FETCH_ALLOWED_HOSTS=["127.0.0.1"]):
        first = _post(fake_upstream, guarded=guarded)  # workspace A's call
        fake_upstream.response_headers = []
        _post(fake_upstream, guarded=guarded)  # workspace B's call
    assert first.headers["Set-Cookie"].startswith("sessionid=tenant-a")  # it was set
    assert [r.headers.get("cookie") for r in fake_upstream.requests] == [None, None]
    assert len(http.session().cookies) == len(guarded_session().cookies) == 0


def _refusal(fake: FakeUpstream, provider: str, body: dict[str, Any]) -> requests.Response:
    fake.misbehave(Misbehave(status=400, body=body))
    return _post(fake, provider)


@pytest.mark.parametrize(
    ("provider", "code", "moderated"),
    [
        ("zai", "1301", True),
        ("openai", "1301", False),  # Z.AI's code means nothing from another upstream
        ("openai", "moderation_blocked", True),
        ("azure", "content_policy_violation", True),
        ("zai", "moderation_blocked", False),
    ],
)
def test_a_400_is_moderation_only_with_a_code_the_provider_declares(
    fake_upstream: FakeUpstream, provider: str, code: str, moderated: bool
) -> None:
    response = _refusal(fake_upstream, provider, {"error": {"code": code, "message": "unsafe"}})
    expected = UpstreamModerated if moderated else UpstreamRejected
    with pytest.raises(expected) as raised:
        http.check_status(provider, response)
    assert raised.value.message == f"{provider}: unsafe"


@pytest.mark.parametrize(
    ("provider", "body", "message", "code"),
    [
        (
            "xai",
            {"code": "Client specified an invalid argument", "error": "no size"},
            "no size",
            "Client specified an invalid argument",
        ),
        (
            "stability",
            {"id": "e1", "name": "bad_request", "errors": ["a", "b"]},
            "a; b",
            "bad_request",
        ),
        (
            "gemini",
            {"error": {"code": 400, "message": "bad", "status": "INVALID_ARGUMENT"}},
            "bad",
            "INVALID_ARGUMENT",
        ),
        ("bfl", {"detail": [{"loc": ["body"], "msg": "field required"}]}, "field required", ""),
        # A body not in the declared shape is still read the generic way.
        ("xai", {"error": {"message": "openai-style", "code": "c"}}, "openai-style", "c"),
        ("local", {"message": "plain"}, "plain", ""),
    ],
)
def test_an_error_body_is_read_where_the_providers_declared_shape_puts_it(
    fake_upstream: FakeUpstream, provider: str, body: dict[str, Any], message: str, code: str
) -> None:
    response = _refusal(fake_upstream, provider, body)
    assert http.error_body(provider, response) == http.UpstreamErrorBody(
        message=message, code=code, param=None
    )


def test_the_openai_envelope_gives_its_param(fake_upstream: FakeUpstream) -> None:
    body = {"error": {"message": "bad size", "type": "x", "param": "size", "code": "c"}}
    response = _refusal(fake_upstream, "openai", body)
    with pytest.raises(UpstreamRejected) as rejected:
        http.check_status("openai", response)
    assert (rejected.value.message, rejected.value.param, rejected.value.status) == (
        "openai: bad size",
        "size",
        400,
    )

"""Downloading upstream-hosted images: allowlist, private addresses, size cap, redirects."""

import pytest
from django.test import override_settings

from routing.providers.base import UpstreamFailed
from routing.providers.fetch import FetchRefused, fetch_image
from tests.fakes.upstream import FakeUpstream, Misbehave, png


@pytest.fixture
def hosted(fake_upstream: FakeUpstream) -> str:
    fake_upstream.files["a.png"] = (png(32, 16), "image/png")
    return f"{fake_upstream.url}/files/a.png"


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/x.png",
        "http://localhost/x.png",
        "http://10.0.0.8/x.png",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/x.png",
        "file:///etc/passwd",
        "ftp://example.com/x.png",
        "http:///nohost",
    ],
)
def test_private_loopback_link_local_and_odd_urls_are_never_fetched(url: str) -> None:
    with pytest.raises(FetchRefused):
        fetch_image("openai", url)


def test_an_allowlisted_host_is_fetched(hosted: str) -> None:
    with override_settings(FETCH_ALLOWED_HOSTS=["127.0.0.0/8"]):
        data, content_type = fetch_image("openai", hosted)
    assert data == png(32, 16)
    assert content_type == "image/png"


def test_an_image_above_the_size_cap_is_refused(hosted: str) -> None:
    with (
        override_settings(FETCH_ALLOWED_HOSTS=["127.0.0.1"], FETCH_MAX_BYTES=50),
        pytest.raises(UpstreamFailed, match="larger than 50 bytes"),
    ):
        fetch_image("openai", hosted)


def test_without_the_allowlist_the_same_host_is_refused(hosted: str) -> None:
    with pytest.raises(FetchRefused, match="private address"):
        fetch_image("openai", hosted)


def test_an_upstream_url_is_downloaded_and_inlined_when_the_caller_wants_b64(
    client,
    upstream_aliases,
    fake_upstream: FakeUpstream,
    hosted: str,
) -> None:
    import base64

    answer = {"created": 1, "data": [{"url": hosted}]}
    fake_upstream.misbehave(Misbehave(body=answer), Misbehave(body=answer))
    with override_settings(FETCH_ALLOWED_HOSTS=["127.0.0.1"]):
        response = client.post(
            "/v1/images/generations", {"model": "image-openai", "prompt": "x"}, format="json"
        )
    assert response.status_code == 200
    assert base64.b64decode(response.json()["data"][0]["b64_json"]) == png(32, 16)
    refused = client.post(
        "/v1/images/generations", {"model": "image-openai", "prompt": "x"}, format="json"
    )
    assert refused.status_code == 502
    assert refused.json()["error"]["message"] == (
        "openai returned an image URL on a private address; not fetched."
    )

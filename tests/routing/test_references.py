"""input_references: data URLs and http(s) URLs as reference images, and SSRF attempts refused."""

import base64
import json
from collections.abc import Iterator

import pytest
import urllib3.util.connection
from rest_framework.test import APIClient

from billing.models import UsageRecord
from routing.models import ModelAlias
from tests.fakes.upstream import FakeUpstream, form_parts, png

URL = "/v1/images/generations"
LOOPBACK = {"127.0.0.1", "::1", "localhost"}


@pytest.fixture(autouse=True)
def connections(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every address the gateway connects to; anything but loopback fails the test unsent."""
    attempts: list[str] = []
    real = urllib3.util.connection.create_connection

    def guarded(address, *args, **kwargs):
        attempts.append(str(address[0]))
        if str(address[0]) not in LOOPBACK:
            raise AssertionError(f"the gateway tried to connect to {address[0]}")
        return real(address, *args, **kwargs)

    monkeypatch.setattr(urllib3.util.connection, "create_connection", guarded)
    yield attempts


def _data_url(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def _post(client: APIClient, body: dict):
    return client.post(URL, json.dumps(body), content_type="application/json")


def test_a_data_url_reference_is_sent_to_openai_as_an_edit(
    client: APIClient, upstream_aliases: dict[str, ModelAlias], fake_upstream: FakeUpstream
) -> None:
    reference = png(48, 32)
    response = _post(
        client,
        {
            "model": "image-openai",
            "prompt": "in this style",
            "size": "1024x1024",
            "input_references": [_data_url(reference), _data_url(png(8, 8, "jpeg"), "image/jpeg")],
        },
    )
    assert response.status_code == 200, response.content
    (call,) = fake_upstream.requests
    assert call.path == "/v1/images/edits"
    parts = form_parts(call)
    assert [(p.name, p.data) for p in parts if p.filename] == [
        ("image[]", reference),
        ("image[]", png(8, 8, "jpeg")),
    ]
    fields = {p.name: p.data.decode() for p in parts if p.filename is None}
    assert (fields["model"], fields["prompt"]) == ("gpt-image-1", "in this style")
    assert "input_references" not in fields


def test_an_allowlisted_url_reference_is_fetched_and_used_by_the_local_provider(
    client: APIClient,
    platform_alias: ModelAlias,
    fake_upstream: FakeUpstream,
    settings,
) -> None:
    settings.FETCH_ALLOWED_HOSTS = ["127.0.0.1"]
    fake_upstream.files["ref.png"] = (png(40, 30), "image/png")
    response = _post(
        client,
        {
            "model": "demo-image",
            "prompt": "in this style",
            "input_references": [f"{fake_upstream.url}/files/ref.png"],
        },
    )
    assert response.status_code == 200, response.content
    assert response.json()["size"] == "40x30"


SSRF = [
    "http://127.0.0.1:{port}/files/ref.png",
    "http://localhost:{port}/files/ref.png",
    "http://[::1]:{port}/files/ref.png",
    "http://10.0.0.1/ref.png",
    "http://169.254.169.254/latest/meta-data/",
    "http://192.168.1.1/ref.png",
    "file:///etc/passwd",
]


@pytest.mark.parametrize("url", SSRF)
def test_references_on_private_addresses_are_refused_and_never_fetched(
    client: APIClient,
    platform_alias: ModelAlias,
    fake_upstream: FakeUpstream,
    connections: list[str],
    url: str,
) -> None:
    fake_upstream.files["ref.png"] = (png(40, 30), "image/png")
    port = fake_upstream.url.rsplit(":", 1)[1]
    response = _post(
        client,
        {"model": "demo-image", "prompt": "x", "input_references": [url.format(port=port)]},
    )
    assert response.status_code == 400, response.content
    assert response.json()["error"]["param"].startswith("input_references")
    assert connections == []
    assert fake_upstream.requests == []
    assert UsageRecord.objects.get().cost_micro == 0


def test_a_redirect_to_a_private_address_is_refused_before_following_it(
    client: APIClient,
    platform_alias: ModelAlias,
    fake_upstream: FakeUpstream,
    connections: list[str],
    settings,
) -> None:
    settings.FETCH_ALLOWED_HOSTS = ["127.0.0.1"]  # the first hop is allowed...
    url = f"{fake_upstream.url}/v1/redirect?to=http://169.254.169.254/latest/meta-data/"
    response = _post(client, {"model": "demo-image", "prompt": "x", "input_references": [url]})
    assert response.status_code == 400, response.content
    assert "private" in response.json()["error"]["message"]
    assert [call.path for call in fake_upstream.requests] == ["/v1/redirect"]
    assert connections == ["127.0.0.1"]  # ...the second never connects


@pytest.mark.parametrize(
    ("references", "message"),
    [
        (
            "data:image/png;base64,xyz",
            "'input_references' must be a list of data URLs or http(s) URLs.",
        ),
        (["data:image/png;base64,@@@"], "'input_references[0]' is not valid base64."),
        (
            ["data:image/png;base64," + base64.b64encode(b"not a png").decode()],
            "'input_references[0]' is not a decodable PNG, JPEG or WebP image.",
        ),
        (
            ["ftp://example.com/a.png"],
            "'input_references[0]' must be a base64 data URL or an http(s) URL.",
        ),
        ([_data_url(png(4, 4))] * 17, "At most 16 reference images; got 17."),
    ],
)
def test_bad_references_are_a_clear_400(
    client: APIClient, platform_alias: ModelAlias, references: object, message: str
) -> None:
    response = _post(client, {"model": "demo-image", "prompt": "x", "input_references": references})
    assert response.status_code == 400, response.content
    assert response.json()["error"]["message"] == message


def test_a_reference_that_is_not_an_image_or_a_model_without_references_is_refused(
    client: APIClient,
    upstream_aliases: dict[str, ModelAlias],
    fake_upstream: FakeUpstream,
    settings,
) -> None:
    settings.FETCH_ALLOWED_HOSTS = ["127.0.0.1"]
    fake_upstream.files["page.html"] = (b"<html></html>", "text/html")
    html = _post(
        client,
        {
            "model": "demo-image",
            "prompt": "x",
            "input_references": [f"{fake_upstream.url}/files/page.html"],
        },
    )
    assert html.status_code == 400
    assert (
        html.json()["error"]["message"] == "'input_references[0]' answered text/html, not an image."
    )
    dalle3 = _post(
        client, {"model": "image-dalle3", "prompt": "x", "input_references": [_data_url(png(4, 4))]}
    )
    assert dalle3.status_code == 400
    assert (
        dalle3.json()["error"]["message"]
        == "The model 'image-dalle3' does not take reference images."
    )
    assert fake_upstream.requests == []  # no generation or edit call went upstream
    assert list(UsageRecord.objects.values_list("status", "cost_micro")) == [(400, 0), (400, 0)]

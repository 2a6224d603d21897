"""POST /v1/images/edits in OpenAI's JSON shape: `images: [{"image_url": …}]` and `mask`, with
data URLs decoded like uploads and http(s) URLs fetched through the private-address guard;
through Django's test client, curl against gunicorn, and the openai SDK's raw request."""

import base64
import io
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3.util.connection
from openai import OpenAI
from openai.types import ImagesResponse
from PIL import Image
from rest_framework.test import APIClient

from billing.models import UsageRecord
from routing import services
from routing.models import ModelAlias, Provider
from tenants.services import CreatedKey
from tests.conftest import ACTOR, UPSTREAM_SECRET, make_alias
from tests.fakes.upstream import FakeUpstream, form_parts, png
from tests.support import Server

EDIT = "/v1/images/edits"
LOOPBACK = {"127.0.0.1", "::1", "localhost"}


@pytest.fixture(autouse=True)
def connections(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every address this process connects to; anything but loopback fails the test unsent."""
    attempts: list[str] = []
    real = urllib3.util.connection.create_connection

    def guarded(address, *args, **kwargs):
        attempts.append(str(address[0]))
        if str(address[0]) not in LOOPBACK:
            raise AssertionError(f"the gateway tried to connect to {address[0]}")
        return real(address, *args, **kwargs)

    monkeypatch.setattr(urllib3.util.connection, "create_connection", guarded)
    yield attempts


def _rgba(width: int, height: int, color: tuple[int, int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGBA", (width, height), color).save(buffer, "PNG")
    return buffer.getvalue()


def _mask(width: int, height: int) -> bytes:
    """Opaque but for a transparent left half: the part to edit."""
    mask = Image.new("RGBA", (width, height), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, width // 2, height))
    buffer = io.BytesIO()
    mask.save(buffer, "PNG")
    return buffer.getvalue()


def _data_url(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def _post(client: APIClient, body: dict[str, Any]):
    return client.post(EDIT, json.dumps(body), content_type="application/json")


def _decoded(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


SOURCE = _rgba(96, 64, (200, 40, 40, 255))
SECOND = _rgba(32, 32, (0, 0, 255, 255))


@pytest.fixture
def free_openai(fake_upstream: FakeUpstream, db: None) -> ModelAlias:
    """gpt-image-2.5-flare on the fake, on a credential the operator marked free (these tests
    are about the request's shape, not its price)."""
    credential = services.credential_create(
        actor=ACTOR,
        name="openai-free",
        provider=Provider.OPENAI,
        base_url=fake_upstream.url,
        secret=UPSTREAM_SECRET,
        free=True,
    )
    return make_alias("flare", credential, "gpt-image-2.5-flare")


def test_a_data_url_edit_with_a_mask_is_the_same_edit_as_the_multipart_upload(
    client: APIClient, platform_alias: ModelAlias
) -> None:
    fields = {"model": "demo-image", "prompt": "a hat", "seed": 5}
    as_json = _post(
        client,
        {
            **fields,
            "images": [{"image_url": _data_url(SOURCE)}],
            "mask": {"image_url": _data_url(_mask(96, 64))},
        },
    )
    as_form = client.post(
        EDIT,
        {
            **fields,
            "image": _upload("photo.png", SOURCE),
            "mask": _upload("mask.png", _mask(96, 64)),
        },
        format="multipart",
    )
    assert as_json.status_code == as_form.status_code == 200, as_json.content
    (json_image,) = as_json.json()["data"]
    (form_image,) = as_form.json()["data"]
    assert json_image["b64_json"] == form_image["b64_json"]
    image = _decoded(json_image["b64_json"]).convert("RGBA")
    assert image.size == (96, 64)
    assert image.getpixel((90, 60)) == (200, 40, 40, 255), "outside the mask nothing changes"
    records = UsageRecord.objects.order_by("created_at")
    assert [(r.endpoint, r.status, r.images) for r in records] == [("images.edits", 200, 1)] * 2


def _upload(name: str, data: bytes) -> io.BytesIO:
    handle = io.BytesIO(data)
    handle.name = name
    return handle


def test_an_allowlisted_url_is_fetched_and_goes_upstream_as_the_multipart_file(
    client: APIClient, free_openai: ModelAlias, fake_upstream: FakeUpstream, settings
) -> None:
    settings.FETCH_ALLOWED_HOSTS = ["127.0.0.1"]
    fake_upstream.files["photo.png"] = (SOURCE, "image/png")
    response = _post(
        client,
        {
            "model": "flare",
            "prompt": "a hat",
            "size": "1536x864",
            "images": [
                {"image_url": f"{fake_upstream.url}/files/photo.png"},
                {"image_url": _data_url(SECOND)},
            ],
            "mask": {"image_url": _data_url(_mask(96, 64))},
        },
    )
    assert response.status_code == 200, response.content
    assert _decoded(response.json()["data"][0]["b64_json"]).size == (1536, 864)
    (call,) = fake_upstream.requests  # the photo's download is not listed; its bytes are below
    assert call.path == "/v1/images/edits"
    assert call.headers["content-type"].startswith("multipart/form-data")
    parts = form_parts(call)
    assert [(p.name, p.content_type, p.data) for p in parts if p.filename] == [
        ("image[]", "image/png", SOURCE),
        ("image[]", "image/png", SECOND),
        ("mask", "image/png", _mask(96, 64)),
    ]
    fields = {p.name: p.data.decode() for p in parts if p.filename is None}
    assert fields == {
        "model": "gpt-image-2.5-flare",
        "prompt": "a hat",
        "n": "1",
        "size": "1536x864",
    }


def test_moderation_on_an_edit_goes_to_openai_as_the_json_shape_with_data_urls(
    client: APIClient, free_openai: ModelAlias, fake_upstream: FakeUpstream
) -> None:
    response = _post(
        client,
        {
            "model": "flare",
            "prompt": "a hat",
            "moderation": "low",
            "background": "transparent",
            "quality": "xhigh",
            "images": [{"image_url": _data_url(SOURCE)}],
            "mask": {"image_url": _data_url(_mask(96, 64))},
        },
    )
    assert response.status_code == 200, response.content
    (call,) = fake_upstream.requests
    assert call.headers["content-type"] == "application/json"
    assert call.body == {
        "model": "gpt-image-2.5-flare",
        "prompt": "a hat",
        "n": 1,
        "size": "auto",
        "quality": "xhigh",
        "moderation": "low",
        "background": "transparent",
        "images": [{"image_url": _data_url(SOURCE)}],
        "mask": {"image_url": _data_url(_mask(96, 64))},
    }


def test_a_streamed_json_edit_with_moderation_streams_from_the_json_call(
    client: APIClient, free_openai: ModelAlias, fake_upstream: FakeUpstream
) -> None:
    response = _post(
        client,
        {
            "model": "flare",
            "prompt": "a hat",
            "moderation": "auto",
            "stream": True,
            "partial_images": 1,
            "images": [{"image_url": _data_url(SECOND)}],
        },
    )
    assert response.status_code == 200
    events = b"".join(response.streaming_content).decode()
    assert [line for line in events.splitlines() if line.startswith("event:")] == [
        "event: image_edit.partial_image",
        "event: image_edit.completed",
    ]
    (call,) = fake_upstream.requests
    assert (call.body["stream"], call.body["partial_images"], call.body["moderation"]) == (
        True,
        1,
        "auto",
    )
    assert call.body["images"] == [{"image_url": _data_url(SECOND)}]


def test_azure_gets_a_json_edit_as_multipart_without_moderation(
    client: APIClient, azure_credential, fake_upstream: FakeUpstream
) -> None:
    """Azure's JSON edit shape is not documented: its form has no moderation field."""
    make_alias("azure-edit", azure_credential, "gpt-image-2.5-flare", free=True)
    response = _post(
        client,
        {
            "model": "azure-edit",
            "prompt": "a hat",
            "moderation": "low",
            "images": [{"image_url": _data_url(SECOND)}],
        },
    )
    assert response.status_code == 200, response.content
    (call,) = fake_upstream.requests
    assert call.path == "/openai/deployments/gpt-image-2.5-flare/images/edits"
    parts = form_parts(call)
    assert [(p.name, p.data) for p in parts if p.filename] == [("image", SECOND)]
    assert {p.name for p in parts if p.filename is None} == {"prompt", "n", "size"}


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.7/photo.png",
        "http://169.254.169.254/latest/meta-data/photo.png",
        "http://[::1]:9/photo.png",
        "http://127.0.0.1:9/photo.png",  # loopback, and nothing allowlisted
    ],
)
def test_a_private_url_is_refused_before_any_connection_or_upstream_call(
    client: APIClient,
    free_openai: ModelAlias,
    fake_upstream: FakeUpstream,
    connections: list[str],
    url: str,
) -> None:
    response = _post(client, {"model": "flare", "prompt": "a hat", "images": [{"image_url": url}]})
    assert response.status_code == 400, response.content
    assert response.json()["error"] == {
        "message": "'images[0].image_url' is not fetched: its host is a private, loopback or "
        "link-local address (or does not resolve).",
        "type": "invalid_request_error",
        "param": "images[0].image_url",
        "code": None,
    }
    assert connections == []
    assert fake_upstream.requests == []


def _too_many_pixels() -> str:
    return _data_url(png(101, 100))


@pytest.mark.parametrize(
    ("body", "status", "param", "message"),
    [
        ({}, 400, "images", None),
        ({"images": []}, 400, "images", None),
        (
            {"images": [{"image_url": _data_url(SECOND)}] * 17},
            400,
            "images",
            "At most 16 images per edit; got 17.",
        ),
        (
            {"images": [{"file_id": "file-abc"}]},
            400,
            "images[0].file_id",
            "'images[0].file_id' is not supported through the gateway (a file id belongs to one "
            "upstream account); send 'image_url' with an https URL or a data URL.",
        ),
        (
            {"images": [{"image_url": _data_url(SECOND), "file_id": "file-abc"}]},
            400,
            "images[0]",
            "'images[0]' must be an object with exactly one of 'image_url' or 'file_id'.",
        ),
        (
            {"images": [{"image_url": {"url": _data_url(SECOND)}}]},
            400,
            "images[0].image_url",
            "'images[0].image_url' must be a base64 data URL or an http(s) URL, as a string.",
        ),
        (
            {"images": [{"image_url": "ftp://example.com/a.png"}]},
            400,
            "images[0].image_url",
            "'images[0].image_url' must be a base64 data URL or an http(s) URL, as a string.",
        ),
        (
            {"images": [{"image_url": "data:image/png;base64,@@@@"}]},
            400,
            "images[0].image_url",
            "'images[0].image_url' is not valid base64.",
        ),
        (
            {"images": [{"image_url": _data_url(b"GIF89a not a png", "image/gif")}]},
            400,
            "images[0].image_url",
            "'images[0].image_url' is not a decodable PNG, JPEG or WebP image.",
        ),
        (
            {"images": [{"image_url": _too_many_pixels()}]},
            400,
            "images[0].image_url",
            "'images[0].image_url' is 101x100 (10,100 pixels); input images may have at most "
            "10,000 pixels (APERTURE_MAX_INPUT_PIXELS).",
        ),
        (
            {"images": [{"image_url": _data_url(png(8, 8) + b"\0" * 2000)}]},
            413,
            "images[0].image_url",
            "'images[0].image_url' is 2077 bytes; each image may be at most 2000 bytes.",
        ),
        (
            {
                "images": [{"image_url": _data_url(SECOND)}],
                "mask": {"image_url": _data_url(_mask(16, 16))},
            },
            400,
            "mask",
            "'mask' is 16x16 but the image is 32x32; they must be the same size.",
        ),
        (
            {"image": _data_url(SECOND)},
            400,
            "image",
            "In a JSON edit the images go in 'images' as [{\"image_url\": …}], not 'image'.",
        ),
    ],
)
def test_the_json_shape_has_the_same_limits_as_uploads_and_nothing_reaches_the_upstream(
    client: APIClient,
    free_openai: ModelAlias,
    fake_upstream: FakeUpstream,
    settings,
    body: dict[str, Any],
    status: int,
    param: str,
    message: str | None,
) -> None:
    settings.MAX_INPUT_PIXELS = 100 * 100
    settings.EDIT_MAX_IMAGE_BYTES = 2000
    response = _post(client, {"model": "flare", "prompt": "a hat", **body})
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert error["param"] == param
    if message is not None:
        assert error["message"] == message
    assert fake_upstream.requests == []
    assert UsageRecord.objects.get().images == 0


def test_the_openai_sdks_raw_request_sends_the_json_shape(
    live_server,
    api_key: CreatedKey,
    platform_alias: ModelAlias,
    fake_upstream: FakeUpstream,
    settings,
) -> None:
    """The SDK's images.edit sends multipart only; its raw request sends any body."""
    settings.FETCH_ALLOWED_HOSTS = ["127.0.0.1"]
    fake_upstream.files["photo.png"] = (SOURCE, "image/png")
    sdk = OpenAI(base_url=f"{live_server.url}/v1", api_key=api_key.secret, max_retries=0)
    result = sdk.post(
        "/images/edits",
        body={
            "model": "demo-image",
            "prompt": "a hat",
            "n": 2,
            "images": [
                {"image_url": f"{fake_upstream.url}/files/photo.png"},
                {"image_url": _data_url(SECOND)},
            ],
        },
        cast_to=ImagesResponse,
    )
    # Two edits of the first image, the fetched photo, at its size.
    assert [_decoded(d.b64_json or "").size for d in result.data or []] == [(96, 64)] * 2


def _curl(gateway: Server, key: str, body: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    payload = tmp_path / "edit.json"
    payload.write_text(json.dumps(body))
    answer = subprocess.run(
        [
            "curl",
            "-sS",
            f"{gateway}{EDIT}",
            "-H",
            f"Authorization: Bearer {key}",
            "-H",
            "Content-Type: application/json",
            "-d",
            f"@{payload}",
        ],
        capture_output=True,
        check=True,
        timeout=60,
    )
    return json.loads(answer.stdout)


@pytest.mark.django_db(transaction=True)
def test_curl_edits_with_a_data_url_and_an_allowlisted_url(
    gateway: Server,
    api_key: CreatedKey,
    platform_alias: ModelAlias,
    fake_upstream: FakeUpstream,
    tmp_path: Path,
) -> None:
    """The gateway's operator allowlists loopback (tests/routing/conftest.py), where the
    fake serves the photo."""
    fake_upstream.files["photo.png"] = (SOURCE, "image/png")
    answer = _curl(
        gateway,
        api_key.secret,
        {
            "model": "demo-image",
            "prompt": "a hat",
            "seed": 5,
            "images": [
                {"image_url": f"{fake_upstream.url}/files/photo.png"},
                {"image_url": _data_url(SECOND)},
            ],
        },
        tmp_path,
    )
    (image,) = answer["data"]
    assert _decoded(image["b64_json"]).size == (96, 64)  # the first image's: the photo's
    refused = _curl(
        gateway,
        api_key.secret,
        {
            "model": "demo-image",
            "prompt": "a hat",
            "images": [{"image_url": "http://169.254.169.254/latest/meta-data/"}],
        },
        tmp_path,
    )
    assert refused["error"]["param"] == "images[0].image_url"
    assert "private, loopback or link-local" in refused["error"]["message"]

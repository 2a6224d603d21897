"""POST /v1/images/edits: the official SDK through local, OpenAI and Azure; every bad input."""

import base64
import io

import pytest
from openai import AzureOpenAI, OpenAI
from PIL import Image
from rest_framework.test import APIClient

from billing.models import UsageRecord
from routing.models import ModelAlias
from tenants.services import CreatedKey
from tests.conftest import UPSTREAM_SECRET
from tests.fakes.upstream import FakeUpstream, form_parts, png
from tests.support import wait_for


def _png(width: int, height: int, color: tuple[int, int, int, int] = (200, 40, 40, 255)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGBA", (width, height), color).save(buffer, "PNG")
    return buffer.getvalue()


def _mask(width: int, height: int) -> bytes:
    """Opaque everywhere but the left half, which is transparent: the part to edit."""
    mask = Image.new("RGBA", (width, height), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, width // 2, height))
    buffer = io.BytesIO()
    mask.save(buffer, "PNG")
    return buffer.getvalue()


def _decoded(b64: str | None) -> Image.Image:
    assert b64
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image.convert("RGBA")


def _sdk(live_server, key: str) -> OpenAI:
    return OpenAI(base_url=f"{live_server.url}/v1", api_key=key, max_retries=0, timeout=60)


def test_the_sdk_edits_with_the_local_provider_inside_the_mask_only(
    live_server, api_key: CreatedKey, platform_alias: ModelAlias
) -> None:
    client = _sdk(live_server, api_key.secret)
    source = _png(96, 64)
    masked = client.images.edit(
        model="demo-image",
        image=("photo.png", source, "image/png"),
        mask=("mask.png", _mask(96, 64), "image/png"),
        prompt="a hat",
        extra_body={"seed": 5},
    )
    image = _decoded((masked.data or [])[0].b64_json)
    assert image.size == (96, 64)
    right = [image.getpixel((x, y)) for x in range(48, 96, 7) for y in range(0, 64, 7)]
    assert set(right) == {(200, 40, 40, 255)}, "outside the mask nothing changes"
    left = [image.getpixel((x, y)) for x in range(0, 48, 3) for y in range(0, 64, 3)]
    assert any(pixel != (200, 40, 40, 255) for pixel in left), "inside the mask it does"

    again = client.images.edit(
        model="demo-image",
        image=("photo.png", source, "image/png"),
        mask=("mask.png", _mask(96, 64), "image/png"),
        prompt="a hat",
        extra_body={"seed": 5},
    )
    assert again.data and masked.data and again.data[0].b64_json == masked.data[0].b64_json

    whole = client.images.edit(
        model="demo-image",
        image=[
            ("a.png", source, "image/png"),
            ("b.png", _png(32, 32), "image/png"),
            ("c.jpg", png(16, 16, "jpeg"), "image/jpeg"),
        ],
        prompt="a hat",
        n=2,
        size="128x128",
    )
    assert [(_decoded(d.b64_json).size) for d in whole.data or []] == [(128, 128)] * 2
    assert _decoded((whole.data or [])[0].b64_json).getpixel((100, 100)) != (200, 40, 40, 255)
    records = UsageRecord.objects.filter(endpoint="images.edits").order_by("created_at")
    # The live server writes each record once its response has gone out.
    wait_for(lambda: records.count() == 3, timeout=10, what="the three edits' usage records")
    assert [(r.status, r.images) for r in records] == [(200, 1), (200, 1), (200, 2)]


@pytest.mark.usefixtures("list_prices")  # a model without a price is not served
def test_the_sdk_edits_through_openai_and_azure_with_files_and_fields_rebuilt(
    live_server,
    api_key: CreatedKey,
    upstream_aliases: dict[str, ModelAlias],
    fake_upstream: FakeUpstream,
) -> None:
    client = _sdk(live_server, api_key.secret)
    one, two, three = _png(64, 64), _png(64, 64, (0, 0, 255, 255)), png(64, 64, "jpeg")
    single = client.images.edit(
        model="image-openai",
        image=("one.png", one, "image/png"),
        mask=("mask.png", _mask(64, 64), "image/png"),
        prompt="a hat",
        size="1024x1536",
        input_fidelity="high",
    )
    assert _decoded((single.data or [])[0].b64_json).size == (1024, 1536)
    several = client.images.edit(
        model="image-openai",
        image=[
            ("one.png", one, "image/png"),
            ("two.png", two, "image/png"),
            ("three.jpg", three, "image/jpeg"),
        ],
        prompt="a hat",
        n=2,
    )
    assert len(several.data or []) == 2
    azure = AzureOpenAI(
        azure_endpoint=live_server.url,
        api_key=api_key.secret,
        api_version="2025-04-01-preview",
        max_retries=0,
    )
    azure_result = azure.images.edit(
        model="image-azure",
        image=[
            ("one.png", one, "image/png"),
            ("two.png", two, "image/png"),
            ("three.jpg", three, "image/jpeg"),
        ],
        mask=("mask.png", _mask(64, 64), "image/png"),
        prompt="a hat",
    )
    assert len(azure_result.data or []) == 1

    first, second, third = fake_upstream.requests
    parts = form_parts(first)
    fields = {p.name: p.data.decode() for p in parts if p.filename is None}
    assert fields == {
        "model": "gpt-image-1",
        "prompt": "a hat",
        "n": "1",
        "size": "1024x1536",
        "input_fidelity": "high",
    }
    assert [(p.name, p.filename, p.data) for p in parts if p.filename] == [
        ("image", "one.png", one),
        ("mask", "mask.png", _mask(64, 64)),
    ]
    assert first.headers["authorization"] == f"Bearer {UPSTREAM_SECRET}"
    files = [(p.name, p.filename, p.data) for p in form_parts(second) if p.filename]
    assert files == [
        ("image[]", "one.png", one),
        ("image[]", "two.png", two),
        ("image[]", "three.jpg", three),
    ]
    assert third.path == "/openai/deployments/gpt-image-1/images/edits"
    assert third.query == {"api-version": ["2025-04-01-preview"]}
    assert third.headers["api-key"] == UPSTREAM_SECRET
    assert "model" not in {p.name for p in form_parts(third)}
    assert [(p.name, p.filename) for p in form_parts(third) if p.filename] == [
        ("image[]", "one.png"),
        ("image[]", "two.png"),
        ("image[]", "three.jpg"),
        ("mask", "mask.png"),
    ]
    for call in (first, second, third):
        assert api_key.secret not in str(call.headers) and api_key.secret.encode() not in call.raw


EDIT = "/v1/images/edits"


def _edit(client: APIClient, data: dict):
    return client.post(EDIT, data, format="multipart")


def _upload(name: str, data: bytes, content_type: str = "image/png") -> io.BytesIO:
    handle = io.BytesIO(data)
    handle.name = name
    return handle


@pytest.mark.parametrize(
    ("data", "status", "param", "message"),
    [
        (
            {"model": "demo-image", "prompt": "x"},
            400,
            "image",
            "'image' is required: send the image to edit as a file part.",
        ),
        (
            {"model": "demo-image", "prompt": "x", "image": _upload("a.png", b"not an image")},
            400,
            "image",
            "'image' is not a decodable PNG, JPEG or WebP image.",
        ),
        (
            {
                "model": "demo-image",
                "prompt": "x",
                "image": _upload("a.gif", b"GIF89a\x01\x00\x01\x00\x00\x00\x00;"),
            },
            400,
            "image",
            "'image' is not a decodable PNG, JPEG or WebP image.",
        ),
        (
            {"model": "demo-image", "prompt": "x", "image": _upload("a.png", png(32, 32)[:60])},
            400,
            "image",
            "'image' is not a decodable PNG, JPEG or WebP image.",
        ),
        (
            {
                "model": "demo-image",
                "prompt": "x",
                "image": _upload("a.png", png(32, 32)),
                "mask": _upload("m.png", png(16, 16)),
            },
            400,
            "mask",
            "'mask' is 16x16 but the image is 32x32; they must be the same size.",
        ),
        (
            {
                "model": "demo-image",
                "prompt": "x",
                "image": _upload("a.png", png(32, 32)),
                "mask": _upload("m.jpg", png(32, 32, "jpeg")),
            },
            400,
            "mask",
            "'mask' must be a PNG (its transparent pixels mark the edit).",
        ),
        (
            {
                "model": "demo-image",
                "prompt": "x",
                "image[]": [_upload(f"{i}.png", png(8, 8)) for i in range(17)],
            },
            400,
            "image",
            "At most 16 images per edit; got 17.",
        ),
        (
            {"model": "image-dalle3", "prompt": "x", "image": _upload("a.png", png(32, 32))},
            400,
            "model",
            "The model 'image-dalle3' cannot edit images.",
        ),
        (
            {
                "model": "image-dalle2",
                "prompt": "x",
                "image[]": [_upload("a.png", png(32, 32)), _upload("b.png", png(32, 32))],
            },
            400,
            "image",
            "The model 'image-dalle2' edits at most 1 image(s) at once; got 2.",
        ),
        (
            {
                "model": "image-openai",
                "prompt": "x",
                "image": _upload("a.png", png(32, 32)),
                "style": "vivid",
            },
            400,
            "style",
            "'style' does not apply to edits.",
        ),
        (
            {
                "model": "demo-image",
                "prompt": "x",
                "image": _upload("a.png", png(32, 32)),
                "n": "two",
            },
            400,
            "n",
            "'n' must be an integer.",
        ),
        (
            {
                "model": "demo-image",
                "prompt": "x",
                "image": _upload("a.png", png(32, 32)),
                "input_fidelity": "high",
            },
            400,
            "input_fidelity",
            "The model 'demo-image' does not take 'input_fidelity'.",
        ),
    ],
)
def test_bad_edits_get_a_clear_error_and_nothing_reaches_the_upstream(
    client: APIClient,
    upstream_aliases: dict[str, ModelAlias],
    fake_upstream: FakeUpstream,
    data: dict,
    status: int,
    param: str,
    message: str,
) -> None:
    for value in data.values():
        for handle in value if isinstance(value, list) else [value]:
            if isinstance(handle, io.BytesIO):
                handle.seek(0)
    response = _edit(client, data)
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert (error["param"], error["message"]) == (param, message)
    assert fake_upstream.requests == []
    assert UsageRecord.objects.get().cost_micro == 0


def test_a_json_edit_without_images_is_told_what_to_send(
    client: APIClient, platform_alias: ModelAlias
) -> None:
    response = client.post(EDIT, {"model": "demo-image", "prompt": "x"}, format="json")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "images"
    assert '{"image_url": "https://…" or "data:image/png;base64,…"}' in error["message"]


def test_an_image_over_the_size_limit_is_413(
    client: APIClient, platform_alias: ModelAlias, settings
) -> None:
    settings.EDIT_MAX_IMAGE_BYTES = 1000
    big = _png(200, 200, (1, 2, 3, 255)) + b"\0" * 1000
    response = _edit(
        client, {"model": "demo-image", "prompt": "x", "image": _upload("big.png", big)}
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


def test_a_decompression_bomb_is_refused_before_decoding(
    client: APIClient, platform_alias: ModelAlias, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pillow's guard, lowered so that a small file plays the bomb: 1100x1000 > 2 x 500,000.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500_000)
    bomb = Image.new("1", (1100, 1000))
    buffer = io.BytesIO()
    bomb.save(buffer, "PNG")
    assert len(buffer.getvalue()) < 5000
    response = _edit(
        client,
        {"model": "demo-image", "prompt": "x", "image": _upload("bomb.png", buffer.getvalue())},
    )
    assert response.status_code == 400
    assert response.json()["error"]["message"] == (
        "'image' has too many pixels to be decoded safely."
    )


def test_a_form_with_too_many_parts_is_a_400_not_a_500(
    client: APIClient, platform_alias: ModelAlias, settings
) -> None:
    settings.DATA_UPLOAD_MAX_NUMBER_FILES = 3
    images = [_upload(f"{i}.png", png(8, 8)) for i in range(5)]
    response = _edit(client, {"model": "demo-image", "prompt": "x", "image[]": images})
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith("The multipart body has too many parts")

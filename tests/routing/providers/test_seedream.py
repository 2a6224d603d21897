"""Seedream on Volcengine Ark through the official SDK (docs/providers.md §4)."""

import base64
import io

import openai
import pytest
from openai import OpenAI
from PIL import Image

from tests.conftest import UPSTREAM_SECRET
from tests.fakes.upstream import FakeUpstream, Misbehave, png
from tests.routing.providers.conftest import AliasMaker, the_record

pytestmark = pytest.mark.django_db(transaction=True)
MODEL = "doubao-seedream-4-5-251128"


def test_a_tier_becomes_pixels_with_the_watermark_off_and_n_fanned_out(
    sdk: OpenAI, alias_on: AliasMaker, fake_upstream: FakeUpstream
) -> None:
    alias_on("seedream", MODEL, name="seedream")
    result = sdk.images.generate(model="seedream", prompt="a fox", size="2K", n=2)
    assert len(result.data or []) == 2
    with Image.open(io.BytesIO(base64.b64decode((result.data or [])[0].b64_json or ""))) as image:
        assert image.format == "JPEG"
    assert result.size == "2048x2048"
    assert len(fake_upstream.requests) == 2
    call = fake_upstream.requests[0]
    assert call.path == "/api/v3/images/generations"
    assert call.headers["authorization"] == f"Bearer {UPSTREAM_SECRET}"
    assert call.body == {
        "watermark": False,
        "model": MODEL,
        "prompt": "a fox",
        "response_format": "b64_json",
        "sequential_image_generation": "disabled",
        "size": "2048x2048",
    }
    assert (the_record().images, the_record().cost_micro) == (2, 2 * 40_000)


def test_the_operator_may_turn_the_watermark_on(
    sdk: OpenAI, alias_on: AliasMaker, fake_upstream: FakeUpstream
) -> None:
    alias_on("seedream", MODEL, name="seedream", options={"watermark": True})
    sdk.images.generate(model="seedream", prompt="a fox", extra_body={"aspect_ratio": "16:9"})
    body = fake_upstream.requests[0].body
    assert body["watermark"] is True
    width, height = map(int, body["size"].split("x"))
    assert width * height >= 3_686_400 and abs(width / height - 16 / 9) < 0.02


def test_a_size_below_the_models_minimum_is_refused_before_the_call(
    sdk: OpenAI, alias_on: AliasMaker, fake_upstream: FakeUpstream
) -> None:
    alias_on("seedream", MODEL, name="seedream")
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.images.generate(model="seedream", prompt="x", size="1024x1024")
    assert refused.value.param == "size"
    assert "at least 3686400 pixels" in refused.value.message
    assert fake_upstream.requests == []


def test_edits_and_references_go_in_image_as_data_urls(
    sdk: OpenAI, alias_on: AliasMaker, fake_upstream: FakeUpstream
) -> None:
    alias_on("seedream", MODEL, name="seedream")
    first, second = png(20, 20), png(30, 30, "jpeg")
    sdk.images.edit(
        model="seedream",
        prompt="merge",
        image=[("a.png", first, "image/png"), ("b.jpg", second, "image/jpeg")],
    )
    assert fake_upstream.requests[0].body["image"] == [
        "data:image/png;base64," + base64.b64encode(first).decode(),
        "data:image/jpeg;base64," + base64.b64encode(second).decode(),
    ]


def test_a_url_result_is_downloaded_and_inlined(
    sdk: OpenAI,
    alias_on: AliasMaker,
    fake_upstream: FakeUpstream,
    settings,
) -> None:
    settings.FETCH_ALLOWED_HOSTS = ["127.0.0.1"]
    alias_on("seedream", MODEL, name="seedream")
    hosted = png(48, 27, "jpeg")
    fake_upstream.files["out.jpeg"] = (hosted, "image/jpeg")
    fake_upstream.misbehave(
        Misbehave(
            status=200,
            body={
                "model": MODEL,
                "created": 1,
                "data": [{"url": f"{fake_upstream.url}/files/out.jpeg", "size": "2560x1440"}],
            },
        )
    )
    result = sdk.images.generate(model="seedream", prompt="x")
    assert base64.b64decode((result.data or [])[0].b64_json or "") == hosted


def test_a_moderated_group_item_and_ark_errors_map_to_openai_errors(
    sdk: OpenAI, alias_on: AliasMaker, fake_upstream: FakeUpstream
) -> None:
    alias_on("seedream", MODEL, name="seedream")
    fake_upstream.misbehave(
        Misbehave(
            status=200,
            body={
                "data": [
                    {"error": {"code": "OutputImageSensitiveContentDetected", "message": "blocked"}}
                ]
            },
        ),
        Misbehave(
            status=400,
            body={"error": {"code": "InvalidParameter", "message": "prompt is too long"}},
        ),
    )
    with pytest.raises(openai.BadRequestError) as moderated:
        sdk.images.generate(model="seedream", prompt="x")
    assert moderated.value.code == "content_policy_violation"
    with pytest.raises(openai.BadRequestError) as rejected:
        sdk.images.generate(model="seedream", prompt="x")
    assert "prompt is too long" in rejected.value.message

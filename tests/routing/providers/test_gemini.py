"""Gemini native image output and Imagen, through the official SDK (docs/providers.md §3)."""

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


def _image(b64: str | None) -> Image.Image:
    assert b64
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


def test_a_generation_becomes_generate_content_with_the_aspect_ratio(
    sdk: OpenAI, alias_on: AliasMaker, fake_upstream: FakeUpstream
) -> None:
    alias_on("gemini", "gemini-2.5-flash-image", name="flash")
    result = sdk.images.generate(model="flash", prompt="a fox", size="1408x768")
    assert _image((result.data or [])[0].b64_json).format == "PNG"
    assert result.size == "1408x768"
    (call,) = fake_upstream.requests
    assert call.path == "/v1beta/models/gemini-2.5-flash-image:generateContent"
    assert call.headers["x-goog-api-key"] == UPSTREAM_SECRET
    assert "authorization" not in call.headers
    assert call.body == {
        "contents": [{"role": "user", "parts": [{"text": "a fox"}]}],
        "generationConfig": {
            "responseModalities": ["TEXT", "IMAGE"],
            "imageConfig": {"aspectRatio": "16:9"},
        },
    }
    record = the_record()
    assert (record.images, record.cost_micro, record.output_tokens) == (1, 39_000, 1290)


def test_tiers_n_fan_out_and_references_on_gemini_3_pro(
    sdk: OpenAI, alias_on: AliasMaker, fake_upstream: FakeUpstream
) -> None:
    alias_on("gemini", "gemini-3-pro-image-preview", name="pro")
    reference = png(20, 10)
    result = sdk.images.generate(
        model="pro",
        prompt="a fox",
        n=2,
        extra_body={
            "resolution": "2K",
            "aspect_ratio": "9:16",
            "input_references": ["data:image/png;base64," + base64.b64encode(reference).decode()],
        },
    )
    assert len(result.data or []) == 2
    assert result.size == "1536x2816"
    assert len(fake_upstream.requests) == 2
    for call in fake_upstream.requests:
        config = call.body["generationConfig"]
        assert config["imageConfig"] == {"aspectRatio": "9:16", "imageSize": "2K"}
        text, inline = call.body["contents"][0]["parts"]
        assert text == {"text": "a fox"}
        assert inline == {
            "inlineData": {"mimeType": "image/png", "data": base64.b64encode(reference).decode()}
        }


def test_an_edit_sends_the_image_inline(
    sdk: OpenAI, alias_on: AliasMaker, fake_upstream: FakeUpstream
) -> None:
    alias_on("gemini", "gemini-2.5-flash-image", name="flash")
    source = png(32, 32, "jpeg")
    result = sdk.images.edit(model="flash", image=("a.jpg", source, "image/jpeg"), prompt="a hat")
    assert len(result.data or []) == 1
    parts = fake_upstream.requests[0].body["contents"][0]["parts"]
    assert parts[1] == {
        "inlineData": {"mimeType": "image/jpeg", "data": base64.b64encode(source).decode()}
    }


@pytest.mark.parametrize(
    "answer",
    [
        {"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}},
        {"candidates": [{"content": {"parts": []}, "finishReason": "IMAGE_SAFETY"}]},
    ],
)
def test_a_blocked_prompt_or_image_is_a_content_policy_400(
    sdk: OpenAI, alias_on: AliasMaker, fake_upstream: FakeUpstream, answer: dict
) -> None:
    alias_on("gemini", "gemini-2.5-flash-image", name="flash")
    fake_upstream.misbehave(Misbehave(status=200, body=answer))
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.images.generate(model="flash", prompt="something")
    assert refused.value.code == "content_policy_violation"
    assert the_record().cost_micro == 0


def test_upstream_errors_reach_the_sdk_as_openai_errors(
    sdk: OpenAI, alias_on: AliasMaker, fake_upstream: FakeUpstream
) -> None:
    alias_on("gemini", "gemini-2.5-flash-image", name="flash")
    google_error = {
        "error": {"code": 400, "message": "Unsupported aspect ratio", "status": "INVALID_ARGUMENT"}
    }
    fake_upstream.misbehave(
        Misbehave(status=400, body=google_error),
        Misbehave(
            status=429,
            body={"error": {"code": 429, "message": "quota", "status": "RESOURCE_EXHAUSTED"}},
            headers={"Retry-After": "7"},
        ),
        Misbehave(status=200, malformed=True),
        Misbehave(
            status=200,
            body={"candidates": [{"content": {"parts": [{"text": "no"}]}, "finishReason": "STOP"}]},
        ),
    )
    with pytest.raises(openai.BadRequestError) as rejected:
        sdk.images.generate(model="flash", prompt="x")
    assert "Unsupported aspect ratio" in rejected.value.message
    with pytest.raises(openai.RateLimitError) as limited:
        sdk.images.generate(model="flash", prompt="x")
    assert limited.value.response.headers["Retry-After"] == "7"
    for _ in range(2):  # an unreadable body, then a 200 without any image
        with pytest.raises(openai.APIStatusError) as failed:
            sdk.images.generate(model="flash", prompt="x")
        assert failed.value.status_code == 502


def test_options_the_gateway_cannot_honour_are_refused_before_the_call(
    sdk: OpenAI, alias_on: AliasMaker, fake_upstream: FakeUpstream
) -> None:
    alias_on("gemini", "gemini-2.5-flash-image", name="flash")
    for extra in ({"quality": "high"}, {"size": "512x512"}, {"style": "vivid"}):
        with pytest.raises(openai.BadRequestError):
            sdk.images.generate(model="flash", prompt="x", extra_body=extra)
    assert fake_upstream.requests == []


def test_imagen_predicts_n_images_at_the_aspect_ratio(
    sdk: OpenAI, alias_on: AliasMaker, fake_upstream: FakeUpstream
) -> None:
    alias_on("gemini", "imagen-4.0-generate-001", name="imagen")
    result = sdk.images.generate(
        model="imagen", prompt="a fox", n=3, size="2816x1536", output_format="jpeg"
    )
    assert [_image(d.b64_json).format for d in result.data or []] == ["JPEG"] * 3
    (call,) = fake_upstream.requests
    assert call.path == "/v1beta/models/imagen-4.0-generate-001:predict"
    assert call.body == {
        "instances": [{"prompt": "a fox"}],
        "parameters": {
            "sampleCount": 3,
            "aspectRatio": "16:9",
            "sampleImageSize": "2K",
            "outputOptions": {"mimeType": "image/jpeg"},
        },
    }
    assert the_record().cost_micro == 3 * 40_000


def test_imagen_with_every_image_filtered_is_a_content_policy_400(
    sdk: OpenAI, alias_on: AliasMaker, fake_upstream: FakeUpstream
) -> None:
    alias_on("gemini", "imagen-4.0-fast-generate-001", name="imagen")
    fake_upstream.misbehave(
        Misbehave(status=200, body={"predictions": [{"raiFilteredReason": "sexual content"}]})
    )
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.images.generate(model="imagen", prompt="x")
    assert refused.value.code == "content_policy_violation"
    assert "sexual content" in refused.value.message

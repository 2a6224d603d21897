"""xAI through the official SDK: sizes translated, style and seed refused, JSON edits,
silent moderation reported honestly (docs/providers.md §5)."""

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


def _size(b64: str | None) -> tuple[int, int]:
    assert b64
    with Image.open(io.BytesIO(base64.b64decode(b64))) as image:
        return image.size


def test_size_becomes_aspect_ratio_and_resolution_and_the_real_size_is_reported(
    sdk: OpenAI, alias_on: AliasMaker, fake_upstream: FakeUpstream
) -> None:
    alias_on("xai", "grok-imagine-image", name="grok")
    result = sdk.images.generate(model="grok", prompt="a fox", size="1792x1024", n=2)
    assert [_size(d.b64_json) for d in result.data or []] == [(1365, 768)] * 2
    assert result.size == "1365x768"
    assert (result.data or [])[0].revised_prompt == "revised: a fox"
    (call,) = fake_upstream.requests
    assert call.path == "/v1/images/generations"
    assert call.headers["authorization"] == f"Bearer {UPSTREAM_SECRET}"
    assert call.body == {
        "model": "grok-imagine-image",
        "prompt": "a fox",
        "n": 2,
        "response_format": "b64_json",
        "aspect_ratio": "16:9",
        "resolution": "1k",
    }
    record = the_record()
    assert (record.images, record.cost_micro) == (2, 2 * 20_000)


def test_a_2k_request_and_a_tier_are_translated_too(
    sdk: OpenAI, alias_on: AliasMaker, fake_upstream: FakeUpstream
) -> None:
    alias_on("xai", "grok-imagine-image", name="grok")
    sdk.images.generate(
        model="grok", prompt="x", extra_body={"resolution": "2K", "aspect_ratio": "2:3"}
    )
    assert (
        fake_upstream.requests[0].body["aspect_ratio"],
        fake_upstream.requests[0].body["resolution"],
    ) == ("2:3", "2k")


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"style": "vivid"}, "style"),
        ({"seed": 3}, "seed"),
        ({"size": "4096x4096"}, "size"),
        ({"quality": "high"}, "quality"),
    ],
)
def test_what_xai_refuses_is_a_clear_400_before_the_call(
    sdk: OpenAI, alias_on: AliasMaker, fake_upstream: FakeUpstream, extra: dict, param: str
) -> None:
    alias_on("xai", "grok-imagine-image", name="grok")
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.images.generate(model="grok", prompt="x", extra_body=extra)
    assert refused.value.param == param
    assert fake_upstream.requests == []


def test_an_edit_goes_to_xai_as_json_with_a_data_url(
    sdk: OpenAI, alias_on: AliasMaker, fake_upstream: FakeUpstream
) -> None:
    alias_on("xai", "grok-imagine-image", name="grok")
    source = png(40, 40)
    result = sdk.images.edit(model="grok", image=("a.png", source, "image/png"), prompt="a hat")
    assert len(result.data or []) == 1
    (call,) = fake_upstream.requests
    assert call.path == "/v1/images/edits"
    assert call.headers["content-type"] == "application/json"
    assert call.body["image"] == {
        "url": "data:image/png;base64," + base64.b64encode(source).decode(),
        "type": "image_url",
    }


def test_silent_moderation_gives_what_came_back_and_charges_only_that(
    sdk: OpenAI, alias_on: AliasMaker, fake_upstream: FakeUpstream
) -> None:
    alias_on("xai", "grok-imagine-image", name="grok")
    one = {"b64_json": base64.b64encode(png(64, 64, "jpeg")).decode(), "mime_type": "image/jpeg"}
    fake_upstream.misbehave(
        Misbehave(status=200, body={"created": 1, "data": [one, {"url": None}]}),
    )
    result = sdk.images.generate(model="grok", prompt="x", n=3)
    assert len(result.data or []) == 1
    record = the_record()
    assert (record.images, record.cost_micro) == (1, 20_000)


def test_everything_withheld_is_a_content_policy_400_and_flat_errors_are_read(
    sdk: OpenAI, alias_on: AliasMaker, fake_upstream: FakeUpstream
) -> None:
    alias_on("xai", "grok-imagine-image", name="grok")
    fake_upstream.misbehave(
        Misbehave(status=200, body={"created": 1, "data": []}),
        Misbehave(
            status=400,
            body={"code": "Client specified an invalid argument", "error": "Prompt too long"},
        ),
        Misbehave(status=429, body={"error": "slow down"}, headers={"Retry-After": "3"}),
    )
    with pytest.raises(openai.BadRequestError) as withheld:
        sdk.images.generate(model="grok", prompt="x")
    assert withheld.value.code == "content_policy_violation"
    with pytest.raises(openai.BadRequestError) as rejected:
        sdk.images.generate(model="grok", prompt="x")
    assert "Prompt too long" in rejected.value.message
    with pytest.raises(openai.RateLimitError):
        sdk.images.generate(model="grok", prompt="x")

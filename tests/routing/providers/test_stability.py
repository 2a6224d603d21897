"""Stability Stable Image through the official SDK (docs/providers.md §7)."""

import base64

import openai
import pytest
from openai import OpenAI

from tests.conftest import UPSTREAM_SECRET
from tests.fakes.upstream import FakeUpstream, Misbehave, form_parts, png
from tests.routing.providers.conftest import AliasMaker, the_record

pytestmark = pytest.mark.django_db(transaction=True)


def _fields(call) -> dict[str, str]:
    return {p.name: p.data.decode() for p in form_parts(call) if p.filename is None}


def test_a_generation_is_a_multipart_call_with_the_aspect_ratio_and_n_fanned_out(
    sdk: OpenAI, alias_on: AliasMaker, fake_upstream: FakeUpstream
) -> None:
    alias_on("stability", "core", name="core")
    result = sdk.images.generate(
        model="core",
        prompt="a fox",
        size="1344x768",
        n=2,
        output_format="webp",
        extra_body={"seed": 11},
    )
    assert [base64.b64decode(d.b64_json or "") for d in result.data or []] == [
        png(64, 64, "webp")
    ] * 2
    assert [c.path for c in fake_upstream.requests] == ["/v2beta/stable-image/generate/core"] * 2
    first, second = sorted(fake_upstream.requests, key=lambda c: _fields(c)["seed"])
    assert first.headers["accept"] == "application/json"
    assert first.headers["authorization"] == f"Bearer {UPSTREAM_SECRET}"
    assert first.headers["content-type"].startswith("multipart/form-data")
    assert _fields(first) == {
        "prompt": "a fox",
        "aspect_ratio": "16:9",
        "seed": "11",
        "output_format": "webp",
    }
    assert _fields(second)["seed"] == "12"  # each fanned-out call (concurrent) its own seed
    assert (the_record().images, the_record().cost_micro) == (2, 2 * 30_000)


def test_sd3_models_go_to_sd3_with_their_model_and_edit_image_to_image(
    sdk: OpenAI, alias_on: AliasMaker, fake_upstream: FakeUpstream
) -> None:
    alias_on("stability", "sd3.5-large", name="sd3")
    sdk.images.generate(model="sd3", prompt="a fox")
    source = png(32, 32)
    sdk.images.edit(model="sd3", prompt="as a watercolor", image=("a.png", source, "image/png"))
    generation, edit = fake_upstream.requests
    assert generation.path == "/v2beta/stable-image/generate/sd3"
    assert _fields(generation) == {"prompt": "a fox", "model": "sd3.5-large"}
    assert _fields(edit) == {
        "prompt": "as a watercolor",
        "model": "sd3.5-large",
        "mode": "image-to-image",
        "strength": "0.7",
    }
    assert [(p.name, p.data) for p in form_parts(edit) if p.filename] == [("image", source)]


def test_core_cannot_edit_and_moderation_maps_to_content_policy(
    sdk: OpenAI, alias_on: AliasMaker, fake_upstream: FakeUpstream
) -> None:
    alias_on("stability", "core", name="core")
    with pytest.raises(openai.BadRequestError):
        sdk.images.edit(model="core", prompt="x", image=("a.png", png(8, 8), "image/png"))
    fake_upstream.misbehave(
        Misbehave(status=200, body={"image": "", "finish_reason": "CONTENT_FILTERED", "seed": 1}),
        Misbehave(
            status=403,
            body={"id": "x", "name": "content_moderation", "errors": ["Your request was flagged"]},
        ),
        Misbehave(
            status=400, body={"id": "y", "name": "bad_request", "errors": ["aspect_ratio: invalid"]}
        ),
        Misbehave(status=403, body={"id": "z", "name": "forbidden", "errors": ["bad key"]}),
    )
    for _ in range(2):
        with pytest.raises(openai.BadRequestError) as moderated:
            sdk.images.generate(model="core", prompt="x")
        assert moderated.value.code == "content_policy_violation"
    with pytest.raises(openai.BadRequestError) as rejected:
        sdk.images.generate(model="core", prompt="x")
    assert "aspect_ratio: invalid" in rejected.value.message
    with pytest.raises(openai.APIStatusError) as operator_problem:
        sdk.images.generate(model="core", prompt="x")
    assert operator_problem.value.status_code == 502

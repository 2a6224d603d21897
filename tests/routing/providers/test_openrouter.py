"""OpenRouter's chat-completions image route through the official SDK (docs/providers.md §6)."""

import base64

import openai
import pytest
from openai import OpenAI

from tests.conftest import UPSTREAM_SECRET
from tests.fakes.upstream import FakeUpstream, Misbehave, png
from tests.routing.providers.conftest import AliasMaker, the_record

pytestmark = pytest.mark.django_db(transaction=True)
MODEL = "google/gemini-2.5-flash-image"


def test_a_generation_is_a_chat_completion_with_image_modalities(
    sdk: OpenAI, alias_on: AliasMaker, fake_upstream: FakeUpstream
) -> None:
    alias_on("openrouter", MODEL, name="router")
    result = sdk.images.generate(
        model="router", prompt="a fox", n=2, extra_body={"resolution": "2K", "aspect_ratio": "16:9"}
    )
    assert [base64.b64decode(d.b64_json or "") for d in result.data or []] == [png(64, 36)] * 2
    assert len(fake_upstream.requests) == 2
    call = fake_upstream.requests[0]
    assert call.path == "/api/v1/chat/completions"
    assert call.headers["authorization"] == f"Bearer {UPSTREAM_SECRET}"
    assert call.body == {
        "model": MODEL,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "a fox"}]}],
        "modalities": ["image", "text"],
        "image_config": {"aspect_ratio": "16:9", "image_size": "2K"},
    }
    assert the_record().images == 2


def test_an_edit_is_an_image_url_part_and_options_come_from_the_operator(
    sdk: OpenAI, alias_on: AliasMaker, fake_upstream: FakeUpstream
) -> None:
    alias_on(
        "openrouter", "black-forest-labs/flux.2-pro", name="flux", options={"modalities": ["image"]}
    )
    source = png(16, 16)
    sdk.images.edit(model="flux", image=("a.png", source, "image/png"), prompt="a hat")
    body = fake_upstream.requests[0].body
    assert body["modalities"] == ["image"]
    assert body["messages"][0]["content"][1] == {
        "type": "image_url",
        "image_url": {"url": "data:image/png;base64," + base64.b64encode(source).decode()},
    }


def test_no_image_refusals_and_errors_map_to_openai_errors(
    sdk: OpenAI, alias_on: AliasMaker, fake_upstream: FakeUpstream
) -> None:
    alias_on("openrouter", MODEL, name="router")
    fake_upstream.misbehave(
        Misbehave(
            status=200,
            body={"choices": [{"message": {"content": "no"}, "finish_reason": "content_filter"}]},
        ),
        Misbehave(
            status=200,
            body={"choices": [{"message": {"content": "only text"}, "finish_reason": "stop"}]},
        ),
        Misbehave(status=400, body={"error": {"code": 400, "message": "No endpoints found"}}),
        Misbehave(status=429, body={"error": {"code": 429, "message": "Rate limited"}}),
    )
    with pytest.raises(openai.BadRequestError) as moderated:
        sdk.images.generate(model="router", prompt="x")
    assert moderated.value.code == "content_policy_violation"
    with pytest.raises(openai.APIStatusError) as empty:
        sdk.images.generate(model="router", prompt="x")
    assert empty.value.status_code == 502
    with pytest.raises(openai.BadRequestError) as rejected:
        sdk.images.generate(model="router", prompt="x")
    assert "No endpoints found" in rejected.value.message
    with pytest.raises(openai.RateLimitError):
        sdk.images.generate(model="router", prompt="x")

"""What every provider adapter shares: an unreadable body is a 502, a rate limit a 429 with
the upstream's Retry-After, and an OpenAI-style safety refusal a content_policy_violation."""

import openai
import pytest
from openai import OpenAI

from tests.fakes.upstream import FakeUpstream, Misbehave
from tests.routing.providers.conftest import AliasMaker

pytestmark = pytest.mark.django_db(transaction=True)

MODELS = [
    ("openai", "gpt-image-1"),
    ("gemini", "gemini-2.5-flash-image"),
    ("gemini", "imagen-4.0-generate-001"),
    ("seedream", "doubao-seedream-4-5-251128"),
    ("xai", "grok-imagine-image"),
    ("openrouter", "google/gemini-2.5-flash-image"),
    ("stability", "core"),
    ("bfl", "flux-pro-1.1"),
    ("replicate", "black-forest-labs/flux-schnell"),
]


@pytest.mark.parametrize(("provider", "model"), MODELS)
def test_an_unreadable_body_is_502_and_a_rate_limit_429(
    sdk: OpenAI, alias_on: AliasMaker, fake_upstream: FakeUpstream, provider: str, model: str
) -> None:
    alias_on(provider, model, name="m")
    fake_upstream.misbehave(
        Misbehave(status=200, malformed=True),
        Misbehave(
            status=429, body={"error": {"message": "slow down"}}, headers={"Retry-After": "4"}
        ),
        Misbehave(
            status=400,
            body={
                "error": {
                    "message": "Your request was rejected by the safety system",
                    "code": "moderation_blocked",
                }
            },
        ),
    )
    with pytest.raises(openai.APIStatusError) as unreadable:
        sdk.images.generate(model="m", prompt="x")
    assert unreadable.value.status_code == 502
    with pytest.raises(openai.RateLimitError) as limited:
        sdk.images.generate(model="m", prompt="x")
    assert limited.value.response.headers["Retry-After"] == "4"
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.images.generate(model="m", prompt="x")
    assert refused.value.code == "content_policy_violation"


def test_models_lists_each_providers_capabilities(sdk: OpenAI, alias_on: AliasMaker) -> None:
    for index, (provider, model) in enumerate(MODELS):
        alias_on(provider, model, name=f"m{index}")
    listed = {m.id: m.model_extra["aperture"] for m in sdk.models.list()}  # type: ignore[index]
    assert {listed[f"m{i}"]["provider"] for i in range(len(MODELS))} == {p for p, _ in MODELS}
    gemini = listed["m1"]["capabilities"]
    assert (gemini["max_n_per_call"], gemini["max_n"], gemini["edits"], gemini["mask"]) == (
        1,
        10,
        True,
        False,
    )
    assert "1408x768" in gemini["sizes"]
    assert listed["m6"]["capabilities"]["seed"] is True  # stability
    assert listed["m4"]["capabilities"]["styles"] == []  # xai refuses style

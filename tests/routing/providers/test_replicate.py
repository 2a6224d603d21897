"""Replicate predictions: `Prefer: wait`, then polling; a synchronous answer to the SDK."""

import base64

import openai
import pytest
from openai import OpenAI

from tests.conftest import UPSTREAM_SECRET
from tests.fakes.upstream import FakeUpstream, Misbehave, png
from tests.routing.providers.conftest import AliasMaker, the_record

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _fast_polls_and_local_outputs(settings) -> None:
    settings.UPSTREAM_POLL_INTERVAL_SECONDS = 0.01
    settings.FETCH_ALLOWED_HOSTS = ["127.0.0.1"]  # the fake hosts the outputs


def test_an_official_model_answers_within_prefer_wait(
    sdk: OpenAI, alias_on: AliasMaker, fake_upstream: FakeUpstream
) -> None:
    alias_on("replicate", "black-forest-labs/flux-schnell", name="schnell")
    result = sdk.images.generate(
        model="schnell",
        prompt="a fox",
        size="1344x768",
        output_format="jpeg",
        extra_body={"seed": 3},
    )
    assert base64.b64decode((result.data or [])[0].b64_json or "") == png(40, 40, "jpeg")
    (call,) = [c for c in fake_upstream.requests if c.method == "POST"]
    assert call.path == "/v1/models/black-forest-labs/flux-schnell/predictions"
    assert call.headers["prefer"] == "wait=60"
    assert call.headers["authorization"] == f"Bearer {UPSTREAM_SECRET}"
    assert call.body == {
        "input": {"prompt": "a fox", "aspect_ratio": "16:9", "seed": 3, "output_format": "jpg"}
    }
    assert the_record().images == 1


def test_a_slow_versioned_prediction_is_polled_until_it_succeeds(
    sdk: OpenAI, alias_on: AliasMaker, fake_upstream: FakeUpstream
) -> None:
    alias_on(  # a community model version: no list price, so the operator serves it free
        "replicate",
        "stability-ai/sdxl:7762fd07",
        name="sdxl",
        options={"num_inference_steps": 4},
        free=True,
    )
    fake_upstream.replicate_processing = 3
    result = sdk.images.generate(model="sdxl", prompt="a fox", n=2)
    assert len(result.data or []) == 2
    creates = [c for c in fake_upstream.requests if c.method == "POST"]
    polls = [c for c in fake_upstream.requests if c.method == "GET"]
    assert [c.path for c in creates] == ["/v1/predictions"] * 2
    assert creates[0].body == {
        "version": "7762fd07",
        "input": {"prompt": "a fox", "num_inference_steps": 4},
    }
    assert len(polls) == 2 * 3
    assert all(c.headers["authorization"] == f"Bearer {UPSTREAM_SECRET}" for c in polls)


def test_failed_predictions_and_errors_map_to_openai_errors(
    sdk: OpenAI, alias_on: AliasMaker, fake_upstream: FakeUpstream
) -> None:
    alias_on("replicate", "black-forest-labs/flux-schnell", name="schnell")
    fake_upstream.replicate_error = "NSFW content detected. Try a different prompt."
    with pytest.raises(openai.BadRequestError) as moderated:
        sdk.images.generate(model="schnell", prompt="x")
    assert moderated.value.code == "content_policy_violation"
    fake_upstream.replicate_error = "CUDA out of memory"
    with pytest.raises(openai.APIStatusError) as failed:
        sdk.images.generate(model="schnell", prompt="x")
    assert failed.value.status_code == 502
    fake_upstream.replicate_error = ""
    fake_upstream.misbehave(
        Misbehave(status=422, body={"detail": "Invalid input: aspect_ratio"}),
        Misbehave(
            status=429, body={"detail": "Request was throttled."}, headers={"Retry-After": "2"}
        ),
    )
    with pytest.raises(openai.BadRequestError) as invalid:
        sdk.images.generate(model="schnell", prompt="x")
    assert "aspect_ratio" in invalid.value.message
    with pytest.raises(openai.RateLimitError):
        sdk.images.generate(model="schnell", prompt="x")

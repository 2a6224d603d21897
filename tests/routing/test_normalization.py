"""Normalized options: size tiers, resolution with aspect ratio, provider options, n fan-out."""

import json

import pytest
from rest_framework.test import APIClient

from billing.models import UsageRecord
from routing.images.sizing import resolve_size
from routing.models import ModelAlias
from routing.providers import local, openai
from routing.providers.capabilities import ASPECT_RATIOS, ImageCapabilities
from tests.fakes.upstream import FakeUpstream, Misbehave

URL = "/v1/images/generations"
ENTRIES = {
    "local": local.CAPABILITIES,
    "gpt-image-1": openai.GPT_IMAGE,
    "gpt-image-2": openai.GPT_IMAGE_2,
    "dall-e-3": openai.DALL_E_3,
    "dall-e-2": openai.DALL_E_2,
    "unknown openai model": openai.UNKNOWN_MODEL,
}


def _size(caps: ImageCapabilities, **options: str) -> str:
    return resolve_size(
        caps,
        size=options.get("size"),
        resolution=options.get("resolution"),
        aspect_ratio=options.get("aspect_ratio"),
        model="m",
    )


@pytest.mark.parametrize("entry", sorted(ENTRIES))
def test_every_tier_and_ratio_resolves_to_a_size_the_model_accepts(entry: str) -> None:
    caps = ENTRIES[entry]
    for resolution in ("1K", "2K", "4K"):
        for ratio in ASPECT_RATIOS:
            size = _size(caps, resolution=resolution, aspect_ratio=ratio)
            width, height = map(int, size.split("x"))
            assert caps.accepts_size(width, height), (resolution, ratio, size)
            assert _size(caps, size=resolution, aspect_ratio=ratio) == size


@pytest.mark.parametrize(
    ("entry", "options", "expected"),
    [
        ("gpt-image-1", {"resolution": "1K"}, "1024x1024"),
        ("gpt-image-1", {"aspect_ratio": "16:9"}, "1536x1024"),
        ("gpt-image-1", {"resolution": "2K", "aspect_ratio": "2:3"}, "1024x1536"),
        ("gpt-image-1", {"size": "4K", "aspect_ratio": "9:16"}, "1024x1536"),
        ("dall-e-3", {"aspect_ratio": "16:9"}, "1792x1024"),
        ("dall-e-3", {"aspect_ratio": "9:16", "resolution": "4K"}, "1024x1792"),
        ("dall-e-2", {"aspect_ratio": "21:9"}, "1024x1024"),
        ("dall-e-2", {"size": "1K"}, "1024x1024"),
        ("gpt-image-2", {"resolution": "2K", "aspect_ratio": "16:9"}, "2736x1536"),
        ("gpt-image-2", {"resolution": "4K", "aspect_ratio": "16:9"}, "3840x2160"),
        ("gpt-image-2", {"resolution": "4K", "aspect_ratio": "1:1"}, "2880x2880"),
        ("local", {"resolution": "1K", "aspect_ratio": "21:9"}, "1564x670"),
        ("local", {"size": "4K"}, "4096x4096"),
        ("local", {"size": "1536x1024", "aspect_ratio": "3:2", "resolution": "1K"}, "1536x1024"),
        ("dall-e-3", {"size": "1792x1024", "aspect_ratio": "16:9"}, "1792x1024"),
        ("local", {"size": "auto"}, "auto"),
        ("local", {}, "auto"),
    ],
)
def test_the_nearest_accepted_size_is_chosen(entry: str, options: dict, expected: str) -> None:
    assert _size(ENTRIES[entry], **options) == expected


def _post(client: APIClient, body: dict):
    return client.post(URL, json.dumps(body), content_type="application/json")


def test_the_upstream_gets_the_concrete_size_and_the_caller_is_told_which(
    client: APIClient, upstream_aliases: dict[str, ModelAlias], fake_upstream: FakeUpstream
) -> None:
    body = {"model": "image-dalle3", "prompt": "a fox", "aspect_ratio": "16:9"}
    response = _post(client, body)
    assert response.status_code == 200, response.content
    assert response.json()["size"] == "1792x1024"
    assert fake_upstream.requests[0].body["size"] == "1792x1024"
    local_answer = _post(
        client,
        {"model": "demo-image", "prompt": "a fox", "resolution": "1K", "aspect_ratio": "9:16"},
    ).json()
    assert local_answer["size"] == "768x1365"


def test_provider_options_reach_only_their_provider(
    client: APIClient, upstream_aliases: dict[str, ModelAlias], fake_upstream: FakeUpstream
) -> None:
    options = {"openai": {"moderation": "low", "x_custom": 1}, "gemini": {"safety": "off"}}
    response = _post(client, {"model": "image-openai", "prompt": "a fox", "provider": options})
    assert response.status_code == 200, response.content
    sent = fake_upstream.requests[0].body
    assert (sent["moderation"], sent["x_custom"], sent["model"]) == ("low", 1, "gpt-image-1")
    assert "safety" not in sent and "provider" not in sent
    azure = _post(client, {"model": "image-azure", "prompt": "a fox", "provider": options})
    assert azure.status_code == 200
    assert "moderation" not in fake_upstream.requests[1].body
    local = _post(client, {"model": "demo-image", "prompt": "a fox", "provider": options})
    assert local.status_code == 200


def test_n_beyond_one_call_is_fanned_out_and_charged_per_image(
    client: APIClient, upstream_aliases: dict[str, ModelAlias], fake_upstream: FakeUpstream
) -> None:
    body = {
        "model": "image-dalle3",
        "prompt": "a fox",
        "n": 3,
        "quality": "standard",
        "size": "1024x1024",
    }
    response = _post(client, body)
    assert response.status_code == 200, response.content
    assert len(response.json()["data"]) == 3
    assert [call.body["n"] for call in fake_upstream.requests] == [1, 1, 1]
    record = UsageRecord.objects.get()
    assert (record.images, record.cost_micro) == (3, 3 * 40_000)


@pytest.mark.parametrize("allow_partial", [False, True])
def test_a_failed_part_of_a_fan_out_is_an_error_unless_partial_results_are_allowed(
    client: APIClient,
    upstream_aliases: dict[str, ModelAlias],
    fake_upstream: FakeUpstream,
    allow_partial: bool,
) -> None:
    fake_upstream.misbehave(Misbehave(status=500))
    body = {
        "model": "image-dalle3",
        "prompt": "a fox",
        "n": 3,
        "quality": "standard",
        "size": "1024x1024",
        "allow_partial": allow_partial,
    }
    response = _post(client, body)
    assert len(fake_upstream.requests) == 3
    record = UsageRecord.objects.get()
    if allow_partial:
        assert response.status_code == 200, response.content
        assert len(response.json()["data"]) == 2
        assert (record.images, record.cost_micro) == (2, 2 * 40_000)
    else:
        assert response.status_code == 502
        assert response.json()["error"]["code"] == "upstream_error"
        assert (record.images, record.cost_micro) == (0, 0)

"""Price rules to the micro-dollar: per megapixel (FLUX.2), by resolution tier, a surcharge
per input image, a minimum; the hold is the worst case, the settle what was made, and the
record keeps the price applied."""

import base64
import importlib
import json
from typing import Any

import pytest
from django.apps import apps
from rest_framework.test import APIClient

from billing import pricing
from billing.models import Price, UsageRecord
from routing.models import ModelAlias, ProviderCredential
from tenants.models import Workspace
from tests.billing.conftest import budget
from tests.conftest import ACTOR, UPSTREAM_SECRET, make_alias
from tests.fakes.upstream import FakeUpstream, png

URL = "/v1/images/generations"
SEEDS = ("0002_seed_list_prices", "0005_seed_more_prices", "0014_seed_price_rules")


@pytest.fixture(autouse=True)
def _seeded(db: None) -> None:
    """The seeded prices, whatever an earlier test left (each seed keeps what exists)."""
    for migration in SEEDS:
        importlib.import_module(f"billing.migrations.{migration}").seed(apps, None)


@pytest.fixture(autouse=True)
def _fast_polls_and_local_samples(settings) -> None:
    settings.UPSTREAM_POLL_INTERVAL_SECONDS = 0.01
    settings.FETCH_ALLOWED_HOSTS = ["127.0.0.1"]  # the fake hosts BFL's signed samples


def _alias(fake: FakeUpstream, provider: str, model: str, name: str) -> ModelAlias:
    from routing import services

    credential: ProviderCredential = services.credential_create(
        actor=ACTOR, name=provider, provider=provider, base_url=fake.url, secret=UPSTREAM_SECRET
    )
    return make_alias(name, credential, model)


def _post(client: APIClient, body: dict):
    return client.post(URL, json.dumps(body), content_type="application/json")


def _data_url(width: int, height: int) -> str:
    return "data:image/png;base64," + base64.b64encode(png(width, height)).decode()


# --- each rule, to the micro-dollar ----------------------------------------------------------


def test_flux2_bills_the_first_megapixel_then_each_further_one_rounded_up() -> None:
    # 1920x1080 = 2.07 MP: 3 MP billed = $0.03 + 2 x $0.015.
    quote = pricing.quote("bfl", "flux-2-pro", images=1, size="1920x1080")
    price = Price.objects.get(provider="bfl", model_pattern="flux-2-pro")
    assert quote.cost_micro == 30_000 + 2 * 15_000
    assert quote.snapshot == {
        "images": 1,
        "size": "1920x1080",
        "quality": "",
        "tier": "",
        "rule": "per_megapixel",
        "megapixels": 3,
        "first_megapixel_micro": 30_000,
        "extra_megapixel_micro": 15_000,
        "unit_micro": 60_000,
        "price_id": price.pk,
        "model_pattern": "flux-2-pro",
    }
    assert pricing.quote("bfl", "flux-2-max", images=2, size="1000x1000").cost_micro == 2 * 70_000
    assert pricing.quote("bfl", "flux-2-klein-4b", images=1, size="2048x2048").cost_micro == (
        14_000 + 4 * 1_000  # 4.19 MP: 5 billed
    )


def test_a_resolution_tier_prices_by_the_tier_asked_or_the_size_made() -> None:
    def cost(**ask: Any) -> int:
        return pricing.quote("gemini", "gemini-3-pro-image-preview", images=1, **ask).cost_micro

    assert cost(tier="4K") == 240_000
    assert cost(size="4096x4096") == 240_000
    assert cost(size="2048x2048") == 134_400  # 2K: as 1K on Gemini 3 Pro
    assert cost(size="1024x1024") == 134_400
    flash = pricing.quote("gemini", "gemini-3.1-flash-image", images=3, size="512x512")
    assert (flash.cost_micro, flash.snapshot["tier"]) == (3 * 44_820, "512")
    assert cost(tier="4K", worst_case=True) == 240_000
    assert cost(worst_case=True) == 240_000  # an open tier: the dearest


def test_input_and_reference_images_carry_their_surcharge() -> None:
    gemini = pricing.quote(
        "gemini", "gemini-3-pro-image", images=1, size="1024x1024", input_images=2
    )
    assert gemini.cost_micro == 134_400 + 2 * 1_120
    assert (gemini.snapshot["input_images"], gemini.snapshot["per_input_image_micro"]) == (2, 1_120)
    flux = pricing.quote("bfl", "flux-2-pro", images=1, size="1024x768", input_images=2)
    assert flux.cost_micro == 30_000 + 2 * 15_000  # $0.045 an edit at 1 MP with one
    xai = pricing.quote("xai", "grok-imagine-image", images=2, input_images=1)
    assert xai.cost_micro == 2 * 20_000 + 2_000


def test_a_minimum_applies_to_a_served_request_only() -> None:
    price = Price.objects.create(
        provider="openai", model_pattern="tiny-min", per_image_micro=1_000, minimum_micro=5_000
    )
    quote = pricing.quote("openai", "tiny-min", images=2)
    assert quote.cost_micro == 5_000
    assert quote.snapshot == {
        "images": 2,
        "size": "",
        "quality": "",
        "tier": "",
        "rule": "per_image",
        "unit_micro": 1_000,
        "minimum_micro": 5_000,
        "minimum_applied": True,
        "price_id": price.pk,
        "model_pattern": "tiny-min",
    }
    assert pricing.quote("openai", "tiny-min", images=6).cost_micro == 6_000
    assert pricing.quote("openai", "tiny-min", images=0).cost_micro == 0  # nothing made


def test_tokens_settle_and_the_per_image_rows_hold_for_gpt_image_2() -> None:
    usage = {
        "input_tokens": 50,
        "output_tokens": 4000,
        "input_tokens_details": {"text_tokens": 10, "image_tokens": 40},
    }
    settled = pricing.quote(
        "openai", "gpt-image-2.5-flare", images=1, size="1024x1024", quality="high", usage=usage
    )
    assert settled.cost_micro == 10 * 5 + 40 * 8 + 4000 * 30  # µUSD: $/M x tokens
    assert settled.snapshot["rule"] == "per_token"
    held = pricing.quote(
        "openai", "gpt-image-2", images=1, size="1024x1024", quality="high", worst_case=True
    )
    assert held.cost_micro == 211_000
    ceiling = pricing.quote(
        "openai", "gpt-image-2", images=1, size="3840x2160", quality=None, worst_case=True
    )
    assert ceiling.cost_micro == 1_669_043


# --- through the gateway: the hold is the worst case, the settle what was made ---------------


def test_a_flux2_call_holds_the_largest_size_and_settles_what_was_made(
    client: APIClient, workspace: Workspace, fake_upstream: FakeUpstream
) -> None:
    _alias(fake_upstream, "bfl", "flux-2-pro", "flux2")
    # size "auto": held at the largest FLUX.2 makes (4 MP: $0.03 + 3 x $0.015 = $0.075).
    tight = budget(workspace=workspace, period="lifetime", limit_micro=74_999)
    refused = _post(client, {"model": "flux2", "prompt": "a fox"})
    assert refused.status_code == 402, refused.content
    assert fake_upstream.requests == []
    tight.limit_micro = 75_000
    tight.save()
    served = _post(client, {"model": "flux2", "prompt": "a fox"})
    assert served.status_code == 200, served.content
    record = UsageRecord.objects.get(status=200)
    # The fake made 64x48: one megapixel.
    assert (record.images, record.cost_micro, record.provider_cost_micro) == (1, 30_000, 30_000)
    assert record.price_snapshot["rule"] == "per_megapixel"
    assert (record.price_snapshot["size"], record.price_snapshot["megapixels"]) == ("64x48", 1)
    tight.refresh_from_db()
    assert (tight.used_micro, tight.reserved_micro) == (30_000, 0)


def test_a_flux2_call_at_1920x1088_bills_three_megapixels_and_two_references(
    client: APIClient, fake_upstream: FakeUpstream
) -> None:
    _alias(fake_upstream, "bfl", "flux-2-pro", "flux2")
    references = [_data_url(40, 30), _data_url(30, 40)]
    response = _post(
        client,
        {"model": "flux2", "prompt": "a fox", "size": "1920x1088", "input_references": references},
    )
    assert response.status_code == 200, response.content
    (submit,) = [c for c in fake_upstream.requests if c.method == "POST"]
    assert {"input_image", "input_image_2"} <= set(submit.body)
    record = UsageRecord.objects.get()
    # 1920x1088 = 2.09 MP: 3 billed ($0.06), and two references at $0.015 each.
    assert record.cost_micro == 30_000 + 2 * 15_000 + 2 * 15_000
    price = Price.objects.get(provider="bfl", model_pattern="flux-2-pro")
    assert record.price_snapshot == {
        "images": 1,
        "size": "1920x1088",
        "quality": "",
        "tier": "",
        "rule": "per_megapixel",
        "megapixels": 3,
        "first_megapixel_micro": 30_000,
        "extra_megapixel_micro": 15_000,
        "unit_micro": 60_000,
        "input_images": 2,
        "per_input_image_micro": 15_000,
        "price_id": price.pk,
        "model_pattern": "flux-2-pro",
        "multiplier": "1.0000",
    }


def test_a_4k_tier_is_held_for_an_open_size_and_the_image_made_is_what_is_charged(
    client: APIClient, workspace: Workspace, fake_upstream: FakeUpstream
) -> None:
    _alias(fake_upstream, "gemini", "gemini-3-pro-image-preview", "banana")
    tight = budget(workspace=workspace, period="lifetime", limit_micro=239_999)
    assert _post(client, {"model": "banana", "prompt": "a fox"}).status_code == 402
    tight.limit_micro = 240_000
    tight.save()
    served = _post(client, {"model": "banana", "prompt": "a fox"})
    assert served.status_code == 200, served.content
    record = UsageRecord.objects.get(status=200)
    # The fake answered a small image: read from its header, the 1K tier.
    assert record.cost_micro == 134_400
    assert (record.price_snapshot["size"], record.price_snapshot["tier"]) == ("64x64", "1K")
    asked_4k = _post(client, {"model": "banana", "prompt": "a fox", "resolution": "4K"})
    assert asked_4k.status_code == 402  # 240,000 held; 105,600 left


def test_the_record_keeps_the_price_it_was_charged_when_the_price_changes(
    client: APIClient, fake_upstream: FakeUpstream
) -> None:
    _alias(fake_upstream, "xai", "grok-imagine-image", "grok")
    response = client.post(
        "/v1/images/edits",
        {"model": "grok", "prompt": "a hat", "image": _upload()},
        format="multipart",
    )
    assert response.status_code == 200, response.content
    price = Price.objects.get(provider="xai", model_pattern="grok-imagine-image")
    price.per_image_micro, price.per_input_image_micro = 99_000, 9_000
    price.save()
    record = UsageRecord.objects.get()
    assert record.cost_micro == 20_000 + 2_000  # the edit pays for its input image
    assert record.price_snapshot == {
        "images": 1,
        "size": "1024x1024",  # not said by xAI: read from the image
        "quality": "",
        "tier": "",
        "rule": "per_image",
        "unit_micro": 20_000,
        "input_images": 1,
        "per_input_image_micro": 2_000,
        "price_id": price.pk,
        "model_pattern": "grok-imagine-image",
        "multiplier": "1.0000",
    }


def _upload():
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile("a.png", png(64, 64), content_type="image/png")

"""Hostile review of #20 (money and tenant isolation): the hold must cover what the settle can
charge, and the tenant must never see the provider's cost."""

import importlib
import json
from decimal import Decimal

import pytest
from django.apps import apps
from rest_framework.test import APIClient

from billing import pricing
from billing.models import Budget, UsageRecord
from routing import services as routing_services
from routing.providers import http as provider_http
from routing.providers.bfl import on_flux_2_grid
from tenants import services
from tenants.models import Workspace
from tests.billing.conftest import budget
from tests.conftest import ACTOR, UPSTREAM_SECRET, make_alias
from tests.fakes.upstream import FakeUpstream

URL = "/v1/images/generations"
SEEDS = ("0002_seed_list_prices", "0005_seed_more_prices", "0014_seed_price_rules")


@pytest.fixture(autouse=True)
def _seeded(db: None) -> None:
    for migration in SEEDS:
        importlib.import_module(f"billing.migrations.{migration}").seed(apps, None)


@pytest.fixture(autouse=True)
def _fast_polls_and_local_samples(settings) -> None:
    settings.UPSTREAM_POLL_INTERVAL_SECONDS = 0.01
    settings.FETCH_ALLOWED_HOSTS = ["127.0.0.1"]


def _post(client: APIClient, body: dict):
    return client.post(URL, json.dumps(body), content_type="application/json")


# --- 1. FLUX.2: the hold prices the size asked, the settle the (larger) grid size sent -------


def test_flux2_hold_covers_the_grid_size_the_adapter_actually_sends() -> None:
    # 1016x984 = 0.9997 MP: held at 1 MP. The adapter sends the nearest multiples of 16,
    # 1024x992 = 1.016 MP, which BFL makes and bills (and the settle prices) as 2 MP.
    width, height = on_flux_2_grid(1016, 984)
    assert (width, height) == (1024, 992)
    held = pricing.quote("bfl", "flux-2-pro", images=1, size="1016x984", worst_case=True)
    settled = pricing.quote("bfl", "flux-2-pro", images=1, size=f"{width}x{height}")
    assert settled.cost_micro <= held.cost_micro, (held.cost_micro, settled.cost_micro)


def test_flux2_off_grid_request_is_charged_what_it_cost_under_a_tight_budget(
    client: APIClient, workspace: Workspace, fake_upstream: FakeUpstream
) -> None:
    credential = routing_services.credential_create(
        actor=ACTOR, name="bfl", provider="bfl", base_url=fake_upstream.url, secret=UPSTREAM_SECRET
    )
    make_alias("flux2", credential, "flux-2-pro")
    # 1016x984 is 0.9997 MP as asked, but goes out as 1024x992 (1.016 MP: 2 MP billed).
    budget(workspace=workspace, period="lifetime", limit_micro=30_000)  # 1 MP's price
    refused = _post(client, {"model": "flux2", "prompt": "a fox", "size": "1016x984"})
    assert refused.status_code == 402, refused.content  # the hold is for 2 MP
    Budget.objects.filter(workspace=workspace).update(limit_micro=45_000)
    response = _post(client, {"model": "flux2", "prompt": "a fox", "size": "1016x984"})
    assert response.status_code == 200, response.content
    record = UsageRecord.objects.get(status=200)
    # Held at 2 MP, made at 2 MP: charged in full, never capped below what the provider billed.
    assert record.cost_micro == record.provider_cost_micro == 45_000, (
        record.cost_micro,
        record.provider_cost_micro,
    )


# --- 2. gpt-image-2: per-image rows hold, tokens settle; input tokens are never held ---------


def test_gpt_image_2_edit_hold_covers_its_token_settle() -> None:
    # An edit at 1024x1024 / high with 4 input images. The hold is the per-image row
    # (211,000 µUSD = ~7,033 output tokens at $30/M) with no allowance at all for input
    # tokens (no per_input_image_micro on any gpt-image-2 row), so the image tokens the
    # upstream reports for the inputs push the settle past the hold.
    held = pricing.quote(
        "openai",
        "gpt-image-2",
        images=1,
        size="1024x1024",
        quality="high",
        input_images=4,
        worst_case=True,
    )
    usage = {
        "input_tokens": 4 * 1_500 + 40,
        "output_tokens": 7_033,
        "input_tokens_details": {"text_tokens": 40, "image_tokens": 4 * 1_500},
    }
    settled = pricing.quote(
        "openai",
        "gpt-image-2",
        images=1,
        size="1024x1024",
        quality="high",
        input_images=4,
        usage=usage,
    )
    assert settled.snapshot["rule"] == "per_token"
    assert settled.cost_micro <= held.cost_micro, (held.cost_micro, settled.cost_micro)


# --- 3. the tenant's answer carries the provider's own cost fields ---------------------------


def test_a_marked_up_tenant_never_sees_openrouters_provider_cost_in_the_answer(
    client: APIClient, workspace: Workspace, fake_upstream: FakeUpstream, monkeypatch
) -> None:
    services.workspace_set_price_multiplier(
        actor=ACTOR, workspace=workspace, multiplier=Decimal("1.25")
    )
    credential = routing_services.credential_create(
        actor=ACTOR,
        name="router",
        provider="openrouter",
        base_url=fake_upstream.url,
        secret=UPSTREAM_SECRET,
    )
    alias = routing_services.alias_create(actor=ACTOR, name="router-images")
    routing_services.deployment_create(
        actor=ACTOR,
        alias=alias,
        credential=credential,
        upstream_model="google/gemini-2.5-flash-image",
        options={"api": "images"},
    )
    real = provider_http.post_json

    def with_cost_details(*args, **kwargs):
        # OpenRouter's usage accounting: the upstream's own cost next to `cost`.
        body = real(*args, **kwargs)
        body["usage"] = {**body["usage"], "cost_details": {"upstream_inference_cost": 0.039}}
        return body

    monkeypatch.setattr(provider_http, "post_json", with_cost_details)
    response = _post(client, {"model": "router-images", "prompt": "a fox"})
    assert response.status_code == 200, response.content
    record = UsageRecord.objects.get()
    assert record.cost_micro != record.provider_cost_micro  # marked up
    usage = response.json()["usage"]
    assert usage["cost"] == f"{Decimal(record.cost_micro) / 1_000_000:.6f}"
    # The only cost the tenant may see is its charged one.
    assert set(usage) <= {"cost", "input_tokens", "output_tokens", "total_tokens"}, usage

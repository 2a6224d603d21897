"""Billing fixtures: a priced model on the fake upstream, and budgets."""

import pytest

from billing.models import Budget, Price
from routing.models import ModelAlias, ProviderCredential
from tests.conftest import make_alias

PRICE_MICRO = 10_000  # one image of the priced model costs one cent


@pytest.fixture
def priced_alias(openai_credential: ProviderCredential) -> ModelAlias:
    """`priced` → openai:priced-model, 10,000 µUSD per image, no token price."""
    Price.objects.create(
        provider="openai", model_pattern="priced-model", per_image_micro=PRICE_MICRO
    )
    return make_alias("priced", openai_credential, "priced-model")


def budget(**fields: object) -> Budget:
    scope = "key" if fields.get("key") else "team" if fields.get("team") else "workspace"
    return Budget.objects.create(scope=scope, **fields)

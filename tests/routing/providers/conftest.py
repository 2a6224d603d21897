"""Provider tests: an alias on a credential of the provider under test, answered by the fake
upstream, and the official SDK pointed at the live gateway."""

from collections.abc import Callable

import pytest
from openai import OpenAI

from billing.models import UsageRecord
from routing import services
from routing.models import ModelAlias
from tenants.services import CreatedKey
from tests.conftest import ACTOR, UPSTREAM_SECRET, make_alias
from tests.fakes.upstream import FakeUpstream

AliasMaker = Callable[..., ModelAlias]


@pytest.fixture(autouse=True)
def _prices(list_prices: None) -> None:
    """Provider tests price with the seeded list prices."""


@pytest.fixture
def alias_on(fake_upstream: FakeUpstream) -> AliasMaker:
    """alias_on("gemini", "gemini-2.5-flash-image", name="g") → an alias served by the fake."""

    def make(
        provider: str, model: str, name: str | None = None, **credential: object
    ) -> ModelAlias:
        cred = services.credential_create(
            actor=ACTOR,
            name=f"{provider}-{abs(hash(model)) % 10_000}",
            provider=provider,
            base_url=fake_upstream.url,
            secret=UPSTREAM_SECRET,
            **credential,  # type: ignore[arg-type]
        )
        return make_alias(name or model, cred, model)

    return make


@pytest.fixture
def sdk(live_server, api_key: CreatedKey) -> OpenAI:
    return OpenAI(
        base_url=f"{live_server.url}/v1", api_key=api_key.secret, max_retries=0, timeout=60
    )


def the_record() -> UsageRecord:
    """The request's usage record, once written (the server writes it after the response)."""
    from tests.support import wait_for

    wait_for(lambda: UsageRecord.objects.exists(), what="the usage record")
    return UsageRecord.objects.get()

"""Fixtures chain workspace → team → key → client; an outsider lives in another workspace."""

from collections.abc import Iterator

import pytest
import redis
from django.conf import settings
from django.core.cache import cache
from rest_framework.test import APIClient

from aperture import load_shedding
from billing import leases
from routing import health
from routing import services as routing_services
from routing.models import ModelAlias, Provider, ProviderCredential
from tenants import key_auth, services
from tenants.models import Team, Workspace
from tenants.services import CreatedKey
from tests.factories import TeamFactory, WorkspaceFactory
from tests.fakes.upstream import FakeUpstream
from tests.openapi_check import SchemaCheckedClient, checked_client_for
from tests.support import client_for

ACTOR = "system:tests"


def _clear_shared_state() -> None:
    """Forget this test process's cached and rate-limit state, never another worker's.

    `cache.clear()` on Redis would FLUSHDB under the feet of parallel test workers.
    """
    if not settings.REDIS_URL:
        cache.clear()
        return
    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        keys = list(client.scan_iter(match=f"*{settings.CACHE_KEY_PREFIX}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture(autouse=True)
def _clear_cache() -> Iterator[None]:
    _clear_shared_state()
    key_auth._touched_here.clear()  # keyed by row id, which SQLite reuses between tests
    health.forget_cached()  # deployment health this process remembers, by row id too
    # A streamed answer a test does not read to its end is never closed (a WSGI server always
    # closes it): its request would stay counted in flight in this process.
    load_shedding.GATE.in_flight = load_shedding.GATE.peak = 0
    # Budget slices this process leased live in a test's transaction, rolled back after it;
    # tests run the keeper's round themselves (another thread cannot see their rows).
    leases.KEEPER_ENABLED = False
    leases.forget()
    yield
    _clear_shared_state()


@pytest.fixture
def workspace(db: None) -> Workspace:
    return WorkspaceFactory.create(slug="acme", name="Acme")


@pytest.fixture
def team(workspace: Workspace) -> Team:
    return TeamFactory.create(workspace=workspace, slug="design", name="Design")


@pytest.fixture
def api_key(team: Team) -> CreatedKey:
    return services.key_create(actor=ACTOR, team=team, name="app key")


@pytest.fixture
def client(api_key: CreatedKey) -> APIClient:
    return client_for(api_key.secret)


@pytest.fixture
def admin_key(team: Team) -> CreatedKey:
    """A `manage:workspace` key of acme (in the design team)."""
    return services.key_create(
        actor=ACTOR, team=team, name="workspace admin", scopes=["manage:workspace"]
    )


@pytest.fixture
def admin(admin_key: CreatedKey) -> SchemaCheckedClient:
    return checked_client_for(admin_key.secret)


@pytest.fixture
def manager_key(team: Team) -> CreatedKey:
    """A `manage:team` key of acme's design team."""
    return services.key_create(actor=ACTOR, team=team, name="design lead", scopes=["manage:team"])


@pytest.fixture
def manager(manager_key: CreatedKey) -> SchemaCheckedClient:
    return checked_client_for(manager_key.secret)


@pytest.fixture
def other_team(workspace: Workspace) -> Team:
    """A second team of acme, which a design `manage:team` key must not reach."""
    return TeamFactory.create(workspace=workspace, slug="research", name="Research")


@pytest.fixture
def outsider_admin(db: None) -> SchemaCheckedClient:
    """A `manage:workspace` key of another workspace (globex)."""
    other = TeamFactory.create(
        workspace=WorkspaceFactory.create(slug="initech", name="Initech"), slug="it"
    )
    created = services.key_create(
        actor=ACTOR, team=other, name="initech admin", scopes=["manage:workspace"]
    )
    return checked_client_for(created.secret)


@pytest.fixture
def outsider_key(db: None) -> CreatedKey:
    other = TeamFactory.create(
        workspace=WorkspaceFactory.create(slug="globex", name="Globex"), slug="ops"
    )
    return services.key_create(actor=ACTOR, team=other, name="outsider")


@pytest.fixture
def outsider(outsider_key: CreatedKey) -> APIClient:
    return client_for(outsider_key.secret)


@pytest.fixture
def local_credential(db: None) -> ProviderCredential:
    # Renders on this machine at no cost to anyone: the operator marks it free (a model
    # without a price is otherwise refused).
    return routing_services.credential_create(
        actor=ACTOR, name="local", provider=Provider.LOCAL, secret="", free=True
    )


@pytest.fixture
def platform_alias(local_credential: ProviderCredential) -> ModelAlias:
    alias = routing_services.alias_create(actor=ACTOR, name="demo-image")
    routing_services.deployment_create(
        actor=ACTOR, alias=alias, credential=local_credential, upstream_model="local-image"
    )
    return alias


UPSTREAM_SECRET = "sk-fake-upstream-0123456789"


@pytest.fixture
def fake_upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream(expected_secret=UPSTREAM_SECRET) as fake:
        yield fake


@pytest.fixture
def openai_credential(fake_upstream: FakeUpstream, db: None) -> ProviderCredential:
    return routing_services.credential_create(
        actor=ACTOR,
        name="openai-main",
        provider=Provider.OPENAI,
        base_url=fake_upstream.url,
        secret=UPSTREAM_SECRET,
    )


@pytest.fixture
def azure_credential(fake_upstream: FakeUpstream, db: None) -> ProviderCredential:
    return routing_services.credential_create(
        actor=ACTOR,
        name="azure-east",
        provider=Provider.AZURE,
        base_url=fake_upstream.url,
        secret=UPSTREAM_SECRET,
        api_version="2025-04-01-preview",
    )


def make_alias(
    name: str, credential: ProviderCredential, upstream_model: str, **deployment: object
) -> ModelAlias:
    alias = routing_services.alias_create(actor=ACTOR, name=name)
    routing_services.deployment_create(
        actor=ACTOR,
        alias=alias,
        credential=credential,
        upstream_model=upstream_model,
        **deployment,  # type: ignore[arg-type]
    )
    return alias


@pytest.fixture
def upstream_aliases(
    openai_credential: ProviderCredential,
    azure_credential: ProviderCredential,
    platform_alias: ModelAlias,
) -> dict[str, ModelAlias]:
    """Platform aliases on each kind of upstream, all answered by the fake upstream."""
    return {
        "demo-image": platform_alias,
        "image-openai": make_alias("image-openai", openai_credential, "gpt-image-1"),
        "image-dalle3": make_alias("image-dalle3", openai_credential, "dall-e-3"),
        "image-dalle2": make_alias("image-dalle2", openai_credential, "dall-e-2"),
        "image-azure": make_alias("image-azure", azure_credential, "gpt-image-1"),
    }

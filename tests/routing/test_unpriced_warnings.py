"""Deployments that would be refused as `model_not_priced`: which they are, and the admin's
warning about them until each gets a price or is marked free."""

from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from billing import services as billing_services
from routing import selectors, services
from routing.models import Deployment, ModelAlias, Provider, ProviderCredential
from tenants.models import AuditEvent

ACTOR = "system:tests"
WARNING = (
    "1 deployment(s) have no price and are refused (model_not_priced): "
    "alias image-prod (platform) → credential openai-main (openai): model GPT-IMAGE-1. "
    "Add a price (Billing → Prices) or mark the deployment or its credential free."
)


def _credential(name: str, *, free: bool = False) -> ProviderCredential:
    return services.credential_create(
        actor=ACTOR,
        name=name,
        provider=Provider.OPENAI,
        base_url="https://api.openai.com",
        secret="sk-" + "x" * 20,
        free=free,
    )


def _alias(name: str, credential: ProviderCredential, model: str, **kw: Any) -> ModelAlias:
    alias = services.alias_create(actor=ACTOR, name=name)
    services.deployment_create(
        actor=ACTOR, alias=alias, credential=credential, upstream_model=model, **kw
    )
    return alias


@pytest.fixture
def unpriced(db: None) -> Deployment:
    """An unpriced deployment (ids match by case: only `gpt-image-1` has a price) beside a
    priced one on the same credential."""
    credential = _credential("openai-main")
    _alias("image-priced", credential, "gpt-image-1")
    return _alias("image-prod", credential, "GPT-IMAGE-1").deployments.get()


def _names(deployments: list[Deployment]) -> list[str]:
    return [str(d) for d in deployments]


def test_only_reachable_unpriced_deployments_that_are_not_free_would_be_refused(
    unpriced: Deployment,
    django_assert_max_num_queries: Any,
) -> None:
    openai = unpriced.credential
    lab = _credential("lab", free=True)
    _alias("house", openai, "house-model", free=True)
    _alias("lab-image", lab, "lab-model")
    _alias("off", openai, "off-model", enabled=False)
    services.alias_update(
        actor=ACTOR, alias=_alias("retired", openai, "retired-model"), fields={"enabled": False}
    )
    closed = _credential("closed")
    services.credential_update(actor=ACTOR, credential=closed, fields={"enabled": False})
    _alias("closed-image", closed, "closed-model")
    second = _alias("image-second", openai, "second-model").deployments.get()

    expected = [str(unpriced), str(second)]  # by scope, then alias name
    with django_assert_max_num_queries(2):  # the deployments; openai's prices
        refused = selectors.unpriced_deployments()
        assert _names(refused) == expected
        assert [d.credential.name for d in refused] == ["openai-main", "openai-main"]

    billing_services.price_set(
        actor=ACTOR,
        provider="openai",
        model_pattern="second-*",
        size="",
        quality="",
        amounts={"per_image_micro": 40_000},
    )
    assert _names(selectors.unpriced_deployments()) == [str(unpriced)]


def _changelists() -> list[str]:
    return [
        reverse("admin:routing_modelalias_changelist"),
        reverse("admin:routing_providercredential_changelist"),
        reverse("admin:routing_deployment_changelist"),
    ]


def test_the_admin_lists_warn_about_an_unpriced_deployment_until_it_is_marked_free(
    admin_client: Client, unpriced: Deployment
) -> None:
    for url in _changelists():
        page = admin_client.get(url).content.decode()
        assert page.count(WARNING) == 1, url

    alias = unpriced.alias
    form = {
        "name": alias.name,
        "description": "",
        "enabled": "on",
        "strategy": "priority",
        "max_attempts": "2",
        "deployments-TOTAL_FORMS": "1",
        "deployments-INITIAL_FORMS": "1",
        "deployments-0-id": unpriced.pk,
        "deployments-0-alias": alias.pk,
        "deployments-0-credential": unpriced.credential_id,
        "deployments-0-upstream_model": "GPT-IMAGE-1",
        "deployments-0-priority": "0",
        "deployments-0-weight": "1",
        "deployments-0-timeout_seconds": "120",
        "deployments-0-connect_timeout_seconds": "3",
        "deployments-0-options": "{}",
        "deployments-0-free": "on",
        "deployments-0-enabled": "on",
    }
    response = admin_client.post(
        reverse("admin:routing_modelalias_change", args=[alias.pk]), form, follow=True
    )
    assert response.redirect_chain == [(reverse("admin:routing_modelalias_changelist"), 302)]
    assert WARNING not in response.content.decode()
    unpriced.refresh_from_db()
    assert unpriced.free
    assert AuditEvent.objects.filter(event="deployment.saved", target_id=unpriced.public_id)
    for url in _changelists():
        assert WARNING not in admin_client.get(url).content.decode(), url


def test_saving_a_credential_warns_once_wherever_it_leads_until_the_credential_is_free(
    admin_client: Client, unpriced: Deployment
) -> None:
    credential = unpriced.credential
    change_url = reverse("admin:routing_providercredential_change", args=[credential.pk])
    form = {
        "name": credential.name,
        "provider": "openai",
        "base_url": "https://api.openai.com",
        "secret": "",
        "api_version": "",
        "extra_headers": "{}",
        "options": "{}",
        "passthrough_path_prefixes": "[]",
        "enabled": "on",
    }
    stay = admin_client.post(change_url, {**form, "_continue": "1"}, follow=True)
    assert stay.redirect_chain == [(change_url, 302)]
    assert stay.content.decode().count(WARNING) == 1
    back = admin_client.post(change_url, form, follow=True)
    assert back.redirect_chain == [(reverse("admin:routing_providercredential_changelist"), 302)]
    assert back.content.decode().count(WARNING) == 1

    free = admin_client.post(change_url, {**form, "free": "on", "_continue": "1"}, follow=True)
    assert WARNING not in free.content.decode()
    credential.refresh_from_db()
    assert credential.free
    updated = AuditEvent.objects.filter(event="credential.updated", target_id=credential.public_id)
    assert "free" in updated.order_by("-id").values_list("data", flat=True)[0]["fields"]
    for url in _changelists():
        assert WARNING not in admin_client.get(url).content.decode(), url


def test_a_new_credential_can_be_marked_free_in_the_admin(admin_client: Client) -> None:
    response = admin_client.post(
        reverse("admin:routing_providercredential_add"),
        {
            "name": "lab",
            "provider": "openai",
            "base_url": "https://api.openai.com",
            "secret": "sk-" + "y" * 20,
            "api_version": "",
            "extra_headers": "{}",
            "options": "{}",
            "passthrough_path_prefixes": "[]",
            "free": "on",
            "enabled": "on",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    assert ProviderCredential.objects.get(name="lab").free

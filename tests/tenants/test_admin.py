"""The operator admin: pages render, secrets are shown once or masked, actions use services."""

import re

import pytest
from django.contrib import admin
from django.test import Client
from django.urls import reverse

from routing.models import Deployment, ModelAlias, ProviderCredential
from tenants.keys import hash_secret
from tenants.models import ApiKey, AuditEvent, Team
from tenants.services import CreatedKey
from tests.support import client_for

SECRET_IN_PAGE = re.compile(r"apk_[A-Za-z0-9]{12}_[A-Za-z0-9]{43}")


@pytest.fixture
def populated(api_key: CreatedKey, platform_alias: ModelAlias, outsider_key: CreatedKey) -> None:
    """One row of every registered model (audit events come from the services)."""


def test_every_changelist_add_and_change_page_renders_for_a_superuser(
    admin_client: Client, populated: None
) -> None:
    checked = []
    for model, model_admin in admin.site._registry.items():
        info = (model._meta.app_label, model._meta.model_name)
        changelist = admin_client.get(reverse("admin:{}_{}_changelist".format(*info)))
        assert changelist.status_code == 200, info
        if model_admin.has_add_permission(changelist.wsgi_request):
            assert admin_client.get(reverse("admin:{}_{}_add".format(*info))).status_code == 200, (
                info
            )
        obj = model._default_manager.first()
        if obj is not None:
            change = admin_client.get(reverse("admin:{}_{}_change".format(*info), args=[obj.pk]))
            assert change.status_code == 200, info
        checked.append(model)
    assert {ApiKey, Team, ProviderCredential, ModelAlias, Deployment, AuditEvent} <= set(checked)


def test_a_new_keys_secret_is_shown_exactly_once(admin_client: Client, team: Team) -> None:
    response = admin_client.post(
        reverse("admin:tenants_apikey_add"),
        {"team": team.pk, "name": "from admin", "scopes": ["images"], "allowed_aliases": ""},
    )
    assert response.status_code == 200
    secrets_shown = SECRET_IN_PAGE.findall(response.content.decode())
    assert len(set(secrets_shown)) == 1
    secret = secrets_shown[0]
    key = ApiKey.objects.get(name="from admin")
    assert key.secret_hash == hash_secret(secret)
    assert key.created_by == "operator:admin"
    assert client_for(secret).get("/v1/models").status_code == 200
    for url in (
        reverse("admin:tenants_apikey_change", args=[key.pk]),
        reverse("admin:tenants_apikey_changelist"),
    ):
        assert secret not in admin_client.get(url).content.decode()


def test_the_revoke_action_refuses_the_key_on_the_next_request(
    admin_client: Client, api_key: CreatedKey
) -> None:
    client = client_for(api_key.secret)
    assert client.get("/v1/models").status_code == 200
    response = admin_client.post(
        reverse("admin:tenants_apikey_changelist"),
        {"action": "revoke", "_selected_action": [api_key.key.pk]},
    )
    assert response.status_code == 302
    assert client.get("/v1/models").status_code == 401
    assert AuditEvent.objects.filter(event="key.revoked", actor="operator:admin").count() == 1


def test_credential_secrets_are_write_only_and_masked(admin_client: Client) -> None:
    plaintext = "sk-admin-secret-ABCD1234"
    response = admin_client.post(
        reverse("admin:routing_providercredential_add"),
        {
            "name": "openai-main",
            "provider": "openai",
            "base_url": "https://api.openai.com",
            "secret": plaintext,
            "api_version": "",
            "extra_headers": "{}",
            "passthrough_path_prefixes": "[]",
            "enabled": "on",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    credential = ProviderCredential.objects.get(name="openai-main")
    assert credential.secret() == plaintext
    change_url = reverse("admin:routing_providercredential_change", args=[credential.pk])
    for url in (change_url, reverse("admin:routing_providercredential_changelist")):
        page = admin_client.get(url).content.decode()
        assert plaintext not in page
        assert "••••1234" in page
    # Saving without a secret keeps the stored one.
    response = admin_client.post(
        change_url,
        {
            "name": "openai-main",
            "provider": "openai",
            "base_url": "https://example.openai.test",
            "secret": "",
            "api_version": "",
            "extra_headers": "{}",
            "passthrough_path_prefixes": "[]",
            "enabled": "on",
        },
    )
    assert response.status_code == 302
    credential.refresh_from_db()
    assert credential.secret() == plaintext
    assert credential.base_url == "https://example.openai.test"
    assert list(
        AuditEvent.objects.filter(target_id=credential.public_id).values_list("event", flat=True)
    ) == ["credential.updated", "credential.created"]


def test_a_reserved_credential_name_is_refused_in_the_admin_form(admin_client: Client) -> None:
    response = admin_client.post(
        reverse("admin:routing_providercredential_add"),
        {
            "name": "admin",
            "provider": "openai",
            "base_url": "https://api.openai.com",
            "secret": "x" * 20,
            "extra_headers": "{}",
            "passthrough_path_prefixes": "[]",
        },
    )
    assert response.status_code == 200
    assert "is a route of the gateway itself" in response.content.decode()
    assert not ProviderCredential.objects.exists()


def test_a_platform_alias_cannot_take_a_workspace_credential_inline(
    admin_client: Client, workspace: object
) -> None:
    from routing import services

    credential = services.credential_create(
        actor="t",
        name="ws-openai",
        provider="openai",
        secret="sk-" + "x" * 20,
        workspace=workspace,  # type: ignore[arg-type]
    )
    response = admin_client.post(
        reverse("admin:routing_modelalias_add"),
        {
            "name": "image",
            "description": "",
            "enabled": "on",
            "deployments-TOTAL_FORMS": "1",
            "deployments-INITIAL_FORMS": "0",
            "deployments-0-credential": credential.pk,
            "deployments-0-upstream_model": "gpt-image-1",
            "deployments-0-priority": "0",
            "deployments-0-weight": "1",
            "deployments-0-timeout_seconds": "120",
            "deployments-0-enabled": "on",
        },
    )
    assert response.status_code == 200
    assert "belongs to another workspace" in response.content.decode()
    assert not ModelAlias.objects.filter(name="image").exists()


def test_the_admin_lists_run_a_bounded_number_of_queries(
    admin_client: Client,
    populated: None,
    django_assert_max_num_queries,
) -> None:
    for name in (
        "tenants_apikey",
        "routing_deployment",
        "routing_providercredential",
        "tenants_auditevent",
    ):
        with django_assert_max_num_queries(12):
            assert admin_client.get(reverse(f"admin:{name}_changelist")).status_code == 200


def test_passthrough_and_its_path_prefixes_are_edited_in_the_admin(admin_client: Client) -> None:
    form = {
        "name": "gemini",
        "provider": "gemini",
        "base_url": "",
        "secret": "g" * 20,
        "api_version": "",
        "extra_headers": "{}",
        "passthrough_enabled": "on",
        "passthrough_path_prefixes": '["v1beta/models/"]',
        "enabled": "on",
    }
    add_url = reverse("admin:routing_providercredential_add")
    refused = admin_client.post(add_url, form)
    assert refused.status_code == 200
    assert "must be an absolute path" in refused.content.decode()
    assert not ProviderCredential.objects.exists()

    saved = admin_client.post(add_url, {**form, "passthrough_path_prefixes": '["/v1beta/"]'})
    assert saved.status_code == 302, saved.content.decode()[:2000]
    credential = ProviderCredential.objects.get(name="gemini")
    assert (credential.passthrough_enabled, credential.passthrough_path_prefixes) == (
        True,
        ["/v1beta/"],
    )
    change_url = reverse("admin:routing_providercredential_change", args=[credential.pk])
    closed = {**form, "secret": "", "passthrough_path_prefixes": "[]"}
    del closed["passthrough_enabled"]
    assert admin_client.post(change_url, closed).status_code == 302
    credential.refresh_from_db()
    assert (credential.passthrough_enabled, credential.passthrough_path_prefixes) == (False, [])
    assert AuditEvent.objects.filter(
        target_id=credential.public_id, event="credential.updated"
    ).exists()


def test_a_new_credential_gets_its_providers_default_root(admin_client: Client) -> None:
    add_url = reverse("admin:routing_providercredential_add")
    page = admin_client.get(add_url).content.decode()
    assert "generativelanguage.googleapis.com" in page  # the prefill map for the script
    assert "routing/credential_defaults.js" in page
    form = {
        "name": "gemini",
        "provider": "gemini",
        "base_url": "",
        "secret": "g" * 20,
        "api_version": "",
        "extra_headers": "{}",
        "options": "{}",
        "passthrough_path_prefixes": "[]",
        "enabled": "on",
    }
    assert admin_client.post(add_url, form).status_code == 302
    saved = ProviderCredential.objects.get(name="gemini")
    assert saved.base_url == "https://generativelanguage.googleapis.com"
    azure = admin_client.post(add_url, {**form, "name": "azure", "provider": "azure"})
    assert azure.status_code == 200
    assert "The azure provider has no default root" in azure.content.decode()

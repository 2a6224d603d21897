import io

import pytest
from cryptography.fernet import Fernet
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.db import IntegrityError, connection, transaction
from django.test import override_settings

from routing import services
from routing.models import ModelAlias, Provider, ProviderCredential
from tenants.models import AuditEvent, Workspace

ACTOR = "system:tests"
PLAINTEXT = "sk-live-0123456789abcdefWXYZ"


def _raw_row(credential: ProviderCredential) -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM routing_providercredential WHERE id = %s", [credential.pk])
        return " ".join(str(value) for value in cursor.fetchone())


def _openai(workspace: Workspace | None = None, name: str = "openai") -> ProviderCredential:
    return services.credential_create(
        actor=ACTOR,
        name=name,
        provider=Provider.OPENAI,
        base_url="https://api.openai.com/",
        secret=PLAINTEXT,
        workspace=workspace,
    )


@pytest.mark.django_db
def test_the_stored_row_never_contains_the_plaintext_secret() -> None:
    credential = _openai()
    raw = _raw_row(credential)
    assert PLAINTEXT not in raw
    assert PLAINTEXT[:-4] not in raw
    assert credential.masked_secret == "••••WXYZ"
    assert ProviderCredential.objects.get(pk=credential.pk).secret() == PLAINTEXT
    assert credential.base_url == "https://api.openai.com"


@pytest.mark.django_db
def test_reencryption_with_a_new_first_key_keeps_every_secret_readable(settings) -> None:
    old_key = settings.ENCRYPTION_KEYS[0]
    first = _openai(name="one")
    second = _openai(name="two")
    before = _raw_row(first)
    new_key = Fernet.generate_key().decode()
    with override_settings(ENCRYPTION_KEYS=[new_key, old_key]):
        out = io.StringIO()
        call_command("reencrypt_secrets", stdout=out)
    assert out.getvalue().strip().splitlines() == [
        "Re-encrypted 2 credential secret(s).",
        "Re-encrypted 0 workspace webhook secret(s).",
    ]
    assert _raw_row(first) != before
    with override_settings(ENCRYPTION_KEYS=[new_key]):  # the old key is retired
        for credential in (first, second):
            assert ProviderCredential.objects.get(pk=credential.pk).secret() == PLAINTEXT
    assert AuditEvent.objects.filter(event="credential.reencrypted", data={"count": 2}).exists()


@pytest.mark.django_db
def test_rotating_a_secret_replaces_it_and_is_audited() -> None:
    credential = _openai()
    services.credential_rotate_secret(
        actor=ACTOR, credential=credential, secret="sk-new-secret-9999"
    )
    assert ProviderCredential.objects.get(pk=credential.pk).secret() == "sk-new-secret-9999"
    assert AuditEvent.objects.filter(
        event="credential.rotated", target_id=credential.public_id
    ).exists()


@pytest.mark.django_db
@pytest.mark.parametrize("name", ["v1", "api", "admin", "healthz", "readyz", "metrics", "static"])
def test_a_credential_named_like_a_gateway_route_is_refused(name: str) -> None:
    with pytest.raises(ValidationError):
        _openai(name=name)
    assert not ProviderCredential.objects.exists()


@pytest.mark.django_db
def test_names_are_unique_per_scope_and_a_workspace_may_reuse_a_platform_name(
    workspace: Workspace,
) -> None:
    _openai()
    _openai(workspace=workspace)  # shadows the platform one: allowed
    with pytest.raises(IntegrityError), transaction.atomic():
        ProviderCredential.objects.create(name="openai", provider=Provider.OPENAI)
    with pytest.raises(IntegrityError), transaction.atomic():
        ProviderCredential.objects.create(
            name="openai", provider=Provider.OPENAI, workspace=workspace
        )


@pytest.mark.django_db
def test_a_workspace_alias_may_shadow_a_platform_alias_but_not_repeat_itself(
    workspace: Workspace,
) -> None:
    services.alias_create(actor=ACTOR, name="image")
    services.alias_create(actor=ACTOR, name="image", workspace=workspace)
    with pytest.raises(IntegrityError), transaction.atomic():
        ModelAlias.objects.create(name="image", workspace=workspace)


@pytest.mark.django_db
def test_a_platform_alias_cannot_deploy_on_a_workspace_credential(workspace: Workspace) -> None:
    credential = _openai(workspace=workspace)
    alias = services.alias_create(actor=ACTOR, name="image")
    with pytest.raises(ValidationError):
        services.deployment_create(
            actor=ACTOR, alias=alias, credential=credential, upstream_model="gpt-image-1"
        )
    other = Workspace.objects.create(slug="other", name="Other")
    foreign_alias = services.alias_create(actor=ACTOR, name="image", workspace=other)
    with pytest.raises(ValidationError):
        services.deployment_create(
            actor=ACTOR, alias=foreign_alias, credential=credential, upstream_model="gpt-image-1"
        )

"""Bring-your-own-key: credentials a workspace adds for itself through the management API.

A tenant's base URL is hostile input: it must be https (http only for an allowlisted host),
carry no user info, and name a host that resolves only to public addresses unless an
operator allowlists it (APERTURE_FETCH_ALLOWED_HOSTS). The gateway's own calls on such a
credential are checked again when they connect (aperture/outbound.py).
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction

from aperture.errors import Conflict
from aperture.outbound import public_url_problem
from routing import services
from routing.models import Provider, ProviderCredential
from routing.providers.auth import auth_for
from tenants.models import Workspace

BYOK_PROVIDERS = sorted(p for p in Provider.values if p != Provider.LOCAL)


def _invalid(message: str) -> ValidationError:
    return ValidationError({"base_url": message})


def check_base_url(provider: str, base_url: str) -> str:
    """The provider root to store (its default if empty), or a 400 naming the problem."""
    url = (base_url or auth_for(provider).default_base_url).rstrip("/")
    if not url:
        raise _invalid(f"A {provider} credential needs a base_url (the resource's endpoint).")
    problem = public_url_problem(url, query_allowed=False)
    if problem is not None:
        raise _invalid(problem)
    return url


def _check_name(workspace: Workspace, name: str) -> None:
    services.check_credential_name(name)
    if ProviderCredential.objects.filter(workspace=workspace, name=name).exists():
        raise Conflict(f"The workspace already has a credential '{name}'.", param="name")


@transaction.atomic
def workspace_credential_create(
    *,
    actor: str,
    workspace: Workspace,
    name: str,
    provider: str,
    secret: str,
    base_url: str = "",
    api_version: str = "",
    options: dict[str, Any] | None = None,
) -> ProviderCredential:
    if provider not in BYOK_PROVIDERS:
        raise ValidationError({"provider": f"Must be one of {BYOK_PROVIDERS}."})
    _check_name(workspace, name)
    if provider == Provider.AZURE and not api_version:
        raise ValidationError({"api_version": "An Azure credential needs an api_version."})
    return services.credential_create(
        actor=actor,
        workspace=workspace,
        name=name,
        provider=provider,
        secret=secret,
        base_url=check_base_url(provider, base_url),
        api_version=api_version,
        options=options or {},
    )


@transaction.atomic
def workspace_credential_delete(*, actor: str, credential: ProviderCredential) -> None:
    """Delete a credential no alias uses (409 naming the aliases that still do)."""
    in_use = sorted(set(credential.deployments.values_list("alias__name", flat=True)))
    if in_use:
        raise Conflict(
            f"The aliases {in_use} still use this credential; delete them or their "
            "deployments first.",
            code="credential_in_use",
        )
    guarding = sorted(credential.guardrails.values_list("name", flat=True))
    if guarding:
        raise Conflict(
            f"The guardrail policies {guarding} still use this credential; delete them or "
            "give them another credential first.",
            code="credential_in_use",
        )
    services.credential_delete(actor=actor, credential=credential)

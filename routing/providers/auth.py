"""How each provider kind is reached: its default root URL and how its credential is sent.

Each adapter declares its `ProviderAuth` (routing/providers/base.py); these functions read
that declaration, so that a provider's credential is injected the same way whichever path a
request takes, adapter or passthrough (docs/providers.md §0).
"""

from __future__ import annotations

from dataclasses import dataclass

from aperture.errors import UpstreamError

BEARER = "Bearer {secret}"


@dataclass(frozen=True)
class ProviderAuth:
    """The header that carries the credential, and how its value is written."""

    header: str
    template: str = "{secret}"
    # The provider's root (docs/architecture.md §3): adapters and passthrough append the
    # native path.
    default_base_url: str = ""

    def headers(self, secret: str) -> dict[str, str]:
        return {self.header: self.template.format(secret=secret)} if secret else {}


def auth_for(provider: str) -> ProviderAuth:
    """The provider's declared auth; OpenAI's for a provider without an adapter."""
    # Looked up when called: the registry imports the adapters, which import this module.
    from routing.providers.registry import AUTH

    return AUTH.get(provider) or AUTH["openai"]


def credential_headers(provider: str, secret: str) -> dict[str, str]:
    """The header(s) that authenticate the gateway to `provider` with `secret`."""
    return auth_for(provider).headers(secret)


def base_url_for(provider: str, configured: str) -> str:
    """The credential's base URL, or the provider's default root; 502 if there is neither
    (the operator's configuration, not the caller's request, is at fault)."""
    base = (configured or auth_for(provider).default_base_url).rstrip("/")
    if not base:
        raise UpstreamError(
            f"The {provider} credential has no base URL; an operator must set one.",
            code="credential_misconfigured",
        )
    return base

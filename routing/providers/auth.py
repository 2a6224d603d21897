"""How each provider kind is reached: its default root URL and how its credential is sent.

One table for the adapters and the passthrough route, so that a provider's credential is
injected the same way whichever path a request takes (providers.md §0).
"""

from __future__ import annotations

from dataclasses import dataclass

from aperture.errors import UpstreamError


@dataclass(frozen=True)
class ProviderAuth:
    """The header that carries the credential, and how its value is written."""

    header: str
    template: str = "{secret}"
    # The provider's root (DESIGN §3): adapters and passthrough append the native path.
    default_base_url: str = ""

    def headers(self, secret: str) -> dict[str, str]:
        return {self.header: self.template.format(secret=secret)} if secret else {}


_BEARER = "Bearer {secret}"

AUTH: dict[str, ProviderAuth] = {
    "local": ProviderAuth(header="Authorization", template=_BEARER),
    "openai": ProviderAuth("Authorization", _BEARER, "https://api.openai.com"),
    # Azure has one endpoint per resource: there is no default root.
    "azure": ProviderAuth("api-key"),
    "gemini": ProviderAuth(
        "x-goog-api-key", default_base_url="https://generativelanguage.googleapis.com"
    ),
    "seedream": ProviderAuth("Authorization", _BEARER, "https://ark.cn-beijing.volces.com"),
    "xai": ProviderAuth("Authorization", _BEARER, "https://api.x.ai"),
    "openrouter": ProviderAuth("Authorization", _BEARER, "https://openrouter.ai"),
    "stability": ProviderAuth("Authorization", _BEARER, "https://api.stability.ai"),
    "bfl": ProviderAuth("x-key", default_base_url="https://api.bfl.ai"),
    "replicate": ProviderAuth("Authorization", _BEARER, "https://api.replicate.com"),
    # Mainland root; the international one is https://api.z.ai (same paths).
    "zai": ProviderAuth("Authorization", _BEARER, "https://open.bigmodel.cn"),
}


def auth_for(provider: str) -> ProviderAuth:
    return AUTH.get(provider, AUTH["openai"])


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

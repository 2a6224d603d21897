"""Provider name → adapter, and the tables derived from what each adapter declares.

A provider without an adapter cannot serve inference routes. Adding a provider means adding
its module (with its facts declared on the adapter class) to ADAPTERS, its tests and its
price seed; nothing here names a provider.
"""

from __future__ import annotations

from aperture.errors import Unsupported
from routing.providers.auth import ProviderAuth
from routing.providers.azure import AzureProvider
from routing.providers.base import ErrorShape, ImageRoute, ProviderAdapter, UpstreamErrorBody
from routing.providers.bfl import BFLProvider
from routing.providers.gemini import GeminiProvider
from routing.providers.local import LocalProvider
from routing.providers.openai import OpenAIProvider
from routing.providers.openrouter import OpenRouterProvider
from routing.providers.replicate import ReplicateProvider
from routing.providers.seedream import SeedreamProvider
from routing.providers.stability import StabilityProvider
from routing.providers.xai import XAIProvider
from routing.providers.zai import ZAIProvider

ADAPTERS: dict[str, ProviderAdapter] = {
    adapter.name: adapter
    for adapter in (
        LocalProvider(),
        OpenAIProvider(),
        AzureProvider(),
        GeminiProvider(),
        XAIProvider(),
        SeedreamProvider(),
        OpenRouterProvider(),
        StabilityProvider(),
        BFLProvider(),
        ReplicateProvider(),
        ZAIProvider(),
    )
}

# How each provider's credential is sent, and its default root.
AUTH: dict[str, ProviderAuth] = {name: adapter.auth for name, adapter in ADAPTERS.items()}


def adapter_for(provider: str) -> ProviderAdapter:
    try:
        return ADAPTERS[provider]
    except KeyError:
        raise Unsupported(
            f"The provider '{provider}' cannot serve image generation through this gateway yet.",
            param="model",
        ) from None


def _adapter_or_base(provider: str) -> ProviderAdapter | type[ProviderAdapter]:
    """The provider's adapter; for an unknown provider, the base class's OpenAI-style facts."""
    return ADAPTERS.get(provider) or ProviderAdapter


def moderation_codes(provider: str) -> frozenset[str]:
    """The provider's safety-refusal codes; the OpenAI-style ones for an unknown provider."""
    return _adapter_or_base(provider).moderation_codes


def moderation_statuses(provider: str) -> frozenset[int]:
    """The statuses a safety refusal of the provider comes with."""
    return _adapter_or_base(provider).moderation_statuses


def is_moderation(provider: str, status: int, error: UpstreamErrorBody) -> bool:
    """Whether this error answer is the provider's safety system refusing the request."""
    return _adapter_or_base(provider).is_moderation(status, error)


def error_shape(provider: str) -> ErrorShape | None:
    adapter = ADAPTERS.get(provider)
    return adapter.error_shape if adapter is not None else None


def passthrough_image_route(provider: str, method: str, path: str) -> ImageRoute | None:
    """The image route a passthrough call is on, if its provider declares the path (POST only)."""
    adapter = ADAPTERS.get(provider)
    if method != "POST" or adapter is None:
        return None
    for pattern in adapter.image_routes:
        if (route := pattern.route(provider, path)) is not None:
            return route
    return None


def uncounted_image_path(provider: str, method: str, path: str) -> bool:
    """Whether a passthrough call makes images its provider declares uncountable."""
    adapter = ADAPTERS.get(provider)
    if method != "POST" or adapter is None:
        return False
    return any(pattern.fullmatch(path) for pattern in adapter.uncounted_image_paths)

"""Provider name → adapter. A provider without an adapter cannot serve inference routes."""

from __future__ import annotations

from aperture.errors import Unsupported
from routing.providers.azure import AzureProvider
from routing.providers.base import ProviderAdapter
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


def adapter_for(provider: str) -> ProviderAdapter:
    try:
        return ADAPTERS[provider]
    except KeyError:
        raise Unsupported(
            f"The provider '{provider}' cannot serve image generation through this gateway yet.",
            param="model",
        ) from None

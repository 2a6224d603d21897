"""The tables the gateway reads are derived from what each adapter class declares."""

import pytest

from routing.providers import registry
from routing.providers.auth import ProviderAuth, auth_for, base_url_for, credential_headers
from routing.providers.base import ImageRoute, ProviderAdapter

BEARER = "Bearer {secret}"


def test_every_providers_auth_and_default_root_come_from_its_adapter() -> None:
    declared = dict(registry.AUTH)
    assert declared == {
        "local": ProviderAuth("Authorization", BEARER),
        "openai": ProviderAuth("Authorization", BEARER, "https://api.openai.com"),
        "azure": ProviderAuth("api-key"),
        "gemini": ProviderAuth(
            "x-goog-api-key", "{secret}", "https://generativelanguage.googleapis.com"
        ),
        "xai": ProviderAuth("Authorization", BEARER, "https://api.x.ai"),
        "seedream": ProviderAuth("Authorization", BEARER, "https://ark.cn-beijing.volces.com"),
        "openrouter": ProviderAuth("Authorization", BEARER, "https://openrouter.ai"),
        "stability": ProviderAuth("Authorization", BEARER, "https://api.stability.ai"),
        "bfl": ProviderAuth("x-key", "{secret}", "https://api.bfl.ai"),
        "replicate": ProviderAuth("Authorization", BEARER, "https://api.replicate.com"),
        "zai": ProviderAuth("Authorization", BEARER, "https://open.bigmodel.cn"),
    }
    assert credential_headers("bfl", "k") == {"x-key": "k"}
    assert credential_headers("azure", "k") == {"api-key": "k"}
    assert credential_headers("openai", "") == {}
    assert base_url_for("gemini", "") == "https://generativelanguage.googleapis.com"
    assert base_url_for("openai", "https://proxy.example/") == "https://proxy.example"


def test_a_provider_without_an_adapter_is_reached_the_openai_way() -> None:
    assert auth_for("fal") == registry.AUTH["openai"]


def test_the_credential_check_call_is_the_one_each_adapter_declares() -> None:
    declared = {name: a.check_path for name, a in registry.ADAPTERS.items()}
    assert declared == {
        "local": None,
        "openai": "/v1/models",
        "azure": "/openai/models",
        "gemini": "/v1beta/models",
        "xai": "/v1/models",
        "seedream": None,
        "openrouter": "/api/v1/key",
        "stability": "/v1/user/account",
        "bfl": None,
        "replicate": "/v1/account",
        "zai": None,
    }
    azure = registry.ADAPTERS["azure"]
    assert azure.check_params("2024-10-21") == {"api-version": "2024-10-21"}
    assert azure.check_params("") == {"api-version": "2025-04-01-preview"}
    assert registry.ADAPTERS["openai"].check_params("") is None


def test_moderation_codes_are_each_providers_own() -> None:
    openai_style = frozenset({"moderation_blocked", "content_policy_violation"})
    assert registry.moderation_codes("zai") == frozenset({"1301"})
    assert registry.moderation_codes("openai") == openai_style
    assert registry.moderation_codes("azure") == openai_style
    assert registry.moderation_codes("unknown") == ProviderAdapter.moderation_codes == openai_style


@pytest.mark.parametrize(
    ("provider", "path", "route"),
    [
        ("openai", "/v1/images/generations", ImageRoute("openai", "openai")),
        ("openai", "/v1/images/edits", ImageRoute("openai", "openai")),
        ("openai", "/v1/images/variations", ImageRoute("openai", "openai")),
        (
            "azure",
            "/openai/deployments/gpt-image-1/images/generations",
            ImageRoute("azure", "openai", path_model="gpt-image-1"),
        ),
        (
            "azure",
            "/openai/deployments/gpt-image-1/images/edits",
            ImageRoute("azure", "openai", path_model="gpt-image-1"),
        ),
        (
            "gemini",
            "/v1beta/models/gemini-2.5-flash-image:generateContent",
            ImageRoute("gemini", "gemini", path_model="gemini-2.5-flash-image"),
        ),
        (
            "gemini",
            "/v1/models/gemini-3-pro-image-preview:streamGenerateContent",
            ImageRoute("gemini", "gemini", path_model="gemini-3-pro-image-preview"),
        ),
        ("openai", "/v1/images/generations/extra", None),
        ("openai", "/v1/chat/completions", None),
        ("azure", "/v1/images/generations", None),  # OpenAI's path is not Azure's
        ("azure", "/openai/deployments/x/images/variations", None),
        ("gemini", "/v1beta/models/imagen-4.0-generate-001:predict", None),
        ("gemini", "/v1beta/models/a/b:generateContent", None),
        ("xai", "/v1/images/generations", ImageRoute("xai", "openai")),
        ("local", "/v1/images/generations", None),
        ("unknown", "/v1/images/generations", None),
    ],
)
def test_passthrough_image_routes_are_the_ones_each_adapter_declares(
    provider: str, path: str, route: ImageRoute | None
) -> None:
    assert registry.passthrough_image_route(provider, "POST", path) == route


def test_only_a_post_is_an_image_route() -> None:
    for method in ("GET", "PUT", "DELETE", "OPTIONS", "post"):
        assert registry.passthrough_image_route("openai", method, "/v1/images/generations") is None

"""OpenAPI (drf-spectacular) glue: the API key security scheme and which routes are shown."""

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import inline_serializer
from rest_framework import serializers

DOCUMENTED_PREFIXES = ("/api/v1/", "/v1/", "/openai/deployments/")


# drf-spectacular's registering __init_subclass__ has no annotations.
class ApiKeyScheme(OpenApiAuthenticationExtension):  # type: ignore[no-untyped-call]
    target_class = "tenants.authentication.ApiKeyAuthentication"
    name = "ApiKey"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "An Aperture key, `apk_…`. The management routes need a key with "
            "`manage:team` or `manage:workspace`; the image routes one with `images`.",
        }


def only_gateway_routes(endpoints: list[Any], **kwargs: Any) -> list[Any]:
    """PREPROCESSING_HOOK: the documented API; not passthrough (the provider's own API) nor
    the hosted-image links."""
    return [e for e in endpoints if e[0].startswith(DOCUMENTED_PREFIXES)]


ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": "string", "nullable": True},
                "code": {"type": "string", "nullable": True},
            },
        }
    },
}


def error_envelope(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """POSTPROCESSING_HOOK: every operation may answer an error in OpenAI's envelope."""
    result.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    for operations in result.get("paths", {}).values():
        for operation in operations.values():
            operation["responses"]["default"] = {
                "description": "An error: 4xx or 5xx, in OpenAI's envelope.",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
            }
    return result


def paginated(name: str, item: Any) -> Any:
    """The shape of a cursor-paginated list of `item` (aperture/pagination.py)."""
    return inline_serializer(
        name,
        {
            "next": serializers.CharField(allow_null=True),
            "previous": serializers.CharField(allow_null=True),
            "results": item(many=True),
        },
    )


def listed(name: str, item: Any) -> Any:
    """The shape of a complete (unpaginated) list: {"data": [...]}."""
    return inline_serializer(name, {"data": item(many=True)})

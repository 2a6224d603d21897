"""Azure OpenAI deployments. docs/providers.md §2.

`{base}/openai/deployments/{deployment}/images/generations?api-version=…` with the `api-key`
header; the body is OpenAI's, without `model` (the deployment decides). The deployment's
upstream model id is the Azure deployment name; capabilities are looked up by that name, so
name deployments after their model (e.g. `gpt-image-2.5-flare`) to get exact validation.
Edits go as multipart only: Azure's JSON edit shape is not documented, so `moderation` on an
edit is not forwarded (as for any model without that knob).
"""

from __future__ import annotations

import re
from typing import Any

from routing.providers.auth import ProviderAuth
from routing.providers.base import ImageRequest, ImageRoutePattern, Target
from routing.providers.openai import OpenAIProvider

DEFAULT_API_VERSION = "2025-04-01-preview"


class AzureProvider(OpenAIProvider):
    name = "azure"
    # One endpoint per resource: there is no default root.
    auth = ProviderAuth("api-key")
    check_path = "/openai/models"
    json_edits = False
    image_routes = (
        ImageRoutePattern(
            re.compile(r"/openai/deployments/(?P<model>[^/]+)/images/(?:generations|edits)"),
            "openai",
        ),
    )

    def check_params(self, api_version: str) -> dict[str, str] | None:
        return {"api-version": api_version or DEFAULT_API_VERSION}

    def url(self, target: Target) -> str:
        return f"{target.base_url}/openai/deployments/{target.upstream_model}/images/generations"

    def edit_url(self, target: Target) -> str:
        return f"{target.base_url}/openai/deployments/{target.upstream_model}/images/edits"

    def params(self, target: Target) -> dict[str, str] | None:
        return {"api-version": target.api_version or DEFAULT_API_VERSION}

    def body(self, request: ImageRequest, target: Target) -> dict[str, Any]:
        body = super().body(request, target)
        body.pop("model", None)
        return body

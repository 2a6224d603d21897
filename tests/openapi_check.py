"""Every response of the management and inference API checked against /api/schema/.

`SchemaCheckedClient` is a DRF test client that validates each JSON response it receives
(status, body shape, required fields, types) with openapi-core against the schema the
server publishes, so a view and its documentation cannot drift apart.
"""

from __future__ import annotations

import functools
from typing import Any

import orjson
from django.http import HttpResponse
from drf_spectacular.generators import SchemaGenerator
from openapi_core import OpenAPI
from openapi_core.contrib.django import DjangoOpenAPIRequest, DjangoOpenAPIResponse
from rest_framework.test import APIClient


@functools.cache
def published_schema() -> dict[str, Any]:
    schema = SchemaGenerator().get_schema(request=None, public=True)
    return orjson.loads(orjson.dumps(schema, default=str))


@functools.cache
def _openapi() -> OpenAPI:
    return OpenAPI.from_dict(published_schema())


def check_response(response: HttpResponse) -> None:
    """Raise if `response` (to its own request) is not what the schema says."""
    content_type = response.get("Content-Type", "")
    if not content_type.startswith("application/json") or response.streaming:
        return  # CSV and event streams are checked by their own tests
    request = response.wsgi_request  # type: ignore[attr-defined]
    _openapi().validate_response(DjangoOpenAPIRequest(request), DjangoOpenAPIResponse(response))


class SchemaCheckedClient(APIClient):
    checked = 0

    def request(self, **kwargs: Any) -> Any:
        response = super().request(**kwargs)
        check_response(response)
        SchemaCheckedClient.checked += 1
        return response


def checked_client_for(secret: str) -> SchemaCheckedClient:
    client = SchemaCheckedClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client

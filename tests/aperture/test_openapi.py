"""The OpenAPI schema at /api/schema/ is valid, covers the API, and the docs page serves."""

import json

import pytest
import yaml
from django.test import Client
from openapi_core.validation.response.exceptions import InvalidData
from openapi_spec_validator import validate
from rest_framework.test import APIClient

from routing.models import ModelAlias
from tenants.services import CreatedKey
from tests.openapi_check import check_response, checked_client_for, published_schema

MANAGEMENT_OPERATIONS = {
    ("get", "/api/v1/guardrails"),
    ("post", "/api/v1/guardrails"),
    ("get", "/api/v1/guardrails/{guardrail_id}"),
    ("patch", "/api/v1/guardrails/{guardrail_id}"),
    ("delete", "/api/v1/guardrails/{guardrail_id}"),
    ("post", "/api/v1/guardrails/{guardrail_id}/test"),
    ("get", "/api/v1/workspace"),
    ("post", "/api/v1/workspace/webhook-secret/rotate"),
    ("get", "/api/v1/alerts"),
    ("get", "/api/v1/teams"),
    ("post", "/api/v1/teams"),
    ("get", "/api/v1/teams/{team_id}"),
    ("patch", "/api/v1/teams/{team_id}"),
    ("post", "/api/v1/teams/{team_id}/archive"),
    ("get", "/api/v1/keys"),
    ("post", "/api/v1/keys"),
    ("get", "/api/v1/keys/{key_id}"),
    ("patch", "/api/v1/keys/{key_id}"),
    ("post", "/api/v1/keys/{key_id}/rotate"),
    ("post", "/api/v1/keys/{key_id}/revoke"),
    ("get", "/api/v1/usage"),
    ("get", "/api/v1/usage/summary"),
    ("get", "/api/v1/budgets"),
    ("post", "/api/v1/budgets"),
    ("get", "/api/v1/budgets/{budget_id}"),
    ("patch", "/api/v1/budgets/{budget_id}"),
    ("delete", "/api/v1/budgets/{budget_id}"),
    ("get", "/api/v1/aliases"),
    ("post", "/api/v1/aliases"),
    ("get", "/api/v1/aliases/{alias_id}"),
    ("delete", "/api/v1/aliases/{alias_id}"),
    ("get", "/api/v1/credentials"),
    ("post", "/api/v1/credentials"),
    ("get", "/api/v1/credentials/{credential_id}"),
    ("delete", "/api/v1/credentials/{credential_id}"),
    ("post", "/api/v1/credentials/{credential_id}/rotate"),
    ("post", "/api/v1/credentials/{credential_id}/test"),
    ("get", "/api/v1/passthrough"),
    ("get", "/api/v1/audit-events"),
}
INFERENCE_OPERATIONS = {
    ("post", "/v1/images/generations"),
    ("post", "/v1/images/edits"),
    ("get", "/v1/models"),
    ("get", "/v1/models/{model}"),
    ("get", "/v1/passthrough"),
    ("post", "/openai/deployments/{alias}/images/generations"),
    ("post", "/openai/deployments/{alias}/images/edits"),
    ("get", "/v1/images/jobs"),
    ("get", "/v1/images/jobs/{job_id}"),
    ("post", "/v1/images/jobs/{job_id}/cancel"),
    ("get", "/v1/images/jobs/{job_id}/deliveries"),
}


def _operations(schema: dict) -> set[tuple[str, str]]:
    return {(method, path) for path, item in schema["paths"].items() for method in item}


def test_the_served_schema_is_valid_openapi_3_and_covers_every_route(db: None) -> None:
    response = Client().get("/api/schema/")
    assert response.status_code == 200
    schema = yaml.safe_load(response.content)
    assert schema["openapi"].startswith("3.")
    validate(schema)
    assert _operations(schema) == MANAGEMENT_OPERATIONS | INFERENCE_OPERATIONS
    assert schema["components"]["securitySchemes"]["ApiKey"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schema["components"]["securitySchemes"]["ApiKey"]["description"],
    }
    as_json = Client().get("/api/schema/", HTTP_ACCEPT="application/json")
    assert as_json.status_code == 200
    assert json.loads(as_json.content)["paths"].keys() == schema["paths"].keys()


def test_every_operation_documents_its_error_envelope(db: None) -> None:
    schema = published_schema()
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            assert "default" in operation["responses"], (method, path)
    error = schema["components"]["schemas"]["Error"]
    assert error["properties"]["error"]["required"] == ["message", "type", "param", "code"]


def test_the_docs_page_serves_swagger_ui_from_this_server(db: None) -> None:
    response = Client().get("/api/docs/")
    assert response.status_code == 200
    page = response.content.decode()
    assert "swagger-ui" in page
    assert "/api/schema/" in Client().get("/api/docs/?script=").content.decode()  # its init
    assert "cdn.jsdelivr.net" not in page  # the sidecar's own files, no CDN
    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js" in page


def test_a_response_that_strays_from_the_schema_is_caught(admin_key: CreatedKey) -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {admin_key.secret}")
    response = client.get("/api/v1/workspace")
    check_response(response)  # as served: fine
    response.content = json.dumps({"id": 7}).encode()  # what a drifted view might send
    with pytest.raises(InvalidData):
        check_response(response)


def test_the_inference_responses_match_the_schema(
    api_key: CreatedKey, platform_alias: ModelAlias
) -> None:
    client = checked_client_for(api_key.secret)
    body = {"model": "demo-image", "prompt": "a lighthouse", "size": "256x256"}
    generated = client.post("/v1/images/generations", body, format="json")
    assert generated.status_code == 200
    assert client.get("/v1/models").status_code == 200
    assert client.get("/v1/models/demo-image").status_code == 200
    assert client.get("/v1/models/nope").status_code == 404
    refused = client.post("/v1/images/generations", {"model": "demo-image"}, format="json")
    assert refused.status_code == 400

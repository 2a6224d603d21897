"""One error path: the OpenAI envelope for every failure, and a request id on every response."""

import pytest
from django.test import Client, override_settings
from rest_framework.test import APIClient


def _envelope(response) -> dict:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


@pytest.mark.parametrize(
    "path", ["/v1/nope", "/api/v1/nothing", "/openai/deployments/x/y", "/v1", "/favicon.ico"]
)
@pytest.mark.parametrize("method", ["get", "post"])
def test_unknown_api_routes_answer_404_in_the_envelope(db: None, path: str, method: str) -> None:
    response = getattr(Client(), method)(path)
    assert response.status_code == 404
    error = _envelope(response)
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "not_found"


@pytest.mark.parametrize("path", ["/definitely-not-here", "/openai/whatever"])
def test_an_unknown_provider_route_is_401_without_a_key_and_404_with_one(
    client: APIClient, path: str
) -> None:
    # Any /{name}/... may be a passthrough route: who may ask which names exist needs a key.
    anonymous = Client().get(path)
    assert anonymous.status_code == 401
    assert _envelope(anonymous)["code"] == "missing_api_key"
    response = client.get(path)
    assert response.status_code == 404
    assert _envelope(response)["code"] == "provider_not_found"


def test_a_wrong_method_gets_405_in_the_envelope(client: APIClient) -> None:
    response = client.post("/v1/models", {}, format="json")
    assert response.status_code == 405
    error = _envelope(response)
    assert error["code"] == "method_not_allowed"
    assert error["message"] == 'Method "POST" not allowed.'


def test_an_oversized_body_gets_413_before_anything_reads_it(client: APIClient) -> None:
    with override_settings(MAX_BODY_BYTES=1024):
        response = client.generic("POST", "/v1/models", "x" * 2048, content_type="application/json")
    assert response.status_code == 413
    assert _envelope(response)["code"] == "payload_too_large"


def test_401_and_403_use_the_envelope(client: APIClient, team) -> None:
    assert _envelope(APIClient().get("/v1/models"))["type"] == "authentication_error"
    from tenants import services
    from tests.support import client_for

    manager = services.key_create(actor="t", team=team, name="m", scopes=["manage:workspace"])
    response = client_for(manager.secret).get("/v1/models")
    assert response.status_code == 403
    assert _envelope(response) == {
        "message": "This API key lacks the 'images' scope.",
        "type": "permission_error",
        "param": None,
        "code": "missing_scope",
    }


@pytest.mark.urls("tests.aperture.urls_failing")
def test_an_unhandled_exception_is_a_500_envelope_with_the_request_id_and_no_traceback(
    db: None, caplog: pytest.LogCaptureFixture
) -> None:
    response = Client(raise_request_exception=False).get(
        "/v1/explode", HTTP_X_REQUEST_ID="trace-abc-123"
    )
    assert response.status_code == 500
    error = _envelope(response)
    assert error["type"] == "server_error"
    assert response["x-request-id"].startswith("req_")
    assert f"(request id {response['x-request-id']})" in error["message"]
    assert response["x-client-request-id"] == "trace-abc-123"
    assert "secret internals" not in response.content.decode()
    assert "Traceback" not in response.content.decode()


@pytest.mark.urls("tests.aperture.urls_failing")
@pytest.mark.parametrize("path", ["/v1/pool-dry-finishing", "/v1/pool-dry-plain"])
def test_a_database_pool_that_ran_dry_past_drfs_handler_is_a_503_overloaded_not_a_500(
    db: None, path: str
) -> None:
    response = Client(raise_request_exception=False).get(path)
    assert response.status_code == 503
    assert response["Retry-After"] == "1"
    assert response["x-request-id"].startswith("req_")
    assert _envelope(response) == {
        "message": "The gateway is past its capacity (every database connection is busy): "
        "retry after the time in Retry-After.",
        "type": "server_error",
        "param": None,
        "code": "overloaded",
    }


@pytest.mark.urls("tests.aperture.urls_failing")
@pytest.mark.parametrize("path", ["/v1/explode-plain", "/v1/database-fails-plain"])
def test_any_other_failure_past_drfs_handler_is_still_a_500_envelope(db: None, path: str) -> None:
    response = Client(raise_request_exception=False).get(path)
    assert response.status_code == 500
    assert "Retry-After" not in response
    request_id = response["x-request-id"]
    assert _envelope(response) == {
        "message": f"The server had an error while processing your request (request id "
        f"{request_id}). It has been logged.",
        "type": "server_error",
        "param": None,
        "code": "internal_error",
    }


def test_every_response_carries_the_gateways_own_request_id_and_echoes_the_callers(
    db: None,
) -> None:
    sent = Client().get("/healthz", HTTP_X_REQUEST_ID="client-id-42")
    assert sent["x-request-id"].startswith("req_")
    assert len(sent["x-request-id"]) == 36
    assert sent["x-client-request-id"] == "client-id-42"
    again = Client().get("/healthz", HTTP_X_REQUEST_ID="client-id-42")
    assert again["x-request-id"] != sent["x-request-id"]
    openai_style = Client().get("/healthz", HTTP_X_CLIENT_REQUEST_ID="client-id-43")
    assert openai_style["x-client-request-id"] == "client-id-43"
    made = Client().get("/v1/nope", HTTP_X_REQUEST_ID="bad id with spaces\u00e9")
    assert made["x-request-id"].startswith("req_")
    assert "x-client-request-id" not in made
    assert Client().get("/readyz")["x-request-id"].startswith("req_")

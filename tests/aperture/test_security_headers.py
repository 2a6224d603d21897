"""Request and response headers that guard the site: a foreign Host gets the error envelope
(no HTML, no traceback at ERROR); HTML pages (the admin, the API docs) carry a
Content-Security-Policy that allows scripts from this origin only, and a Permissions-Policy."""

import logging
import re
from typing import Any

import pytest
from django.test import Client
from django.utils.module_loading import import_string
from rest_framework.test import APIClient


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/v1/models"),
        ("post", "/v1/images/generations"),
        ("post", "/admin/login/"),
        ("get", "/openai/v1/models"),
        ("get", "/healthz"),
    ],
)
def test_a_foreign_host_gets_the_envelope_and_no_traceback(
    db: None, caplog: pytest.LogCaptureFixture, method: str, path: str
) -> None:
    with caplog.at_level(logging.INFO):
        response = getattr(Client(), method)(path, HTTP_HOST="evil.example:8000")
    assert response.status_code == 400
    assert response["Content-Type"] == "application/json"
    assert response.json() == {
        "error": {
            "message": "The Host header names a host this gateway does not serve.",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_host",
        }
    }
    assert response["x-request-id"].startswith("req_")
    assert [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info] == []
    (line,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert line == "Refused a request for host 'evil.example:8000': not in ALLOWED_HOSTS"


def _directives(policy: str) -> dict[str, str]:
    return dict(part.strip().split(" ", 1) for part in policy.split(";") if part.strip())


@pytest.mark.parametrize("path", ["/admin/login/", "/api/docs/"])
def test_the_admin_and_the_docs_carry_a_csp_and_a_permissions_policy(db: None, path: str) -> None:
    response = Client().get(path)
    assert response.status_code == 200
    assert _directives(response["Content-Security-Policy"]) == {
        "default-src": "'self'",
        "script-src": "'self'",
        "style-src": "'self' 'unsafe-inline'",
        "img-src": "'self' data:",
        "font-src": "'self' data:",
        "connect-src": "'self'",
        "object-src": "'none'",
        "base-uri": "'self'",
        "form-action": "'self'",
        "frame-ancestors": "'none'",
    }
    policy = response["Permissions-Policy"]
    assert {"camera=()", "microphone=()", "geolocation=()", "payment=()"} <= {
        part.strip() for part in policy.split(",")
    }
    inline_scripts = re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", response.content.decode())
    assert inline_scripts == [], "an inline script would be blocked by script-src 'self'"


def test_the_docs_init_script_is_a_file_of_its_own(db: None) -> None:
    page = Client().get("/api/docs/").content.decode()
    (script_url,) = re.findall(r'<script src="(/api/docs/[^"]*)"', page)
    script = Client().get(script_url.replace("&amp;", "&"))
    assert script.status_code == 200
    assert script["Content-Type"].startswith("application/javascript")
    assert "SwaggerUIBundle" in script.content.decode()


def test_json_answers_need_no_page_policy(client: APIClient) -> None:
    response = client.get("/v1/models")
    assert response.status_code == 200
    assert "Content-Security-Policy" not in response
    assert "Permissions-Policy" not in response


@pytest.mark.parametrize(
    ("middleware", "hook"),
    [
        ("aperture.middleware.SecurityHeadersMiddleware", "process_response"),
        ("whitenoise.middleware.WhiteNoiseMiddleware", "__call__"),
        ("django.contrib.sessions.middleware.SessionMiddleware", "process_request"),
        ("django.contrib.auth.middleware.AuthenticationMiddleware", "process_request"),
        ("django.contrib.messages.middleware.MessageMiddleware", "process_request"),
    ],
)
def test_the_inference_api_skips_the_middleware_of_browser_pages_and_they_keep_it(
    client: APIClient, monkeypatch: pytest.MonkeyPatch, middleware: str, hook: str
) -> None:
    def fails(*args: Any) -> None:
        raise RuntimeError(f"{middleware} ran")

    monkeypatch.setattr(import_string(middleware), hook, fails)
    client.raise_request_exception = False
    answers = (
        client.get("/v1/models"),
        client.post("/openai/deployments/no-such-alias/images/generations", {}, format="json"),
    )
    assert [answer.status_code for answer in answers] == [200, 404]  # it did not run
    for answer in answers:
        assert answer["X-Content-Type-Options"] == "nosniff"  # what every answer gets
        assert answer["X-Frame-Options"] == "DENY"
        assert int(answer["Content-Length"]) == len(answer.content)

    browser = Client()
    browser.raise_request_exception = False
    assert browser.get("/admin/login/").status_code == 500  # it ran


def test_the_admin_keeps_its_csrf_check(db: None) -> None:
    browser = Client(enforce_csrf_checks=True)
    page = browser.get("/admin/login/")
    assert page["X-Frame-Options"] == "DENY"
    refused = browser.post("/admin/login/", {"username": "x", "password": "y"})
    assert refused.status_code == 403  # no CSRF token
    token = page.cookies["csrftoken"].value
    accepted = browser.post(
        "/admin/login/", {"username": "x", "password": "y", "csrfmiddlewaretoken": token}
    )
    assert accepted.status_code == 200  # the sign-in page again, its error shown


def test_a_hosted_image_link_answers_other_methods_in_the_envelope(db: None) -> None:
    answer = Client(enforce_csrf_checks=True).post("/v1/images/files/not-a-token")
    assert answer.status_code == 404  # not Django's HTML page for a missing CSRF token
    assert answer.json()["error"]["code"] == "not_found"

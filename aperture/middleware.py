"""Request-wide middleware: request ids, the Host check, the body size and time limits, the
security headers of HTML pages, and what lets the inference API skip the middleware of
browser pages (`ForBrowsers`)."""

import logging
import re
import uuid
from collections.abc import Callable
from io import BytesIO
from typing import Any, BinaryIO, cast

from csp.middleware import CSPMiddleware
from django.conf import settings
from django.core.exceptions import DisallowedHost
from django.core.handlers.wsgi import LimitedStream
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase

from aperture.body_deadline import DeadlineStream
from aperture.errors import InvalidRequest, PayloadTooLarge, error_response
from aperture.request_context import (
    current_request_id,
    set_client_request_id,
    set_request_id,
)

logger = logging.getLogger(__name__)
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
# The inference API's paths (the `openai` passthrough's too): called with API keys, answered
# in JSON or relayed. No browser signs in on them, so the middleware of browser pages (page
# policies, static files, sessions, sign-in, messages) steps aside on them: about 2% of a
# worker's CPU a request. The layers themselves remain: removing them outright made no
# difference beyond noise in a paired A/B (docs/performance.md).
INFERENCE_PREFIXES = ("/v1/", "/openai/")


class RequestIdMiddleware:
    """Give every request the gateway's own id, `x-request-id` on the response; a valid id
    the caller sent (`x-client-request-id`, else `x-request-id`) is kept apart and echoed as
    `x-client-request-id`. A caller's id is never the request's: two callers may send one."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request_id = f"req_{uuid.uuid4().hex}"
        # From META: request.headers would build a dict of every header, for two.
        incoming = request.META.get("HTTP_X_CLIENT_REQUEST_ID") or request.META.get(
            "HTTP_X_REQUEST_ID", ""
        )
        client_request_id = incoming if _VALID_REQUEST_ID.match(incoming) else ""
        set_request_id(request_id)
        set_client_request_id(client_request_id)
        request.request_id = request_id  # type: ignore[attr-defined]
        response = self.get_response(request)
        response["x-request-id"] = request_id
        if client_request_id:
            response["x-client-request-id"] = client_request_id
        return response


class BodySizeLimitMiddleware:
    """Refuse a declared body above APERTURE_MAX_BODY_BYTES before anything reads it."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        raw = str(request.META.get("CONTENT_LENGTH") or "0").strip()
        if not raw.isdigit():  # Django itself would fail on it later, as a 500
            return error_response(
                InvalidRequest("Content-Length is not a number.", code="invalid_content_length")
            )
        declared = int(raw)
        if declared > settings.MAX_BODY_BYTES:
            return error_response(
                PayloadTooLarge(
                    f"Request body of {declared} bytes exceeds the limit of "
                    f"{settings.MAX_BODY_BYTES} bytes."
                )
            )
        return self.get_response(request)


class AllowedHostMiddleware:
    """A Host outside ALLOWED_HOSTS: a 400 in the error envelope and one warning line, before
    anything else asks for the host (Django would answer HTML and log a traceback at ERROR)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        try:
            request.get_host()
        except DisallowedHost:
            logger.warning(
                "Refused a request for host %r: not in ALLOWED_HOSTS", _raw_host(request)
            )
            return error_response(
                InvalidRequest(
                    "The Host header names a host this gateway does not serve.",
                    code="invalid_host",
                )
            )
        return self.get_response(request)


def _raw_host(request: HttpRequest) -> str:
    return str(request.META.get("HTTP_HOST") or request.META.get("SERVER_NAME") or "")[:200]


class BodyDeadlineMiddleware:
    """Every reader of the body (JSON, multipart, passthrough, chunked or not) reads through a
    DeadlineStream: past APERTURE_BODY_TIMEOUT_SECONDS (and the minimum rate) a read raises
    RequestTimeout, a 408 in the envelope, before anything is held or sent upstream."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        meta = request.META
        has_body = str(meta.get("CONTENT_LENGTH") or "0") != "0" or (
            "chunked" in str(meta.get("HTTP_TRANSFER_ENCODING", "")).lower()
        )
        stream = getattr(request, "_stream", None)
        if has_body and isinstance(stream, LimitedStream) and "wsgi.input" in meta:
            deadline = DeadlineStream(
                meta["wsgi.input"],
                timeout=settings.BODY_TIMEOUT_SECONDS,
                min_bytes_per_second=settings.BODY_MIN_BYTES_PER_SECOND,
            )
            # Django wrapped wsgi.input when it built the request (nothing has read it yet):
            # both the raw input (read for chunked bodies) and Django's stream go through it.
            meta["wsgi.input"] = deadline
            limited = LimitedStream(cast(BytesIO, deadline), stream.limit)
            request._stream = cast(BinaryIO, limited)
        return self.get_response(request)


class ForBrowsers:
    """A middleware of browser pages, run for every path but the inference API's (the
    others: aperture/browser_middleware.py)."""

    get_response: Any

    def __call__(self, request: HttpRequest) -> Any:
        if request.path_info.startswith(INFERENCE_PREFIXES):
            return self.get_response(request)
        return super().__call__(request)  # type: ignore[misc]


class SecurityHeadersMiddleware(ForBrowsers, CSPMiddleware):
    """django-csp's Content-Security-Policy, and a Permissions-Policy, on HTML pages only (the
    admin, the API docs, an error page): JSON answers and relayed images need neither."""

    def process_response(
        self, request: HttpRequest, response: HttpResponseBase
    ) -> HttpResponseBase:
        if not str(response.get("Content-Type", "")).startswith("text/html"):
            return response
        if "Permissions-Policy" not in response:
            response["Permissions-Policy"] = settings.PERMISSIONS_POLICY
        return super().process_response(request, response)


class RequestIdLogFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):  # a line may name its request itself
            record.request_id = current_request_id()
        return True

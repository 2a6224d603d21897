"""Request-wide middleware: request ids and the body size limit."""

import logging
import re
import uuid
from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse

from aperture.errors import InvalidRequest, PayloadTooLarge, error_response
from aperture.request_context import current_request_id, set_request_id

_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
API_PREFIXES = ("/v1/", "/openai/", "/api/")


class RequestIdMiddleware:
    """Keep a valid incoming `x-request-id`, or make one; echo it on every response."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        incoming = request.headers.get("x-request-id", "")
        request_id = incoming if _VALID_REQUEST_ID.match(incoming) else f"req_{uuid.uuid4().hex}"
        set_request_id(request_id)
        request.request_id = request_id  # type: ignore[attr-defined]
        response = self.get_response(request)
        response["x-request-id"] = request_id
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


class RequestIdLogFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current_request_id()
        return True

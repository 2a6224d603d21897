"""One error path: typed exceptions rendered into the OpenAI error envelope.

Every route under /v1/, /openai/ and /api/ answers errors as
`{"error": {"message", "type", "param", "code"}}`; views raise an `ApiError` subclass and
`exception_handler` renders it (DRF's own exceptions are translated on the way).
"""

import logging
import sys
from typing import Any

from django.core.exceptions import BadRequest, RequestDataTooBig
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions as drf
from rest_framework.response import Response

from aperture.request_context import current_request_id

logger = logging.getLogger(__name__)


class ApiError(Exception):
    status = 400
    type = "invalid_request_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, type_=self.type, param=self.param, code=self.code)


class InvalidRequest(ApiError):
    status = 400


class ContentPolicyViolation(ApiError):
    """A guardrail policy refused the request (routing/guardrails)."""

    status = 400
    code = "content_policy_violation"


class Unsupported(ApiError):
    status = 400
    code = "unsupported"


class AuthenticationError(ApiError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class InsufficientQuota(ApiError):
    status = 402
    type = "insufficient_quota"
    code = "insufficient_quota"


class PermissionError_(ApiError):
    status = 403
    type = "permission_error"
    code = "permission_denied"


class NotFound(ApiError):
    status = 404
    code = "not_found"


class ModelNotFound(ApiError):
    status = 404
    code = "model_not_found"


class MethodNotAllowed(ApiError):
    status = 405
    code = "method_not_allowed"


class RequestTimeout(ApiError, BadRequest):
    """The request body did not arrive in time. Also a Django BadRequest, so that a view
    outside DRF (the admin's login form) answers it through handler400, not as a 500."""

    status = 408
    code = "request_timeout"


class Conflict(ApiError):
    """The change clashes with the current state (a name in use, an object still in use)."""

    status = 409
    code = "conflict"


class Unprocessable(ApiError):
    """Well-formed, but not what this request may be (an Idempotency-Key reused with
    another body)."""

    status = 422
    code = "unprocessable"


class Cancelled(ApiError):
    """The caller cancelled the work while it ran (an async job): nothing was produced."""

    status = 499
    code = "cancelled"


class PayloadTooLarge(ApiError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(ApiError):
    status = 415
    code = "unsupported_media_type"


class RateLimited(ApiError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class UpstreamError(ApiError):
    status = 502
    type = "upstream_error"
    code = "upstream_error"


class UpstreamTimeout(ApiError):
    status = 504
    type = "upstream_error"
    code = "upstream_timeout"


class Overloaded(ApiError):
    """This process is past its capacity: refused on purpose, before anything is held or
    called (aperture/load_shedding.py), and retried after `Retry-After`."""

    status = 503
    type = "server_error"
    code = "overloaded"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Retry-After": "1"})


class QueueUnavailable(ApiError):
    """An async job could not be handed to the broker."""

    status = 503
    type = "server_error"
    code = "queue_unavailable"


class GuardrailUnavailable(ApiError):
    """A fail-closed moderation policy could not get a verdict."""

    status = 503
    type = "server_error"
    code = "guardrail_unavailable"


def error_body(
    message: str, *, type_: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_response(error: ApiError) -> JsonResponse:
    response = JsonResponse(error.body(), status=error.status)
    for name, value in error.headers.items():
        response[name] = value
    return response


def _first_validation_error(detail: Any, prefix: str = "") -> tuple[str | None, str]:
    """The first (field, message) of a DRF ValidationError detail, for the envelope."""
    if isinstance(detail, dict):
        for field, inner in detail.items():
            name = field if field != "non_field_errors" else ""
            param, message = _first_validation_error(inner, f"{prefix}.{name}" if prefix else name)
            return param, message
    if isinstance(detail, list) and detail:
        return _first_validation_error(detail[0], prefix)
    message = str(detail)
    return (prefix or None), (f"{prefix}: {message}" if prefix else message)


def _translate(exc: Exception) -> ApiError | None:
    if isinstance(exc, ApiError):
        return exc
    if _pool_exhausted(exc):
        return _overloaded_pool()
    if isinstance(exc, RequestDataTooBig):
        return PayloadTooLarge("Request body is too large.")
    if isinstance(exc, drf.ValidationError):
        param, message = _first_validation_error(exc.detail)
        return InvalidRequest(message, param=param)
    if isinstance(exc, DjangoValidationError):  # a service's refusal of a value
        detail: Any = exc.message_dict if hasattr(exc, "error_dict") else exc.messages
        param, message = _first_validation_error(detail)
        return InvalidRequest(message, param=param)
    if isinstance(exc, drf.ParseError):
        return InvalidRequest(f"Could not parse the request body: {exc.detail}")
    if isinstance(exc, drf.NotAuthenticated):
        return AuthenticationError(
            "No API key provided. Send it as 'Authorization: Bearer <key>' or 'api-key: <key>'.",
            code="missing_api_key",
        )
    if isinstance(exc, drf.AuthenticationFailed):
        return AuthenticationError(str(exc.detail))
    if isinstance(exc, (drf.PermissionDenied, DjangoPermissionDenied)):
        detail = getattr(exc, "detail", None) or "You do not have permission to do this."
        return PermissionError_(str(detail))
    if isinstance(exc, (drf.NotFound, Http404)):
        return NotFound("Not found.")
    if isinstance(exc, drf.MethodNotAllowed):
        return MethodNotAllowed(str(exc.detail))
    if isinstance(exc, drf.UnsupportedMediaType):
        return UnsupportedMediaType(str(exc.detail))
    if isinstance(exc, drf.NotAcceptable):
        return ApiError(str(exc.detail), code="not_acceptable")
    if isinstance(exc, drf.Throttled):
        return RateLimited(str(exc.detail))
    if isinstance(exc, drf.APIException):
        error = ApiError(str(exc.detail))
        error.status = exc.status_code
        return error
    return None


def _overloaded_pool() -> Overloaded:
    return Overloaded(
        "The gateway is past its capacity (every database connection is busy): retry after "
        "the time in Retry-After."
    )


def _pool_exhausted(exc: BaseException) -> bool:
    """A wait for a pooled database connection that timed out (psycopg_pool's PoolTimeout,
    as it comes or wrapped in Django's OperationalError)."""
    while exc is not None:
        if type(exc).__name__ == "PoolTimeout" and type(exc).__module__.startswith("psycopg_pool"):
            return True
        exc = exc.__cause__  # type: ignore[assignment]
    return False


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response:
    """DRF's EXCEPTION_HANDLER: every exception becomes the OpenAI envelope, 500 included."""
    error = _translate(exc)
    if error is None:
        logger.exception("Unhandled error while serving a request")
        return Response(internal_error_body(), status=500)
    response = Response(error.body(), status=error.status)
    for name, value in error.headers.items():
        response[name] = value
    if error.status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="aperture"'
    return response


def internal_error_body() -> dict[str, Any]:
    return error_body(
        f"The server had an error while processing your request (request id "
        f"{current_request_id()}). It has been logged.",
        type_="server_error",
        code="internal_error",
    )


@csrf_exempt  # an API client's POST to an unknown route is a 404, not a CSRF failure
def not_found_view(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    """handler404 and the catch-all for unknown API routes."""
    return error_response(NotFound(f"Unknown route: {request.method} {request.path}"))


def bad_request_view(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    """handler400: Django's own refusals (a malformed request, a body too slow) in the envelope."""
    if isinstance(exception, ApiError):
        return error_response(exception)
    return error_response(
        InvalidRequest("The request could not be understood.", code="bad_request")
    )


def server_error_view(request: HttpRequest) -> JsonResponse:
    """handler500: a failure past DRF's handler (a middleware, a plain Django view, a step
    after DRF's handler). Django calls it (DEBUG off) while handling the failure, so
    sys.exc_info() names it: a database pool that ran dry is the same 503 `overloaded` as
    inside DRF's handler; anything else is the 500 envelope."""
    failure = sys.exc_info()[1]
    if failure is not None and _pool_exhausted(failure):
        return error_response(_overloaded_pool())
    return JsonResponse(internal_error_body(), status=500)

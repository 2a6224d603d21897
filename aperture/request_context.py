"""The current request's ids, available to logging, error messages and the usage record.

The request id is always the gateway's own (`req_…`, unique); an id the caller sent
(`x-client-request-id` or `x-request-id`) is kept apart as the client request id, so two
callers sending the same one never share a record's id.
"""

from contextvars import ContextVar

_request_id: ContextVar[str] = ContextVar("aperture_request_id", default="-")
_client_request_id: ContextVar[str] = ContextVar("aperture_client_request_id", default="")


def current_request_id() -> str:
    return _request_id.get()


def set_request_id(value: str) -> None:
    _request_id.set(value)


def current_client_request_id() -> str:
    """The caller's own id for this request, or "" if it sent none (or an invalid one)."""
    return _client_request_id.get()


def set_client_request_id(value: str) -> None:
    _client_request_id.set(value)

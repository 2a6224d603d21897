"""The current request's id, available to logging and error messages."""

from contextvars import ContextVar

_request_id: ContextVar[str] = ContextVar("aperture_request_id", default="-")


def current_request_id() -> str:
    return _request_id.get()


def set_request_id(value: str) -> None:
    _request_id.set(value)

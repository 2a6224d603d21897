"""A request body must arrive in time: a stream wrapper that ends a read past the deadline.

The deadline is APERTURE_BODY_TIMEOUT_SECONDS from the start of the request, plus a second
for every APERTURE_BODY_MIN_BYTES_PER_SECOND bytes received, so a large body at a fair rate
has the time it needs while a trickle does not. Under gunicorn's gevent workers a blocked read
is cut off at the deadline (gevent.Timeout); elsewhere (the development server, the test
client) the deadline is checked after each read.
"""

from __future__ import annotations

import time
from typing import Protocol

from aperture.errors import RequestTimeout

CHUNK_BYTES = 64 * 1024


class _Readable(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...

    def readline(self, size: int = ..., /) -> bytes: ...


def _gevent_timeout() -> type | None:
    """gevent.Timeout when the socket module is patched (gunicorn's gevent worker)."""
    try:
        from gevent import Timeout, monkey
    except ImportError:  # pragma: no cover - gevent is a dependency
        return None
    return Timeout if monkey.is_module_patched("socket") else None


class DeadlineStream:
    """The server's wsgi.input, read within the deadline; RequestTimeout past it."""

    def __init__(self, stream: _Readable, *, timeout: float, min_bytes_per_second: int) -> None:
        self._stream = stream
        self._timeout = timeout
        self._rate = max(min_bytes_per_second, 1)
        self._started = time.monotonic()
        self._received = 0

    def _remaining(self) -> float:
        allowed = self._timeout + self._received / self._rate
        return self._started + allowed - time.monotonic()

    def expired(self) -> RequestTimeout:
        return RequestTimeout(
            f"The request body did not arrive in time (within {self._timeout:g} seconds, or "
            f"at {self._rate} bytes a second for a large body); send it again, faster."
        )

    def _bounded(self, read: _ReadFunction, size: int) -> bytes:
        remaining = self._remaining()
        if remaining <= 0:
            raise self.expired()
        timeout = _gevent_timeout()
        if timeout is None:
            data = read(size)
        else:
            with timeout(remaining, self.expired()):
                data = read(size)
        self._received += len(data)
        if timeout is None and data and self._remaining() < 0:
            raise self.expired()
        return data

    def read(self, size: int = -1, /) -> bytes:
        # In chunks, each with the time earned so far: one read of a whole large body would
        # otherwise be held to the time of an empty one.
        if size == 0:
            return b""
        parts: list[bytes] = []
        wanted = size if size is not None and size >= 0 else None
        while wanted is None or wanted > 0:
            chunk = self._bounded(self._stream.read, min(CHUNK_BYTES, wanted or CHUNK_BYTES))
            if not chunk:
                break
            parts.append(chunk)
            if wanted is not None:
                wanted -= len(chunk)
        return b"".join(parts)

    def readline(self, size: int = -1, /) -> bytes:
        return self._bounded(self._stream.readline, size)


class _ReadFunction(Protocol):
    def __call__(self, size: int, /) -> bytes: ...

"""Load shedding: a web process past its capacity refuses new requests on purpose, with a
503 `overloaded` and `Retry-After`, before anything is held or called upstream, instead of
queueing them until a database pool times out (a 500) or memory runs out.

The capacity is APERTURE_MAX_IN_FLIGHT requests in flight per worker process (by default
95% of gunicorn's worker connections, so that the last few are left for health checks and
polls). Health checks, metrics and static files are never shed nor counted. A request
counts until its response is closed, streams included.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest
from django.http.response import HttpResponseBase

from aperture.errors import Overloaded, error_response

NEVER_SHED = ("/healthz", "/readyz", "/metrics", "/static/")


class Gate:
    """How many requests this process is serving, and whether one more may come in."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.in_flight = 0

    def enter(self, limit: int) -> bool:
        with self._lock:
            if self.in_flight >= limit:
                return False
            self.in_flight += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self.in_flight -= 1


GATE = Gate()


class LoadSheddingMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        if request.path.startswith(NEVER_SHED):
            return self.get_response(request)
        if not GATE.enter(settings.MAX_IN_FLIGHT):
            return error_response(
                Overloaded(
                    f"The gateway is serving {settings.MAX_IN_FLIGHT} requests in this "
                    "process, its capacity: retry after the time in Retry-After."
                )
            )
        try:
            response = self.get_response(request)
        except BaseException:
            GATE.leave()
            raise
        # Left when the server closes the response: after a stream's last byte too.
        response._resource_closers.append(GATE.leave)  # type: ignore[attr-defined]
        return response

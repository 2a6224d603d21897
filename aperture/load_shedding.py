"""Load shedding: a web process past its capacity refuses new requests on purpose, with a
503 `overloaded` and `Retry-After`, before anything is held or called upstream, instead of
queueing them until a database pool times out (a 500) or memory runs out.

The capacity is APERTURE_MAX_IN_FLIGHT inference requests (the image routes and
passthrough: routing/metered.py) in flight per worker process, by default 95% of gunicorn's
worker connections, so that the last few are left for polls, the management API and health
checks, which are never shed. A request counts until its response is closed (the WSGI server
closes every response), streams included.
"""

from __future__ import annotations

import threading

from django.conf import settings

from aperture.errors import Overloaded


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


def admit_or_shed() -> None:
    """Count one more request in flight, or raise Overloaded (503) past the capacity; the
    caller must `GATE.leave()` once the response is closed."""
    if not GATE.enter(settings.MAX_IN_FLIGHT):
        raise Overloaded(
            f"The gateway is serving {settings.MAX_IN_FLIGHT} requests in this process, its "
            "capacity: retry after the time in Retry-After."
        )

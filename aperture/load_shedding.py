"""Load shedding: a web process past its capacity refuses new requests on purpose, with a
503 `overloaded` and `Retry-After`, before anything is held or called upstream, instead of
queueing them until a database pool times out (a 500) or memory runs out.

The capacity is APERTURE_MAX_IN_FLIGHT inference requests (the image routes and
passthrough: routing/metered.py) in flight per worker process, by default 95% of gunicorn's
worker connections, so that the last few are left for polls, the management API and health
checks, which are never shed. A request counts until the response the server sends for it
is closed (the WSGI server closes every response), streams included, whether its view's or
another (a 500 made of a failure past the view); or, if none is (a greenlet stopped
outright), until the request ends.

Of the requests let in, at most APERTURE_WORK_SLOTS per process are at work at once (on the
CPU, the database and Redis); the others wait their turn, first come first served. A request
gives its slot back whenever it waits on the network (aperture.db.release_connection) and,
from the waits it comes back from to work on (its body arriving, images it named being
fetched, a moderation call: aperture.db.waiting_on_network), takes one again ahead of
newcomers. From its upstream call (or from waiting on another request's budget slice) to
its answer it works without one. Without the slots, a burst of thousands moved
in lockstep: each greenlet took a step in turn, so every Redis or database reply waited
behind thousands of others, pools timed out, and no upstream was called until nearly every
request had been through auth, routing and its budgets (the first of a 5,000-request burst
reached the upstream after 6 s). A request that waits longer than APERTURE_WORK_WAIT_SECONDS
for a slot gets the same 503 `overloaded`. A process drained after a burst collects the
garbage its requests left (aperture/garbage_collection.py).
"""

from __future__ import annotations

import threading
from collections import deque
from contextvars import ContextVar
from threading import Event

from django.conf import settings

from aperture import garbage_collection, metrics
from aperture.errors import Overloaded


class Gate:
    """How many requests this process is serving, and whether one more may come in."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.in_flight = 0
        self.peak = 0  # the most in flight at once since the process was last drained

    def enter(self, limit: int) -> bool:
        with self._lock:
            if self.in_flight >= limit:
                return False
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            return True

    def leave(self) -> None:
        with self._lock:
            self.in_flight -= 1
            drained, peak = self.in_flight == 0, self.peak
            if drained:
                self.peak = 0
        if drained:  # a burst's garbage, collected soon (aperture/garbage_collection.py)
            garbage_collection.after_drain(peak, lambda: self.in_flight == 0)


GATE = Gate()


class Place:
    """A request's place in flight, given back once whichever way the request ends."""

    __slots__ = ("_held",)

    def __init__(self) -> None:
        self._held = True

    def leave(self) -> None:
        if self._held:
            self._held = False
            GATE.leave()


_place: ContextVar[Place | None] = ContextVar("aperture_in_flight_place", default=None)


def leave_if_still_in_flight(**_: object) -> None:
    """When a response is closed (Django's request_finished, after its own closers): the
    place of the request it answered, whichever response it is (the view's, or a 500 made
    of a failure past the view)."""
    place = _place.get()
    if place is not None:
        _place.set(None)
        place.leave()


class _Slots:
    """`size` slots handed over first come first served, those coming back from a wait on
    the network first: a request that already waited its turn is not queued behind every
    newcomer of a burst a second time."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._free = size
        self._lock = threading.Lock()
        self._waiting: tuple[deque[Event], deque[Event]] = (deque(), deque())

    def acquire(self, *, resuming: bool, timeout: float) -> bool:
        queue = self._waiting[0 if resuming else 1]
        with self._lock:
            if self._free > 0 and not any(self._waiting):
                self._free -= 1
                return True
            handed = Event()
            queue.append(handed)
        metrics.WORK_SLOT_WAITERS.inc()
        try:
            if handed.wait(timeout):
                return True
        except BaseException:  # killed while waiting (gevent.Timeout, GreenletExit)
            if not self._withdraw(queue, handed):
                self.release()  # handed over as it was killed: on to the next in line
            raise
        finally:
            metrics.WORK_SLOT_WAITERS.dec()
        return not self._withdraw(queue, handed)  # or handed over as the wait ran out

    def _withdraw(self, queue: deque[Event], handed: Event) -> bool:
        """Take a waiter out of line; False if a slot was handed to it already."""
        with self._lock:
            if handed.is_set():
                return False
            queue.remove(handed)
            return True

    def release(self) -> None:
        with self._lock:
            for queue in self._waiting:
                if queue:
                    queue.popleft().set()  # the slot goes straight to the next in line
                    return
            self._free += 1


class WorkSlots:
    """How many requests of this process are at work; each greenlet (thread) holds at most
    one slot, and knows whether it stepped out to wait on the network."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._slots: _Slots | None = None
        self._mine = threading.local()  # greenlet-local under gevent's patched threading

    def _current(self, size: int) -> _Slots:
        with self._lock:
            if self._slots is None or self._slots.size != size:
                self._slots = _Slots(size)
            return self._slots

    def take(self, *, resuming: bool = False) -> None:
        """Wait for a slot (none with APERTURE_WORK_SLOTS=0), or raise Overloaded."""
        size = settings.WORK_SLOTS
        if size <= 0 or getattr(self._mine, "held", None) is not None:
            return
        slots = self._current(size)
        if not slots.acquire(resuming=resuming, timeout=settings.WORK_WAIT_SECONDS):
            metrics.SHED.labels("work_slot").inc()
            raise Overloaded(
                f"The gateway's {size} work slots in this process stayed busy for "
                f"{settings.WORK_WAIT_SECONDS:g} s: retry after the time in Retry-After."
            )
        self._mine.held, self._mine.stepped_out = slots, False

    def step_out(self) -> None:
        """Give the slot back while waiting on the network; `resume` takes one again."""
        slots = getattr(self._mine, "held", None)
        if slots is not None:
            self._mine.held, self._mine.stepped_out = None, True
            slots.release()

    def resume(self) -> None:
        """Back at work after a wait: a slot again, ahead of newcomers, if this request
        stepped out of one."""
        if getattr(self._mine, "stepped_out", False):
            self.take(resuming=True)

    def done(self) -> None:
        """The request is past its work (its view returned or raised): the slot goes back."""
        self.step_out()
        self._mine.stepped_out = False


WORK = WorkSlots()


def admit_or_shed() -> Place:
    """Count one more request in flight, or raise Overloaded (503) past the capacity. The
    place is left when the request's response is closed (`leave_if_still_in_flight`); the
    caller leaves it itself if no response will be (the request stopped outright)."""
    if not GATE.enter(settings.MAX_IN_FLIGHT):
        metrics.SHED.labels("in_flight").inc()
        raise Overloaded(
            f"The gateway is serving {settings.MAX_IN_FLIGHT} requests in this process, its "
            "capacity: retry after the time in Retry-After."
        )
    place = Place()
    _place.set(place)
    return place

"""An upstream answer relayed to the caller chunk by chunk, counted, and settled when it ends.

Used by passthrough and by streamed image generation. Chunks go out as they arrive and are
fed to a tally (routing/tally.py) as they pass. A caller that goes away does not end the
upstream's work, nor its bill: closing early keeps reading the upstream's answer into the
tally (bounded by the tally's size cap and a deadline) so the caller pays for what the
upstream produced. The end — complete, cut by the caller, or broken upstream — is handed
once to `on_end`, which settles.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import requests
import urllib3
from django.conf import settings

from billing.metering import Meter
from routing.tally import Counted, ResponseTally

logger = logging.getLogger(__name__)
_UPSTREAM_ERRORS = (requests.RequestException, urllib3.exceptions.HTTPError, OSError)


class RelayDeadline(Exception):
    """A priced answer relayed for longer than its budget hold may live."""


@dataclass(frozen=True)
class Ending:
    """How a relayed answer ended, and what it held."""

    # "" (delivered), "client_disconnected", "upstream_stream_broken" or "relay_deadline"
    outcome: str
    counted: Counted | None  # None: complete but not measurable (over the cap, unreadable)


@dataclass
class Relay:
    """An iterable body for StreamingHttpResponse; its close() ends the call once."""

    source: Iterator[bytes]
    close_source: Callable[[], None]
    meter: Meter
    on_end: Callable[[Ending], None]
    tally: ResponseTally | None = None  # None: nothing in this answer is charged
    drain_seconds: float = 300.0  # how long a caller's hang-up may keep us reading
    # A counted answer ends before its hold could be taken for an orphan's by the reaper.
    priced_seconds: float = field(
        default_factory=lambda: max(60.0, settings.RESERVATION_TTL_SECONDS - 60.0)
    )
    _created: float = field(default_factory=time.monotonic)
    _outcome: str = "client_disconnected"
    _upstream_done: bool = False
    _pending: bytes | None = None
    _closed: bool = False
    _chunks: Iterator[bytes] | None = field(default=None, repr=False)

    def __iter__(self) -> Iterator[bytes]:
        self._chunks = self._relay()
        return self._chunks

    def _relay(self) -> Iterator[bytes]:
        deadline = self._created + self.priced_seconds
        try:
            for chunk in self.source:
                if self.tally is not None and time.monotonic() > deadline:
                    self._outcome = "relay_deadline"
                    logger.warning("a priced answer outlived its hold; cut")
                    raise RelayDeadline(self.meter.request_id)
                self._pending = chunk
                yield chunk
                # Counted as delivered once the server asks for more: only then was it written.
                self._pending = None
                self.meter.bytes_out += len(chunk)
                self._count(chunk)
        except _UPSTREAM_ERRORS as exc:
            self._outcome = "upstream_stream_broken"
            logger.warning("stream from upstream broke: %s", type(exc).__name__)
            # Re-raised so the server drops the connection: a clean end would look complete.
            raise
        self._outcome, self._upstream_done = "", True

    def _count(self, chunk: bytes) -> None:
        if self.tally is not None:
            self.tally.feed(chunk)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._chunks is not None:
            self._chunks.close()  # type: ignore[attr-defined]
        try:
            if self._outcome == "client_disconnected":
                self._drain()
        finally:
            self.close_source()
        self.meter.finish()
        try:
            self.on_end(Ending(self._outcome, self._counted()))
        except Exception:
            logger.exception("could not settle relayed call %s", self.meter.request_id)

    def _drain(self) -> None:
        """The caller went away: read the rest of the answer, so that it is paid for."""
        tally = self.tally
        if tally is None:
            return
        if self._pending is not None:  # handed to the server, never written
            tally.feed(self._pending)
        deadline = min(time.monotonic() + self.drain_seconds, self._created + self.priced_seconds)
        try:
            for chunk in self.source:
                tally.feed(chunk)
                if tally.overflowed or tally.unreadable or time.monotonic() > deadline:
                    return
        except _UPSTREAM_ERRORS as exc:
            logger.warning("upstream broke while finishing a call: %s", type(exc).__name__)
            return
        self._upstream_done = True

    def _counted(self) -> Counted | None:
        tally = self.tally
        if tally is None:
            return Counted()
        if tally.overflowed or tally.unreadable:
            return None
        if self._upstream_done:
            return tally.result()
        if tally.streaming:  # the events already complete count; the rest never came
            return tally.counted
        if self._outcome == "upstream_stream_broken":
            return Counted()  # half a JSON answer is no image
        # Cut by the deadline, or left by the caller before we could finish: as estimated.
        return None  # a JSON answer the caller left and we could not finish reading

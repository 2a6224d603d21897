"""An upstream answer relayed to the caller chunk by chunk, counted, and settled when it ends.

Used by passthrough and by streamed image generation. Chunks go out as they arrive and are
fed to a tally (routing/tally.py) as they are received. A caller that goes away does not end
the upstream's work, nor its bill: closing early keeps reading the upstream's answer into
the tally (bounded by the tally's size cap and a deadline) so the caller pays for what the
upstream produced. The end — complete, cut by the caller, or broken upstream — is handed
once to `on_end`, which settles.

A stream of server-sent events may have its final events stamped (`stamp`): each event is
then passed on whole (an event a client could not act on yet is no later for it), and each
`*.completed` event gets `usage.cost`, the cost of what the answer held up to it. An event
larger than the tally's cap is passed on as it comes, unstamped, and the rest of the answer
with it.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import requests
import urllib3
from django.conf import settings

from billing.metering import Meter
from routing.tally import Counted, ResponseTally, tenant_usage

logger = logging.getLogger(__name__)
UPSTREAM_ERRORS = (requests.RequestException, urllib3.exceptions.HTTPError, OSError)
# A server-sent event ends at a blank line, in any of the three line endings.
_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")
# Called with what the answer held up to and with a final event; the cost to put in it.
Stamp = Callable[[Counted], str | None]


class RelayDeadline(Exception):
    """A priced answer relayed for longer than its budget hold may live."""


@dataclass(frozen=True)
class Ending:
    """How a relayed answer ended, and what it held."""

    # "" (delivered), "client_disconnected", "upstream_stream_broken" or "relay_deadline"
    outcome: str
    counted: Counted | None  # None: complete but not measurable (over the cap, unreadable)


class _EventStamper:
    """Cuts a stream into whole events, feeds each to the tally, and stamps the final ones."""

    def __init__(self, tally: ResponseTally, stamp: Stamp) -> None:
        self._tally, self._stamp = tally, stamp
        self._buffer = bytearray()
        self._scanned = 0  # where the search for the next event's end resumes
        self._whole = True  # False once an event was too large to hold: passed as it comes

    def push(self, chunk: bytes) -> list[bytes]:
        """What may go out now that `chunk` arrived."""
        if not self._whole:
            self._tally.feed(chunk)
            return [chunk]
        self._buffer += chunk
        out = []
        while match := _EVENT_END.search(self._buffer, max(self._scanned - 3, 0)):
            event = bytes(self._buffer[: match.end()])
            del self._buffer[: match.end()]
            self._scanned = 0
            self._tally.feed(event)
            out.append(self._stamped(event))
        self._scanned = len(self._buffer)
        if len(self._buffer) > self._tally.cap:
            self._whole = False
            out.append(self._flush())
        return out

    def finish(self) -> list[bytes]:
        """The upstream ended: what is left of an event that never ended."""
        return [self._flush()] if self._buffer else []

    def _flush(self) -> bytes:
        rest = bytes(self._buffer)
        self._buffer.clear()
        self._tally.feed(rest)
        return rest

    def _stamped(self, event: bytes) -> bytes:
        if b".completed" not in event or self._tally.overflowed:
            return event  # a partial image, or anything else: as it came
        lines = re.split(rb"\r\n|\n|\r", event)
        data = [line[5:].lstrip(b" ") for line in lines if line.startswith(b"data:")]
        try:
            body: Any = orjson.loads(b"\n".join(data))
        except orjson.JSONDecodeError:
            return event
        named = [line[6:].strip() for line in lines if line.startswith(b"event:")]
        kind = body.get("type") if isinstance(body, dict) else None
        kind = kind or (named[-1].decode("utf-8", "replace") if named else "")
        if not isinstance(body, dict) or not str(kind).endswith(".completed"):
            return event
        cost = self._stamp(self._tally.counted)
        if cost is None:
            return event
        body["usage"] = tenant_usage(body.get("usage"), cost)
        out, placed = [], False
        for line in lines:  # the event's other fields as they were, one data line for its data
            if line.startswith(b"data:"):
                if not placed:
                    out.append(b"data: " + orjson.dumps(body))
                placed = True
            elif line:
                out.append(line)
        return b"\n".join(out) + b"\n\n"


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
    stamp: Stamp | None = None  # with a tally of server-sent events: the final events' cost
    _created: float = field(default_factory=time.monotonic)
    _outcome: str = "client_disconnected"
    _upstream_done: bool = False
    _closed: bool = False
    _chunks: Iterator[bytes] | None = field(default=None, repr=False)
    _events: _EventStamper | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.stamp is not None and self.tally is not None and self.tally.streaming:
            self._events = _EventStamper(self.tally, self.stamp)

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
                for piece in self._take(chunk):
                    yield piece
                    # Counted as delivered once the server asks for more: only then was it written.
                    self.meter.bytes_out += len(piece)
            for piece in self._events.finish() if self._events is not None else ():
                yield piece
                self.meter.bytes_out += len(piece)
        except UPSTREAM_ERRORS as exc:
            self._outcome = "upstream_stream_broken"
            logger.warning("stream from upstream broke: %s", type(exc).__name__)
            # Re-raised so the server drops the connection: a clean end would look complete.
            raise
        self._outcome, self._upstream_done = "", True
        # Relayed whole: settled and recorded now, before the server ends the answer (a
        # chunked answer's last chunk), so that a worker killed once its caller has the whole
        # answer has written both. (An answer with a Content-Length is whole at its last
        # byte, which goes out before the relay learns it was the last.)
        self._end()
        self.meter.end()

    def _take(self, chunk: bytes) -> list[bytes]:
        """A chunk as received: counted at once (what the upstream produced is paid for,
        delivered or not), and what of it goes out now."""
        if self._events is not None:
            return self._events.push(chunk)
        if self.tally is not None:
            self.tally.feed(chunk)
        return [chunk]

    def close(self) -> None:
        if self._closed:
            return
        if self._chunks is not None:
            self._chunks.close()  # type: ignore[attr-defined]
        self._end()

    def _end(self) -> None:
        """End the call once: what the caller left is drained, the source closed, the call
        settled on what it produced."""
        if self._closed:
            return
        self._closed = True
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
        deadline = min(time.monotonic() + self.drain_seconds, self._created + self.priced_seconds)
        try:
            for chunk in self.source:
                self._take(chunk)
                if tally.overflowed or tally.unreadable or time.monotonic() > deadline:
                    return
        except UPSTREAM_ERRORS as exc:
            logger.warning("upstream broke while finishing a call: %s", type(exc).__name__)
            return
        if self._events is not None:
            self._events.finish()
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

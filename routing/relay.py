"""A response body relayed to the caller chunk by chunk, settled when it closes.

Used by passthrough and by streamed image generation: chunks go out as they arrive, a
chunk counts as delivered only once the server asks for the next one (so a caller that
went away is not charged for what never reached it), images in an image route's response
are counted as they pass, and closing the body (the end, a disconnect, or an upstream that
broke) releases the budget hold and charges what was delivered.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import requests
import urllib3

from billing import budgets
from billing.metering import Meter
from routing.passthrough import image_routes
from routing.passthrough.form_fields import FormFieldSniffer
from routing.providers.http import read_chunks

__all__ = ["Relay", "read_chunks"]

logger = logging.getLogger(__name__)


@dataclass
class Relay:
    """An iterable body for StreamingHttpResponse; its close() settles the call."""

    source: Iterator[bytes]
    close_source: Callable[[], None]
    status: int
    meter: Meter
    hold: budgets.Hold
    route: image_routes.ImageRoute | None = None
    facts: image_routes.RequestFacts | None = None
    sniffer: FormFieldSniffer | None = None
    tally: image_routes.ResponseTally | None = None
    _outcome: str = "client_disconnected"
    _closed: bool = False
    _chunks: Iterator[bytes] | None = field(default=None, repr=False)

    def __iter__(self) -> Iterator[bytes]:
        self._chunks = self._relay()
        return self._chunks

    def _relay(self) -> Iterator[bytes]:
        try:
            for chunk in self.source:
                yield chunk
                # Counted once the server asks for more: only then was this chunk written.
                self.meter.bytes_out += len(chunk)
                if self.tally is not None:
                    self.tally.feed(chunk)
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            self._outcome = "upstream_stream_broken"
            logger.warning("stream from upstream broke: %s", type(exc).__name__)
            # Re-raised so the server drops the connection: a clean end would look complete.
            raise
        self._outcome = ""

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._chunks is not None:
            self._chunks.close()  # type: ignore[attr-defined]
        self.close_source()
        try:
            self._settle()
        except Exception:
            logger.exception("could not settle streamed call %s", self.meter.request_id)

    def _settle(self) -> None:
        meter = self.meter
        meter.error_code = self._outcome
        meter.finish()
        cost, images = 0, 0
        if self.route is not None and 200 <= self.status < 300:
            facts = self.facts or image_routes.RequestFacts(model="")
            if self.sniffer is not None and self.sniffer.fields:
                facts = image_routes.request_facts(self.route, self.sniffer.fields)
            meter.upstream_model = facts.model
            counted = self._counted()
            if counted is None:  # complete, but too large or encoded past reading
                cost = max(h.amount_micro for h in self.hold.holds) if self.hold.holds else 0
                images = facts.n
                meter.error_code = meter.error_code or "unmetered_response"
            else:
                cost, images = counted.cost_micro(self.route, facts), counted.images
                meter.input_tokens, meter.output_tokens = (
                    counted.input_tokens,
                    counted.output_tokens,
                )
        meter.cost_micro, meter.images = cost, images
        budgets.settle(self.hold, cost_micro=cost, images=images)

    def _counted(self) -> image_routes.Counted | None:
        tally = self.tally
        if tally is None:
            return image_routes.Counted()
        if self._outcome:  # cut short: only events already delivered count
            return tally.counted if tally.streaming else image_routes.Counted()
        return tally.result()

"""The caller's body on a passthrough call: streamed through untouched, or, on an image
route, read whole first (within the body limit) so that what it asks for is known before
the call and the hold covers it."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any

import orjson
from django.conf import settings

from aperture.errors import InvalidRequest, PayloadTooLarge
from billing.metering import Meter
from routing.passthrough.form_fields import FormFieldSniffer, boundary_of

CHUNK_BYTES = 64 * 1024
# A form's image parts spill to disk past this; its text fields are tiny.
SPOOL_MEMORY_BYTES = 1024 * 1024
# The form fields that decide what a call may cost; each must be stated once, plainly.
PRICED_FIELDS = frozenset({"model", "n", "size", "quality"})
# Fields the gateway must read exactly as the upstream will: what the call costs, and the
# prompt the guardrails check. Given twice, or too long to keep, they are a 400.
READ_FIELDS = PRICED_FIELDS | {"prompt"}


@dataclass
class IncomingBody:
    """The caller's request body, read on demand: `read(n)` returns b"" at the end."""

    read: Callable[[int], bytes]
    length: int | None  # None: chunked, length unknown
    content_type: str


def _too_large() -> PayloadTooLarge:
    return PayloadTooLarge(f"Request body exceeds the limit of {settings.MAX_BODY_BYTES} bytes.")


class UploadStream:
    """The caller's body as requests streams it upstream, counted and capped."""

    def __init__(self, body: IncomingBody, meter: Meter) -> None:
        self._body, self._meter = body, meter
        self._sent = 0
        if body.length is not None:
            self.len = body.length  # requests sends it as Content-Length

    def read(self, size: int = -1) -> bytes:
        wanted = CHUNK_BYTES if size is None or size < 0 else size
        if self._body.length is not None:
            wanted = min(wanted, self._body.length - self._sent)
            if wanted <= 0:
                return b""
        chunk = self._body.read(wanted)
        self._sent += len(chunk)
        if self._body.length is None:
            self._meter.bytes_in = self._sent
            if self._sent > settings.MAX_BODY_BYTES:
                raise _too_large()
        return chunk

    def __iter__(self) -> Iterator[bytes]:  # requests streams any iterable with a read()
        while chunk := self.read(CHUNK_BYTES):
            yield chunk


@dataclass
class ReadBody:
    """A whole body, its fields as the gateway reads them, and what to send upstream."""

    fields: dict[str, Any]
    data: bytes | IO[bytes]


def read_fields(body: IncomingBody, meter: Meter) -> ReadBody:
    """Read the whole body (any length or transfer encoding, up to the body limit) and its
    fields: a JSON object, or a multipart form's text parts. 400 if it is neither, since
    the gateway could not tell what the call would cost."""
    if body.length is not None and body.length > settings.MAX_BODY_BYTES:
        raise _too_large()
    boundary = boundary_of(body.content_type)
    if boundary is not None:
        return _read_form(body, meter, FormFieldSniffer(boundary))
    raw = b"".join(_chunks(body, meter))
    if not raw:
        return ReadBody(fields={}, data=b"")
    try:
        fields = orjson.loads(raw)
    except orjson.JSONDecodeError:
        fields = None
    if not isinstance(fields, dict):
        raise InvalidRequest(
            "The body of an image route must be a JSON object or a multipart form.",
            code="invalid_body",
        )
    return ReadBody(fields=fields, data=raw)


def _read_form(body: IncomingBody, meter: Meter, sniffer: FormFieldSniffer) -> ReadBody:
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES)  # noqa: SIM115
    try:
        for chunk in _chunks(body, meter):
            sniffer.feed(chunk)
            spool.write(chunk)
        sniffer.finish()
    except BaseException:
        spool.close()
        raise
    if sniffer.failed:
        spool.close()
        raise InvalidRequest("The multipart form could not be read.", code="invalid_body")
    if unclear := sorted(sniffer.unclear & READ_FIELDS):
        spool.close()
        raise InvalidRequest(
            f"The form field '{unclear[0]}' is given more than once or is too long.",
            param=unclear[0],
            code="invalid_body",
        )
    spool.seek(0)
    return ReadBody(fields=dict(sniffer.fields), data=spool)


def _chunks(body: IncomingBody, meter: Meter) -> Iterator[bytes]:
    received = 0
    remaining = body.length
    while remaining is None or remaining > 0:
        wanted = CHUNK_BYTES if remaining is None else min(CHUNK_BYTES, remaining)
        chunk = body.read(wanted)
        if not chunk:
            return
        received += len(chunk)
        meter.bytes_in = received
        if received > settings.MAX_BODY_BYTES:
            raise _too_large()
        if remaining is not None:
            remaining -= len(chunk)
        yield chunk

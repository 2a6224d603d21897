"""What an image answer held: its images and token counts, read as it streams past.

Neutral ground for every answer relayed as it comes (a /v1 stream, a passthrough call): each
is counted the same way, and a buffered /v1 answer is priced from the same `Counted`. JSON
bodies and server-sent events are read (gzip too), keeping at most `cap` bytes; an answer
over the cap, or in an encoding that cannot be read, is reported as unmeasured (None), and
the pipeline charges it at the estimate. Where an answer does not say its images' size
(Gemini's), the first image's header does.
"""

from __future__ import annotations

import base64
import binascii
import io
import zlib
from dataclasses import dataclass, field
from typing import Any

import orjson
from django.conf import settings
from PIL import Image

from billing.pricing import token_count


@dataclass
class Counted:
    images: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    usage: dict[str, Any] | None = None
    size: str | None = None
    quality: str | None = None


def _add_openai_usage(counted: Counted, usage: Any) -> None:
    if not isinstance(usage, dict):
        return
    counted.input_tokens += token_count(usage.get("input_tokens"))
    counted.output_tokens += token_count(usage.get("output_tokens"))
    if counted.usage is None:
        counted.usage = dict(usage)
        return
    # Several completed events: their token counts add up.
    total = counted.usage
    for name in ("input_tokens", "output_tokens", "total_tokens"):
        total[name] = token_count(total.get(name)) + token_count(usage.get(name))
    details = dict(total.get("input_tokens_details") or {})
    for name, value in (usage.get("input_tokens_details") or {}).items():
        details[name] = token_count(details.get(name)) + token_count(value)
    total["input_tokens_details"] = details


def _take_openai_echoes(counted: Counted, body: dict[str, Any]) -> None:
    for name in ("size", "quality"):
        value = body.get(name)
        if isinstance(value, str) and value != "auto":
            setattr(counted, name, value)


# Enough of an image for its header (PNG's is in the first 33 bytes; JPEG's frame header
# follows its metadata).
HEAD_BYTES = 64 * 1024


def image_size(*, data: bytes | None = None, b64: str | None = None) -> str | None:
    """ "WxH" of an image, read from its header alone (bytes, or their base64); None if it
    cannot be."""
    head = data[:HEAD_BYTES] if data is not None else None
    if head is None and isinstance(b64, str):
        try:
            head = base64.b64decode(b64[: HEAD_BYTES // 3 * 4])
        except (binascii.Error, ValueError):
            return None
    if not head:
        return None
    try:
        with Image.open(io.BytesIO(head)) as opened:
            return f"{opened.width}x{opened.height}"
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


def _gemini_images(body: dict[str, Any]) -> list[str]:
    """The base64 of each image in a generateContent answer."""
    images = []
    for candidate in body.get("candidates") or []:
        parts = ((candidate or {}).get("content") or {}).get("parts") or []
        for part in parts:
            inline = (part or {}).get("inlineData") or (part or {}).get("inline_data") or {}
            mime = inline.get("mimeType") or inline.get("mime_type") or ""
            data = inline.get("data")
            if isinstance(mime, str) and mime.startswith("image/") and data:
                images.append(data)
    return images


def _take_gemini(counted: Counted, body: dict[str, Any]) -> None:
    images = _gemini_images(body)
    counted.images += len(images)
    if images and counted.size is None:  # Gemini does not say: priced by a resolution tier
        counted.size = image_size(b64=images[0])
    usage = body.get("usageMetadata")
    if isinstance(usage, dict):  # streamed chunks repeat the running totals: keep the last
        counted.input_tokens = token_count(usage.get("promptTokenCount"))
        counted.output_tokens = token_count(usage.get("candidatesTokenCount"))


def count_json_body(family: str, raw: bytes) -> Counted | None:
    """A whole JSON response; None if it is not one."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(body, dict):
        return None
    counted = Counted()
    if family == "gemini":
        _take_gemini(counted, body)
        return counted
    data = body.get("data")
    items = data if isinstance(data, list) else []
    counted.images = sum(
        1 for item in items if isinstance(item, dict) and (item.get("b64_json") or item.get("url"))
    )
    _add_openai_usage(counted, body.get("usage"))
    _take_openai_echoes(counted, body)
    return counted


def take_event(family: str, counted: Counted, event: str, data: bytes) -> None:
    """One server-sent event of an image stream."""
    if family == "openai" and event and not event.endswith(".completed"):
        return  # a partial image: not charged
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError:
        return  # "[DONE]" and the like
    if not isinstance(body, dict):
        return
    if family == "gemini":
        _take_gemini(counted, body)
        return
    kind = str(body.get("type") or event)
    if kind.endswith(".completed"):
        counted.images += 1
        _add_openai_usage(counted, body.get("usage"))
        _take_openai_echoes(counted, body)


@dataclass
class ResponseTally:
    """Reads an image route's response as it streams to the caller, keeping at most `cap`."""

    family: str  # "openai" (OpenAI's images API shape) or "gemini" (generateContent)
    content_type: str
    content_encoding: str
    cap: int
    counted: Counted = field(default_factory=Counted)
    overflowed: bool = False
    unreadable: bool = False
    _kept: bytearray = field(default_factory=bytearray)
    _decoder: Any = None
    _event: str = ""
    _data: bytearray = field(default_factory=bytearray)
    _line: bytearray = field(default_factory=bytearray)

    def __post_init__(self) -> None:
        encoding = self.content_encoding.strip().lower()
        if encoding in ("gzip", "x-gzip", "deflate"):
            self._decoder = zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib header
        elif encoding not in ("", "identity"):
            self.unreadable = True  # e.g. br: forwarded untouched, but not measurable

    @property
    def streaming(self) -> bool:
        return self.content_type.split(";")[0].strip().lower() == "text/event-stream"

    def feed(self, chunk: bytes) -> None:
        if self.unreadable or self.overflowed:
            return
        if self._decoder is not None:
            try:  # bounded: a small gzip chunk may inflate to gigabytes
                chunk = self._decoder.decompress(chunk, self.cap + 1)
            except zlib.error:
                self.unreadable = True
                return
            if self._decoder.unconsumed_tail:
                self.overflowed, self._kept = True, bytearray()
                return
        if self.streaming:
            self._feed_events(chunk)
            return
        if len(self._kept) + len(chunk) > self.cap:
            self.overflowed = True
            self._kept = bytearray()
            return
        self._kept += chunk

    def _feed_events(self, chunk: bytes) -> None:
        self._line += chunk
        while (end := self._line.find(b"\n")) >= 0:
            line = bytes(self._line[:end]).rstrip(b"\r")
            del self._line[: end + 1]
            self._take_line(line)
        if len(self._line) + len(self._data) > self.cap:
            self.overflowed = True

    def _take_line(self, line: bytes) -> None:
        if not line:  # a blank line ends the event
            if self._data:
                take_event(self.family, self.counted, self._event, bytes(self._data))
            self._event, self._data = "", bytearray()
        elif line.startswith(b"event:"):
            self._event = line[6:].strip().decode("utf-8", "replace")
        elif line.startswith(b"data:"):
            if self._data:
                self._data += b"\n"
            self._data += line[5:].lstrip(b" ")

    def result(self) -> Counted | None:
        """What the whole response held; None when it could not be measured."""
        if self.unreadable or self.overflowed:
            return None
        if self.streaming:
            if self._line:
                self._take_line(bytes(self._line).rstrip(b"\r"))
            self._take_line(b"")
            return self.counted
        return count_json_body(self.family, bytes(self._kept))


def for_answer(family: str, content_type: str, content_encoding: str) -> ResponseTally:
    """A tally for one answer, keeping at most APERTURE_PASSTHROUGH_METER_MAX_BYTES of it."""
    return ResponseTally(
        family=family,
        content_type=content_type,
        content_encoding=content_encoding,
        cap=settings.PASSTHROUGH_METER_MAX_BYTES,
    )


# The upstream's usage fields a tenant sees: token counts only. A provider's own price
# (OpenRouter's `cost`, `cost_details`) is the operator's: a marked-up tenant never sees it.
TENANT_USAGE_FIELDS = frozenset(
    {
        "input_tokens",
        "output_tokens",
        "total_tokens",
        "input_tokens_details",
        "output_tokens_details",
        "prompt_tokens",
        "completion_tokens",
    }
)


def tenant_usage(usage: object, cost: str) -> dict[str, Any]:
    """`usage` as a tenant sees it: the provider's token counts and what it was charged."""
    kept = (
        {name: value for name, value in usage.items() if name in TENANT_USAGE_FIELDS}
        if isinstance(usage, dict)
        else {}
    )
    return {**kept, "cost": cost}

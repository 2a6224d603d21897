"""The small text fields of a multipart body, read as its chunks go by.

An image edit names its model, n, size and quality in text parts that may come before or
after megabytes of image parts; the parser sees every chunk once and keeps only text parts
of at most a kilobyte, so pricing an edit costs no copy of its images in memory. A text
field given twice or too long to keep is noted as unclear, and a form cut before its
closing boundary as failed: the caller cannot have it priced.
"""

from __future__ import annotations

from email.message import Message

from python_multipart.multipart import MultipartParser

MAX_FIELD_BYTES = 1024
# The prompt is read whole, whatever its length (the guardrails check it).
MAX_PROMPT_BYTES = 64 * 1024
MAX_FIELDS = 64


def boundary_of(content_type: str) -> bytes | None:
    message = Message()
    message["content-type"] = content_type
    if message.get_content_type() != "multipart/form-data":
        return None
    names = [name.strip().lower() for name, _value in message.get_params() or []]
    if names.count("boundary") != 1:
        return None  # two boundaries: servers disagree on which one counts
    boundary = message.get_param("boundary")
    return boundary.encode("latin-1") if isinstance(boundary, str) and boundary else None


class FormFieldSniffer:
    """Feed it the body's chunks; `fields` holds the text parts seen so far."""

    def __init__(self, boundary: bytes) -> None:
        self.fields: dict[str, str] = {}
        self.failed = False
        self.complete = False  # the closing boundary was seen
        # Text fields seen more than once, or too long to keep: a reader cannot trust them.
        self.unclear: set[str] = set()
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._disposition = ""
        self._value = bytearray()
        self._too_long = False
        self._parser = MultipartParser(
            boundary,
            callbacks={
                "on_part_begin": self._part_begin,
                "on_header_field": self._header_field,
                "on_header_value": self._header_value_data,
                "on_header_end": self._header_end,
                "on_part_data": self._part_data,
                "on_part_end": self._part_end,
                "on_end": self._end,
            },
        )

    def feed(self, chunk: bytes) -> None:
        if self.failed:
            return
        try:
            self._parser.write(chunk)
        except Exception:  # noqa: BLE001 - a malformed form is refused (body.py), not a 500
            self.failed = True

    def finish(self) -> None:
        """The body has ended: a form cut before its closing boundary cannot be read."""
        if not self.complete:
            self.failed = True

    def _end(self) -> None:
        self.complete = True

    def _part_begin(self) -> None:
        self._disposition, self._value, self._too_long = "", bytearray(), False
        self._limit: int | None = None

    def _part_name(self) -> str | None:
        message = Message()
        message["content-disposition"] = self._disposition
        name = message.get_param("name", header="content-disposition")
        return name if isinstance(name, str) else None

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        if bytes(self._header_name).lower() == b"content-disposition":
            if self._disposition:
                self.failed = True  # two dispositions: servers disagree on which one counts
            self._disposition = bytes(self._header_value).decode("latin-1")
        self._header_name, self._header_value = bytearray(), bytearray()

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._too_long:
            return
        if self._limit is None:
            self._limit = MAX_PROMPT_BYTES if self._part_name() == "prompt" else MAX_FIELD_BYTES
        if len(self._value) + end - start > self._limit:
            self._too_long, self._value = True, bytearray()
            return
        self._value += data[start:end]

    def _part_end(self) -> None:
        message = Message()
        message["content-disposition"] = self._disposition
        name = message.get_param("name", header="content-disposition")
        is_file = message.get_param("filename", header="content-disposition") is not None
        if name is None:
            return
        if not isinstance(name, str):  # an RFC 2231 name*=: read differently by servers
            self.failed = True
            return
        if is_file or self._too_long or name in self.fields:
            self.unclear.add(name)  # a file, a long value or a repeat: not a plain field
        elif len(self.fields) < MAX_FIELDS:
            self.fields[name] = bytes(self._value).decode("utf-8", "replace")
        else:
            self.failed = True  # more text fields than kept: one dropped could be a priced one

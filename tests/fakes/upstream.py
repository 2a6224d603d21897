"""A fake OpenAI / Azure OpenAI images upstream: a real HTTP server on 127.0.0.1.

It speaks the real wire formats (providers.md §1, §2), answers with real images at the
requested size, records every request, and can be told to misbehave for the next requests:
an error status (with Retry-After), a delay, a malformed body or a reset connection.

In-process: `with FakeUpstream() as fake: fake.url …`. As its own process (benchmarks):
`python -m tests.fakes.upstream --port 9100 --delay 0.2`; then `POST /_control/delay`.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import socket
import struct
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from PIL import Image


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


@dataclass
class Misbehave:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    malformed: bool = False
    reset: bool = False


def png(
    width: int, height: int, fmt: str = "png", color: tuple[int, int, int] = (30, 120, 200)
) -> bytes:
    buffer = io.BytesIO()
    image = Image.new("RGB", (width, height), color)
    image.save(buffer, {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}[fmt])
    return buffer.getvalue()


def _error(message: str, type_: str = "invalid_request_error", code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 4096
    fake: FakeUpstream

    def get_request(self) -> tuple[socket.socket, Any]:
        connection, address = super().get_request()
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return connection, address


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    # --- plumbing ---------------------------------------------------------------------
    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(
        self, status: int, payload: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        # One write for head and body: separate small writes meet Nagle and delayed ACKs.
        lines = [
            f"HTTP/1.1 {status} {self.responses.get(status, ('',))[0]}",
            f"Content-Type: {content_type}",
            f"Content-Length: {len(payload)}",
            f"x-request-id: fake_{uuid.uuid4().hex[:12]}",
        ] + [f"{name}: {value}" for name, value in (headers or {}).items()]
        self.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload)

    def _json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(body).encode(), "application/json", headers)

    def _reset(self) -> None:
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True

    # --- routes -----------------------------------------------------------------------
    def do_GET(self) -> None:
        fake = self.server.fake
        path = urlsplit(self.path).path
        if path.startswith("/files/") and path[7:] in fake.files:
            data, content_type = fake.files[path[7:]]
            self._send(200, data, content_type)
            return
        self._json(404, _error("not found"))

    def do_POST(self) -> None:
        fake = self.server.fake
        parts = urlsplit(self.path)
        raw = self._read_body()
        if parts.path == "/_control/delay":
            fake.delay = float(json.loads(raw)["delay"])
            self._json(200, {"delay": fake.delay})
            return
        try:
            body = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            body = raw.decode("latin-1")
        recorded = Recorded(
            method="POST",
            path=parts.path,
            query=parse_qs(parts.query),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
        )
        fake.record(recorded)
        behaviour = fake.next_behaviour()
        delay = behaviour.delay if behaviour else fake.delay
        if delay:
            time.sleep(delay)
        if behaviour is not None:
            if behaviour.reset:
                self._reset()
                return
            if behaviour.malformed:
                self._send(
                    behaviour.status, b"<html>oops, not json", "text/html", behaviour.headers
                )
                return
            if behaviour.status != 200 or behaviour.body is not None:
                self._json(
                    behaviour.status,
                    behaviour.body or _error("scripted failure"),
                    behaviour.headers,
                )
                return
        if not self._authorized(recorded):
            self._json(401, _error("Incorrect API key provided.", code="invalid_api_key"))
            return
        if parts.path == "/v1/images/generations":
            self._generate(body, model=str((body or {}).get("model", "")))
        elif parts.path.startswith("/openai/deployments/") and parts.path.endswith(
            "/images/generations"
        ):
            if "api-version" not in recorded.query:
                self._json(404, _error("Resource not found"))
                return
            self._generate(body, model=parts.path.split("/")[3])
        else:
            self._json(404, _error(f"Unknown path {parts.path}"))

    def _authorized(self, recorded: Recorded) -> bool:
        expected = self.server.fake.expected_secret
        if expected is None:
            return True
        return (
            recorded.headers.get("authorization") == f"Bearer {expected}"
            or recorded.headers.get("api-key") == expected
        )

    def _generate(self, body: Any, model: str) -> None:
        if not isinstance(body, dict) or not body.get("prompt"):
            self._json(400, _error("'prompt' is required", code="missing_prompt"))
            return
        size = body.get("size") or "1024x1024"
        width, height = (1024, 1024) if size == "auto" else map(int, size.split("x"))
        fmt = body.get("output_format", "png")
        data = png(width, height, fmt)
        dall_e = model.startswith("dall-e")
        items = []
        for _ in range(int(body.get("n", 1))):
            if dall_e and body.get("response_format", "url") == "url":
                file_id = f"{uuid.uuid4().hex}.png"
                self.server.fake.files[file_id] = (data, "image/png")
                items.append(
                    {"url": f"{self.server.fake.url}/files/{file_id}", "revised_prompt": None}
                )
            else:
                items.append({"b64_json": base64.b64encode(data).decode(), "revised_prompt": None})
        response: dict[str, Any] = {"created": int(time.time()), "data": items}
        if not dall_e:
            response.update(
                background=body.get("background", "opaque"),
                output_format=fmt,
                quality=body.get("quality", "medium"),
                size=f"{width}x{height}",
                usage={
                    "input_tokens": 12,
                    "output_tokens": 1056,
                    "total_tokens": 1068,
                    "input_tokens_details": {"text_tokens": 12, "image_tokens": 0},
                },
            )
        self._json(200, response)


class FakeUpstream:
    def __init__(
        self, port: int = 0, expected_secret: str | None = None, delay: float = 0.0
    ) -> None:
        self.expected_secret = expected_secret
        self.delay = delay
        self.requests: list[Recorded] = []
        self.files: dict[str, tuple[bytes, str]] = {}
        self._script: list[Misbehave] = []
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", port), _Handler)
        self._server.fake = self
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> FakeUpstream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def record(self, recorded: Recorded) -> None:
        with self._lock:
            self.requests.append(recorded)

    def misbehave(self, *behaviours: Misbehave) -> None:
        """The next len(behaviours) requests get these answers, in order."""
        with self._lock:
            self._script.extend(behaviours)

    def next_behaviour(self) -> Misbehave | None:
        with self._lock:
            return self._script.pop(0) if self._script else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()
    fake = FakeUpstream(port=args.port, delay=args.delay)
    fake.requests = _Discard()  # a long benchmark must not grow memory
    print(f"fake upstream on {fake.url}", flush=True)
    fake._server.serve_forever()


class _Discard(list):  # type: ignore[type-arg]
    def append(self, item: Any) -> None:
        pass


if __name__ == "__main__":
    main()

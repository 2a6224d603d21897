"""A fake image-provider upstream: a real HTTP server on 127.0.0.1.

It speaks the real wire formats of OpenAI and Azure OpenAI (docs/providers.md §1, §2; edits
as multipart or JSON), Gemini's generateContent (§3) and Stability's multipart generate (for
passthrough), answers with real
images at the requested size, streams server-sent events for `stream: true` (the final
event can be held back until the test releases it), serves large bodies in chunks, records
every request byte for byte, and can be told to misbehave for the next requests: an error
status (with Retry-After), a delay, a malformed body or a reset connection. Headers a test
sets in `response_headers` (cookies, CORS) go out on every answer.

In-process: `with FakeUpstream() as fake: fake.url …`. As its own process (benchmarks):
`python -m tests.fakes.upstream --port 9100 --delay 0.2`; then `POST /_control/delay`.
"""

from __future__ import annotations

import argparse
import base64
import functools
import io
import json
import os
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
    raw: bytes = b""  # the body exactly as received
    target: str = ""  # the request line's target exactly as received (path and query)


@dataclass
class Misbehave:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    malformed: bool = False
    reset: bool = False


_PNG_LOCK = threading.Lock()


def png(
    width: int, height: int, fmt: str = "png", color: tuple[int, int, int] = (30, 120, 200)
) -> bytes:
    # Under the lock, a burst of first requests for one image waits for a single encoding
    # instead of each making its own (1,000 threads at once: 4 GB and 20 s of CPU).
    with _PNG_LOCK:
        return _png(width, height, fmt, color)


# Memoized: encoding a 1024x1024 PNG costs ~20 ms of CPU, which would make the fake, not the
# gateway, the bottleneck of a benchmark. The bytes are immutable: every caller may share them.
@functools.lru_cache(maxsize=256)
def _png(width: int, height: int, fmt: str, color: tuple[int, int, int]) -> bytes:
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
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            return self._read_chunked()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(parts)
            parts.append(self.rfile.read(size))
            self.rfile.readline()

    def _start_chunked(self, status: int, content_type: str, headers: dict[str, str]) -> None:
        lines = [
            f"HTTP/1.1 {status} {self.responses.get(status, ('',))[0]}",
            f"Content-Type: {content_type}",
            "Transfer-Encoding: chunked",
        ] + [f"{name}: {value}" for name, value in headers.items()]
        lines += [f"{name}: {value}" for name, value in self.server.fake.response_headers]
        self.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    def _chunk(self, data: bytes) -> None:
        if data and self.server.fake.keep_bodies:  # recorded first, as in _send
            self.server.fake.streamed += data
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

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
        lines += [f"{name}: {value}" for name, value in self.server.fake.response_headers]
        if self.server.fake.keep_bodies:  # recorded first: the caller may read it at once
            self.server.fake.sent.append(payload)
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
        self._other("GET")

    def do_PUT(self) -> None:
        self._other("PUT")

    def do_OPTIONS(self) -> None:
        self._other("OPTIONS")

    def do_HEAD(self) -> None:
        """The headers a GET would have, and no body."""
        recorded = self._record("HEAD")
        head = [
            "HTTP/1.1 200 OK",
            "Content-Type: application/json",
            "Content-Length: 1234",
            "x-upstream-echo: yes",
        ]
        self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode())
        assert recorded.raw == b""

    def do_DELETE(self) -> None:
        self._other("DELETE")

    def do_PATCH(self) -> None:
        self._other("PATCH")

    def _record(self, method: str) -> Recorded:
        parts = urlsplit(self.path)
        raw = self._read_body()
        try:
            body = json.loads(raw) if raw else None
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = raw.decode("latin-1")
        recorded = Recorded(
            method=method,
            path=parts.path,
            query=parse_qs(parts.query),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
            raw=raw,
            # http.server folds a leading "//" in self.path; the request line has it as sent.
            target=self.requestline.split(" ")[1],
        )
        self.server.fake.record(recorded)
        return recorded

    def _other(self, method: str) -> None:
        """Routes of any method: an echo, a large body, a redirect."""
        recorded = self._record(method)
        path = recorded.path
        if path == "/v1/redirect":  # open, like a CDN's: no key needed
            self._send(302, b"", "text/plain", {"Location": recorded.query["to"][0]})
        elif not self._authorized(recorded):
            self._json(401, _error("Incorrect API key provided.", code="invalid_api_key"))
        elif path == "/v1/big":
            self._big(int(recorded.query["bytes"][0]))
        elif path == "/v1/get_result":
            self._bfl_result(recorded.query["id"][0])
        elif path.startswith("/v1/predictions/"):
            self._replicate_state(path.rsplit("/", 1)[1])
        else:
            self._json(
                200,
                {"method": method, "target": recorded.target, "bytes": len(recorded.raw)},
                {
                    "x-upstream-echo": "yes",
                    "Cache-Control": "no-store",
                    "Allow": "GET",
                    "Vary": "Origin",
                },
            )

    def _big(self, size: int) -> None:
        """`size` bytes of a repeating pattern, written a megabyte at a time."""
        block = bytes(range(256)) * 4096
        head = "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
        self.wfile.write(f"{head}Content-Length: {size}\r\n\r\n".encode())
        remaining = size
        while remaining > 0:
            piece = block[: min(remaining, len(block))]
            self.wfile.write(piece)
            remaining -= len(piece)

    def do_POST(self) -> None:
        fake = self.server.fake
        parts = urlsplit(self.path)
        if parts.path == "/_control/delay":
            fake.delay = float(json.loads(self._read_body())["delay"])
            self._json(200, {"delay": fake.delay})
            return
        if parts.path == "/_control/image_bytes":
            fake.set_image_bytes(int(json.loads(self._read_body())["bytes"]))
            self._json(200, {"bytes": len(fake.big_image or b"")})
            return
        recorded = self._record("POST")
        body = recorded.body
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
        if parts.path == "/v1/moderations":
            self._moderate(body)
        elif isinstance(body, dict) and str(body.get("model", "")).startswith("grok"):
            self._xai(body)
        elif parts.path == "/api/v3/images/generations":
            self._seedream(body)
        elif parts.path == "/api/v1/chat/completions":
            self._openrouter(body)
        elif parts.path == "/api/v1/images":
            self._openrouter_images(body)
        elif parts.path == "/api/paas/v4/images/generations":
            self._zai(body)
        elif parts.path.startswith("/v1/flux"):
            self._bfl_submit(body)
        elif parts.path == "/v1/predictions" or (
            parts.path.startswith("/v1/models/") and parts.path.endswith("/predictions")
        ):
            self._replicate_create(recorded)
        elif parts.path.startswith("/v1/predictions/") and parts.path.endswith("/cancel"):
            self._replicate_cancel(parts.path.split("/")[3])
        elif (
            parts.path == "/v1/images/generations" and isinstance(body, dict) and body.get("stream")
        ):
            self._stream(body)
        elif parts.path == "/v1/images/generations":
            self._generate(body, model=str((body or {}).get("model", "")))
        elif parts.path == "/v1/images/edits" or (
            parts.path.startswith("/openai/deployments/") and parts.path.endswith("/images/edits")
        ):
            self._edit(recorded)
        elif parts.path.startswith("/v1beta/models/") and parts.path.endswith(":generateContent"):
            self._gemini(body)
        elif parts.path.startswith("/v1beta/models/") and parts.path.endswith(":predict"):
            self._imagen(body)
        elif parts.path.startswith("/v2beta/stable-image/generate/"):
            self._stability(recorded)
        elif parts.path.startswith("/openai/deployments/") and parts.path.endswith(
            "/images/generations"
        ):
            if "api-version" not in recorded.query:
                self._json(404, _error("Resource not found"))
                return
            if isinstance(body, dict) and body.get("stream"):
                self._stream(body)
                return
            self._generate(body, model=parts.path.split("/")[3])
        else:
            self._other_post(recorded)

    def _other_post(self, recorded: Recorded) -> None:
        self._json(
            200,
            {"method": "POST", "target": recorded.target, "bytes": len(recorded.raw)},
            {"x-upstream-echo": "yes"},
        )

    def _authorized(self, recorded: Recorded) -> bool:
        expected = self.server.fake.expected_secret
        if expected is None:
            return True
        return expected in (
            recorded.headers.get("authorization", "").removeprefix("Bearer "),
            recorded.headers.get("api-key"),
            recorded.headers.get("x-goog-api-key"),
            recorded.headers.get("x-key"),
        )

    def _stream(self, body: dict[str, Any], prefix: str = "image_generation") -> None:
        """OpenAI's image SSE: `partial_images` partial events, then the completed one."""
        fake = self.server.fake
        size = body.get("size") or "1024x1024"
        width, height = (1024, 1024) if size == "auto" else map(int, size.split("x"))
        common = {"size": f"{width}x{height}", "quality": "medium", "background": "opaque"}
        self._start_chunked(200, "text/event-stream", {"Cache-Control": "no-cache"})
        for index in range(int(body.get("partial_images") or 0)):
            event = {
                "type": f"{prefix}.partial_image",
                "b64_json": base64.b64encode(png(32, 32, color=(index, 0, 0))).decode(),
                "partial_image_index": index,
                "created_at": int(time.time()),
                "output_format": "png",
                **common,
            }
            self._chunk(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode())
        fake.final_held.wait(timeout=10)
        if fake.break_streams:
            self._reset()  # the upstream dies before its final event
            return
        image = os.urandom(fake.final_bytes) if fake.final_bytes else png(width, height)
        final = {
            "type": f"{prefix}.completed",
            "b64_json": base64.b64encode(image).decode(),
            "created_at": int(time.time()),
            "output_format": "png",
            "usage": {
                "input_tokens": 12,
                "output_tokens": 1056,
                "total_tokens": 1068,
                "input_tokens_details": {"text_tokens": 12, "image_tokens": 0},
            },
            **common,
        }
        self._chunk(f"event: {final['type']}\ndata: {json.dumps(final)}\n\n".encode())
        fake.final_sent.set()
        self._chunk(b"")

    def _edit(self, recorded: Recorded) -> None:
        """OpenAI's edit, multipart or JSON (`images: [{image_url}]`): one image back per `n`,
        at the size asked."""
        content_type = recorded.headers.get("content-type", "")
        if content_type.startswith("application/json") and isinstance(recorded.body, dict):
            fields = self._json_edit_fields(recorded.body)
            if fields is None:
                return
        elif not content_type.startswith("multipart/form-data"):
            self._json(400, _error("multipart/form-data is required"))
            return
        else:
            fields = _form_fields(recorded.raw, content_type)
            if not any(part.name in ("image", "image[]") for part in form_parts(recorded)):
                self._json(400, _error("image is required", code="missing_image"))
                return
        if fields.get("stream") == "true":
            self._stream(
                {**fields, "partial_images": int(fields.get("partial_images", 0))}, "image_edit"
            )
            return
        size = fields.get("size") or "1024x1024"
        width, height = (1024, 1024) if size == "auto" else map(int, size.split("x"))
        data = png(width, height, fields.get("output_format", "png"))
        items = [{"b64_json": base64.b64encode(data).decode()}] * int(fields.get("n", "1"))
        self._json(200, {"created": int(time.time()), "data": items, "size": f"{width}x{height}"})

    def _json_edit_fields(self, body: dict[str, Any]) -> dict[str, str] | None:
        """A JSON edit's fields as a form's text fields; None once it has been refused (each
        image must be a data URL: the fake fetches nothing)."""
        images = body.get("images")
        if not isinstance(images, list) or not images:
            self._json(400, _error("images is required", code="missing_image"))
            return None
        for item in images + ([body["mask"]] if "mask" in body else []):
            url = item.get("image_url", "") if isinstance(item, dict) else ""
            if not url.startswith("data:image/"):
                self._json(400, _error("image_url must be a data URL here", code="invalid_url"))
                return None
        return {
            name: json.dumps(value) if isinstance(value, bool) else str(value)
            for name, value in body.items()
            if name not in ("images", "mask")
        }

    def _replicate_create(self, recorded: Recorded) -> None:
        """Replicate (docs/providers.md §9.1): done at once under `Prefer: wait` unless the test
        makes the prediction slower than the wait."""
        fake = self.server.fake
        prediction = uuid.uuid4().hex
        fake.replicate_predictions[prediction] = [fake.replicate_processing, recorded.body]
        self._replicate_state(prediction)

    def _replicate_cancel(self, prediction: str) -> None:
        """`POST /v1/predictions/{id}/cancel`: the prediction stops, as `canceled`."""
        fake = self.server.fake
        if prediction not in fake.replicate_predictions:
            self._json(404, {"detail": "Not found."})
            return
        fake.replicate_predictions[prediction][0] = "canceled"
        self._replicate_state(prediction)

    def _replicate_state(self, prediction: str) -> None:
        fake = self.server.fake
        state = fake.replicate_predictions[prediction]
        urls = {
            "get": f"{fake.url}/v1/predictions/{prediction}",
            "cancel": f"{fake.url}/v1/predictions/{prediction}/cancel",
        }
        if state[0] == "canceled":
            self._json(200, {"id": prediction, "status": "canceled", "output": None, "urls": urls})
            return
        if state[0] > 0:
            state[0] -= 1
            self._json(
                201, {"id": prediction, "status": "processing", "output": None, "urls": urls}
            )
            return
        if fake.replicate_error:
            self._json(
                200,
                {
                    "id": prediction,
                    "status": "failed",
                    "output": None,
                    "error": fake.replicate_error,
                    "urls": urls,
                },
            )
            return
        fmt = ((state[1] or {}).get("input") or {}).get("output_format", "webp")
        fmt = "jpeg" if fmt == "jpg" else fmt
        fake.files[f"{prediction}.{fmt}"] = (png(40, 40, fmt), f"image/{fmt}")
        self._json(
            201,
            {
                "id": prediction,
                "status": "succeeded",
                "urls": urls,
                "output": [f"{fake.url}/files/{prediction}.{fmt}"],
            },
        )

    def _bfl_submit(self, body: Any) -> None:
        """BFL (docs/providers.md §8): a task id and its polling URL; the work happens later."""
        fake = self.server.fake
        task = uuid.uuid4().hex
        fake.bfl_tasks[task] = [fake.bfl_pending, dict(body or {})]
        self._json(200, {"id": task, "polling_url": f"{fake.url}/v1/get_result?id={task}"})

    def _bfl_result(self, task: str) -> None:
        fake = self.server.fake
        if task not in fake.bfl_tasks:
            self._json(200, {"id": task, "status": "Task not found"})
            return
        state = fake.bfl_tasks[task]
        if state[0] > 0:
            state[0] -= 1
            self._json(200, {"id": task, "status": "Pending", "result": None, "progress": 0.5})
            return
        if fake.bfl_outcome != "Ready":
            self._json(200, {"id": task, "status": fake.bfl_outcome, "result": None})
            return
        body = state[1]
        fmt = body.get("output_format", "jpeg")
        width, height = body.get("width", 64), body.get("height", 48)
        fake.files[f"{task}.{fmt}"] = (png(width, height, fmt), f"image/{fmt}")
        self._json(
            200,
            {
                "id": task,
                "status": "Ready",
                "result": {
                    "sample": f"{fake.url}/files/{task}.{fmt}",
                    "seed": body.get("seed", 1),
                    "prompt": body.get("prompt"),
                },
            },
        )

    def _stability(self, recorded: Recorded) -> None:
        """Stability v2beta (docs/providers.md §7): multipart in; bytes or JSON out by Accept."""
        content_type = recorded.headers.get("content-type", "")
        if not content_type.startswith("multipart/form-data"):
            self._json(400, {"name": "bad_request", "errors": ["multipart/form-data required"]})
            return
        fields = _form_fields(recorded.raw, content_type)
        if not fields.get("prompt"):
            self._json(400, {"name": "bad_request", "errors": ["prompt: is required"]})
            return
        fmt = fields.get("output_format", "png")
        data = png(64, 64, fmt)
        if recorded.headers.get("accept") == "application/json":
            self._json(
                200,
                {
                    "image": base64.b64encode(data).decode(),
                    "finish_reason": "SUCCESS",
                    "seed": int(fields.get("seed", 42)),
                },
            )
            return
        self._send(200, data, f"image/{fmt}", {"finish-reason": "SUCCESS", "seed": "7"})

    def _zai(self, body: Any) -> None:
        """Z.AI CogView (docs.z.ai): one image URL; sizes and user_id checked as documented."""
        body = body if isinstance(body, dict) else {}
        width, height = map(int, str(body.get("size", "1024x1024")).split("x"))
        if not (
            512 <= width <= 2048
            and 512 <= height <= 2048
            and width % 16 == 0
            and height % 16 == 0
            and width * height <= 2**21
        ):
            self._json(400, {"error": {"code": "1214", "message": "size is invalid"}})
            return
        if "user_id" in body and not 6 <= len(body["user_id"]) <= 128:
            self._json(400, {"error": {"code": "1214", "message": "user_id length invalid"}})
            return
        file_id = f"{uuid.uuid4().hex}.png"
        self.server.fake.files[file_id] = (png(width // 16, height // 16), "image/png")
        self._json(
            200,
            {
                "created": int(time.time()),
                "data": [{"url": f"{self.server.fake.url}/files/{file_id}"}],
                "content_filter": [{"role": "assistant", "level": 3}],
            },
        )

    def _openrouter_images(self, body: Any) -> None:
        """OpenRouter's Image API (POST /api/v1/images): n images and the cost in usage."""
        body = body if isinstance(body, dict) else {}
        fmt = body.get("output_format", "png")
        item = {"b64_json": base64.b64encode(png(48, 48, fmt)).decode()}
        n = int(body.get("n", 1))
        self._json(
            200,
            {
                "created": int(time.time()),
                "data": [item] * n,
                "usage": {"cost": round(0.039 * n, 6)},
            },
        )

    def _openrouter(self, body: Any) -> None:
        """OpenRouter chat completions with image output (docs/providers.md §6)."""
        if not isinstance(body, dict) or "image" not in (body.get("modalities") or []):
            self._json(400, {"error": {"code": 400, "message": "modalities must include image"}})
            return
        data = base64.b64encode(png(64, 36)).decode()
        message = {
            "role": "assistant",
            "content": "",
            "images": [
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}}
            ],
        }
        self._json(
            200,
            {
                "id": "gen-1",
                "model": body.get("model"),
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": {
                    "prompt_tokens": 8,
                    "completion_tokens": 1290,
                    "total_tokens": 1298,
                    "cost": 0.0387,
                },
            },
        )

    def _seedream(self, body: Any) -> None:
        """Ark (docs/providers.md §4): one JPEG per call unless sequential generation is on."""
        if not isinstance(body, dict) or "watermark" not in body:
            self._json(
                400,
                {
                    "error": {
                        "code": "InvalidParameter",
                        "message": "the fake wants watermark said explicitly",
                    }
                },
            )
            return
        size = body.get("size") or "2048x2048"
        width, height = map(int, size.split("x"))
        data = png(width // 16, height // 16, "jpeg")  # small stand-ins for the real pixels
        item: dict[str, Any] = {"size": size}
        if body.get("response_format", "url") == "url":
            file_id = f"{uuid.uuid4().hex}.jpeg"
            self.server.fake.files[file_id] = (data, "image/jpeg")
            item["url"] = f"{self.server.fake.url}/files/{file_id}"
        else:
            item["b64_json"] = base64.b64encode(data).decode()
        self._json(
            200,
            {
                "model": body.get("model"),
                "created": int(time.time()),
                "data": [item],
                "usage": {"generated_images": 1, "output_tokens": 16280, "total_tokens": 16280},
            },
        )

    def _xai(self, body: dict[str, Any]) -> None:
        """xAI (docs/providers.md §5): JPEGs at aspect_ratio and resolution; size, style and seed
        are refused as the real API refuses them."""
        for field_name in ("size", "style", "seed"):
            if field_name in body:
                self._json(
                    400,
                    {
                        "code": "Client specified an invalid argument",
                        "error": f"Argument not supported: {field_name}",
                    },
                )
                return
        ratio = body.get("aspect_ratio", "1:1")
        across, _, down = ratio.partition(":")
        side = 2048 if body.get("resolution") == "2k" else 1024
        aspect = float(across) / float(down or 1)
        width, height = round(side * aspect**0.5), round(side / aspect**0.5)
        item = {
            "b64_json": base64.b64encode(png(width, height, "jpeg")).decode(),
            "mime_type": "image/jpeg",
            "revised_prompt": f"revised: {body.get('prompt')}",
        }
        self._json(200, {"created": int(time.time()), "data": [item] * int(body.get("n", 1))})

    def _imagen(self, body: Any) -> None:
        """Imagen :predict (docs/providers.md §3.3): sampleCount images at the aspect ratio."""
        parameters = (body or {}).get("parameters") or {}
        ratio = parameters.get("aspectRatio", "1:1")
        width, height = {"1:1": (64, 64), "16:9": (112, 63), "9:16": (63, 112)}.get(ratio, (64, 48))
        mime = (parameters.get("outputOptions") or {}).get("mimeType", "image/png")
        data = png(width, height, "jpeg" if mime == "image/jpeg" else "png")
        predictions = [
            {"bytesBase64Encoded": base64.b64encode(data).decode(), "mimeType": mime}
            for _ in range(int(parameters.get("sampleCount", 4)))
        ]
        self._json(200, {"predictions": predictions})

    def _gemini(self, body: Any) -> None:
        """Gemini generateContent with an image part (docs/providers.md §3.2)."""
        if not isinstance(body, dict) or not body.get("contents"):
            self._json(
                400,
                {
                    "error": {
                        "code": 400,
                        "message": "contents is required",
                        "status": "INVALID_ARGUMENT",
                    }
                },
            )
            return
        image = base64.b64encode(png(64, 64)).decode()
        self._json(
            200,
            {
                "candidates": [
                    {
                        "content": {
                            "role": "model",
                            "parts": [
                                {"text": "Here is your image."},
                                {"inlineData": {"mimeType": "image/png", "data": image}},
                            ],
                        },
                        "finishReason": "STOP",
                    }
                ],
                "usageMetadata": {
                    "promptTokenCount": 9,
                    "candidatesTokenCount": 1290,
                    "totalTokenCount": 1299,
                },
                "modelVersion": "gemini-2.5-flash-image",
            },
        )

    def _moderate(self, body: Any) -> None:
        """OpenAI's moderation endpoint: a text is flagged for violence when it holds one of
        `moderation_words`; an image when its first pixel is red (see `image_colors`)."""
        fake = self.server.fake
        if fake.moderation_delay:
            time.sleep(fake.moderation_delay)
        items = body.get("input") if isinstance(body, dict) else None
        if isinstance(items, str):
            items = [{"type": "text", "text": items}]
        score = 0.01
        for item in items or []:
            if item.get("type") == "text":
                words = set(str(item.get("text", "")).lower().split())
                score = 0.97 if words & fake.moderation_words else score
            elif item.get("type") == "image_url":
                url = item["image_url"]["url"]
                data = base64.b64decode(url.split(",", 1)[1])
                pixel = Image.open(io.BytesIO(data)).convert("RGB").getpixel((0, 0))
                assert isinstance(pixel, tuple)
                score = 0.95 if pixel[0] > 150 and pixel[1] < 80 else score
        self._json(
            200,
            {
                "id": f"modr-{uuid.uuid4().hex[:12]}",
                "model": body.get("model", "omni-moderation-latest"),
                "results": [
                    {
                        "flagged": score > 0.5,
                        "categories": {"violence": score > 0.5, "hate": False},
                        "category_scores": {"violence": score, "hate": 0.02},
                        "category_applied_input_types": {"violence": ["text"], "hate": ["text"]},
                    }
                ],
            },
        )

    def _generate(self, body: Any, model: str) -> None:
        if not isinstance(body, dict) or not body.get("prompt"):
            self._json(400, _error("'prompt' is required", code="missing_prompt"))
            return
        size = body.get("size") or "1024x1024"
        width, height = (1024, 1024) if size == "auto" else map(int, size.split("x"))
        fmt = body.get("output_format", "png")
        data = self.server.fake.big_image or png(width, height, fmt)
        colors = self.server.fake.image_colors
        dall_e = model.startswith("dall-e")
        items = []
        for index in range(int(body.get("n", 1))):
            if colors:
                data = png(width, height, fmt, colors[index % len(colors)])
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
            )
            if self.server.fake.usage:
                response["usage"] = {
                    "input_tokens": 12,
                    "output_tokens": 1056,
                    "total_tokens": 1068,
                    "input_tokens_details": {"text_tokens": 12, "image_tokens": 0},
                }
        self._json(200, response)


class FakeUpstream:
    def __init__(
        self, port: int = 0, expected_secret: str | None = None, delay: float = 0.0
    ) -> None:
        self.expected_secret = expected_secret
        self.delay = delay
        self.requests: list[Recorded] = []
        self.files: dict[str, tuple[bytes, str]] = {}
        self.big_image: bytes | None = None  # every generated image, when a test sets one
        # The colours of a response's images in turn (OpenAI's generations), when set.
        self.image_colors: list[tuple[int, int, int]] = []
        # The moderation endpoint: words that flag a text, and its latency.
        self.moderation_words = {"gore"}
        self.moderation_delay = 0.0
        # Black Forest Labs: tasks (polls left before ready, request), and how they end.
        self.bfl_tasks: dict[str, list[Any]] = {}
        self.bfl_pending = 2
        self.bfl_outcome = "Ready"
        # Replicate: predictions (polls left while processing, request), and a failure.
        self.replicate_predictions: dict[str, list[Any]] = {}
        self.replicate_processing = 0
        self.replicate_error = ""
        self.keep_bodies = True  # off for long benchmarks, whose memory must not grow
        # Token usage in GPT-image answers; off, they are billed per image (as relays answer).
        self.usage = True
        self.sent: list[bytes] = []  # bodies of the answers sent with a Content-Length
        self.streamed = bytearray()  # what chunked answers sent, de-chunked
        # Streams send their final event once this is set; set unless a test holds it.
        self.final_held = threading.Event()
        self.final_held.set()
        self.final_sent = threading.Event()
        # Random bytes as the final image instead of a PNG: more than any socket buffer holds.
        self.final_bytes = 0
        self.break_streams = False
        # Sent on every answer from now on, repeats kept (several Set-Cookie lines).
        self.response_headers: list[tuple[str, str]] = []
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

    def set_image_bytes(self, size: int) -> None:
        """From now on every generated image is one noise PNG of about `size` bytes (0: off)."""
        if not size:
            self.big_image = None
            return
        side = int((size / 3) ** 0.5)  # noise does not compress: ~3 bytes a pixel
        noise = Image.frombytes("RGB", (side, side), os.urandom(side * side * 3))
        buffer = io.BytesIO()
        noise.save(buffer, "PNG", compress_level=1)
        self.big_image = buffer.getvalue()

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


@dataclass(frozen=True)
class FormPart:
    name: str
    filename: str | None
    content_type: str
    data: bytes


def form_parts(recorded: Recorded) -> list[FormPart]:
    """Every part of a recorded multipart body, in order, files included."""
    from email.parser import BytesParser
    from email.policy import HTTP

    content_type = recorded.headers.get("content-type", "")
    message = BytesParser(policy=HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + recorded.raw
    )
    return [
        FormPart(
            name=str(part.get_param("name", header="content-disposition")),
            filename=part.get_filename(),
            content_type=part.get_content_type(),
            data=bytes(part.get_payload(decode=True) or b""),
        )
        for part in message.iter_parts()
    ]


def _form_fields(raw: bytes, content_type: str) -> dict[str, str]:
    """The text fields of a multipart body (files are left out)."""
    from email.parser import BytesParser
    from email.policy import HTTP

    message = BytesParser(policy=HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + raw
    )
    fields = {}
    for part in message.iter_parts():
        if part.get_filename() is None:
            fields[str(part.get_param("name", header="content-disposition"))] = str(
                part.get_content()
            )
    return fields


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--no-usage", action="store_true", help="answer without token usage")
    args = parser.parse_args()
    fake = FakeUpstream(port=args.port, delay=args.delay)
    fake.usage = not args.no_usage
    fake.requests = _Discard()  # a long benchmark must not grow memory
    fake.keep_bodies = False
    print(f"fake upstream on {fake.url}", flush=True)
    fake._server.serve_forever()


class _Discard(list):
    def append(self, item: Any) -> None:
        pass


if __name__ == "__main__":
    main()

"""A small asyncio HTTP/1.1 load generator with keep-alive, for loopback benchmarks.

Written for this benchmark so that the client costs little CPU next to the server under
test on a 2-core machine: raw sockets, one request at a time per connection. Several URLs
(the nodes of one gateway) are shared out round-robin, one per connection. A request that
fails to connect or is cut short counts as status 599; one unanswered within `timeout`, 598.
"""

from __future__ import annotations

import asyncio
import json
import resource
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    # Answers other than 200 by status and their error `code` ("503 overloaded"): the why.
    errors: dict[str, int] = field(default_factory=dict)
    wall: float = 0.0

    @property
    def ok(self) -> int:
        return self.statuses.get(200, 0)

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]

    def summary(self) -> str:
        rps = len(self.latencies) / self.wall if self.wall else 0.0
        p50, p99 = self.percentile(50) * 1000, self.percentile(99) * 1000
        mean = statistics.fmean(self.latencies) * 1000
        return (
            f"n={len(self.latencies):5d} ok={self.ok:5d} p50={p50:7.2f}ms p99={p99:7.2f}ms "
            f"mean={mean:7.2f}ms rps={rps:7.1f} wall={self.wall:6.2f}s"
        )


def _request_bytes(url: str, body: bytes, headers: dict[str, str]) -> tuple[str, int, bytes]:
    parts = urlsplit(url)
    lines = [
        f"POST {parts.path or '/'} HTTP/1.1",
        f"Host: {parts.hostname}:{parts.port}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
    ] + [f"{k}: {v}" for k, v in headers.items()]
    return (
        parts.hostname or "127.0.0.1",
        parts.port or 80,
        ("\r\n".join(lines) + "\r\n\r\n").encode() + body,
    )


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split(" ", 2)[1])
    length, close = 0, False
    for line in header_lines:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "connection" and value.strip().lower() == "close":
            close = True
    body = await reader.readexactly(length) if length else b""
    return status, close, body


def _error_code(body: bytes) -> str:
    """An OpenAI-style error's code (or type), if the body is one."""
    try:
        error = json.loads(body)["error"]
        return str(error.get("code") or error.get("type") or "")
    except (ValueError, KeyError, TypeError, AttributeError):
        return ""


async def _worker(
    host: str, port: int, payload: bytes, remaining: list[int], result: Result, timeout: float
) -> None:
    reader = writer = None
    while remaining[0] > 0:
        remaining[0] -= 1
        started = time.perf_counter()  # a new connection's connect counts, as a client's would
        body = b""
        try:
            async with asyncio.timeout(timeout):  # a context, not wait_for: no task per request
                if writer is None:
                    reader, writer = await asyncio.open_connection(host, port)
                assert reader is not None
                writer.write(payload)
                status, close, body = await _read_response(reader)
        except TimeoutError:
            status, close = 598, True
        except (OSError, asyncio.IncompleteReadError):
            status, close = 599, True
        result.latencies.append(time.perf_counter() - started)
        result.statuses[status] = result.statuses.get(status, 0) + 1
        if status != 200:
            why = f"{status} {_error_code(body)}".rstrip()
            result.errors[why] = result.errors.get(why, 0) + 1
        if close and writer is not None:
            writer.close()
        if close:
            reader = writer = None
    if writer is not None:
        writer.close()


async def _run(
    urls: Sequence[str],
    body: bytes,
    headers: dict[str, str],
    concurrency: int,
    total: int,
    timeout: float,
) -> Result:
    targets = [_request_bytes(url, body, headers) for url in urls]
    result = Result()
    remaining = [total]
    started = time.perf_counter()
    await asyncio.gather(
        *(
            _worker(*targets[index % len(targets)], remaining, result, timeout)
            for index in range(concurrency)
        )
    )
    result.wall = time.perf_counter() - started
    return result


def raise_fd_limit() -> int:
    """Lift this process's open-file soft limit to its hard limit (a burst of thousands of
    connections needs one descriptor each); returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def run(
    url: str | Sequence[str],
    body: bytes,
    headers: dict[str, str],
    *,
    concurrency: int,
    total: int,
    timeout: float = 120.0,
) -> Result:
    """`total` requests over `concurrency` connections; several URLs: spread over them."""
    urls = [url] if isinstance(url, str) else list(url)
    if concurrency > 500:
        raise_fd_limit()
    return asyncio.run(_run(urls, body, headers, concurrency, total, timeout))

"""The plain upstream call on kept http.client connections (aperture/kept_connections.py),
through `http.send` as the adapters make it: TLS checked as urllib3 checks it, bodies
decoded, connections kept only while they may be, and its failures told apart. Also, on it
and on the requests sessions alike: the limit on the size of an answer read whole."""

from __future__ import annotations

import contextlib
import gzip
import socket
import ssl
import threading
import time
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
import trustme
from django.test import override_settings

from aperture import kept_connections
from routing.providers import http
from routing.providers.base import UpstreamFailed, UpstreamTimedOut, UpstreamUnreachable

Answer = Callable[[int], bytes]  # the request's number (from 1) -> the bytes answered


def _answer(
    body: bytes = b'{"ok": true}', *, headers: tuple[str, ...] = (), version: str = "1.1"
) -> bytes:
    head = [f"HTTP/{version} 200 OK", "Content-Type: application/json"]
    head += [f"Content-Length: {len(body)}", *headers]
    return "\r\n".join(head).encode() + b"\r\n\r\n" + body


class _Upstream:
    """Reads each request a connection sends and answers it with `answer(n)`; over TLS
    with `tls`. An answer of b"" is none: the connection is held open, unanswered."""

    def __init__(self, answer: Answer, tls: ssl.SSLContext | None = None) -> None:
        self.answer = answer
        self.tls = tls
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self.requests: list[bytes] = []  # each request's head
        self.bodies: list[bytes] = []
        self.release = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def url(self, host: str = "127.0.0.1") -> str:
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}/v1/images/generations"

    def _serve(self) -> None:
        with contextlib.suppress(OSError):  # until the listener is closed
            while True:
                conn, _ = self.listener.accept()
                self.connections += 1
                threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, accepted: socket.socket) -> None:
        with contextlib.suppress(OSError), accepted:
            if self.tls is None:
                self._exchange(accepted)
                return
            with self.tls.wrap_socket(accepted, server_side=True) as conn:  # raises if refused
                self._exchange(conn)

    def _exchange(self, conn: socket.socket) -> None:
        received = b""
        while True:
            while b"\r\n\r\n" not in received:
                more = conn.recv(65536)
                if not more:
                    return
                received += more
            head, _, received = received.partition(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            while len(received) < length:
                received += conn.recv(65536)
            self.bodies.append(received[:length])
            received = received[length:]
            self.requests.append(head)
            answer = self.answer(len(self.requests))
            if not answer:
                self.release.wait(10)
                return
            conn.sendall(answer)
            if b"Connection: close" in answer or b"HTTP/1.0" in answer[:8]:
                return

    def close(self) -> None:
        self.release.set()
        self.listener.close()


@contextlib.contextmanager
def _upstream(answer: Answer, tls: ssl.SSLContext | None = None) -> Iterator[_Upstream]:
    upstream = _Upstream(answer, tls)
    try:
        yield upstream
    finally:
        upstream.close()


def _call(url: str, *, timeout: float = 10) -> requests.Response:
    return http.send("openai", "POST", url, timeout=timeout, json_body={"prompt": "x"})


@pytest.fixture(autouse=True)
def _no_kept_connections() -> Iterator[None]:
    """Each test starts and ends with no kept connection (a test server's port may be taken
    again by a later test's)."""
    http._kept().close()
    kept_connections._tls.cache_clear()
    yield
    http._kept().close()
    kept_connections._tls.cache_clear()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def trusted(ca: trustme.CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The system's authorities are the tests' own (SSL_CERT_FILE, as an operator with an
    internal authority would set it)."""
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))


def _tls(ca: trustme.CA, host: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(host).configure_cert(context)
    return context


@pytest.mark.usefixtures("trusted")
def test_an_upstream_over_tls_with_a_trusted_certificate_is_called_on_one_kept_connection(
    ca: trustme.CA,
) -> None:
    with _upstream(lambda n: _answer(b'{"call": %d}' % n), _tls(ca, "localhost")) as upstream:
        assert [_call(upstream.url("localhost")).json() for _ in range(3)] == [
            {"call": 1},
            {"call": 2},
            {"call": 3},
        ]
    assert upstream.connections == 1


@pytest.mark.parametrize("refused", ["authority not trusted", "another host's certificate"])
def test_a_certificate_tls_would_refuse_fails_the_call_before_anything_is_sent(
    ca: trustme.CA, request: pytest.FixtureRequest, refused: str
) -> None:
    if refused == "another host's certificate":
        request.getfixturevalue("trusted")
    issued_for = "localhost" if refused == "authority not trusted" else "upstream.example"
    upstream = _Upstream(lambda n: _answer(), _tls(ca, issued_for))
    with contextlib.closing(upstream), pytest.raises(UpstreamFailed) as failed:
        _call(upstream.url("localhost"))
    assert isinstance(failed.value.__cause__, kept_connections.CallFailed)
    assert isinstance(failed.value.__cause__.__cause__, ssl.SSLCertVerificationError)
    assert upstream.connections == 1 and upstream.requests == []


@pytest.mark.parametrize(
    ("encoding", "encode"),
    [
        ("gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("deflate", lambda body: zlib.compress(body)[2:-4]),  # raw, as some servers send it
        ("identity", lambda body: body),
    ],
    ids=["gzip", "deflate", "raw deflate", "identity"],
)
def test_a_body_is_asked_for_compressed_and_decoded(
    encoding: str, encode: Callable[[bytes], bytes]
) -> None:
    body = b'{"data": [{"b64_json": "' + b"QUJD" * 5000 + b'"}]}'
    answer = _answer(encode(body), headers=(f"Content-Encoding: {encoding}",))
    with _upstream(lambda n: answer) as upstream:
        response = _call(upstream.url())
    assert response.content == body
    assert b"\r\nAccept-Encoding: gzip, deflate" in upstream.requests[0]


def test_a_body_that_does_not_decode_fails_the_call() -> None:
    answer = _answer(b"not gzip at all", headers=("Content-Encoding: gzip",))
    with _upstream(lambda n: answer) as upstream, pytest.raises(UpstreamFailed):
        _call(upstream.url())


def _send(url: str, guarded: bool) -> requests.Response:
    """A call on the operator's plain path, or on a workspace's (the guarded session)."""
    return http.send("openai", "POST", url, timeout=10, json_body={"p": "x"}, guarded=guarded)


PATHS = pytest.mark.parametrize("guarded", [False, True], ids=["operator", "workspace"])


@PATHS
def test_an_answer_up_to_the_limit_is_read_and_one_past_it_fails_the_call(guarded: bool) -> None:
    limit = 1 << 20
    at_limit = b'"' + b"a" * (limit - 2) + b'"'
    answers = {1: at_limit, 2: at_limit + b" ", 3: at_limit * 4, 4: b'"next"'}
    with (
        override_settings(UPSTREAM_MAX_ANSWER_BYTES=limit, FETCH_ALLOWED_HOSTS=["127.0.0.1"]),
        _upstream(lambda n: _answer(answers[n])) as upstream,
    ):
        assert _send(upstream.url(), guarded).content == at_limit
        for _ in ("one byte past", "far past, the rest unread"):
            with pytest.raises(UpstreamFailed, match=r"answered more than the 1,048,576 bytes"):
                _send(upstream.url(), guarded)
        # What was left unread of the last is no part of the next answer.
        assert _send(upstream.url(), guarded).json() == "next"


@PATHS
def test_a_compressed_answer_that_decodes_past_the_limit_fails_without_taking_the_memory(
    guarded: bool,
) -> None:
    """A gzip bomb (a GiB of zeros in 1 MB): decoded only as far as the limit."""
    member = gzip.compress(b"\0" * (64 << 20), compresslevel=9)
    answer = _answer(member * 16, headers=("Content-Encoding: gzip",))
    with (
        override_settings(UPSTREAM_MAX_ANSWER_BYTES=8 << 20, FETCH_ALLOWED_HOSTS=["127.0.0.1"]),
        _upstream(lambda n: answer) as upstream,
    ):
        tracemalloc.start()
        try:
            with pytest.raises(UpstreamFailed, match=r"answered more than the 8,388,608 bytes"):
                _send(upstream.url(), guarded)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < 64 << 20, f"{peak:,} bytes held at the peak"


@PATHS
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_redirects_body_is_never_read_by_the_session_on_its_own(
    guarded: bool, stream: bool
) -> None:
    """requests reads a 3xx answer's body whole before its caller sees it, even when it is
    not to follow it: here a GiB gzip bomb, which the call must not decode."""
    member = gzip.compress(b"\0" * (64 << 20), compresslevel=9)
    answer = _answer(
        member * 16,
        headers=("Content-Encoding: gzip", "Location: http://127.0.0.1:9/elsewhere"),
    ).replace(b"200 OK", b"302 Found", 1)
    with (
        override_settings(UPSTREAM_MAX_ANSWER_BYTES=8 << 20, FETCH_ALLOWED_HOSTS=["127.0.0.1"]),
        _upstream(lambda n: answer) as upstream,
    ):
        tracemalloc.start()
        try:
            with contextlib.ExitStack() as stack:
                if not stream:  # read whole as any answer: no further than the limit
                    stack.enter_context(pytest.raises(UpstreamFailed, match="answered more"))
                response = http.send(
                    "openai", "POST", upstream.url(), timeout=10, guarded=guarded, stream=stream
                )
                assert response.status_code == 302 and response.is_redirect
                response.close()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < 64 << 20, f"{peak:,} bytes held at the peak"


def test_a_workspace_upstream_that_drips_its_answer_is_cut_off_at_the_calls_timeout() -> None:
    """Each byte comes well within the read timeout; the whole answer does not."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def drip() -> None:
            conn, _ = listener.accept()
            with conn, contextlib.suppress(OSError):
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
                for _ in range(100):
                    conn.sendall(b"a")
                    time.sleep(0.05)

        threading.Thread(target=drip, daemon=True).start()
        started = time.monotonic()
        with (
            override_settings(FETCH_ALLOWED_HOSTS=["127.0.0.1"]),
            pytest.raises(UpstreamTimedOut, match="did not send its whole answer in time"),
        ):
            http.send("openai", "POST", f"http://127.0.0.1:{port}/v1/x", timeout=1, guarded=True)
        assert time.monotonic() - started < 3  # the whole answer would take 5 s


def test_a_body_cut_short_of_its_length_fails_the_call() -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nConnection: close\r\n\r\n0123456789"
    with _upstream(lambda n: answer) as upstream, pytest.raises(UpstreamFailed):
        _call(upstream.url())


def _chunked(body: bytes, size: int) -> bytes:
    chunks = b"".join(
        b"%x\r\n%s\r\n" % (len(body[i : i + size]), body[i : i + size])
        for i in range(0, len(body), size)
    )
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked"
    return head + b"\r\n\r\n" + chunks + b"0\r\n\r\n"


def test_a_body_of_many_tiny_chunks_is_read_into_one_buffer_and_up_to_the_limit() -> None:
    body = b'"' + b"a" * (256 * 1024 - 2) + b'"'
    answers = {1: _chunked(body, 1), 2: _chunked(body + b" ", 4096), 3: _chunked(b'"next"', 2)}
    with (
        override_settings(UPSTREAM_MAX_ANSWER_BYTES=len(body)),
        _upstream(lambda n: answers[n]) as upstream,
    ):
        tracemalloc.start()
        try:
            assert _call(upstream.url()).content == body
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 4 << 20, f"{peak:,} bytes held at the peak for a 256 KiB body"
        with pytest.raises(UpstreamFailed, match="answered more"):
            _call(upstream.url())
        assert _call(upstream.url()).json() == "next"


def test_a_body_ended_by_closing_is_read_up_to_the_limit() -> None:
    def closed(body: bytes) -> bytes:
        return b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n" + body

    answers = {1: closed(b'"' + b"a" * 1022 + b'"'), 2: closed(b'"' + b"a" * 1023 + b'"')}
    with override_settings(UPSTREAM_MAX_ANSWER_BYTES=1024), _upstream(lambda n: answers[n]) as up:
        assert len(_call(up.url()).content) == 1024
        with pytest.raises(UpstreamFailed, match="answered more"):
            _call(up.url())


def test_a_header_answered_twice_is_read_as_one_with_both_values() -> None:
    answer = _answer(headers=("X-Seen: first", "X-Seen: second"))
    with _upstream(lambda n: answer) as upstream:
        response = _call(upstream.url())
    assert response.headers["x-seen"] == "first, second"


@pytest.mark.parametrize(
    "answer",
    [_answer(headers=("Connection: close",)), _answer(version="1.0")],
    ids=["Connection: close", "HTTP/1.0"],
)
def test_a_connection_the_upstream_closes_after_its_answer_is_not_kept(answer: bytes) -> None:
    with _upstream(lambda n: answer) as upstream:
        assert [_call(upstream.url()).json() for _ in range(2)] == [{"ok": True}] * 2
        origin = ("http", "127.0.0.1", upstream.port)
        assert http._kept().idle(origin) == []
    assert upstream.connections == 2


def test_no_answer_in_time_fails_as_a_timeout_and_its_connection_is_not_kept() -> None:
    with _upstream(lambda n: _answer() if n == 1 else b"") as upstream:
        _call(upstream.url())  # a connection kept
        origin = ("http", "127.0.0.1", upstream.port)
        assert len(http._kept().idle(origin)) == 1
        with pytest.raises(UpstreamTimedOut, match=r"did not answer within 0\.3s"):
            _call(upstream.url(), timeout=0.3)
        assert http._kept().idle(origin) == []


def test_an_upstream_nobody_listens_on_is_unreachable_and_nothing_was_sent() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
    with pytest.raises(UpstreamUnreachable, match=r"could not be reached \(ConnectionError\)"):
        _call(f"http://127.0.0.1:{port}/v1/images/generations")


def test_the_request_sent_is_the_sessions_with_the_callers_headers_in_place_of_its_own() -> None:
    with _upstream(lambda n: _answer()) as upstream:
        http.send(
            "openai",
            "POST",
            upstream.url().replace("generations", "gen erations"),
            timeout=10,
            headers={"user-agent": "operator-agent", "Authorization": "Bearer sk-up"},
            json_body={"prompt": "x"},
        )
    line, *fields = upstream.requests[0].decode().split("\r\n")
    sent = {name.lower(): value.strip() for name, value in (f.split(":", 1) for f in fields)}
    defaults = requests.utils.default_headers()
    assert line == "POST /v1/images/gen%20erations HTTP/1.1"  # encoded as urllib3 would
    assert sent == {
        "host": f"127.0.0.1:{upstream.port}",
        "user-agent": "operator-agent",  # the caller's, once, in place of the session's
        "accept-encoding": defaults["Accept-Encoding"],
        "accept": "*/*",
        "connection": "keep-alive",
        "authorization": "Bearer sk-up",
        "content-type": "application/json",
        "content-length": str(len(b'{"prompt":"x"}')),
    }
    assert upstream.bodies == [b'{"prompt":"x"}']


class _InterimFirst:
    """Answers its first request with an interim 103, then waits for anything more on that
    connection (up to 1 s) before the final answer: a client that took the 103 for the
    answer and sent its next call down the same connection reads the first call's answer."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/v1/images/generations"
        self.calls = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.listener.accept()
                threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError), conn:
            while b"}" not in conn.recv(65536):
                pass
            self.calls += 1
            call = self.calls
            if call == 1:
                conn.sendall(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n")
                conn.settimeout(1)
                with contextlib.suppress(TimeoutError):
                    conn.recv(65536)  # the next call, if it came down this connection
            conn.sendall(_answer(b'{"call": %d}' % call))
            with contextlib.suppress(OSError):
                while conn.recv(65536):
                    pass


@pytest.mark.parametrize("guarded", [False, True], ids=["operator", "workspace"])
def test_an_interim_answer_fails_its_call_and_its_connection_serves_no_other(
    guarded: bool,
) -> None:
    upstream = _InterimFirst()

    def call() -> requests.Response:
        return http.send(
            "openai", "POST", upstream.url, timeout=10, json_body={"x": 1}, guarded=guarded
        )

    with (
        override_settings(FETCH_ALLOWED_HOSTS=["127.0.0.1"]),
        contextlib.closing(upstream.listener),
    ):
        with pytest.raises(UpstreamFailed):
            call()
        assert call().json() == {"call": 2}  # its own answer, not the first call's


def test_an_answer_whose_length_is_given_two_ways_fails_and_its_connection_is_closed() -> None:
    twice = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 40\r\n\r\n" + b"{}" + b"x" * 38
    )
    with _upstream(lambda n: twice if n == 1 else _answer(b'{"call": 2}')) as upstream:
        with pytest.raises(UpstreamFailed):
            _call(upstream.url())
        assert _call(upstream.url()).json() == {"call": 2}
    assert upstream.connections == 2


def test_the_connections_of_the_least_recently_used_host_are_closed_past_the_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(kept_connections, "MAX_ORIGINS", 2)
    with contextlib.ExitStack() as stack:
        a, b, c = (stack.enter_context(_upstream(lambda n: _answer())) for _ in range(3))
        for upstream in (a, b, a, c):  # b is then the least recently used
            _call(upstream.url())
        kept = {u.port: http._kept().idle(("http", "127.0.0.1", u.port)) for u in (a, b, c)}
    assert [len(kept[u.port]) for u in (a, b, c)] == [1, 0, 1]
    assert (a.connections, b.connections, c.connections) == (1, 1, 1)


def test_a_tls_handshake_that_never_comes_fails_within_the_connect_timeout() -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never speaks TLS
        port = silent.getsockname()[1]
        started = time.monotonic()
        with pytest.raises((UpstreamUnreachable, UpstreamFailed)):
            http.send(
                "openai",
                "POST",
                f"https://localhost:{port}/v1/images/generations",
                timeout=60,
                connect_timeout=0.3,
                json_body={"prompt": "x"},
            )
        assert time.monotonic() - started < 30  # the connect timeout, not the read one

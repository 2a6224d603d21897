"""The common upstream call on geventhttpclient (routing/providers/plain_call.py): the answer
the adapters read is the one requests would give them, a gevent worker keeps its upstream
connections, and a connection never made is told apart from an answer that never came."""

import fcntl
import gzip
import json
import select
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import gevent
import gevent.select
import pytest
import requests

from routing.models import ModelAlias
from routing.providers import http, plain_call
from routing.providers.base import UpstreamUnreachable
from tenants.services import CreatedKey
from tests.fakes.upstream import FakeUpstream
from tests.routing.passthrough_support import bearer
from tests.support import Server, wait_for

ANSWER = {"created": 1, "data": [{"b64_json": "aGk="}]}


class _Gzipped(BaseHTTPRequestHandler):
    """Answers every POST with ANSWER gzip-encoded, and two cookies."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        body = gzip.compress(json.dumps(ANSWER).encode())
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Set-Cookie", "a=1")
        self.send_header("Set-Cookie", "b=2")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def _serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _post(url: str, connect_timeout: float | None = None) -> requests.Response:
    return http.send(
        "openai",
        "POST",
        f"{url}/v1/images/generations",
        timeout=5,
        json_body={},
        connect_timeout=connect_timeout,
    )


def test_a_compressed_answer_is_read_decoded_with_its_headers_as_requests_gives_them() -> None:
    with _serving(_Gzipped) as url:
        response = _post(url)
    assert (response.status_code, response.reason) == (200, "OK")
    assert response.json() == ANSWER
    assert response.headers["content-encoding"] == "gzip"
    assert response.headers["Set-Cookie"] == "a=1, b=2"  # repeated fields folded, as requests
    response.close()  # nothing left to release


def test_a_refused_connection_is_unreachable() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with pytest.raises(UpstreamUnreachable) as refused:
        _post(f"http://127.0.0.1:{port}")
    assert refused.value.message == "openai could not be reached (ConnectionError)."


def test_a_connection_not_made_in_time_is_unreachable_not_a_timeout() -> None:
    """Unreachable: nothing was sent, so the next deployment may be tried (a timeout after
    sending is not retried unless the alias says so)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        queued: list[socket.socket] = []
        try:
            while True:  # fill the accept queue: the next connection waits for a place
                waiting = socket.socket()
                waiting.settimeout(0.2)
                try:
                    waiting.connect(listener.getsockname())
                except TimeoutError:
                    waiting.close()
                    break
                queued.append(waiting)
            with pytest.raises(UpstreamUnreachable) as unreachable:
                _post(f"http://127.0.0.1:{listener.getsockname()[1]}", connect_timeout=0.3)
        finally:
            for waiting in queued:
                waiting.close()
    assert unreachable.value.message == "openai could not be reached in time."


@pytest.mark.django_db(transaction=True)
def test_a_gevent_worker_keeps_its_upstream_connection_from_one_call_to_the_next(
    gateway: Server,
    api_key: CreatedKey,
    upstream_aliases: dict[str, ModelAlias],
    fake_upstream: FakeUpstream,
) -> None:
    session = requests.Session()  # one connection to the gateway: one worker serves both
    for _ in range(3):
        answer = session.post(
            f"{gateway}/v1/images/generations",
            json={"model": "image-openai", "prompt": "a fox"},
            headers=bearer(api_key),
            timeout=30,
        )
        assert answer.status_code == 200, answer.content
    assert len({r.peer for r in fake_upstream.requests}) == 1


@contextmanager
def _kept_connection() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connection as a pool keeps it, on a descriptor past 1,023 (a busy worker's), and
    the upstream's end of it."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        with socket.create_connection(listener.getsockname()) as first:
            high = fcntl.fcntl(first.fileno(), fcntl.F_DUPFD, 1024)
        upstream, _ = listener.accept()
        with socket.socket(fileno=high) as kept, upstream:
            yield kept, upstream


def _pool() -> plain_call._Pool:
    pool = plain_call._new_client(("http", "127.0.0.1", 9, 1.0, 1.0))._connection_pool
    assert isinstance(pool, plain_call._Pool)
    return pool


def test_a_kept_connection_is_reused_while_open_and_idle_whatever_its_descriptor() -> None:
    pool = _pool()
    with _kept_connection() as (kept, upstream):
        assert kept.fileno() > 1023
        assert pool._is_socket_alive(kept)
        upstream.sendall(b"HTTP/1.1 200 OK")  # what nobody asked for: not for the next call
        wait_for(lambda: not pool._is_socket_alive(kept), timeout=5, what="unasked bytes")
    with _kept_connection() as (kept, upstream):
        upstream.close()  # closed by the upstream
        wait_for(lambda: not pool._is_socket_alive(kept), timeout=5, what="the close")


def test_checking_a_kept_connection_gives_no_other_greenlet_a_turn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In a burst, a check that yields sends each upstream call only after the rest of the
    burst has been let in."""
    monkeypatch.setattr(select, "select", gevent.select.select)  # as in a gevent worker
    monkeypatch.setattr(select, "poll", gevent.select.poll)
    pool = _pool()
    with _kept_connection() as (kept, _upstream):
        others: list[int] = []
        gevent.spawn(others.append, 1)
        assert pool._is_socket_alive(kept)
        assert others == []
        gevent.sleep(0)
        assert others == [1]

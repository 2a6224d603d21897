"""The upstream HTTP client: no state carried from one call to the next, and each provider's
errors read and mapped by what its adapter declares."""

import contextlib
import select
import socket
import threading
import time
from typing import Any

import pytest
import requests
from django.test import override_settings

from aperture import outbound
from aperture.outbound import guarded_session
from routing.providers import http
from routing.providers.auth import credential_headers
from routing.providers.base import UpstreamModerated, UpstreamRejected
from tests.conftest import UPSTREAM_SECRET
from tests.fakes.upstream import FakeUpstream, Misbehave

COOKIES = [
    ("Set-Cookie", "sessionid=tenant-a; Path=/; HttpOnly"),
    ("Set-Cookie", "csrftoken=tenant-a-token; Path=/"),
]


def _post(
    fake: FakeUpstream, provider: str = "openai", *, guarded: bool = False
) -> requests.Response:
    response = http.send(
        provider,
        "POST",
        f"{fake.url}/v1/echo",
        timeout=10,
        headers=credential_headers(provider, UPSTREAM_SECRET),
        json_body={"prompt": "x"},
        guarded=guarded,
    )
    response.close()
    return response


@pytest.mark.parametrize("guarded", [False, True], ids=["operator", "workspace"])
def test_a_cookie_an_upstream_sets_is_never_sent_on_the_next_call(
    fake_upstream: FakeUpstream, guarded: bool
) -> None:
    fake_upstream.response_headers = list(COOKIES)
    with override_settings(FETCH_ALLOWED_HOSTS=["127.0.0.1"]):
        first = _post(fake_upstream, guarded=guarded)  # workspace A's call
        fake_upstream.response_headers = []
        _post(fake_upstream, guarded=guarded)  # workspace B's call
    assert first.headers["Set-Cookie"].startswith("sessionid=tenant-a")  # it was set
    assert [r.headers.get("cookie") for r in fake_upstream.requests] == [None, None]
    assert len(http.session().cookies) == len(guarded_session().cookies) == 0


def _refusal(fake: FakeUpstream, provider: str, body: dict[str, Any]) -> requests.Response:
    fake.misbehave(Misbehave(status=400, body=body))
    return _post(fake, provider)


@pytest.mark.parametrize(
    ("provider", "code", "moderated"),
    [
        ("zai", "1301", True),
        ("openai", "1301", False),  # Z.AI's code means nothing from another upstream
        ("openai", "moderation_blocked", True),
        ("azure", "content_policy_violation", True),
        ("zai", "moderation_blocked", False),
    ],
)
def test_a_400_is_moderation_only_with_a_code_the_provider_declares(
    fake_upstream: FakeUpstream, provider: str, code: str, moderated: bool
) -> None:
    response = _refusal(fake_upstream, provider, {"error": {"code": code, "message": "unsafe"}})
    expected = UpstreamModerated if moderated else UpstreamRejected
    with pytest.raises(expected) as raised:
        http.check_status(provider, response)
    assert raised.value.message == f"{provider}: unsafe"


@pytest.mark.parametrize(
    ("provider", "body", "message", "code"),
    [
        (
            "xai",
            {"code": "Client specified an invalid argument", "error": "no size"},
            "no size",
            "Client specified an invalid argument",
        ),
        (
            "stability",
            {"id": "e1", "name": "bad_request", "errors": ["a", "b"]},
            "a; b",
            "bad_request",
        ),
        (
            "gemini",
            {"error": {"code": 400, "message": "bad", "status": "INVALID_ARGUMENT"}},
            "bad",
            "INVALID_ARGUMENT",
        ),
        ("bfl", {"detail": [{"loc": ["body"], "msg": "field required"}]}, "field required", ""),
        # A body not in the declared shape is still read the generic way.
        ("xai", {"error": {"message": "openai-style", "code": "c"}}, "openai-style", "c"),
        ("local", {"message": "plain"}, "plain", ""),
    ],
)
def test_an_error_body_is_read_where_the_providers_declared_shape_puts_it(
    fake_upstream: FakeUpstream, provider: str, body: dict[str, Any], message: str, code: str
) -> None:
    response = _refusal(fake_upstream, provider, body)
    assert http.error_body(provider, response) == http.UpstreamErrorBody(
        message=message, code=code, param=None
    )


def test_the_openai_envelope_gives_its_param(fake_upstream: FakeUpstream) -> None:
    body = {"error": {"message": "bad size", "type": "x", "param": "size", "code": "c"}}
    response = _refusal(fake_upstream, "openai", body)
    with pytest.raises(UpstreamRejected) as rejected:
        http.check_status("openai", response)
    assert (rejected.value.message, rejected.value.param, rejected.value.status) == (
        "openai: bad size",
        "size",
        400,
    )


class _KeptConnectionServer:
    """Answers each connection's first request with a kept-alive 200 naming the connection,
    then (`after`) closes it or sends an unasked answer down it, as a broken or hostile
    upstream may."""

    def __init__(self, after: str) -> None:
        self.after = after
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.accepted = 0
        self.go = threading.Event()  # the first answer has been read: what follows may come
        threading.Thread(target=self._serve, daemon=True).start()

    def _answer(self, body: bytes) -> bytes:
        head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
        return head.encode() + b"\r\n\r\n" + body

    def _serve(self) -> None:
        with contextlib.suppress(OSError):  # until the listener is closed
            while True:
                self._accept()

    def _accept(self) -> None:
        conn, _ = self.listener.accept()
        self.accepted += 1
        threading.Thread(target=self._handle, args=(conn, self.accepted), daemon=True).start()

    def _handle(self, conn: socket.socket, number: int) -> None:
        with conn:
            received = b""
            while b"\r\n\r\n" not in received or not received.endswith(b"}"):
                more = conn.recv(65536)
                if not more:
                    return
                received += more
            conn.sendall(self._answer(b'{"connection": %d}' % number))
            if number > 1 or not self.go.wait(5):
                return
            if self.after == "close":
                conn.shutdown(socket.SHUT_RDWR)
            else:
                conn.sendall(self._answer(b'{"connection": "unasked"}'))
            with contextlib.suppress(OSError):
                while conn.recv(65536):  # until the client lets go
                    pass


@pytest.mark.parametrize("after", ["close", "unasked answer"])
@pytest.mark.parametrize("guarded", [False, True], ids=["operator", "workspace"])
def test_a_kept_connection_with_anything_waiting_on_it_is_not_used_again(
    after: str, guarded: bool
) -> None:
    server = _KeptConnectionServer("close" if after == "close" else "unasked")

    def call() -> Any:
        response = http.send(
            "openai",
            "POST",
            f"{server.url}/v1/images/generations",
            timeout=10,
            json_body={"prompt": "x"},
            guarded=guarded,
        )
        return response.json()

    with override_settings(FETCH_ALLOWED_HOSTS=["127.0.0.1"]), contextlib.closing(server.listener):
        assert call() == {"connection": 1}
        kept = _kept(server.url, guarded)
        assert kept  # the first call's connection is kept (and so could be used again)
        if guarded:
            assert all(isinstance(c, outbound._ReuseChecked) for c in kept)
        server.go.set()
        deadline = time.monotonic() + 5
        while not any(select.select([c.sock], [], [], 0)[0] for c in _kept(server.url, guarded)):
            assert time.monotonic() < deadline  # what followed has reached the kept socket
            time.sleep(0.01)
        assert call() == {"connection": 2}  # a new connection, and its own answer
    assert server.accepted == 2


def _kept(url: str, guarded: bool) -> list[Any]:
    """The open connections kept to `url`'s port: by the kept http.client connections of an
    operator's plain call, or by the guarded session."""
    if not guarded:
        port = int(url.rsplit(":", 1)[1])
        return [c for c in http._kept().idle(("http", "127.0.0.1", port)) if c.sock is not None]
    pools = guarded_session().get_adapter(url).poolmanager.pools  # type: ignore[attr-defined]
    port = int(url.rsplit(":", 1)[1])
    keys = pools.keys()  # urllib3's container refuses to be iterated itself
    return [
        conn
        for key in keys
        if pools[key].port == port
        for conn in pools[key].pool.queue
        if conn is not None and conn.sock is not None
    ]

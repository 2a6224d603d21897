"""A request body must arrive in time: one trickled in a byte at a time gets 408 in the error
envelope from a real gunicorn (gevent) server, nothing goes upstream, nothing is charged, and
the worker goes on serving others meanwhile and afterwards."""

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import requests
from django.conf import settings
from urllib3 import encode_multipart_formdata

from billing.models import UsageRecord
from routing import services as routing_services
from routing.models import ModelAlias, Provider
from tenants.services import CreatedKey
from tests.conftest import ACTOR, UPSTREAM_SECRET
from tests.fakes.upstream import FakeUpstream, png
from tests.support import Server, gunicorn, subprocess_database_url, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

BODY_TIMEOUT = 1.5
TRICKLE_INTERVAL = 0.2  # 5 bytes a second: far below the minimum rate set below
GIVE_UP_AFTER = 12.0  # seconds: a server that waits for the whole body answers after ~30 s


@pytest.fixture(scope="module")
def slow_server(django_db_setup: None, django_db_blocker) -> Iterator[Server]:
    with django_db_blocker.unblock():
        database_url = subprocess_database_url()
    env = {
        "DATABASE_URL": database_url,
        "REDIS_URL": settings.REDIS_URL,
        "APERTURE_BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT),
        "APERTURE_BODY_MIN_BYTES_PER_SECOND": "1000",
        # One work slot: a request gives it back while its body trickles in.
        "APERTURE_WORK_SLOTS": "1",
    }
    with gunicorn(env) as server:
        yield server


@dataclass
class Trickled:
    status: int
    body: dict
    seconds: float  # from the last header byte to the server's answer
    bytes_sent: int
    closed_by_server: bool


def _trickle(server: Server, path: str, headers: dict[str, str], body: bytes) -> Trickled:
    """Send the head at once, then the body a byte every TRICKLE_INTERVAL, until the server
    answers and closes (or GIVE_UP_AFTER passes)."""
    host, port = server.removeprefix("http://").split(":")
    head = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(body)}"]
    head += [f"{name}: {value}" for name, value in headers.items()]
    sock = socket.create_connection((host, int(port)))
    received, sent, closed = b"", 0, False
    try:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        started = answered = time.monotonic()
        sock.settimeout(TRICKLE_INTERVAL)
        while time.monotonic() - started < GIVE_UP_AFTER:
            if sent < len(body):
                try:
                    sock.sendall(body[sent : sent + 1])
                    sent += 1
                except (BrokenPipeError, ConnectionResetError):
                    pass
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except ConnectionResetError:
                closed = True
                break
            if not received and chunk:
                answered = time.monotonic()
            if not chunk:
                closed = True
                break
            received += chunk
    finally:
        sock.close()
    assert received, f"no answer within {GIVE_UP_AFTER}s after {sent} of {len(body)} bytes"
    status_line, _, rest = received.partition(b"\r\n")
    _, _, payload = rest.partition(b"\r\n\r\n")
    return Trickled(
        status=int(status_line.split()[1]),
        body=json.loads(payload),
        seconds=answered - started,
        bytes_sent=sent,
        closed_by_server=closed,
    )


def _generation() -> tuple[dict[str, str], bytes]:
    body = json.dumps({"model": "image-openai", "prompt": "a lighthouse at dusk " * 4}).encode()
    return {"Content-Type": "application/json"}, body


def _edit() -> tuple[dict[str, str], bytes]:
    fields: dict[str, str | tuple[str, bytes, str]] = {
        "model": "image-openai",
        "prompt": "a lighthouse at dusk",
        "image": ("photo.png", png(16, 16), "image/png"),
    }
    body, content_type = encode_multipart_formdata(fields)
    return {"Content-Type": content_type}, body


def _passthrough() -> tuple[dict[str, str], bytes]:
    body = json.dumps({"model": "gpt-image-1", "prompt": "a lighthouse at dusk " * 4}).encode()
    return {"Content-Type": "application/json"}, body


ROUTES = {
    "/v1/images/generations": ("images.generations", _generation),
    "/v1/images/edits": ("images.edits", _edit),
    "/openai-raw/v1/images/generations": ("passthrough", _passthrough),
}


def test_bodies_trickled_past_the_limit_get_408_and_the_worker_serves_on(
    slow_server: Server,
    api_key: CreatedKey,
    upstream_aliases: dict[str, ModelAlias],
    fake_upstream: FakeUpstream,
) -> None:
    routing_services.credential_create(
        actor=ACTOR,
        name="openai-raw",
        provider=Provider.OPENAI,
        base_url=fake_upstream.url,
        secret=UPSTREAM_SECRET,
        passthrough_enabled=True,
    )
    auth = {"Authorization": f"Bearer {api_key.secret}"}
    outcomes: dict[str, Trickled] = {}

    def trickle(path: str) -> None:
        headers, body = ROUTES[path][1]()
        outcomes[path] = _trickle(slow_server, path, {**auth, **headers}, body)

    threads = [threading.Thread(target=trickle, args=(path,)) for path in ROUTES]
    for thread in threads:
        thread.start()
    # Meanwhile the same worker answers others at once.
    quick = requests.post(
        f"{slow_server}/v1/images/generations",
        json={"model": "demo-image", "prompt": "x", "size": "64x64"},
        headers=auth,
        timeout=10,
    )
    assert quick.status_code == 200, quick.text
    assert not outcomes, "the quick request waited for a trickled body to end"
    for thread in threads:
        thread.join()

    for path, (endpoint, _) in ROUTES.items():
        outcome = outcomes[path]
        assert outcome.status == 408, (path, outcome)
        assert outcome.body == {
            "error": {
                "message": (
                    "The request body did not arrive in time (within 1.5 seconds, or at "
                    "1000 bytes a second for a large body); send it again, faster."
                ),
                "type": "invalid_request_error",
                "param": None,
                "code": "request_timeout",
            }
        }, path
        # Near the limit (gevent's timer may fire a hair early), not when the body would end.
        assert BODY_TIMEOUT - 0.2 <= outcome.seconds < BODY_TIMEOUT + 2, (path, outcome.seconds)
        assert outcome.bytes_sent < 20, path
        assert outcome.closed_by_server, path  # the connection is not kept for another request
        records = UsageRecord.objects.filter(endpoint=endpoint, status=408)
        wait_for(records.exists, what=f"the record of {path}")
        (record,) = records
        assert (record.error_code, record.cost_micro) == ("request_timeout", 0)
    assert fake_upstream.requests == []

    after = requests.post(
        f"{slow_server}/v1/images/generations",
        json={"model": "demo-image", "prompt": "y", "size": "64x64"},
        headers=auth,
        timeout=10,
    )
    assert after.status_code == 200, after.text

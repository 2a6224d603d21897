"""The money and data leaks of issue 14, each reproduced as it was found, through gunicorn.

A hostile tenant pads, chunks or reorders a body so the worst case is not seen before the
call, reads an answer and resets the connection, or leaves a stream before its last event;
a cookie or a CORS header of one tenant's call reaches another; an unpriced model is free.
"""

import io
import json
import os
import socket
import struct
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pytest
import requests
from PIL import Image

from billing import services as billing_services
from billing.models import Budget, UsageRecord
from routing.models import ModelAlias, Provider, ProviderCredential
from tenants import services
from tenants.models import Team
from tenants.services import CreatedKey
from tests.conftest import ACTOR, make_alias
from tests.fakes.upstream import FakeUpstream
from tests.routing.passthrough_support import assert_error, bearer, open_credential, the_record
from tests.support import Server, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

PAD = b" " * (1024 * 1024)  # past the 1 MiB of a body that passthrough read to price it
ASK = {"model": "gpt-image-1", "prompt": "a fox", "size": "1024x1024", "quality": "medium"}
# The fake upstream's usage for one gpt-image-1 call, at the token prices: 12 text-in x $5/M
# + 1056 image-out x $40/M.
TOKEN_COST = 42_300


@pytest.fixture(autouse=True)
def _prices(list_prices: None) -> None:
    """Priced calls need the seeded list prices."""


def padded_json(n: int = 2) -> bytes:
    """ASK as JSON with a MiB of whitespace, then `n`: valid JSON that no sniff of the
    body's head can price."""
    return json.dumps(ASK).encode()[:-1] + b"," + PAD + f'"n": {n}}}'.encode()


def noise_png(side: int) -> bytes:
    """A PNG that does not compress: about 3 bytes a pixel."""
    buffer = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(
        buffer, "PNG", compress_level=1
    )
    return buffer.getvalue()


# --- 1. Passthrough admits more than the budget ---------------------------------------------


def post_padded_json(gateway: Server, key: CreatedKey) -> requests.Response:
    return requests.post(
        f"{gateway}/openai/v1/images/generations",
        data=padded_json(),
        headers={**bearer(key), "Content-Type": "application/json"},
        timeout=60,
    )


def post_chunked_json(gateway: Server, key: CreatedKey) -> requests.Response:
    body = padded_json()

    def pieces() -> Iterator[bytes]:  # a generator: requests sends Transfer-Encoding: chunked
        for start in range(0, len(body), 64 * 1024):
            yield body[start : start + 64 * 1024]

    return requests.post(
        f"{gateway}/openai/v1/images/generations",
        data=pieces(),
        headers={**bearer(key), "Content-Type": "application/json"},
        timeout=60,
    )


EDIT_IMAGE = noise_png(600)  # about 1 MiB, before every text field


def post_multipart_edit(gateway: Server, key: CreatedKey) -> requests.Response:
    form = [
        ("image", ("fox.png", EDIT_IMAGE, "image/png")),
        ("prompt", (None, "add a hat")),
        ("model", (None, "gpt-image-1")),
        ("size", (None, "1024x1024")),
        ("quality", (None, "medium")),
        ("n", (None, "2")),  # after the image
    ]
    return requests.post(
        f"{gateway}/openai/v1/images/edits",
        files=form,  # type: ignore[arg-type]
        headers=bearer(key),
        timeout=60,
    )


Sender = Callable[[Server, CreatedKey], requests.Response]
CONCURRENT = 6


def key_budget(key: CreatedKey) -> Budget:
    """5 images and $0.35 for the key's lifetime: two calls of 2 medium 1024² images fit (an
    edit's hold adds its input image's token allowance: about $0.166 a call)."""
    return billing_services.budget_set(
        actor=ACTOR,
        workspace=key.key.workspace,
        team=None,
        key=key.key,
        period=Budget.Period.LIFETIME,
        limit_micro=350_000,
        limit_images=5,
    )


def workspace_budget(key: CreatedKey) -> Budget:
    """3 images a day for the whole workspace: one call of 2 images fits."""
    return billing_services.budget_set(
        actor=ACTOR,
        workspace=key.key.workspace,
        team=None,
        key=None,
        period=Budget.Period.DAY,
        limit_micro=None,
        limit_images=3,
    )


@pytest.mark.parametrize(
    ("send", "make_budget", "fitting_calls"),
    [
        (post_padded_json, key_budget, 2),
        (post_chunked_json, key_budget, 2),
        (post_multipart_edit, key_budget, 2),
        (post_padded_json, workspace_budget, 1),
    ],
    ids=["padded-json", "chunked-json", "multipart-n-after-the-image", "workspace-daily-images"],
)
def test_concurrent_passthrough_calls_never_get_more_than_the_budget(
    gateway: Server,
    api_key: CreatedKey,
    fake_upstream: FakeUpstream,
    send: Sender,
    make_budget: Callable[[CreatedKey], Budget],
    fitting_calls: int,
) -> None:
    open_credential(fake_upstream)
    budget = make_budget(api_key)
    fake_upstream.delay = 0.3  # every call is in flight at once

    with ThreadPoolExecutor(max_workers=CONCURRENT) as pool:
        answers = list(pool.map(lambda _: send(gateway, api_key), range(CONCURRENT)))

    statuses = [answer.status_code for answer in answers]
    assert set(statuses) <= {200, 402}, [(a.status_code, a.text[:300]) for a in answers]
    served = sum(len(a.json()["data"]) for a in answers if a.status_code == 200)
    assert budget.limit_images is not None
    assert served <= budget.limit_images, f"{served} images served, statuses {statuses}"
    assert statuses.count(200) == fitting_calls, statuses
    assert len(fake_upstream.requests) == fitting_calls, "a refused call reached the upstream"
    records = UsageRecord.objects.filter(endpoint="passthrough")
    wait_for(lambda: records.count() == CONCURRENT, what="every usage record")
    budget.refresh_from_db()
    charged = records.filter(status=200)
    assert sorted(records.values_list("status", flat=True)) == sorted(statuses)
    assert list(charged.values_list("images", flat=True)) == [2] * fitting_calls
    assert sum(charged.values_list("images", flat=True)) == budget.used_images
    assert sum(charged.values_list("cost_micro", flat=True)) == budget.used_micro
    assert (budget.reserved_micro, budget.reserved_images) == (0, 0)
    assert budget.used_images <= budget.limit_images
    if budget.limit_micro is not None:
        assert budget.used_micro <= budget.limit_micro


def test_images_per_minute_count_every_image_of_a_padded_passthrough_call(
    gateway: Server, team: Team, fake_upstream: FakeUpstream
) -> None:
    open_credential(fake_upstream)
    key = services.key_create(actor=ACTOR, team=team, name="two a minute", ipm_limit=2)

    first = post_padded_json(gateway, key)
    second = post_padded_json(gateway, key)

    assert first.status_code == 200, first.text
    assert len(first.json()["data"]) == 2
    assert_error(second, 429, "rate_limit_exceeded")
    assert int(second.headers["Retry-After"]) >= 1
    assert len(fake_upstream.requests) == 1


def test_a_call_whose_worst_case_does_not_fit_is_402_before_any_upstream_call(
    gateway: Server, api_key: CreatedKey, fake_upstream: FakeUpstream
) -> None:
    open_credential(fake_upstream)
    billing_services.budget_set(
        actor=ACTOR,
        workspace=api_key.key.workspace,
        team=None,
        key=api_key.key,
        period=Budget.Period.LIFETIME,
        limit_micro=None,
        limit_images=1,
    )

    response = post_padded_json(gateway, api_key)

    assert_error(response, 402, "insufficient_quota")
    assert fake_upstream.requests == []
    assert the_record(endpoint="passthrough").status == 402


# --- 2. Images received but not paid for -----------------------------------------------------


def read_part_then_reset(
    gateway: Server, path: str, body: bytes, key: CreatedKey, fake: FakeUpstream, share: float
) -> tuple[int, bytes, int]:
    """POST on a raw socket, read `share` of the answer's body, then reset the connection
    (SO_LINGER 0 sends an RST), as a client killed mid-download does.

    Returns the status, the body bytes received and the size of the whole answer."""
    parts = urlsplit(gateway)
    sock = socket.socket()
    # A small, fixed receive window: what the caller did not read cannot hide in its buffers.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.settimeout(30)
    sock.connect((str(parts.hostname), int(parts.port or 80)))
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nAuthorization: Bearer {key.secret}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    sock.sendall(head.encode() + body)
    received = bytearray()
    try:
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(64 * 1024)
            assert chunk, f"the gateway closed before its headers: {bytes(received)!r}"
            received += chunk
        head_end = received.index(b"\r\n\r\n") + 4
        status = int(received.split(b" ", 2)[1])
        total = len(fake.sent[-1])  # recorded by the fake before it answered
        while len(received) - head_end < share * total:
            chunk = sock.recv(64 * 1024)
            assert chunk, "the gateway closed before the caller went away"
            received += chunk
    finally:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    return status, bytes(received[head_end:]), total


def test_a_caller_that_reads_part_of_a_ten_image_answer_and_resets_pays_for_all_ten(
    gateway: Server, api_key: CreatedKey, fake_upstream: FakeUpstream
) -> None:
    open_credential(fake_upstream)
    fake_upstream.set_image_bytes(1_500_000)  # 10 images: a 20 MB answer
    body = json.dumps(
        {
            "model": "dall-e-2",
            "prompt": "a fox",
            "n": 10,
            "size": "1024x1024",
            "response_format": "b64_json",
        }
    ).encode()

    status, received, total = read_part_then_reset(
        gateway, "/openai/v1/images/generations", body, api_key, fake_upstream, share=0.65
    )

    assert status == 200
    assert len(received) < total
    assert received.count(b'"revised_prompt"') >= 6, "six whole images reached the caller"
    record = the_record(endpoint="passthrough")
    # dall-e-2 at 1024x1024: $0.020 an image.
    assert (record.status, record.upstream_model, record.images, record.cost_micro) == (
        200,
        "dall-e-2",
        10,
        200_000,
    )


def leave_after_the_second_partial(response: requests.Response) -> None:
    partials = 0
    for line in response.iter_lines():
        if line.startswith(b"data: "):
            partials += 1
            if partials == 2:
                break
    assert partials == 2
    response.close()


def test_a_caller_that_leaves_a_passthrough_stream_pays_for_the_image_the_upstream_finished(
    gateway: Server, api_key: CreatedKey, fake_upstream: FakeUpstream
) -> None:
    open_credential(fake_upstream)
    fake_upstream.final_held.clear()
    fake_upstream.final_bytes = 16 * 1024 * 1024  # cannot vanish into socket buffers
    response = requests.post(
        f"{gateway}/openai/v1/images/generations",
        json={**ASK, "stream": True, "partial_images": 3},
        headers=bearer(api_key),
        stream=True,
        timeout=30,
    )
    assert response.status_code == 200

    leave_after_the_second_partial(response)
    fake_upstream.final_held.set()

    record = the_record(endpoint="passthrough")
    assert (record.status, record.images, record.cost_micro) == (200, 1, TOKEN_COST)
    assert fake_upstream.final_sent.is_set(), "the gateway read the upstream's answer to the end"


def test_a_caller_that_leaves_a_generation_stream_pays_for_the_image_the_upstream_finished(
    gateway: Server,
    api_key: CreatedKey,
    upstream_aliases: dict[str, ModelAlias],
    fake_upstream: FakeUpstream,
) -> None:
    fake_upstream.final_held.clear()
    fake_upstream.final_bytes = 16 * 1024 * 1024
    response = requests.post(
        f"{gateway}/v1/images/generations",
        json={**ASK, "model": "image-openai", "stream": True, "partial_images": 3},
        headers=bearer(api_key),
        stream=True,
        timeout=30,
    )
    assert response.status_code == 200, response.text

    leave_after_the_second_partial(response)
    fake_upstream.final_held.set()

    record = the_record(endpoint="images.generations")
    assert (record.status, record.upstream_model, record.images, record.cost_micro) == (
        200,
        "gpt-image-1",
        1,
        TOKEN_COST,
    )
    assert fake_upstream.final_sent.is_set(), "the gateway read the upstream's answer to the end"


# --- 3. State shared across tenants ----------------------------------------------------------

UPSTREAM_COOKIES = [
    ("Set-Cookie", "tracker=workspace-a; Path=/"),
    ("Set-Cookie", "sessionid=upstream-session; Path=/; HttpOnly"),
    ("Set-Cookie", "csrftoken=upstream-csrf; Path=/"),
]
UPSTREAM_CORS = [
    ("Access-Control-Allow-Origin", "*"),
    ("Access-Control-Allow-Credentials", "true"),
    ("Access-Control-Expose-Headers", "x-request-id"),
]


@pytest.mark.parametrize("first_call", ["passthrough", "v1"])
def test_a_cookie_set_upstream_during_one_workspaces_call_never_reaches_anothers(
    gateway: Server,
    api_key: CreatedKey,
    outsider_key: CreatedKey,
    upstream_aliases: dict[str, ModelAlias],
    fake_upstream: FakeUpstream,
    first_call: str,
) -> None:
    open_credential(fake_upstream)
    fake_upstream.response_headers = list(UPSTREAM_COOKIES)
    small = {**ASK, "quality": "low"}
    if first_call == "passthrough":
        url, body = f"{gateway}/openai/v1/images/generations", small
    else:
        url, body = f"{gateway}/v1/images/generations", {**small, "model": "image-openai"}
    acme = requests.post(url, json=body, headers=bearer(api_key), timeout=30)
    assert acme.status_code == 200, acme.text
    fake_upstream.response_headers = []
    acme_calls = len(fake_upstream.requests)

    passthrough = requests.post(
        f"{gateway}/openai/v1/images/generations",
        json=small,
        headers=bearer(outsider_key),
        timeout=30,
    )
    v1 = requests.post(
        f"{gateway}/v1/images/generations",
        json={**small, "model": "image-openai"},
        headers=bearer(outsider_key),
        timeout=30,
    )

    assert (passthrough.status_code, v1.status_code) == (200, 200), (passthrough.text, v1.text)
    globex_calls = fake_upstream.requests[acme_calls:]
    assert [call.path for call in globex_calls] == ["/v1/images/generations"] * 2
    assert [call.headers.get("cookie") for call in globex_calls] == [None, None]


def test_no_set_cookie_or_access_control_header_from_the_upstream_reaches_a_passthrough_caller(
    gateway: Server, api_key: CreatedKey, fake_upstream: FakeUpstream
) -> None:
    open_credential(fake_upstream)
    fake_upstream.response_headers = UPSTREAM_COOKIES + UPSTREAM_CORS
    image = requests.post(
        f"{gateway}/openai/v1/images/generations",
        json={**ASK, "quality": "low"},
        headers=bearer(api_key),
        timeout=30,
    )
    stream = requests.post(
        f"{gateway}/openai/v1/images/generations",
        json={**ASK, "quality": "low", "stream": True, "partial_images": 1},
        headers=bearer(api_key),
        timeout=30,
    )
    other = requests.get(f"{gateway}/openai/v1/models", headers=bearer(api_key), timeout=30)

    for response in (image, stream, other):
        assert response.status_code == 200, response.text
        leaked = [
            name
            for name in response.headers
            if name.lower() == "set-cookie" or name.lower().startswith("access-control-")
        ]
        assert leaked == [], (response.request.url, leaked)
        assert response.cookies.get_dict() == {}


def test_the_callers_forwarding_headers_are_not_passed_upstream(
    gateway: Server, api_key: CreatedKey, fake_upstream: FakeUpstream
) -> None:
    open_credential(fake_upstream)
    response = requests.post(
        f"{gateway}/openai/v1/images/generations",
        json={**ASK, "quality": "low"},
        headers={
            **bearer(api_key),
            "X-Forwarded-For": "203.0.113.7",
            "Forwarded": "for=203.0.113.7;host=evil.example;proto=https",
            "X-Forwarded-Host": "evil.example",
            "X-Custom": "kept",
        },
        timeout=30,
    )
    assert response.status_code == 200, response.text
    (call,) = fake_upstream.requests
    assert call.headers["x-custom"] == "kept"
    forwarding = {"x-forwarded-for", "forwarded", "x-forwarded-host"}
    assert {name: call.headers[name] for name in forwarding & set(call.headers)} == {}


# --- 4. Unpriced means free ------------------------------------------------------------------

UNPRICED_GEMINI = "gemini-9-unpriced-image"
GEMINI_BODY = {"contents": [{"parts": [{"text": "a fox"}]}]}


def assert_not_priced(response: requests.Response, *models: str) -> None:
    error = assert_error(response, 400, "model_not_priced")
    assert error["type"] == "invalid_request_error"
    assert any(model in str(error["message"]) for model in models), error


def test_passthrough_to_an_unpriced_model_is_refused_before_the_upstream(
    gateway: Server, api_key: CreatedKey, fake_upstream: FakeUpstream
) -> None:
    open_credential(fake_upstream, name="gemini-cred", provider=Provider.GEMINI)
    response = requests.post(
        f"{gateway}/gemini-cred/v1beta/models/{UNPRICED_GEMINI}:generateContent",
        json=GEMINI_BODY,
        headers={"x-goog-api-key": api_key.secret},
        timeout=30,
    )
    assert_not_priced(response, UNPRICED_GEMINI)
    assert fake_upstream.requests == []


def test_model_ids_are_priced_case_sensitively_as_the_provider_matches_them(
    gateway: Server, api_key: CreatedKey, fake_upstream: FakeUpstream
) -> None:
    open_credential(fake_upstream)
    response = requests.post(
        f"{gateway}/openai/v1/images/generations",
        json={**ASK, "model": "GPT-IMAGE-1", "n": 3},
        headers=bearer(api_key),
        timeout=30,
    )
    assert_not_priced(response, "GPT-IMAGE-1")
    assert fake_upstream.requests == []


def test_an_alias_whose_upstream_model_has_no_price_is_refused_before_the_upstream(
    gateway: Server,
    api_key: CreatedKey,
    openai_credential: ProviderCredential,
    fake_upstream: FakeUpstream,
) -> None:
    make_alias("unpriced-alias", openai_credential, "gpt-image-9-unpriced")
    response = requests.post(
        f"{gateway}/v1/images/generations",
        json={**ASK, "model": "unpriced-alias"},
        headers=bearer(api_key),
        timeout=30,
    )
    assert_not_priced(response, "gpt-image-9-unpriced", "unpriced-alias")
    assert fake_upstream.requests == []


def test_a_credential_marked_free_serves_an_unpriced_model_at_no_cost(
    gateway: Server, api_key: CreatedKey, fake_upstream: FakeUpstream
) -> None:
    open_credential(fake_upstream, name="gemini-free", provider=Provider.GEMINI, free=True)
    response = requests.post(
        f"{gateway}/gemini-free/v1beta/models/{UNPRICED_GEMINI}:generateContent",
        json=GEMINI_BODY,
        headers={"x-goog-api-key": api_key.secret},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert len(fake_upstream.requests) == 1
    record = the_record(endpoint="passthrough")
    assert (record.status, record.upstream_model, record.images, record.cost_micro) == (
        200,
        UNPRICED_GEMINI,
        1,
        0,
    )


def test_a_deployment_marked_free_serves_an_unpriced_model_at_no_cost(
    gateway: Server,
    api_key: CreatedKey,
    openai_credential: ProviderCredential,
    fake_upstream: FakeUpstream,
) -> None:
    make_alias("free-alias", openai_credential, "gpt-image-9-unpriced", free=True)
    response = requests.post(
        f"{gateway}/v1/images/generations",
        json={**ASK, "model": "free-alias"},
        headers=bearer(api_key),
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert len(response.json()["data"]) == 1
    record = the_record(endpoint="images.generations")
    assert (record.status, record.upstream_model, record.images, record.cost_micro) == (
        200,
        "gpt-image-9-unpriced",
        1,
        0,
    )

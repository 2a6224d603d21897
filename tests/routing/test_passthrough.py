"""Passthrough `/{provider}/{path}` through gunicorn (gevent) and the fake upstream.

What the fake upstream received is checked byte for byte, and so is what the caller got back.
"""

import http.client
import threading
from urllib.parse import urlsplit

import pytest
import requests
from openai import OpenAI

from billing.models import Budget, UsageRecord
from routing import services as routing_services
from routing.models import ModelAlias, Provider
from tenants import services
from tenants.models import Team, Workspace
from tenants.services import CreatedKey
from tests.conftest import ACTOR, UPSTREAM_SECRET
from tests.fakes.upstream import FakeUpstream, Misbehave, png
from tests.routing import passthrough_support as support
from tests.routing.passthrough_support import assert_error, bearer, open_credential
from tests.support import (
    Server,
    free_port,
    rss_bytes,
    wait_for,
)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _prices(list_prices: None) -> None:
    """Priced calls need the seeded list prices."""


def the_record(**filters: object) -> UsageRecord:
    """The one passthrough usage record, once the server has written it."""
    return support.the_record(endpoint="passthrough", **filters)


def test_a_json_call_reaches_the_upstream_byte_for_byte_with_the_providers_key_only(
    gateway: Server, api_key: CreatedKey, fake_upstream: FakeUpstream
) -> None:
    open_credential(fake_upstream)
    body = b'{"model": "gpt-image-1",   "prompt": "a fox",\n "size": "1024x1024"}'
    response = requests.post(
        f"{gateway}/openai/v1/images/generations?trace=1&key={api_key.secret}&b=%2F",
        data=body,
        headers={**bearer(api_key), "Content-Type": "application/json", "X-Custom": "kept"},
        timeout=30,
    )

    assert response.status_code == 200, response.text
    (call,) = fake_upstream.requests
    assert (call.method, call.target, call.raw) == (
        "POST",
        "/v1/images/generations?trace=1&b=%2F",
        body,
    )
    assert call.headers["authorization"] == f"Bearer {UPSTREAM_SECRET}"
    assert call.headers["host"] == urlsplit(fake_upstream.url).netloc
    assert call.headers["x-custom"] == "kept"
    assert call.headers["content-length"] == str(len(body))
    assert api_key.secret not in repr(call)
    assert UPSTREAM_SECRET not in response.text
    assert UPSTREAM_SECRET not in repr(response.headers)
    assert response.content == fake_upstream.sent[-1]
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["x-aperture-passthrough"] == "openai"
    assert response.headers["x-upstream-request-id"].startswith("fake_")
    assert response.json()["usage"]["total_tokens"] == 1068
    record = the_record()
    # gpt-image-1 by tokens: 12 text-in x $5/M + 1056 image-out x $40/M = 42,300 µUSD.
    assert (
        record.method,
        record.path,
        record.status,
        record.provider,
        record.upstream_model,
        record.images,
        record.output_tokens,
        record.cost_micro,
        record.bytes_in,
        record.bytes_out,
    ) == (
        "POST",
        "/v1/images/generations",
        200,
        "openai",
        "gpt-image-1",
        1,
        1056,
        42_300,
        len(body),
        len(response.content),
    )


def test_a_multipart_call_and_its_binary_answer_pass_through_untouched(
    gateway: Server, api_key: CreatedKey, fake_upstream: FakeUpstream
) -> None:
    # Stability's images come back as bytes the gateway does not count: only a credential
    # the operator marked free relays them (see the next test).
    open_credential(fake_upstream, name="stability", provider=Provider.STABILITY, free=True)
    prepared = requests.Request(
        "POST",
        f"{gateway}/stability/v2beta/stable-image/generate/core",
        files={"prompt": (None, "a fox"), "output_format": (None, "png")},
        headers={**bearer(api_key), "Accept": "image/*"},
    ).prepare()
    with requests.Session() as session:  # closed: its pooled socket is not left to the GC
        response = session.send(prepared, timeout=30)

    assert response.status_code == 200, response.text
    assert response.content == png(64, 64)
    assert response.headers["Content-Type"] == "image/png"
    assert (response.headers["finish-reason"], response.headers["seed"]) == ("SUCCESS", "7")
    (call,) = fake_upstream.requests
    assert call.raw == prepared.body
    assert call.headers["content-type"] == prepared.headers["Content-Type"]
    assert call.headers["accept"] == "image/*"
    assert call.headers["authorization"] == f"Bearer {UPSTREAM_SECRET}"
    record = the_record()
    assert (record.status, record.provider, record.images, record.cost_micro) == (
        200,
        "stability",
        0,
        0,
    )
    assert record.bytes_out == len(png(64, 64))


@pytest.mark.parametrize(
    ("provider", "path"),
    [
        (Provider.STABILITY, "/v2beta/stable-image/generate/core"),
        (Provider.BFL, "/v1/flux-2-pro"),
        (Provider.REPLICATE, "/v1/models/black-forest-labs/flux-schnell/predictions"),
        (Provider.SEEDREAM, "/api/v3/images/generations"),
        (Provider.ZAI, "/api/paas/v4/images/generations"),
        (Provider.OPENROUTER, "/api/v1/chat/completions"),
        (Provider.GEMINI, "/v1beta/models/imagen-4.0-generate-001:predict"),
    ],
)
def test_an_image_route_the_gateway_cannot_count_is_refused_unless_the_credential_is_free(
    gateway: Server, api_key: CreatedKey, fake_upstream: FakeUpstream, provider: str, path: str
) -> None:
    open_credential(fake_upstream, name="native", provider=provider)
    response = requests.post(
        f"{gateway}/native{path}", json={"prompt": "a fox"}, headers=bearer(api_key), timeout=30
    )
    assert_error(response, 400, "route_not_priced")
    assert fake_upstream.requests == []
    assert (the_record().status, the_record().cost_micro) == (400, 0)


def test_a_multipart_edit_is_priced_from_its_form_fields(
    gateway: Server, api_key: CreatedKey, fake_upstream: FakeUpstream
) -> None:
    open_credential(fake_upstream)
    form: dict[str, tuple[str | None, bytes | str] | tuple[str, bytes, str]] = {
        "image": ("fox.png", png(32, 32), "image/png"),
        "prompt": (None, "add a hat"),
        "model": (None, "gpt-image-1"),
        "n": (None, "2"),
        "quality": (None, "low"),
    }
    response = requests.post(
        f"{gateway}/openai/v1/images/edits",
        files=form,
        headers=bearer(api_key),
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert len(response.json()["data"]) == 2
    record = the_record()
    # Two low-quality 1024x1024 gpt-image-1 images at $0.011.
    assert (record.upstream_model, record.images, record.cost_micro) == ("gpt-image-1", 2, 22_000)


def test_the_official_sdk_streams_through_passthrough_as_events_arrive(
    gateway: Server, api_key: CreatedKey, fake_upstream: FakeUpstream
) -> None:
    open_credential(fake_upstream)
    fake_upstream.final_held.clear()  # the upstream holds its final event until told
    client = OpenAI(
        base_url=f"{gateway}/openai/v1", api_key=api_key.secret, max_retries=0, timeout=30
    )
    stream = client.images.generate(
        model="gpt-image-1", prompt="a fox", stream=True, partial_images=2, size="1024x1024"
    )
    events = iter(stream)
    first = next(events)
    assert first.type == "image_generation.partial_image"
    assert first.partial_image_index == 0
    assert not fake_upstream.final_sent.is_set(), "the first event waited for the final one"
    fake_upstream.final_held.set()
    rest = list(events)
    assert [e.type for e in rest] == [
        "image_generation.partial_image",
        "image_generation.completed",
    ]
    (call,) = fake_upstream.requests
    assert call.body["stream"] is True
    assert call.headers["authorization"] == f"Bearer {UPSTREAM_SECRET}"
    record = the_record()
    assert (record.status, record.images, record.cost_micro, record.error_code) == (
        200,
        1,
        42_300,
        "",
    )


def test_server_sent_events_reach_the_caller_byte_for_byte(
    gateway: Server, api_key: CreatedKey, fake_upstream: FakeUpstream
) -> None:
    open_credential(fake_upstream)
    response = requests.post(
        f"{gateway}/openai/v1/images/generations",
        json={"model": "gpt-image-1", "prompt": "a fox", "stream": True, "partial_images": 3},
        headers=bearer(api_key),
        timeout=30,
    )
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/event-stream"
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.content == bytes(fake_upstream.streamed)
    assert response.content.count(b"event: image_generation.partial_image") == 3


def test_an_upstream_that_dies_mid_stream_breaks_the_callers_stream_too(
    gateway: Server, api_key: CreatedKey, fake_upstream: FakeUpstream
) -> None:
    open_credential(fake_upstream)
    fake_upstream.break_streams = True
    response = requests.post(
        f"{gateway}/openai/v1/images/generations",
        json={"model": "gpt-image-1", "prompt": "a fox", "stream": True, "partial_images": 2},
        headers=bearer(api_key),
        stream=True,
        timeout=30,
    )
    received = bytearray()
    with pytest.raises(requests.exceptions.ChunkedEncodingError):  # not a clean end
        for chunk in response.iter_content(None):
            received += chunk
    assert received.count(b"event: image_generation.partial_image") == 2
    record = the_record()
    assert (record.status, record.error_code, record.images, record.cost_micro) == (
        200,
        "upstream_stream_broken",
        0,
        0,
    )


def test_head_and_options_are_relayed_too(
    gateway: Server, api_key: CreatedKey, fake_upstream: FakeUpstream
) -> None:
    open_credential(fake_upstream, free=True)  # PUT and PATCH ask for work it cannot price
    for method in ("HEAD", "OPTIONS", "PUT", "PATCH", "DELETE"):
        response = requests.request(
            method, f"{gateway}/openai/v1/things/1", headers=bearer(api_key), timeout=30
        )
        assert response.status_code == 200, (method, response.text)
        assert response.headers["x-upstream-echo"] == "yes"
        if method != "HEAD":  # the upstream's own Allow and Vary, not the gateway's
            assert (response.headers["Allow"], response.headers["Vary"]) == ("GET", "Origin")
    assert [call.method for call in fake_upstream.requests] == [
        "HEAD",
        "OPTIONS",
        "PUT",
        "PATCH",
        "DELETE",
    ]


def test_a_gateway_key_in_the_query_string_stays_out_of_the_access_log(
    gateway: Server, api_key: CreatedKey, fake_upstream: FakeUpstream
) -> None:
    open_credential(fake_upstream, name="gemini", provider=Provider.GEMINI)
    marker = "v1beta/models/logged-call"
    response = requests.get(f"{gateway}/gemini/{marker}?key={api_key.secret}", timeout=30)
    assert response.status_code == 200
    log = gateway.access_log
    wait_for(lambda: marker in log.read_text(), what="the access log line")
    assert api_key.secret not in log.read_text()


def test_a_client_that_disconnects_mid_stream_frees_the_worker_and_pays_for_what_was_made(
    gateway: Server, api_key: CreatedKey, fake_upstream: FakeUpstream
) -> None:
    open_credential(fake_upstream)
    fake_upstream.final_held.clear()
    fake_upstream.final_bytes = 16 * 1024 * 1024  # cannot vanish into socket buffers
    response = requests.post(
        f"{gateway}/openai/v1/images/generations",
        json={"model": "gpt-image-1", "prompt": "a fox", "stream": True, "partial_images": 1},
        headers=bearer(api_key),
        stream=True,
        timeout=30,
    )
    first = next(response.iter_lines())
    assert first == b"event: image_generation.partial_image"
    response.close()  # the caller goes away before the image is done
    fake_upstream.final_held.set()
    record = the_record()
    # The upstream went on and finished the image: the caller pays for it.
    assert (record.status, record.error_code, record.images, record.cost_micro) == (
        200,
        "client_disconnected",
        1,
        42_300,
    )
    assert record.bytes_out > 0
    # The worker is free: the next call is served at once.
    assert requests.get(f"{gateway}/openai/v1/x", headers=bearer(api_key), timeout=10).ok


@pytest.mark.parametrize(
    ("provider", "header", "value"),
    [
        (Provider.OPENAI, "authorization", f"Bearer {UPSTREAM_SECRET}"),
        (Provider.AZURE, "api-key", UPSTREAM_SECRET),
        (Provider.GEMINI, "x-goog-api-key", UPSTREAM_SECRET),
        (Provider.SEEDREAM, "authorization", f"Bearer {UPSTREAM_SECRET}"),
        (Provider.XAI, "authorization", f"Bearer {UPSTREAM_SECRET}"),
        (Provider.OPENROUTER, "authorization", f"Bearer {UPSTREAM_SECRET}"),
        (Provider.STABILITY, "authorization", f"Bearer {UPSTREAM_SECRET}"),
        (Provider.BFL, "x-key", UPSTREAM_SECRET),
        (Provider.REPLICATE, "authorization", f"Bearer {UPSTREAM_SECRET}"),
    ],
)
def test_each_provider_gets_its_credential_in_its_own_scheme(
    gateway: Server,
    api_key: CreatedKey,
    fake_upstream: FakeUpstream,
    provider: str,
    header: str,
    value: str,
) -> None:
    open_credential(fake_upstream, name="up", provider=provider)
    response = requests.get(f"{gateway}/up/v1/x", headers={"x-api-key": api_key.secret}, timeout=30)
    assert response.status_code == 200, response.text
    (call,) = fake_upstream.requests
    assert call.headers[header] == value
    credential_headers = {"authorization", "api-key", "x-goog-api-key", "x-key", "x-api-key"}
    assert set(call.headers) & credential_headers == {header}


def test_a_path_outside_the_allowed_prefixes_is_refused_before_the_upstream(
    gateway: Server, api_key: CreatedKey, fake_upstream: FakeUpstream
) -> None:
    # Free: the allowed path is no priced image route (those are refused on a priced one).
    open_credential(fake_upstream, prefixes=["/v1/images/"], free=True)
    refused = requests.post(
        f"{gateway}/openai/v1/files", json={}, headers=bearer(api_key), timeout=30
    )
    assert_error(refused, 403, "passthrough_path_not_allowed")
    allowed = requests.post(
        f"{gateway}/openai/v1/images/variations-x", json={}, headers=bearer(api_key), timeout=30
    )
    assert allowed.status_code == 200
    assert [c.path for c in fake_upstream.requests] == ["/v1/images/variations-x"]


def test_another_workspaces_provider_is_not_found_and_a_closed_one_neither(
    gateway: Server,
    api_key: CreatedKey,
    outsider_key: CreatedKey,
    fake_upstream: FakeUpstream,
) -> None:
    globex = Workspace.objects.get(slug="globex")
    open_credential(fake_upstream, name="globex-private", workspace=globex)
    open_credential(fake_upstream, name="closed", passthrough=False)
    for name in ("globex-private", "closed", "nobody"):
        response = requests.get(f"{gateway}/{name}/v1/x", headers=bearer(api_key), timeout=30)
        assert_error(response, 404, "provider_not_found")
    assert fake_upstream.requests == []
    owner = requests.get(f"{gateway}/globex-private/v1/x", headers=bearer(outsider_key), timeout=30)
    assert owner.status_code == 200
    assert len(fake_upstream.requests) == 1


def test_a_workspace_credential_shadows_the_platform_one_of_that_name(
    gateway: Server, api_key: CreatedKey, workspace: Workspace, fake_upstream: FakeUpstream
) -> None:
    with FakeUpstream(expected_secret=UPSTREAM_SECRET) as platform_upstream:
        open_credential(platform_upstream, name="shared")
        open_credential(fake_upstream, name="shared", workspace=workspace)
        response = requests.get(f"{gateway}/shared/v1/x", headers=bearer(api_key), timeout=30)
        assert response.status_code == 200
        assert (len(fake_upstream.requests), len(platform_upstream.requests)) == (1, 0)


def _raw_get(gateway: Server, target: str, secret: str) -> tuple[int, bytes]:
    """A request line exactly as written: no client normalizes the target first."""
    parts = urlsplit(gateway)
    connection = http.client.HTTPConnection(str(parts.hostname), parts.port, timeout=30)
    try:
        connection.putrequest("GET", target, skip_host=True, skip_accept_encoding=True)
        connection.putheader("Host", f"{parts.hostname}:{parts.port}")
        connection.putheader("Authorization", f"Bearer {secret}")
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_tricks_in_the_path_never_change_the_upstream_host(
    gateway: Server, api_key: CreatedKey, fake_upstream: FakeUpstream
) -> None:
    open_credential(fake_upstream)
    refused = [
        "/openai/../admin/",
        "/openai/v1/%2e%2e/%2e%2e/admin/",
        "/openai/v1/..%2F..%2Fadmin",
        "/openai/v1/%2E%2E%5Cadmin",
    ]
    forwarded = {
        "/openai/@169.254.169.254/latest": "/@169.254.169.254/latest",
        "/openai/http://169.254.169.254/latest": "/http://169.254.169.254/latest",
        "/openai//evil.example/x": "//evil.example/x",
        "/openai/v1/a%2Fb?c=%2F": "/v1/a%2Fb?c=%2F",
        "http://evil.example/openai/v1/absolute": "/v1/absolute",
    }
    for target in refused:
        status, body = _raw_get(gateway, target, api_key.secret)
        assert status == 400, (target, body)
        assert b'"invalid_path"' in body
    for target, expected in forwarded.items():
        status, body = _raw_get(gateway, target, api_key.secret)
        assert status == 200, (target, body)
        assert fake_upstream.requests[-1].target == expected
    assert len(fake_upstream.requests) == len(forwarded)


def test_a_200_mb_response_streams_through_without_the_server_holding_it(
    gateway: Server, api_key: CreatedKey, fake_upstream: FakeUpstream
) -> None:
    open_credential(fake_upstream)
    size = 200 * 1024 * 1024
    warm = requests.get(
        f"{gateway}/openai/v1/big?bytes=1048576", headers=bearer(api_key), timeout=30
    )
    assert len(warm.content) == 1024 * 1024
    (worker,) = gateway.worker_pids()
    baseline = peak = rss_bytes(worker)
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_bytes(worker))
            done.wait(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    received, tail = 0, b""
    try:
        with requests.get(
            f"{gateway}/openai/v1/big?bytes={size}",
            headers=bearer(api_key),
            stream=True,
            timeout=60,
        ) as response:
            assert response.status_code == 200
            assert response.headers["Content-Length"] == str(size)
            for chunk in response.iter_content(1024 * 1024):
                received += len(chunk)
                tail = chunk[-256:]
    finally:
        done.set()
        sampler.join()
    assert received == size
    assert tail == bytes(range(256))
    print(f"200 MB passthrough: worker RSS grew by {(peak - baseline) / 2**20:.1f} MB")
    assert peak - baseline < 50 * 1024 * 1024, f"grew by {(peak - baseline) / 2**20:.1f} MB"
    records = UsageRecord.objects.filter(endpoint="passthrough", bytes_out=size)
    wait_for(lambda: records.exists(), what="the record of the large call")


def test_a_chunked_upload_streams_through_untouched(
    gateway: Server, api_key: CreatedKey, fake_upstream: FakeUpstream
) -> None:
    open_credential(fake_upstream, free=True)  # an upload is work the gateway does not price
    pieces = [bytes([i]) * 100_000 for i in range(5)]
    response = requests.post(
        f"{gateway}/openai/v1/uploads",
        data=iter(pieces),
        headers={**bearer(api_key), "Content-Type": "application/octet-stream"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    (call,) = fake_upstream.requests
    assert call.raw == b"".join(pieces)
    assert "transfer-encoding" in call.headers
    assert the_record().bytes_in == 500_000


def test_an_exhausted_budget_refuses_with_402_before_any_upstream_call(
    gateway: Server, api_key: CreatedKey, fake_upstream: FakeUpstream
) -> None:
    open_credential(fake_upstream)
    Budget.objects.create(
        workspace_id=api_key.key.workspace_id,
        scope=Budget.Scope.KEY,
        key=api_key.key,
        period=Budget.Period.LIFETIME,
        limit_micro=50_000,
        used_micro=50_000,
    )
    response = requests.get(f"{gateway}/openai/v1/models", headers=bearer(api_key), timeout=30)
    assert_error(response, 402, "insufficient_quota")
    assert fake_upstream.requests == []
    assert the_record().status == 402


def test_a_generation_that_would_exceed_the_budget_is_refused_and_one_within_it_is_charged(
    gateway: Server, api_key: CreatedKey, fake_upstream: FakeUpstream
) -> None:
    open_credential(fake_upstream)
    budget = Budget.objects.create(
        workspace_id=api_key.key.workspace_id,
        scope=Budget.Scope.KEY,
        key=api_key.key,
        period=Budget.Period.LIFETIME,
        limit_micro=100_000,
    )
    asked = {"model": "gpt-image-1", "prompt": "a fox", "size": "1024x1024", "quality": "high"}
    dear = requests.post(
        f"{gateway}/openai/v1/images/generations", json=asked, headers=bearer(api_key), timeout=30
    )
    assert_error(dear, 402, "insufficient_quota")  # a high 1024² image may cost $0.167
    cheap = requests.post(
        f"{gateway}/openai/v1/images/generations",
        json={**asked, "quality": "low"},
        headers=bearer(api_key),
        timeout=30,
    )
    assert cheap.status_code == 200
    assert len(fake_upstream.requests) == 1
    wait_for(lambda: UsageRecord.objects.filter(status=200).exists(), what="the record")
    budget.refresh_from_db()
    assert (budget.used_micro, budget.reserved_micro, budget.used_images) == (42_300, 0, 1)


def test_the_rate_limit_refuses_with_429_before_any_upstream_call(
    gateway: Server, team: Team, fake_upstream: FakeUpstream
) -> None:
    open_credential(fake_upstream)
    key = services.key_create(actor=ACTOR, team=team, name="slow", rpm_limit=1)
    first = requests.get(f"{gateway}/openai/v1/models", headers=bearer(key), timeout=30)
    second = requests.get(f"{gateway}/openai/v1/models", headers=bearer(key), timeout=30)
    assert first.status_code == 200
    assert_error(second, 429, "rate_limit_exceeded")
    assert int(second.headers["Retry-After"]) >= 1
    assert len(fake_upstream.requests) == 1


def test_gemini_callers_authenticate_natively_and_images_are_priced(
    gateway: Server, api_key: CreatedKey, fake_upstream: FakeUpstream
) -> None:
    open_credential(fake_upstream, name="gemini", provider=Provider.GEMINI)
    path = "/gemini/v1beta/models/gemini-2.5-flash-image:generateContent"
    body = {"contents": [{"parts": [{"text": "a fox"}]}]}
    by_header = requests.post(
        f"{gateway}{path}", json=body, headers={"x-goog-api-key": api_key.secret}, timeout=30
    )
    by_query = requests.post(f"{gateway}{path}?key={api_key.secret}", json=body, timeout=30)
    assert (by_header.status_code, by_query.status_code) == (200, 200)
    for call in fake_upstream.requests:
        assert call.headers["x-goog-api-key"] == UPSTREAM_SECRET
        assert "authorization" not in call.headers
        assert call.target == "/v1beta/models/gemini-2.5-flash-image:generateContent"
    wait_for(lambda: UsageRecord.objects.filter(endpoint="passthrough").count() == 2)
    for record in UsageRecord.objects.filter(endpoint="passthrough"):
        assert (record.upstream_model, record.images, record.cost_micro) == (
            "gemini-2.5-flash-image",
            1,
            39_000,
        )
        assert record.output_tokens == 1290


def test_no_key_is_401_and_a_key_limited_to_models_may_not_pass_through(
    gateway: Server, team: Team, fake_upstream: FakeUpstream
) -> None:
    open_credential(fake_upstream)
    assert_error(requests.get(f"{gateway}/openai/v1/models", timeout=30), 401, "missing_api_key")
    wrong = requests.get(
        f"{gateway}/openai/v1/models", headers={"x-api-key": "apk_nope_nope"}, timeout=30
    )
    assert wrong.status_code == 401
    too_long = requests.get(f"{gateway}/openai/v1/models?key={'k' * 600}", timeout=30)
    assert_error(too_long, 401, "invalid_api_key")
    limited = services.key_create(actor=ACTOR, team=team, name="l", allowed_aliases=["a"])
    response = requests.get(f"{gateway}/openai/v1/models", headers=bearer(limited), timeout=30)
    assert_error(response, 403, "passthrough_not_allowed")
    assert fake_upstream.requests == []


def test_upstream_answers_errors_included_reach_the_caller_untouched(
    gateway: Server, api_key: CreatedKey, fake_upstream: FakeUpstream
) -> None:
    open_credential(fake_upstream)
    upstream_error = {"error": {"message": "bad size", "type": "invalid_request_error"}}
    fake_upstream.misbehave(
        Misbehave(status=400, body=upstream_error),
        Misbehave(status=429, body={"error": {"message": "slow"}}, headers={"Retry-After": "9"}),
    )
    url = f"{gateway}/openai/v1/images/generations"
    bad = requests.post(url, json={"model": "gpt-image-1"}, headers=bearer(api_key), timeout=30)
    limited = requests.post(url, json={"model": "gpt-image-1"}, headers=bearer(api_key), timeout=30)
    assert (bad.status_code, bad.json()) == (400, upstream_error)
    assert (limited.status_code, limited.headers["Retry-After"]) == (429, "9")
    wait_for(lambda: UsageRecord.objects.filter(endpoint="passthrough").count() == 2)
    assert sorted(UsageRecord.objects.values_list("status", "cost_micro")) == [(400, 0), (429, 0)]


def test_redirects_are_passed_back_not_followed(
    gateway: Server, api_key: CreatedKey, fake_upstream: FakeUpstream
) -> None:
    open_credential(fake_upstream)
    response = requests.get(
        f"{gateway}/openai/v1/redirect?to=http://169.254.169.254/latest",
        headers=bearer(api_key),
        allow_redirects=False,
        timeout=30,
    )
    assert (response.status_code, response.headers["Location"]) == (
        302,
        "http://169.254.169.254/latest",
    )
    assert len(fake_upstream.requests) == 1


def test_an_unreachable_or_unconfigured_upstream_is_502(
    gateway: Server, api_key: CreatedKey
) -> None:
    routing_services.credential_create(
        actor=ACTOR,
        name="gone",
        provider=Provider.OPENAI,
        base_url=f"http://127.0.0.1:{free_port()}",
        secret=UPSTREAM_SECRET,
        passthrough_enabled=True,
    )
    response = requests.get(f"{gateway}/gone/v1/models", headers=bearer(api_key), timeout=30)
    assert_error(response, 502, "upstream_error")
    assert the_record().status == 502
    routing_services.credential_create(
        actor=ACTOR,
        name="azure-nowhere",
        provider=Provider.AZURE,
        secret="k" * 20,
        passthrough_enabled=True,
    )
    nowhere = requests.get(f"{gateway}/azure-nowhere/openai/x", headers=bearer(api_key), timeout=30)
    assert_error(nowhere, 502, "credential_misconfigured")


def test_a_silent_upstream_is_504(
    live_server, api_key: CreatedKey, fake_upstream: FakeUpstream, settings
) -> None:
    settings.PASSTHROUGH_READ_TIMEOUT = 0.2
    open_credential(fake_upstream, free=True)  # /v1/slow is no priced route
    fake_upstream.misbehave(Misbehave(delay=2))
    response = requests.post(
        f"{live_server.url}/openai/v1/slow", json={}, headers=bearer(api_key), timeout=30
    )
    assert_error(response, 504, "upstream_timeout")


def test_the_gateways_own_routes_take_precedence_over_a_credential_named_openai(
    gateway: Server,
    api_key: CreatedKey,
    fake_upstream: FakeUpstream,
    upstream_aliases: dict[str, ModelAlias],
) -> None:
    open_credential(fake_upstream, name="openai")
    azure = requests.post(
        f"{gateway}/openai/deployments/image-azure/images/generations?api-version=2025-04-01-preview",
        json={"prompt": "a fox", "size": "1024x1024"},
        headers={"api-key": api_key.secret},
        timeout=30,
    )
    assert azure.status_code == 200, azure.text
    assert fake_upstream.requests[-1].path == "/openai/deployments/gpt-image-1/images/generations"
    unknown = requests.post(
        f"{gateway}/openai/deployments/image-azure/images/nothing",
        json={},
        headers=bearer(api_key),
        timeout=30,
    )
    assert_error(unknown, 404, "not_found")
    v1 = requests.get(f"{gateway}/v1/nothing", headers=bearer(api_key), timeout=30)
    assert_error(v1, 404, "not_found")
    assert len(fake_upstream.requests) == 1


@pytest.mark.parametrize("name", ["v1", "api", "admin", "healthz", "metrics", "static", "media"])
def test_a_credential_named_after_a_gateway_route_is_refused(name: str) -> None:
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError):
        routing_services.credential_create(
            actor=ACTOR, name=name, provider=Provider.OPENAI, secret="sk", passthrough_enabled=True
        )


def test_the_local_provider_has_nothing_to_pass_through_to(
    gateway: Server, api_key: CreatedKey
) -> None:
    routing_services.credential_create(
        actor=ACTOR, name="here", provider=Provider.LOCAL, secret="", passthrough_enabled=True
    )
    response = requests.get(f"{gateway}/here/v1/x", headers=bearer(api_key), timeout=30)
    assert_error(response, 400, "unsupported")


def test_path_prefixes_must_be_absolute_paths() -> None:
    from django.core.exceptions import ValidationError

    for prefixes in (["v1/images/"], ["/v1/../x"], "/v1/"):
        with pytest.raises(ValidationError):
            routing_services.credential_create(
                actor=ACTOR,
                name="p",
                provider=Provider.OPENAI,
                secret="sk",
                passthrough_path_prefixes=prefixes,  # type: ignore[arg-type]
            )


def test_work_on_a_route_the_gateway_does_not_price_is_refused_on_a_priced_credential(
    gateway: Server, api_key: CreatedKey, fake_upstream: FakeUpstream
) -> None:
    open_credential(fake_upstream)
    for method, path in (("POST", "/v1/chat/completions"), ("PUT", "/v1/x"), ("PATCH", "/v1/x")):
        response = requests.request(
            method, f"{gateway}/openai{path}", json={}, headers=bearer(api_key), timeout=30
        )
        assert_error(response, 400, "route_not_priced")
    assert fake_upstream.requests == []
    assert requests.get(f"{gateway}/openai/v1/models", headers=bearer(api_key), timeout=30).ok

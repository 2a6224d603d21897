"""`Idempotency-Key` on inference POSTs: the first request with a key runs, a retry gets its
answer byte for byte with no second upstream call or charge, a reuse for another request is a
422 and a retry while the first still runs a 409. In process for the rules, through gunicorn
for concurrency, streams and passthrough."""

import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
from django.conf import settings as django_settings
from django.core.files.storage import default_storage
from django.utils import timezone
from rest_framework.test import APIClient

from billing import leases
from billing.models import Budget, Reservation, UsageRecord
from routing import idempotency
from routing.jobs import run
from routing.models import IdempotentRequest, ImageJob, ModelAlias
from tenants import services
from tenants.models import Team
from tenants.services import CreatedKey
from tests.conftest import ACTOR
from tests.fakes.upstream import FakeUpstream, Misbehave, png
from tests.routing.passthrough_support import assert_error, bearer, open_credential
from tests.support import Server, client_for, gunicorn, subprocess_database_url, wait_for

URL = "/v1/images/generations"
BODY = {"model": "image-openai", "prompt": "a lighthouse", "size": "1024x1024", "quality": "low"}
# gpt-image-1 by tokens (the fake's usage): 12 text-in x $5/M + 1056 image-out x $40/M.
COST = 42_300
REPLAYED = "Idempotent-Replayed"
ORIGINAL = "x-aperture-original-request-id"


@pytest.fixture(scope="module")
def media_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(autouse=True)
def _media(settings: Any, media_root: Path) -> None:
    """Kept answers go to this module's own storage, the served gateway's too."""
    settings.MEDIA_ROOT = media_root


@pytest.fixture(scope="module")
def gateway(django_db_setup: None, django_db_blocker: Any, media_root: Path) -> Iterator[Server]:
    with django_db_blocker.unblock():
        database_url = subprocess_database_url()
    env = {
        "DATABASE_URL": database_url,
        "REDIS_URL": django_settings.REDIS_URL,
        "APERTURE_MEDIA_ROOT": str(media_root),
    }
    with gunicorn(env) as server:
        yield server


def _post(
    client: APIClient, body: object = BODY, key: str = "order-1", url: str = URL, **extra: Any
) -> Any:
    response = client.post(
        url, orjson.dumps(body), content_type="application/json", HTTP_IDEMPOTENCY_KEY=key, **extra
    )
    return _read(response)


def _read(response: Any) -> Any:
    """The response, its body read to the end as a server would (which closes a replay's file)."""
    if response.streaming:
        response.content_read = b"".join(response.streaming_content)
    else:
        response.content_read = response.content
    return response


def _key_budget(key: CreatedKey, **fields: int) -> Budget:
    return Budget.objects.create(
        workspace_id=key.key.workspace_id,
        scope=Budget.Scope.KEY,
        key=key.key,
        period=Budget.Period.LIFETIME,
        **{"limit_micro": 1_000_000, **fields},
    )


def _spent(budget: Budget) -> tuple[int, int, int]:
    leases.return_all()  # this process's idle budget slices: only requests' holds remain
    budget.refresh_from_db()
    return budget.used_micro, budget.reserved_micro, budget.used_images


# --- the rules, in process -------------------------------------------------------------------


@pytest.mark.django_db
def test_a_retry_gets_the_first_answer_byte_for_byte_without_a_call_or_a_charge(
    client: APIClient,
    api_key: CreatedKey,
    upstream_aliases: dict[str, ModelAlias],
    fake_upstream: FakeUpstream,
) -> None:
    budget = _key_budget(api_key)
    first = _post(client)
    retry = _post(client)

    assert first.status_code == 200, first.content
    assert retry.status_code == 200
    assert retry.content_read == first.content_read
    assert retry[REPLAYED] == "true" and REPLAYED not in first
    assert retry[ORIGINAL] == first["x-request-id"] != retry["x-request-id"]
    for header in ("Content-Type", "x-aperture-cost-usd", "x-aperture-provider"):
        assert retry[header] == first[header]
    assert first["x-aperture-cost-usd"] == "0.042300"
    assert len(fake_upstream.requests) == 1
    # One record, the first request's: a replay records nothing and holds nothing.
    assert list(UsageRecord.objects.values_list("request_id", "status", "cost_micro")) == [
        (first["x-request-id"], 200, COST)
    ]
    assert _spent(budget) == (COST, 0, 1)
    assert not Reservation.objects.exists()
    kept = IdempotentRequest.objects.get()
    assert (kept.key_id, kept.idempotency_key, kept.status, kept.response_status) == (
        api_key.key.pk,
        "order-1",
        "done",
        200,
    )
    assert kept.response_name.startswith(f"idempotency/{kept.created_at:%Y/%m/%d}/")
    with default_storage.open(kept.response_name, "rb") as stored:
        assert stored.read() == first.content
    assert kept.response_headers["x-request-id"] == first["x-request-id"]
    assert not any(name.lower().startswith("x-ratelimit-") for name in kept.response_headers)


@pytest.mark.django_db
def test_the_same_key_with_another_body_is_a_422_and_calls_nothing(
    client: APIClient, upstream_aliases: dict[str, ModelAlias], fake_upstream: FakeUpstream
) -> None:
    assert _post(client).status_code == 200
    other = _post(client, {**BODY, "prompt": "a harbour"})
    elsewhere = _post(client, url="/openai/deployments/image-openai/images/generations")

    for answer in (other, elsewhere):
        assert answer.status_code == 422
        assert answer.json() == {
            "error": {
                "message": "This Idempotency-Key was already used for a different request "
                "(another path, body, or Content-Type, Accept or Prefer header). Use a new key "
                "for a new request.",
                "type": "invalid_request_error",
                "param": "Idempotency-Key",
                "code": "idempotency_key_reused",
            }
        }
    assert len(fake_upstream.requests) == 1


@pytest.mark.django_db
def test_a_key_is_the_api_keys_own_another_key_with_it_runs_its_own_request(
    client: APIClient,
    team: Team,
    upstream_aliases: dict[str, ModelAlias],
    fake_upstream: FakeUpstream,
) -> None:
    other_key = services.key_create(actor=ACTOR, team=team, name="second app")
    first = _post(client)
    theirs = _post(client_for(other_key.secret))

    assert (first.status_code, theirs.status_code) == (200, 200)
    assert REPLAYED not in theirs
    assert len(fake_upstream.requests) == 2
    assert UsageRecord.objects.filter(status=200).count() == 2
    assert IdempotentRequest.objects.filter(idempotency_key="order-1").count() == 2


@pytest.mark.django_db
def test_a_request_refused_before_it_could_cost_anything_leaves_the_key_free(
    client: APIClient,
    api_key: CreatedKey,
    upstream_aliases: dict[str, ModelAlias],
    fake_upstream: FakeUpstream,
) -> None:
    invalid = _post(client, {**BODY, "size": "1x1"})
    assert invalid.status_code == 400
    assert not IdempotentRequest.objects.exists()
    budget = _key_budget(api_key, limit_micro=10_000)
    over_budget = _post(client)
    assert over_budget.status_code == 402
    assert not IdempotentRequest.objects.exists()
    assert fake_upstream.requests == []

    Budget.objects.filter(pk=budget.pk).update(limit_micro=1_000_000)
    fixed = _post(client)  # the same key, now for a request that can run: it runs
    assert fixed.status_code == 200, fixed.content
    assert REPLAYED not in fixed
    assert len(fake_upstream.requests) == 1
    assert _spent(budget) == (COST, 0, 1)
    assert _post(client)[REPLAYED] == "true"


@pytest.mark.django_db
def test_an_admitted_failure_is_kept_and_replayed_like_any_answer(
    client: APIClient, upstream_aliases: dict[str, ModelAlias], fake_upstream: FakeUpstream
) -> None:
    fake_upstream.misbehave(Misbehave(status=500), Misbehave(status=500))
    failed = _post(client)
    calls = len(fake_upstream.requests)
    retry = _post(client)

    assert (failed.status_code, retry.status_code) == (502, 502)
    assert retry.content_read == failed.content
    assert retry[REPLAYED] == "true"
    assert len(fake_upstream.requests) == calls


@pytest.mark.django_db
def test_an_unexpected_error_lets_the_key_go_and_releases_the_hold(
    client: APIClient,
    api_key: CreatedKey,
    upstream_aliases: dict[str, ModelAlias],
    fake_upstream: FakeUpstream,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    budget = _key_budget(api_key)
    held: list[str] = []

    def broken(*args: object, **kwargs: object) -> None:
        held.extend(IdempotentRequest.objects.values_list("status", flat=True))
        raise RuntimeError("a bug")

    with monkeypatch.context() as patched:
        patched.setattr("routing.images.results.finish_image", broken)
        crashed = _post(client)
    assert crashed.status_code == 500
    assert held == ["in_flight"]  # claimed while it ran, let go when it failed
    assert not IdempotentRequest.objects.exists()
    assert _spent(budget) == (0, 0, 0)

    retry = _post(client)
    assert retry.status_code == 200, retry.content
    assert REPLAYED not in retry
    assert _spent(budget) == (COST, 0, 1)


@pytest.mark.django_db
def test_a_key_still_in_flight_is_a_409_and_one_abandoned_by_its_process_is_taken_over(
    client: APIClient, upstream_aliases: dict[str, ModelAlias], fake_upstream: FakeUpstream
) -> None:
    assert _post(client).status_code == 200
    kept = IdempotentRequest.objects.get()
    IdempotentRequest.objects.update(status="in_flight", created_at=timezone.now())
    in_flight = _post(client)
    error = assert_error(in_flight, 409, "idempotency_key_in_flight")
    assert in_flight["Retry-After"] == "1"
    assert error["param"] == "Idempotency-Key"

    abandoned = timezone.now() - timedelta(seconds=django_settings.RESERVATION_TTL_SECONDS + 1)
    IdempotentRequest.objects.update(created_at=abandoned)
    taken_over = _post(client)
    assert taken_over.status_code == 200
    assert REPLAYED not in taken_over
    assert len(fake_upstream.requests) == 2
    kept.refresh_from_db()
    assert (kept.status, kept.response_status) == ("done", 200)
    assert kept.created_at > abandoned


@pytest.mark.django_db
def test_an_expired_key_is_new_again_and_its_old_answer_is_deleted(
    client: APIClient, upstream_aliases: dict[str, ModelAlias], fake_upstream: FakeUpstream
) -> None:
    assert _post(client).status_code == 200
    old = IdempotentRequest.objects.get()
    IdempotentRequest.objects.update(expires_at=timezone.now() - timedelta(seconds=1))

    again = _post(client, {**BODY, "prompt": "a harbour"})  # expired: any request may take it
    assert again.status_code == 200
    assert REPLAYED not in again
    assert len(fake_upstream.requests) == 2
    renewed = IdempotentRequest.objects.get()
    assert renewed.pk == old.pk
    assert renewed.response_name != old.response_name
    assert renewed.expires_at > timezone.now() + timedelta(hours=23)
    assert not default_storage.exists(old.response_name)


@pytest.mark.parametrize("value", ["", "x" * 256, "caf\u00e9", "tab\there"])
@pytest.mark.django_db
def test_a_malformed_key_is_a_400_before_anything_runs(
    client: APIClient,
    upstream_aliases: dict[str, ModelAlias],
    fake_upstream: FakeUpstream,
    value: str,
) -> None:
    error = assert_error(_post(client, key=value), 400, "invalid_idempotency_key")
    assert error["param"] == "Idempotency-Key"
    assert fake_upstream.requests == []
    assert not IdempotentRequest.objects.exists()


@pytest.mark.django_db
def test_the_longest_key_is_taken(
    client: APIClient, upstream_aliases: dict[str, ModelAlias], fake_upstream: FakeUpstream
) -> None:
    key = "~ !" * 85
    assert _post(client, key=key).status_code == 200
    assert _post(client, key=key)[REPLAYED] == "true"


def _edit_form(boundary: str, prompt: str) -> bytes:
    def field(name: str, value: str) -> bytes:
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
        return f"{head}{value}\r\n".encode()

    image = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode() + png(64, 64)
    return (
        field("model", "demo-image")
        + field("prompt", prompt)
        + field("size", "64x64")
        + image
        + f"\r\n--{boundary}--\r\n".encode()
    )


@pytest.mark.django_db
def test_a_multipart_edit_retried_with_a_new_boundary_is_the_same_request(
    client: APIClient, platform_alias: ModelAlias
) -> None:
    def edit(boundary: str, prompt: str = "add a hat") -> Any:
        return _read(
            client.post(
                "/v1/images/edits",
                _edit_form(boundary, prompt),
                content_type=f"multipart/form-data; boundary={boundary}",
                HTTP_IDEMPOTENCY_KEY="edit-1",
            )
        )

    first = edit("----client-boundary-1")
    retry = edit("----client-boundary-2")  # the SDK draws a new one for every try
    other = edit("----client-boundary-3", prompt="add a scarf")

    assert first.status_code == 200, first.content
    assert first.json()["data"][0]["b64_json"]
    assert retry[REPLAYED] == "true"
    assert retry.content_read == first.content_read
    assert_error(other, 422, "idempotency_key_reused")
    assert UsageRecord.objects.filter(status=200).count() == 1


@pytest.mark.django_db
def test_an_async_submit_is_replayed_as_its_job_now_stands(
    client: APIClient, upstream_aliases: dict[str, ModelAlias], fake_upstream: FakeUpstream
) -> None:
    submitted = _post(client, HTTP_PREFER="respond-async")
    assert submitted.status_code == 202, submitted.content
    queued = _post(client, HTTP_PREFER="respond-async")
    assert (queued.status_code, queued[REPLAYED]) == (202, "true")
    assert queued["Location"] == submitted["Location"]
    assert queued.json() == submitted.json()
    job = ImageJob.objects.get()
    assert IdempotentRequest.objects.get().job == job
    # Without `Prefer: respond-async` it is another request: its answer would differ.
    assert_error(_post(client), 422, "idempotency_key_reused")

    run.run_job(job.pk)
    ended = _post(client, HTTP_PREFER="respond-async")
    assert (ended.status_code, ended["Location"]) == (202, submitted["Location"])
    assert ended.json()["id"] == job.public_id
    assert ended.json()["status"] == "succeeded"
    assert ended.json()["result"]["data"][0]["b64_json"]
    assert ImageJob.objects.count() == 1
    assert len(fake_upstream.requests) == 1


@pytest.mark.django_db
def test_a_passthrough_answer_too_large_to_keep_is_charged_once_and_a_retry_told_so(
    client: APIClient,
    fake_upstream: FakeUpstream,
    settings: Any,
) -> None:
    open_credential(fake_upstream, name="echo", free=True)
    settings.PASSTHROUGH_METER_MAX_BYTES = 10
    first = _post(client, {"any": "thing"}, key="big", url="/echo/v1/things")
    assert first.status_code == 200
    assert orjson.loads(first.content_read)["target"] == "/v1/things"
    kept = IdempotentRequest.objects.get()
    assert (kept.status, kept.response_status, kept.response_name) == ("done", 200, "")

    retry = _post(client, {"any": "thing"}, key="big", url="/echo/v1/things")
    error = assert_error(retry, 409, "idempotency_key_unreplayable")
    assert first["x-request-id"] in str(error["message"])
    assert "send it with a new key" in str(error["message"])
    assert len(fake_upstream.requests) == 1
    assert "idempotency-key" not in fake_upstream.requests[0].headers


def test_the_fingerprint_reads_method_target_body_and_the_headers_that_shape_the_answer() -> None:
    from django.test import RequestFactory

    factory = RequestFactory()

    def digest(body: bytes = b"{}", path: str = URL, **meta: Any) -> str:
        request = factory.post(path, body, content_type="application/json", **meta)
        return idempotency.fingerprint(request, request.body)

    same = digest()
    assert digest() == same
    assert digest(b"{ }") != same  # bytes, not meaning: a retry sends what it sent
    assert digest(path=f"{URL}?api-version=1") != same
    assert digest(HTTP_PREFER="respond-async") != same
    assert digest(HTTP_ACCEPT="image/png") != same


# --- through gunicorn: concurrency, streams, passthrough -------------------------------------


@pytest.fixture
def live_prices(list_prices: None) -> None:
    """A committed test's prices: the served gateway reads them."""


@pytest.mark.django_db(transaction=True)
def test_the_same_key_twice_at_once_calls_the_upstream_once_and_charges_once(
    gateway: Server,
    api_key: CreatedKey,
    live_prices: None,
    upstream_aliases: dict[str, ModelAlias],
    fake_upstream: FakeUpstream,
) -> None:
    budget = _key_budget(api_key)
    fake_upstream.misbehave(Misbehave(delay=1.0))  # the call is slow: both arrive during it
    start = threading.Barrier(2)
    answers: list[requests.Response] = []

    def send() -> None:
        start.wait()
        answers.append(
            requests.post(
                f"{gateway}{URL}",
                json=BODY,
                headers={**bearer(api_key), "Idempotency-Key": "order-7"},
                timeout=30,
            )
        )

    threads = [threading.Thread(target=send) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    (original,) = [a for a in answers if a.status_code == 200 and REPLAYED not in a.headers]
    (other,) = [a for a in answers if a is not original]
    if other.status_code == 409:
        assert_error(other, 409, "idempotency_key_in_flight")
        assert other.headers["Retry-After"] == "1"
    else:
        assert (other.status_code, other.headers[REPLAYED]) == (200, "true")
        assert other.content == original.content
    assert len(fake_upstream.requests) == 1
    wait_for(lambda: UsageRecord.objects.filter(status=200).exists(), what="the usage record")
    (record,) = UsageRecord.objects.filter(status=200)
    assert (record.request_id, record.cost_micro) == (original.headers["x-request-id"], COST)
    # The served process gives back its idle budget slice (billing/leases.py) within a second.
    wait_for(lambda: _spent(budget) == (COST, 0, 1), what="the gateway's slice given back")

    later = requests.post(
        f"{gateway}{URL}",
        json=BODY,
        headers={**bearer(api_key), "Idempotency-Key": "order-7"},
        timeout=30,
    )
    assert (later.status_code, later.headers[REPLAYED]) == (200, "true")
    assert later.content == original.content
    assert later.headers[ORIGINAL] == original.headers["x-request-id"]
    assert later.headers["Content-Length"] == str(len(original.content))
    assert len(fake_upstream.requests) == 1
    assert _spent(budget) == (COST, 0, 1)


@pytest.mark.django_db(transaction=True)
def test_a_stream_is_a_409_while_it_runs_and_replays_byte_for_byte_once_it_ended(
    gateway: Server,
    api_key: CreatedKey,
    live_prices: None,
    upstream_aliases: dict[str, ModelAlias],
    fake_upstream: FakeUpstream,
) -> None:
    body = {**BODY, "stream": True, "partial_images": 2}
    headers = {**bearer(api_key), "Idempotency-Key": "stream-1"}
    fake_upstream.final_held.clear()  # the upstream holds its final event until told
    first = requests.post(f"{gateway}{URL}", json=body, headers=headers, stream=True, timeout=30)
    assert first.status_code == 200
    chunks = first.iter_content(chunk_size=None)
    received = next(chunks)  # the stream is under way

    during = requests.post(f"{gateway}{URL}", json=body, headers=headers, timeout=30)
    assert_error(during, 409, "idempotency_key_in_flight")
    assert during.headers["Retry-After"] == "1"

    fake_upstream.final_held.set()
    received += b"".join(chunks)
    assert b"image_generation.completed" in received
    after = requests.post(f"{gateway}{URL}", json=body, headers=headers, timeout=30)
    assert (after.status_code, after.headers[REPLAYED]) == (200, "true")
    assert after.content == received
    assert after.headers["Content-Type"] == "text/event-stream"
    assert after.headers["x-aperture-provider"] == "openai"
    assert len(fake_upstream.requests) == 1
    wait_for(lambda: UsageRecord.objects.count() == 2, what="the usage records")
    assert sorted(UsageRecord.objects.values_list("status", "cost_micro")) == [
        (200, COST),
        (409, 0),
    ]


@pytest.mark.django_db(transaction=True)
def test_a_stream_the_caller_left_is_charged_and_a_retry_told_it_cannot_be_replayed(
    gateway: Server,
    api_key: CreatedKey,
    live_prices: None,
    upstream_aliases: dict[str, ModelAlias],
    fake_upstream: FakeUpstream,
) -> None:
    body = {**BODY, "stream": True, "partial_images": 1}
    headers = {**bearer(api_key), "Idempotency-Key": "stream-2"}
    fake_upstream.final_held.clear()
    fake_upstream.final_bytes = 16 * 1024 * 1024  # more than socket buffers hold
    first = requests.post(f"{gateway}{URL}", json=body, headers=headers, stream=True, timeout=30)
    assert next(first.iter_lines()) == b"event: image_generation.partial_image"
    first.close()
    fake_upstream.final_held.set()
    wait_for(
        lambda: IdempotentRequest.objects.filter(status="done").exists(), what="the record done"
    )

    retry = requests.post(f"{gateway}{URL}", json=body, headers=headers, timeout=30)
    assert_error(retry, 409, "idempotency_key_unreplayable")
    assert len(fake_upstream.requests) == 1
    wait_for(lambda: UsageRecord.objects.filter(status=200).exists(), what="the record")
    assert UsageRecord.objects.get(status=200).cost_micro == COST


@pytest.mark.django_db(transaction=True)
def test_a_passthrough_post_replays_its_answer_and_headers_and_keeps_the_key_from_upstream(
    gateway: Server, api_key: CreatedKey, live_prices: None, fake_upstream: FakeUpstream
) -> None:
    open_credential(fake_upstream)
    body = b'{"model": "gpt-image-1", "prompt": "a fox", "size": "1024x1024", "quality": "low"}'
    headers = {**bearer(api_key), "Content-Type": "application/json", "Idempotency-Key": "pt-1"}
    url = f"{gateway}/openai/v1/images/generations"
    first = requests.post(url, data=body, headers=headers, timeout=30)
    assert first.status_code == 200, first.text
    retry = requests.post(url, data=body, headers=headers, timeout=30)

    assert (retry.status_code, retry.headers[REPLAYED]) == (200, "true")
    assert retry.content == first.content == fake_upstream.sent[-1]
    for name in (
        "Content-Type",
        "x-aperture-passthrough",
        "x-aperture-cost-usd",
        "x-upstream-request-id",
        "Content-Security-Policy",
        "X-Content-Type-Options",
    ):
        assert retry.headers[name] == first.headers[name], name
    assert retry.headers[ORIGINAL] == first.headers["x-request-id"]
    (call,) = fake_upstream.requests
    assert call.raw == body
    assert "idempotency-key" not in call.headers
    wait_for(lambda: UsageRecord.objects.exists(), what="the usage record")
    assert list(UsageRecord.objects.values_list("status", "cost_micro")) == [(200, COST)]


@pytest.mark.django_db(transaction=True)
def test_a_chunked_passthrough_body_is_read_once_for_both_the_key_and_the_upstream(
    gateway: Server, api_key: CreatedKey, fake_upstream: FakeUpstream
) -> None:
    open_credential(fake_upstream, name="echo", free=True)
    headers = {**bearer(api_key), "Content-Type": "application/json", "Idempotency-Key": "ch-1"}
    url = f"{gateway}/echo/v1/things"

    def chunked(*pieces: bytes) -> requests.Response:
        return requests.post(url, data=iter(pieces), headers=headers, timeout=30)

    first = chunked(b'{"a": ', b"1}")
    retry = chunked(b'{"a": ', b"1}")
    other = chunked(b'{"a": ', b"2}")

    assert first.status_code == 200, first.text
    assert first.json() == {"method": "POST", "target": "/v1/things", "bytes": 8}
    (call,) = fake_upstream.requests
    assert (call.raw, call.headers.get("transfer-encoding")) == (b'{"a": 1}', "chunked")
    assert (retry.headers[REPLAYED], retry.content) == ("true", first.content)
    assert_error(other, 422, "idempotency_key_reused")

"""Every authenticated request leaves a usage record; refused and failed ones cost 0."""

import json
import threading
from collections.abc import Callable
from typing import Any

import pytest
from django.db import IntegrityError, connection, transaction
from rest_framework.test import APIClient

from aperture.db import release_connection
from aperture.group_commit import GroupWriter
from billing import metering
from billing.models import Budget, Reservation, UsageRecord
from routing.models import ModelAlias
from tenants.key_auth import KeyPrincipal, principal_of
from tenants.models import Team, Workspace
from tenants.services import CreatedKey, key_create
from tests.billing.conftest import PRICE_MICRO, budget
from tests.fakes.upstream import FakeUpstream, Misbehave
from tests.support import client_for

URL = "/v1/images/generations"


def _post(client: APIClient, body: dict):
    return client.post(URL, json.dumps(body), content_type="application/json")


def test_a_served_request_is_recorded_with_its_cost(
    client: APIClient, api_key: CreatedKey, priced_alias: ModelAlias, fake_upstream: FakeUpstream
) -> None:
    response = _post(client, {"model": "priced", "prompt": "x", "n": 2, "size": "1024x1024"})
    assert response.status_code == 200
    record = UsageRecord.objects.get()
    assert record.request_id == response["x-request-id"]
    assert (record.status, record.error_code, record.images, record.cost_micro) == (
        200,
        "",
        2,
        2 * PRICE_MICRO,
    )
    assert (record.alias, record.provider, record.upstream_model) == (
        "priced",
        "openai",
        "priced-model",
    )
    assert record.key_id == api_key.key.pk
    assert (record.input_tokens, record.output_tokens) == (12, 1056)
    assert record.bytes_in == len(
        json.dumps({"model": "priced", "prompt": "x", "n": 2, "size": "1024x1024"})
    )
    assert record.bytes_out == len(response.content)
    assert record.deployment_id == priced_alias.deployments.get().pk


def test_the_record_is_the_gateways_request_id_and_keeps_the_callers_apart(
    client: APIClient,
    outsider: APIClient,
    priced_alias: ModelAlias,
    fake_upstream: FakeUpstream,
) -> None:
    body = json.dumps({"model": "priced", "prompt": "x"})
    responses = [
        caller.post(URL, body, content_type="application/json", HTTP_X_REQUEST_ID="trace-1")
        for caller in (client, outsider)
    ]
    assert [r.status_code for r in responses] == [200, 200]
    gateway_ids = [r["x-request-id"] for r in responses]
    assert all(i.startswith("req_") for i in gateway_ids)
    assert [r["x-client-request-id"] for r in responses] == ["trace-1", "trace-1"]
    records = UsageRecord.objects.order_by("id").values_list("request_id", "client_request_id")
    assert list(records) == [(gateway_ids[0], "trace-1"), (gateway_ids[1], "trace-1")]
    assert gateway_ids[0] != gateway_ids[1]
    unlabelled = client.post(URL, body, content_type="application/json")
    assert UsageRecord.objects.get(request_id=unlabelled["x-request-id"]).client_request_id == ""


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"model": "priced"}, 400, ""),
        ({"model": "nope", "prompt": "x"}, 404, "model_not_found"),
    ],
)
def test_refused_requests_are_recorded_at_no_cost(
    client: APIClient,
    priced_alias: ModelAlias,
    fake_upstream: FakeUpstream,
    body: dict,
    status: int,
    code: str,
) -> None:
    assert _post(client, body).status_code == status
    record = UsageRecord.objects.get()
    assert (record.status, record.error_code, record.cost_micro, record.images) == (
        status,
        code,
        0,
        0,
    )
    assert fake_upstream.requests == []


def test_a_402_is_recorded_and_the_upstream_never_called(
    client: APIClient, workspace: Workspace, priced_alias: ModelAlias, fake_upstream: FakeUpstream
) -> None:
    budget(workspace=workspace, period="month", limit_micro=PRICE_MICRO - 1)
    response = _post(client, {"model": "priced", "prompt": "x"})
    assert response.status_code == 402
    assert response.json()["error"]["type"] == "insufficient_quota"
    assert "workspace's month budget" in response.json()["error"]["message"]
    record = UsageRecord.objects.get()
    assert (record.status, record.error_code, record.cost_micro) == (402, "insufficient_quota", 0)
    assert fake_upstream.requests == []


def test_a_failed_upstream_call_costs_nothing_and_releases_its_hold(
    client: APIClient, workspace: Workspace, priced_alias: ModelAlias, fake_upstream: FakeUpstream
) -> None:
    row = budget(workspace=workspace, period="month", limit_micro=PRICE_MICRO)
    fake_upstream.misbehave(Misbehave(status=500))
    assert _post(client, {"model": "priced", "prompt": "x"}).status_code == 502
    row.refresh_from_db()
    assert (row.used_micro, row.reserved_micro) == (0, 0)
    assert not Reservation.objects.exists()
    record = UsageRecord.objects.get()
    assert (record.status, record.error_code, record.cost_micro) == (502, "upstream_error", 0)
    assert _post(client, {"model": "priced", "prompt": "x"}).status_code == 200  # money was freed
    row.refresh_from_db()
    assert (row.used_micro, row.reserved_micro) == (PRICE_MICRO, 0)


def test_a_key_without_the_alias_is_recorded_as_403(team: Team, priced_alias: ModelAlias) -> None:
    limited = key_create(actor="t", team=team, name="l", allowed_aliases=["other"])
    assert _post(client_for(limited.secret), {"model": "priced", "prompt": "x"}).status_code == 403
    assert UsageRecord.objects.get().status == 403


def test_unauthenticated_requests_leave_no_record(db: None) -> None:
    assert _post(APIClient(), {"model": "priced", "prompt": "x"}).status_code == 401
    assert not UsageRecord.objects.exists()


def test_a_failing_usage_insert_never_breaks_the_response(
    client: APIClient, priced_alias: ModelAlias, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(**kwargs: object) -> None:
        raise RuntimeError("database is gone")

    monkeypatch.setattr(metering, "_insert", explode)
    before = metering.RECORDING_FAILURES["count"]
    assert _post(client, {"model": "priced", "prompt": "x"}).status_code == 200
    assert metering.RECORDING_FAILURES["count"] == before + 1


def test_an_image_budget_counts_images_not_requests(
    client: APIClient, workspace: Workspace, priced_alias: ModelAlias, fake_upstream: FakeUpstream
) -> None:
    row = budget(workspace=workspace, period="lifetime", limit_images=3)
    assert _post(client, {"model": "priced", "prompt": "x", "n": 2}).status_code == 200
    assert _post(client, {"model": "priced", "prompt": "x", "n": 2}).status_code == 402
    assert _post(client, {"model": "priced", "prompt": "x", "n": 1}).status_code == 200
    row.refresh_from_db()
    assert (row.used_images, row.reserved_images) == (3, 0)
    assert Budget.objects.count() == 1


def test_odd_usage_from_the_upstream_counts_as_zero_tokens_not_a_500(
    client: APIClient, priced_alias: ModelAlias, fake_upstream: FakeUpstream
) -> None:
    import base64

    from tests.fakes.upstream import png

    image = base64.b64encode(png(16, 16)).decode()
    odd = {"created": 1, "data": [{"b64_json": image}], "usage": {"input_tokens": "lots"}}
    fake_upstream.misbehave(Misbehave(body=odd))
    assert _post(client, {"model": "priced", "prompt": "x"}).status_code == 200
    record = UsageRecord.objects.get()
    assert (record.input_tokens, record.output_tokens, record.cost_micro) == (0, 0, PRICE_MICRO)


class HeldRecords:
    """The process's record writer, its first write held until `release` is set."""

    def __init__(self, principal: KeyPrincipal) -> None:
        self.principal = principal
        self.held, self.release = threading.Event(), threading.Event()
        self.batches: list[int] = []
        self.writer = GroupWriter(
            self._many,
            self._first_held,
            before_wait=release_connection,
            row_errors=(IntegrityError,),
        )

    def _first_held(self, values: tuple[object, ...]) -> None:
        if not self.held.is_set():
            self.held.set()
            assert self.release.wait(10)
        metering._insert_one(values)

    def _many(self, rows: Any) -> None:
        self.batches.append(len(rows))
        metering._insert_many(rows)

    def record(self, request_id: str, cost_micro: int = 1) -> None:
        meter = metering.Meter(request_id=request_id, endpoint="images.generations")
        meter.principal, meter.cost_micro = self.principal, cost_micro
        metering.record_usage(meter, status=200, error_code="", bytes_out=1)

    def start(self, request_id: str, cost_micro: int = 1) -> threading.Thread:
        def run() -> None:
            self.record(request_id, cost_micro)
            connection.close()

        thread = threading.Thread(target=run)
        thread.start()
        return thread

    def queued(self) -> int:
        batch = self.writer._open
        return 0 if batch is None else len(batch.rows)


def _until(condition: Callable[[], bool]) -> None:
    for _ in range(1000):
        if condition():
            return
        threading.Event().wait(0.01)
    raise AssertionError("never came to pass")


@pytest.fixture
def held_records(api_key: CreatedKey, monkeypatch: pytest.MonkeyPatch) -> HeldRecords:
    held = HeldRecords(principal_of(api_key.key.public_id))
    monkeypatch.setattr(metering, "RECORDS", held.writer)
    return held


@pytest.mark.django_db(transaction=True)
def test_records_written_at_the_same_moment_go_in_one_batch_and_a_bad_one_fails_alone(
    held_records: HeldRecords,
) -> None:
    before = metering.RECORDING_FAILURES["count"]
    threads = [held_records.start("req_first")]
    assert held_records.held.wait(10)
    threads += [held_records.start(f"req_{n}", -1 if n == 2 else 1) for n in range(4)]
    _until(lambda: held_records.queued() == 4)
    held_records.release.set()
    for thread in threads:
        thread.join(10)
    assert held_records.batches == [4]  # the four that came during the first write: one batch
    written = sorted(UsageRecord.objects.values_list("request_id", flat=True))
    assert written == ["req_0", "req_1", "req_3", "req_first"]  # each once; the refused one not
    assert metering.RECORDING_FAILURES["count"] == before + 1


@pytest.mark.django_db(transaction=True)
def test_a_record_written_in_a_transaction_is_written_in_it_alone(
    held_records: HeldRecords,
) -> None:
    """Joined to a batch, another request's record would share its transaction's fate (or
    its own would be committed outside it)."""

    class Undone(Exception):
        pass

    def in_a_transaction_undone() -> None:
        try:
            with transaction.atomic():
                held_records.record("req_undone")
                raise Undone
        except Undone:
            pass
        finally:
            connection.close()

    first = held_records.start("req_first")
    assert held_records.held.wait(10)
    undone = threading.Thread(target=in_a_transaction_undone)
    undone.start()
    _until(lambda: not undone.is_alive() or held_records.queued() == 1)
    other = held_records.start("req_other")
    _until(lambda: held_records.queued() == (1 if not undone.is_alive() else 2))
    held_records.release.set()
    for thread in (first, undone, other):
        thread.join(10)
    written = set(UsageRecord.objects.values_list("request_id", flat=True))
    assert written == {"req_first", "req_other"}


@pytest.mark.parametrize("route", ["body", "azure"])
def test_a_nul_in_the_model_name_is_a_400_and_recorded(
    client: APIClient, priced_alias: ModelAlias, fake_upstream: FakeUpstream, route: str
) -> None:
    """PostgreSQL's text refuses NUL: looking such an alias up was a 500."""
    if route == "body":
        response = _post(client, {"model": "pri\x00ced", "prompt": "x"})
    else:
        response = client.post(
            "/openai/deployments/pri%00ced/images/generations?api-version=2025-04-01-preview",
            json.dumps({"prompt": "x"}),
            content_type="application/json",
        )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "model"
    assert UsageRecord.objects.get().status == 400
    assert fake_upstream.requests == []


def test_a_record_with_a_nul_in_its_text_is_written_all_the_same(api_key: CreatedKey) -> None:
    meter = metering.Meter(request_id="req_nul", endpoint="passthrough")
    meter.principal = principal_of(api_key.key.public_id)
    meter.path, meter.end_user = "/v1/a\x00b", "who\x00"
    metering.record_usage(meter, status=404, error_code="not\x00found", bytes_out=0)
    record = UsageRecord.objects.get()
    assert (record.path, record.end_user, record.error_code) == (
        "/v1/a\ufffdb",
        "who\ufffd",
        "not\ufffdfound",
    )

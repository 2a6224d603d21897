"""The cost in every answer: `usage.cost` in a JSON body and a stream's final event, the
`x-aperture-cost-usd` header on answers that are not streamed, passthrough's header (its
body untouched) — always the usage record's figure, and the official SDK still parses it."""

import json

import pytest
import requests
from django.core.files.uploadedfile import SimpleUploadedFile
from openai import AzureOpenAI, OpenAI
from rest_framework.test import APIClient

from billing.models import Price, UsageRecord
from routing import services as routing_services
from routing.models import ModelAlias, Provider
from tenants.services import CreatedKey
from tests.conftest import ACTOR, make_alias
from tests.fakes.upstream import FakeUpstream, png
from tests.routing.passthrough_support import bearer, open_credential
from tests.support import Server, wait_for

COST = "x-aperture-cost-usd"
# gpt-image-1 by tokens (the fake's usage): 12 text-in x $5/M + 1056 image-out x $40/M.
GPT_IMAGE_1_COST = 42_300
FAKE_USAGE = {
    "input_tokens": 12,
    "output_tokens": 1056,
    "total_tokens": 1068,
    "input_tokens_details": {"text_tokens": 12, "image_tokens": 0},
}


def _record(**filters: object) -> UsageRecord:
    records = UsageRecord.objects.filter(**filters)
    wait_for(lambda: records.exists(), what="the usage record")
    (record,) = records
    return record


def _sdk(base: str, key: CreatedKey) -> OpenAI:
    return OpenAI(base_url=f"{base}/v1", api_key=key.secret, max_retries=0, timeout=60)


# --- JSON answers (in process) ---------------------------------------------------------------


def test_a_generation_says_its_cost_next_to_the_providers_usage_and_in_the_header(
    client: APIClient, upstream_aliases: dict[str, ModelAlias], fake_upstream: FakeUpstream
) -> None:
    response = client.post(
        "/v1/images/generations",
        json.dumps({"model": "image-openai", "prompt": "a fox", "size": "1024x1024"}),
        content_type="application/json",
    )
    assert response.status_code == 200, response.content
    record = UsageRecord.objects.get()
    assert record.cost_micro == GPT_IMAGE_1_COST
    assert response.json()["usage"] == {**FAKE_USAGE, "cost": "0.042300"}
    assert response[COST] == "0.042300"


def test_an_edit_without_the_providers_usage_gets_a_usage_with_its_cost(
    client: APIClient, upstream_aliases: dict[str, ModelAlias], fake_upstream: FakeUpstream
) -> None:
    image = SimpleUploadedFile("a.png", png(64, 64), content_type="image/png")
    response = client.post(
        "/v1/images/edits",
        {"model": "image-openai", "prompt": "a hat", "image": image, "size": "1024x1024"},
        format="multipart",
    )
    assert response.status_code == 200, response.content
    record = UsageRecord.objects.get()
    # No usage, no quality said: gpt-image-1's dearest image at 1024x1024 (high).
    assert record.cost_micro == 167_000
    assert response.json()["usage"] == {"cost": "0.167000"}
    assert response[COST] == "0.167000"


def test_a_refused_or_failed_request_says_it_cost_nothing(
    client: APIClient, upstream_aliases: dict[str, ModelAlias], fake_upstream: FakeUpstream
) -> None:
    from tests.fakes.upstream import Misbehave

    refused = client.post(
        "/v1/images/generations",
        json.dumps({"model": "image-openai", "prompt": "a fox", "size": "1x1"}),
        content_type="application/json",
    )
    fake_upstream.misbehave(Misbehave(status=500), Misbehave(status=500))
    failed = client.post(
        "/v1/images/generations",
        json.dumps({"model": "image-openai", "prompt": "a fox"}),
        content_type="application/json",
    )
    assert (refused.status_code, failed.status_code) == (400, 502)
    assert (refused[COST], failed[COST]) == ("0.000000", "0.000000")
    assert list(UsageRecord.objects.values_list("cost_micro", flat=True)) == [0, 0]


# --- through gunicorn: streams, passthrough, the SDK ----------------------------------------


@pytest.fixture
def priced_local(db: None) -> ModelAlias:
    """`painter` → the local renderer, priced at $0.01 an image (not marked free)."""
    credential = routing_services.credential_create(
        actor=ACTOR, name="painter", provider=Provider.LOCAL, secret=""
    )
    Price.objects.create(provider="local", model_pattern="local-image", per_image_micro=10_000)
    return make_alias("painter", credential, "local-image")


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("list_prices")
def test_a_streams_final_event_carries_the_records_cost_and_the_stream_no_header(
    gateway: Server,
    api_key: CreatedKey,
    upstream_aliases: dict[str, ModelAlias],
    fake_upstream: FakeUpstream,
) -> None:
    events = list(
        _sdk(gateway, api_key).images.generate(
            model="image-openai", prompt="a fox", stream=True, partial_images=2
        )
    )
    assert [e.type for e in events] == [
        "image_generation.partial_image",
        "image_generation.partial_image",
        "image_generation.completed",
    ]
    final = events[-1]
    assert final.type == "image_generation.completed"
    assert final.usage.model_dump() == {**FAKE_USAGE, "cost": "0.042300"}
    assert final.b64_json and final.size == "1024x1024"
    record = _record(endpoint="images.generations")
    assert (record.images, record.cost_micro) == (1, GPT_IMAGE_1_COST)
    raw = requests.post(
        f"{gateway}/v1/images/generations",
        json={"model": "image-openai", "prompt": "a fox", "stream": True},
        headers=bearer(api_key),
        timeout=30,
    )
    assert raw.status_code == 200 and COST not in raw.headers  # the head went before the cost
    assert b'"cost":"0.042300"' in raw.content


@pytest.mark.django_db(transaction=True)
def test_each_completed_event_says_the_cost_so_far_and_the_last_the_charge(
    gateway: Server, api_key: CreatedKey, priced_local: ModelAlias
) -> None:
    edit = _sdk(gateway, api_key).images.edit(
        model="painter",
        image=("a.png", png(48, 32), "image/png"),
        prompt="a hat",
        n=2,
        stream=True,
        partial_images=1,
    )
    completed = [e for e in edit if e.type == "image_edit.completed"]
    assert [e.usage.model_extra for e in completed] == [
        {"cost": "0.010000"},
        {"cost": "0.020000"},
    ]
    record = _record(endpoint="images.edits")
    assert (record.images, record.cost_micro, record.error_code) == (2, 20_000, "")
    assert record.price_snapshot["rule"] == "per_image"


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("list_prices")
def test_the_sdk_parses_every_answer_with_its_cost(
    gateway: Server,
    api_key: CreatedKey,
    upstream_aliases: dict[str, ModelAlias],
    priced_local: ModelAlias,
    fake_upstream: FakeUpstream,
) -> None:
    sdk = _sdk(gateway, api_key)
    raw = sdk.images.with_raw_response.generate(model="image-openai", prompt="a fox")
    generated = raw.parse()
    assert raw.headers[COST] == "0.042300"
    assert generated.usage is not None and generated.usage.total_tokens == 1068
    assert generated.usage.model_extra == {"cost": "0.042300"}

    raw = sdk.images.with_raw_response.edit(
        model="painter", image=("a.png", png(40, 30), "image/png"), prompt="a hat", n=3
    )
    edited = raw.parse()
    assert len(edited.data or []) == 3
    assert raw.headers[COST] == "0.030000"
    assert edited.usage is not None and edited.usage.model_extra == {"cost": "0.030000"}

    azure = AzureOpenAI(
        azure_endpoint=gateway, api_key=api_key.secret, api_version="2025-04-01-preview"
    )
    raw_azure = azure.images.with_raw_response.generate(model="image-azure", prompt="a fox")
    assert raw_azure.headers[COST] == "0.042300"
    assert raw_azure.parse().usage.model_extra == {"cost": "0.042300"}  # type: ignore[union-attr]

    records = UsageRecord.objects.order_by("id")
    wait_for(lambda: records.count() == 3, what="three usage records")
    assert [r.cost_micro for r in records] == [GPT_IMAGE_1_COST, 30_000, GPT_IMAGE_1_COST]


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("list_prices")
def test_a_passthrough_answer_carries_the_header_and_its_body_untouched(
    gateway: Server, api_key: CreatedKey, fake_upstream: FakeUpstream
) -> None:
    open_credential(fake_upstream)
    body = {"model": "gpt-image-1", "prompt": "a fox", "size": "1024x1024"}
    response = requests.post(
        f"{gateway}/openai/v1/images/generations", json=body, headers=bearer(api_key), timeout=30
    )
    assert response.status_code == 200, response.text
    assert response.content == fake_upstream.sent[-1]  # the provider's bytes: no usage.cost
    assert "cost" not in response.json()["usage"]
    assert response.headers[COST] == "0.042300"
    record = _record(endpoint="passthrough", path="/v1/images/generations")
    assert (record.images, record.cost_micro) == (1, GPT_IMAGE_1_COST)
    assert record.price_snapshot["rule"] == "per_token"

    free = requests.get(f"{gateway}/openai/v1/models", headers=bearer(api_key), timeout=30)
    assert (free.status_code, free.headers[COST]) == (200, "0.000000")


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("list_prices")
def test_a_streamed_passthrough_answer_has_no_cost_header_and_its_record_the_cost(
    gateway: Server, api_key: CreatedKey, fake_upstream: FakeUpstream
) -> None:
    open_credential(fake_upstream)
    response = requests.post(
        f"{gateway}/openai/v1/images/generations",
        json={"model": "gpt-image-1", "prompt": "a fox", "stream": True, "partial_images": 1},
        headers=bearer(api_key),
        timeout=30,
    )
    assert response.status_code == 200
    assert COST not in response.headers
    assert response.content == bytes(fake_upstream.streamed)  # relayed as it came
    record = _record(endpoint="passthrough")
    assert (record.images, record.cost_micro) == (1, GPT_IMAGE_1_COST)


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("list_prices")
def test_an_upstreams_own_aperture_headers_never_reach_the_caller(
    gateway: Server, api_key: CreatedKey, fake_upstream: FakeUpstream
) -> None:
    open_credential(fake_upstream)
    fake_upstream.response_headers = [(COST, "9.999999"), ("x-aperture-provider", "forged")]
    response = requests.get(f"{gateway}/openai/v1/models", headers=bearer(api_key), timeout=30)
    assert response.headers[COST] == "0.000000"
    assert response.headers["x-aperture-provider"] == "openai"


def test_completed_events_cut_anywhere_are_stamped_whole_and_the_rest_passes_as_it_came() -> None:
    from billing.metering import Meter
    from routing.relay import Ending, Relay
    from routing.tally import Counted, for_answer

    partial = b'event: image_edit.partial_image\ndata: {"type":"image_edit.partial_image"}\n\n'
    final = (  # no "type": named by its event line; its JSON over two data lines; CRLF
        b"event: image_edit.completed\r\nid: 7\r\n"
        b'data: {"b64_json":"AA==",\r\ndata: "usage":{"output_tokens":5}}\r\n\r\n'
    )
    stream = partial + final + b": a comment\n\n"
    seen: list[Counted] = []

    def stamp(counted: Counted) -> str:
        seen.append(counted)
        return "0.500000"

    ended: list[Ending] = []
    relay = Relay(
        source=iter([stream[i : i + 7] for i in range(0, len(stream), 7)]),  # cut anywhere
        close_source=lambda: None,
        meter=Meter(request_id="r", endpoint="images.edits"),
        on_end=ended.append,
        tally=for_answer("openai", "text/event-stream", ""),
        stamp=stamp,
    )
    out = b"".join(relay)
    relay.close()
    assert out == (
        partial
        + b"event: image_edit.completed\nid: 7\n"
        + b'data: {"b64_json":"AA==","usage":{"output_tokens":5,"cost":"0.500000"}}\n\n'
        + b": a comment\n\n"
    )
    assert [(c.images, c.output_tokens) for c in seen] == [(1, 5)]
    (ending,) = ended
    assert (ending.outcome, ending.counted and ending.counted.images) == ("", 1)

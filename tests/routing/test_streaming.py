"""stream=true on generations and edits: the official SDK's iterator through gunicorn (gevent)."""

import base64
import io

import pytest
import requests
from openai import AzureOpenAI, OpenAI
from PIL import Image

from billing.models import UsageRecord
from routing.models import ModelAlias
from tenants.services import CreatedKey
from tests.conftest import UPSTREAM_SECRET
from tests.fakes.upstream import FakeUpstream, png
from tests.support import Server, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _prices(list_prices: None) -> None:
    """Priced calls need the seeded list prices."""


def _sdk(gateway: Server, key: CreatedKey) -> OpenAI:
    return OpenAI(base_url=f"{gateway}/v1", api_key=key.secret, max_retries=0, timeout=60)


def _record(**filters: object) -> UsageRecord:
    records = UsageRecord.objects.filter(**filters)
    wait_for(lambda: records.exists(), what="the usage record")
    (record,) = records
    return record


def _size(b64: str) -> tuple[int, int]:
    with Image.open(io.BytesIO(base64.b64decode(b64))) as image:
        return image.size


def test_openai_events_reach_the_sdk_before_the_upstream_has_finished(
    gateway: Server,
    api_key: CreatedKey,
    upstream_aliases: dict[str, ModelAlias],
    fake_upstream: FakeUpstream,
) -> None:
    fake_upstream.final_held.clear()  # the upstream holds its final event until told
    stream = _sdk(gateway, api_key).images.generate(
        model="image-openai", prompt="a fox", stream=True, partial_images=2, size="1024x1024"
    )
    events = iter(stream)
    first = next(events)
    assert first.type == "image_generation.partial_image"
    assert first.partial_image_index == 0
    assert not fake_upstream.final_sent.is_set(), "the first event waited for the last one"
    fake_upstream.final_held.set()
    rest = list(events)
    assert [event.type for event in rest] == [
        "image_generation.partial_image",
        "image_generation.completed",
    ]
    (call,) = fake_upstream.requests
    assert (call.body["model"], call.body["stream"], call.body["partial_images"]) == (
        "gpt-image-1",
        True,
        2,
    )
    assert call.headers["authorization"] == f"Bearer {UPSTREAM_SECRET}"
    record = _record(endpoint="images.generations")
    # gpt-image-1 by tokens: 12 text-in x $5/M + 1056 image-out x $40/M = 42,300 µUSD.
    assert (record.status, record.images, record.cost_micro, record.error_code) == (
        200,
        1,
        42_300,
        "",
    )
    assert (record.provider, record.upstream_model, record.alias) == (
        "openai",
        "gpt-image-1",
        "image-openai",
    )


def test_the_local_provider_streams_refining_previews_then_the_same_final_image(
    gateway: Server, api_key: CreatedKey, platform_alias: ModelAlias
) -> None:
    client = _sdk(gateway, api_key)
    events = list(
        client.images.generate(
            model="demo-image",
            prompt="a fox",
            size="256x192",
            stream=True,
            partial_images=3,
            extra_body={"seed": 9},
        )
    )
    assert [(e.type, getattr(e, "partial_image_index", None)) for e in events] == [
        ("image_generation.partial_image", 0),
        ("image_generation.partial_image", 1),
        ("image_generation.partial_image", 2),
        ("image_generation.completed", None),
    ]
    previews = [e.b64_json for e in events]
    assert all(_size(b64) == (256, 192) for b64 in previews)
    assert len(set(previews)) == 4, "each preview is finer than the one before"
    buffered = client.images.generate(
        model="demo-image", prompt="a fox", size="256x192", extra_body={"seed": 9}
    )
    assert buffered.data and events[-1].b64_json == buffered.data[0].b64_json


def test_edits_stream_too_through_openai_azure_and_local(
    gateway: Server,
    api_key: CreatedKey,
    upstream_aliases: dict[str, ModelAlias],
    fake_upstream: FakeUpstream,
) -> None:
    image = ("a.png", png(64, 64), "image/png")
    remote = _sdk(gateway, api_key).images.edit(
        model="image-openai", image=image, prompt="a hat", stream=True, partial_images=1
    )
    assert [e.type for e in remote] == ["image_edit.partial_image", "image_edit.completed"]
    azure = AzureOpenAI(
        azure_endpoint=gateway,
        api_key=api_key.secret,
        api_version="2025-04-01-preview",
        max_retries=0,
    )
    generated = azure.images.generate(
        model="image-azure", prompt="a fox", stream=True, partial_images=1
    )
    assert [e.type for e in generated] == [
        "image_generation.partial_image",
        "image_generation.completed",
    ]
    local = _sdk(gateway, api_key).images.edit(
        model="demo-image", image=image, prompt="a hat", stream=True, partial_images=1
    )
    local_events = list(local)
    assert [e.type for e in local_events] == ["image_edit.partial_image", "image_edit.completed"]
    assert _size(local_events[-1].b64_json) == (64, 64)
    edit_call, azure_call = fake_upstream.requests
    assert edit_call.path == "/v1/images/edits"
    assert b'name="stream"\r\n\r\ntrue' in edit_call.raw
    assert azure_call.path == "/openai/deployments/gpt-image-1/images/generations"
    assert azure_call.body["stream"] is True


def test_a_model_that_cannot_stream_answers_the_buffered_response(
    gateway: Server,
    api_key: CreatedKey,
    upstream_aliases: dict[str, ModelAlias],
    fake_upstream: FakeUpstream,
) -> None:
    response = requests.post(
        f"{gateway}/v1/images/generations",
        json={
            "model": "image-dalle3",
            "prompt": "a fox",
            "stream": True,
            "partial_images": 2,
            "response_format": "b64_json",
        },
        headers={"Authorization": f"Bearer {api_key.secret}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/json"
    assert len(response.json()["data"]) == 1
    assert "stream" not in fake_upstream.requests[0].body


def test_a_client_that_leaves_mid_stream_frees_the_worker_and_pays_for_what_was_made(
    gateway: Server,
    api_key: CreatedKey,
    upstream_aliases: dict[str, ModelAlias],
    fake_upstream: FakeUpstream,
) -> None:
    fake_upstream.final_held.clear()
    fake_upstream.final_bytes = 16 * 1024 * 1024  # more than socket buffers hold
    response = requests.post(
        f"{gateway}/v1/images/generations",
        json={"model": "image-openai", "prompt": "a fox", "stream": True, "partial_images": 1},
        headers={"Authorization": f"Bearer {api_key.secret}"},
        stream=True,
        timeout=30,
    )
    assert next(response.iter_lines()) == b"event: image_generation.partial_image"
    response.close()
    fake_upstream.final_held.set()
    record = _record(endpoint="images.generations")
    # The upstream went on and finished the image: the caller pays for it.
    assert (record.status, record.error_code, record.images, record.cost_micro) == (
        200,
        "client_disconnected",
        1,
        42_300,
    )
    assert record.bytes_out > 0
    follow_up = requests.get(
        f"{gateway}/v1/models", headers={"Authorization": f"Bearer {api_key.secret}"}, timeout=10
    )
    assert follow_up.status_code == 200


def test_a_bad_stream_option_is_a_400(
    gateway: Server, api_key: CreatedKey, platform_alias: ModelAlias
) -> None:
    for body, param in (
        ({"stream": "yes"}, "stream"),
        ({"stream": True, "partial_images": 4}, "partial_images"),
    ):
        response = requests.post(
            f"{gateway}/v1/images/generations",
            json={"model": "demo-image", "prompt": "a fox", **body},
            headers={"Authorization": f"Bearer {api_key.secret}"},
            timeout=30,
        )
        assert response.status_code == 400
        assert response.json()["error"]["param"] == param


def test_a_generation_with_references_streams_generation_events(
    gateway: Server, api_key: CreatedKey, platform_alias: ModelAlias
) -> None:
    reference = "data:image/png;base64," + base64.b64encode(png(40, 30)).decode()
    events = list(
        _sdk(gateway, api_key).images.generate(
            model="demo-image",
            prompt="in this style",
            stream=True,
            partial_images=1,
            extra_body={"input_references": [reference]},
        )
    )
    assert [e.type for e in events] == [
        "image_generation.partial_image",
        "image_generation.completed",
    ]
    assert _size(events[-1].b64_json) == (40, 30)

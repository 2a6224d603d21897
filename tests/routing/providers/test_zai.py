"""Z.AI / Zhipu CogView through the official SDK, and OpenRouter's dedicated Image API."""

import base64

import openai
import pytest
import requests
from openai import OpenAI

from billing.models import UsageRecord
from routing import services
from tenants.end_users import end_user_id
from tests.conftest import ACTOR, UPSTREAM_SECRET
from tests.fakes.upstream import FakeUpstream, Misbehave, png
from tests.routing.providers.conftest import AliasMaker, the_record

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _local_image_hosts(settings) -> None:
    settings.FETCH_ALLOWED_HOSTS = ["127.0.0.1"]  # the fake hosts the result URLs


def test_cogview_returns_a_url_that_is_inlined_as_base64(
    sdk: OpenAI, alias_on: AliasMaker, fake_upstream: FakeUpstream
) -> None:
    alias_on("zai", "cogview-4-250304", name="cogview")
    result = sdk.images.generate(
        model="cogview", prompt="a fox", size="1344x768", quality="hd", user="bob", n=2
    )
    assert [base64.b64decode(d.b64_json or "") for d in result.data or []] == [png(84, 48)] * 2
    posts = [c for c in fake_upstream.requests if c.method == "POST"]
    assert len(posts) == 2  # one image per call: n is fanned out
    assert posts[0].path == "/api/paas/v4/images/generations"
    assert posts[0].headers["authorization"] == f"Bearer {UPSTREAM_SECRET}"
    assert posts[0].body == {
        "model": "cogview-4-250304",
        "prompt": "a fox",
        "size": "1344x768",
        "quality": "hd",
        "user_id": end_user_id(the_record().workspace_id, "bob"),  # a hash, never "bob"
    }
    assert (the_record().images, the_record().cost_micro) == (2, 2 * 10_000)


def test_a_url_request_gets_a_gateway_hosted_copy_not_the_short_lived_upstream_url(
    sdk: OpenAI, alias_on: AliasMaker, fake_upstream: FakeUpstream
) -> None:
    alias_on("zai", "cogview-4", name="cogview")
    result = sdk.images.generate(model="cogview", prompt="a fox", response_format="url")
    url = (result.data or [])[0].url
    assert url and "/v1/images/files/" in url and fake_upstream.url not in url
    assert requests.get(url, timeout=10).content == png(64, 64)


def test_sizes_outside_cogviews_rules_and_edits_are_refused_before_the_call(
    sdk: OpenAI, alias_on: AliasMaker, fake_upstream: FakeUpstream
) -> None:
    alias_on("zai", "cogview-4", name="cogview")
    for size in ("2048x2048", "1000x1000", "256x256"):
        with pytest.raises(openai.BadRequestError) as refused:
            sdk.images.generate(model="cogview", prompt="x", size=size)
        assert refused.value.param == "size"
    with pytest.raises(openai.BadRequestError) as no_edits:
        sdk.images.edit(model="cogview", prompt="x", image=("a.png", png(8, 8), "image/png"))
    assert no_edits.value.message.endswith("The model 'cogview' cannot edit images.")
    assert fake_upstream.requests == []


def test_a_safety_refusal_and_a_rate_limit_map_to_400_and_429(
    sdk: OpenAI, alias_on: AliasMaker, fake_upstream: FakeUpstream
) -> None:
    alias_on("zai", "glm-image", name="glm")
    fake_upstream.misbehave(
        Misbehave(
            status=400,
            body={
                "contentFilter": [{"level": 1, "role": "user"}],
                "error": {"code": "1301", "message": "unsafe content"},
            },
        ),
        Misbehave(
            status=429,
            body={"error": {"code": "1302", "message": "too many requests"}},
            headers={"Retry-After": "5"},
        ),
    )
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.images.generate(model="glm", prompt="x")
    assert refused.value.code == "content_policy_violation"
    with pytest.raises(openai.RateLimitError) as limited:
        sdk.images.generate(model="glm", prompt="x")
    assert limited.value.response.headers["Retry-After"] == "5"


def test_openrouters_image_api_takes_the_normalized_options_and_reports_its_cost(
    sdk: OpenAI, fake_upstream: FakeUpstream
) -> None:
    credential = services.credential_create(
        actor=ACTOR,
        name="router",
        provider="openrouter",
        base_url=fake_upstream.url,
        secret=UPSTREAM_SECRET,
    )
    alias = services.alias_create(actor=ACTOR, name="router-images")
    services.deployment_create(
        actor=ACTOR,
        alias=alias,
        credential=credential,
        upstream_model="google/gemini-2.5-flash-image",
        options={"api": "images"},
    )
    reference = png(10, 10)
    result = sdk.images.generate(
        model="router-images",
        prompt="a fox",
        n=3,
        output_format="webp",
        quality="high",
        extra_body={
            "resolution": "2K",
            "aspect_ratio": "3:2",
            "seed": 8,
            "input_references": ["data:image/png;base64," + base64.b64encode(reference).decode()],
            "provider": {"openrouter": {"provider": {"order": ["google-vertex"]}}},
        },
    )
    assert len(result.data or []) == 3
    (call,) = fake_upstream.requests
    assert call.path == "/api/v1/images"
    assert call.body == {
        "model": "google/gemini-2.5-flash-image",
        "prompt": "a fox",
        "n": 3,
        "resolution": "2K",
        "aspect_ratio": "3:2",
        "seed": 8,
        "quality": "high",
        "output_format": "webp",
        "input_references": [
            {
                "type": "image_url",
                "image_url": {
                    "url": "data:image/png;base64," + base64.b64encode(reference).decode()
                },
            }
        ],
        "provider": {"order": ["google-vertex"]},
    }
    record = the_record()
    assert (record.images, record.upstream_cost_micro) == (3, 117_000)
    assert record.cost_micro == 3 * 39_000  # the gateway's own price beside it
    assert UsageRecord.objects.count() == 1


def test_passthrough_injects_the_zai_credential(
    live_server,
    api_key,
    fake_upstream: FakeUpstream,
) -> None:
    services.credential_create(
        actor=ACTOR,
        name="zai",
        provider="zai",
        base_url=fake_upstream.url,
        secret=UPSTREAM_SECRET,
        passthrough_enabled=True,
        free=True,  # Z.AI's image answers are not counted on passthrough: relayed only if free
    )
    response = requests.post(
        f"{live_server.url}/zai/api/paas/v4/images/generations",
        json={"model": "cogview-4", "prompt": "x"},
        headers={"Authorization": f"Bearer {api_key.secret}"},
        timeout=30,
    )
    assert response.status_code == 200
    (call,) = [c for c in fake_upstream.requests if c.method == "POST"]
    assert call.headers["authorization"] == f"Bearer {UPSTREAM_SECRET}"

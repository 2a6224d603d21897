"""The official openai SDK, unchanged, against the gateway served on a live port."""

import base64
import io

import openai
import pytest
import requests
from openai import AzureOpenAI, OpenAI
from PIL import Image

from routing.images import hosting
from routing.models import ModelAlias
from tenants.models import Team
from tenants.services import CreatedKey, key_create
from tests.conftest import UPSTREAM_SECRET
from tests.fakes.upstream import FakeUpstream, Misbehave


def _sdk(live_server, key: str) -> OpenAI:
    return OpenAI(base_url=f"{live_server.url}/v1", api_key=key, max_retries=0, timeout=30)


def _decoded(b64: str | None) -> Image.Image:
    assert b64
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


@pytest.mark.usefixtures("list_prices")  # a model without a price is not served
def test_the_sdk_generates_through_local_openai_and_azure_deployments(
    live_server,
    api_key: CreatedKey,
    upstream_aliases: dict[str, ModelAlias],
    fake_upstream: FakeUpstream,
) -> None:
    client = _sdk(live_server, api_key.secret)
    local = client.images.generate(model="demo-image", prompt="a fox", size="640x480", n=2)
    assert [(_decoded(d.b64_json).format, _decoded(d.b64_json).size) for d in local.data or []] == [
        ("PNG", (640, 480))
    ] * 2

    remote = client.images.generate(
        model="image-openai", prompt="a fox", size="1024x1536", output_format="jpeg"
    )
    image = _decoded((remote.data or [])[0].b64_json)
    assert (image.format, image.size) == ("JPEG", (1024, 1536))
    assert remote.usage is not None and remote.usage.total_tokens == 1068

    azure = AzureOpenAI(
        azure_endpoint=live_server.url,
        api_key=api_key.secret,
        api_version="2025-04-01-preview",
        max_retries=0,
    )
    result = azure.images.generate(model="image-azure", prompt="a fox", size="1024x1024")
    assert _decoded((result.data or [])[0].b64_json).size == (1024, 1024)

    openai_call, azure_call = fake_upstream.requests
    assert openai_call.path == "/v1/images/generations"
    assert openai_call.body["model"] == "gpt-image-1"
    assert openai_call.headers["authorization"] == f"Bearer {UPSTREAM_SECRET}"
    assert azure_call.path == "/openai/deployments/gpt-image-1/images/generations"
    assert azure_call.query == {"api-version": ["2025-04-01-preview"]}
    assert azure_call.headers["api-key"] == UPSTREAM_SECRET
    assert "model" not in azure_call.body
    for call in (openai_call, azure_call):
        assert api_key.secret not in str(call.headers)
        assert api_key.secret not in str(call.body)


def test_models_list_shows_exactly_the_aliases_the_key_may_use(
    live_server,
    team: Team,
    upstream_aliases: dict[str, ModelAlias],
) -> None:
    everything = key_create(actor="t", team=team, name="all")
    limited = key_create(
        actor="t", team=team, name="l", allowed_aliases=["demo-image", "image-azure"]
    )
    ids = sorted(m.id for m in _sdk(live_server, everything.secret).models.list())
    assert ids == ["demo-image", "image-azure", "image-dalle2", "image-dalle3", "image-openai"]
    models = list(_sdk(live_server, limited.secret).models.list())
    assert sorted(m.id for m in models) == ["demo-image", "image-azure"]
    demo = _sdk(live_server, limited.secret).models.retrieve("demo-image")
    capabilities = demo.model_extra["aperture"]["capabilities"]  # type: ignore[index]
    assert demo.model_extra["aperture"]["provider"] == "local"  # type: ignore[index]
    assert capabilities["max_n"] == 10
    assert capabilities["transparent_background"] is True
    with pytest.raises(openai.PermissionDeniedError):
        _sdk(live_server, limited.secret).models.retrieve("image-openai")


@pytest.mark.usefixtures("list_prices")  # a model without a price is not served
def test_sdk_errors_arrive_as_the_sdks_typed_exceptions(
    live_server,
    api_key: CreatedKey,
    upstream_aliases: dict[str, ModelAlias],
    fake_upstream: FakeUpstream,
) -> None:
    client = _sdk(live_server, api_key.secret)
    with pytest.raises(openai.NotFoundError) as not_found:
        client.images.generate(model="missing", prompt="x")
    assert not_found.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        client.images.generate(model="image-openai", prompt="x", size="1x1")
    assert bad.value.param == "size"
    with pytest.raises(openai.AuthenticationError):
        _sdk(live_server, "apk_wrong").images.generate(model="demo-image", prompt="x")
    fake_upstream.misbehave(Misbehave(status=429, headers={"Retry-After": "3"}))
    with pytest.raises(openai.RateLimitError) as limited:
        client.images.generate(model="image-openai", prompt="x")
    assert limited.value.response.headers["retry-after"] == "3"
    assert len(fake_upstream.requests) == 1


def test_a_hosted_url_serves_the_image_until_it_expires(
    live_server,
    api_key: CreatedKey,
    platform_alias: ModelAlias,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before_signing = hosting.now()
    result = _sdk(live_server, api_key.secret).images.generate(
        model="demo-image", prompt="a fox", size="200x100", response_format="url"
    )
    after_signing = hosting.now()
    url = (result.data or [])[0].url
    assert url and url.startswith(f"{live_server.url}/v1/images/files/")
    served = requests.get(url, timeout=10)
    assert served.status_code == 200
    assert served.headers["Content-Type"] == "image/png"
    assert Image.open(io.BytesIO(served.content)).size == (200, 100)

    tampered = url[:-3] + ("AAA" if not url.endswith("AAA") else "BBB")
    assert requests.get(tampered, timeout=10).status_code == 404

    # The link was signed between the two readings: valid 3,599 s after the first (whatever
    # the second it was signed in), expired 3,601 s after the second.
    monkeypatch.setattr(hosting, "now", lambda: before_signing + 3599)
    assert requests.get(url, timeout=10).status_code == 200
    monkeypatch.setattr(hosting, "now", lambda: after_signing + 3601)
    expired = requests.get(url, timeout=10)
    assert expired.status_code == 404
    assert expired.json()["error"]["message"] == "This image link has expired."

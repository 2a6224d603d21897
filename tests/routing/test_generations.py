"""POST /v1/images/generations through the Django test client: validation, routing, errors."""

import base64
import io
import json

import pytest
from PIL import Image
from rest_framework.test import APIClient

from routing import services
from routing.models import ModelAlias, ProviderCredential
from tenants.end_users import end_user_id
from tenants.models import Team, Workspace
from tenants.services import CreatedKey, key_create
from tests.conftest import UPSTREAM_SECRET, make_alias
from tests.fakes.upstream import FakeUpstream, Misbehave
from tests.support import client_for

URL = "/v1/images/generations"


def _post(client: APIClient, body: object):
    return client.post(URL, json.dumps(body), content_type="application/json")


def _image(entry: dict) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(entry["b64_json"])))
    image.load()
    return image


def test_local_generation_returns_a_png_of_the_requested_size(
    client: APIClient, platform_alias: ModelAlias
) -> None:
    response = _post(client, {"model": "demo-image", "prompt": "a red fox", "size": "320x200"})
    assert response.status_code == 200, response.content
    body = response.json()
    assert len(body["data"]) == 1
    image = _image(body["data"][0])
    assert (image.format, image.size) == ("PNG", (320, 200))
    assert body["size"] == "320x200"
    assert body["output_format"] == "png"


def test_local_rendering_is_deterministic_and_depends_on_the_prompt(
    client: APIClient, platform_alias: ModelAlias
) -> None:
    def render(prompt: str, seed: int = 7) -> str:
        body = {"model": "demo-image", "prompt": prompt, "size": "128x128", "seed": seed}
        return _post(client, body).json()["data"][0]["b64_json"]

    assert render("a red fox") == render("a red fox")
    assert render("a red fox") != render("a blue whale")
    assert render("a red fox", seed=1) != render("a red fox", seed=2)


def test_local_jpeg_webp_transparency_and_n(client: APIClient, platform_alias: ModelAlias) -> None:
    jpeg = _post(
        client,
        {
            "model": "demo-image",
            "prompt": "p",
            "size": "256x256",
            "output_format": "jpeg",
            "output_compression": 40,
            "n": 3,
        },
    ).json()
    assert [(_image(e).format, _image(e).size) for e in jpeg["data"]] == [("JPEG", (256, 256))] * 3
    assert len({e["b64_json"] for e in jpeg["data"]}) == 3
    webp = _post(
        client,
        {
            "model": "demo-image",
            "prompt": "p",
            "size": "64x96",
            "output_format": "webp",
            "background": "transparent",
        },
    ).json()
    image = _image(webp["data"][0])
    assert (image.format, image.size, image.mode) == ("WEBP", (64, 96), "RGBA")
    alpha = image.getchannel("A").getextrema()
    assert alpha[0] == 0  # some pixels really are transparent


def test_a_body_without_a_json_content_type_is_read_as_json(
    client: APIClient, platform_alias: ModelAlias
) -> None:
    body = json.dumps({"model": "demo-image", "prompt": "curl -d", "size": "64x64"})
    for content_type in ("application/x-www-form-urlencoded", ""):
        response = client.generic("POST", URL, body, content_type=content_type)
        assert response.status_code == 200, (content_type, response.content)


# --- bad input: a clear 400/404/403/415, and the upstream receives nothing ------------------


BAD_BODIES = [
    ({"model": "image-openai"}, "prompt", "'prompt' is required."),
    ({"model": "image-openai", "prompt": "   "}, "prompt", "'prompt' must not be empty."),
    ({"model": "image-openai", "prompt": 5}, "prompt", "'prompt' must be a string."),
    ({"prompt": "x"}, "model", "'model' is required."),
    ({"model": "image-openai", "prompt": "x", "n": 0}, "n", "'n' must be between 1 and 10."),
    ({"model": "image-openai", "prompt": "x", "n": 11}, "n", "'n' must be between 1 and 10."),
    ({"model": "image-openai", "prompt": "x", "n": "2"}, "n", "'n' must be an integer."),
    ({"model": "image-openai", "prompt": "x", "n": True}, "n", "'n' must be an integer."),
    (
        {"model": "demo-image", "prompt": "x", "size": "1024x1024", "aspect_ratio": "16:9"},
        "aspect_ratio",
        "'size' 1024x1024 is not 16:9; send 'size' or 'aspect_ratio', or ones that agree.",
    ),
    (
        {"model": "demo-image", "prompt": "x", "size": "1024x1024", "resolution": "2K"},
        "resolution",
        "'size' 1024x1024 is not a 2K size; send 'size' or 'resolution', or ones that agree.",
    ),
    (
        {"model": "demo-image", "prompt": "x", "size": "2K", "resolution": "1K"},
        "resolution",
        "'size' 2K and 'resolution' 1K disagree; send one of them.",
    ),
    (
        {"model": "demo-image", "prompt": "x", "resolution": "8K"},
        "resolution",
        "Invalid 'resolution' '8K'; supported: 512, 1K, 2K, 4K.",
    ),
    (
        {"model": "demo-image", "prompt": "x", "aspect_ratio": "7:3"},
        "aspect_ratio",
        "Invalid 'aspect_ratio' '7:3'; supported: 1:1, 2:3, 3:2, 3:4, 4:3, 4:5, 5:4, 9:16, "
        "16:9, 21:9, 1:4, 4:1, 1:8, 8:1.",
    ),
    (
        {"model": "demo-image", "prompt": "x", "size": "3K"},
        "size",
        "Invalid 'size' '3K': use WIDTHxHEIGHT in pixels (e.g. 1024x1024), a tier (512, 1K, 2K, "
        "4K) or 'auto'.",
    ),
    (
        {"model": "demo-image", "prompt": "x", "seed": -1},
        "seed",
        "'seed' must be between 0 and 4294967295.",
    ),
    (
        {"model": "demo-image", "prompt": "x", "provider": {"openai": "low"}},
        "provider",
        "'provider' must be an object of per-provider option objects, e.g. "
        '{"openai": {"moderation": "low"}}.',
    ),
    (
        {"model": "demo-image", "prompt": "x", "allow_partial": "yes"},
        "allow_partial",
        "'allow_partial' must be a boolean.",
    ),
    (
        {"model": "image-dalle3", "prompt": "x" * 4001},
        "prompt",
        "'prompt' is 4001 characters; the model 'image-dalle3' accepts at most 4000.",
    ),
    (
        {"model": "image-openai", "prompt": "x", "size": "big"},
        "size",
        "Invalid 'size' 'big': use WIDTHxHEIGHT in pixels (e.g. 1024x1024), a tier (512, 1K, 2K, "
        "4K) or 'auto'.",
    ),
    (
        {"model": "image-openai", "prompt": "x", "size": "512x512"},
        "size",
        "Invalid 'size' '512x512' for the model 'image-openai'; supported: 1024x1024, "
        "1536x1024, 1024x1536, auto.",
    ),
    (
        {"model": "image-openai", "prompt": "x", "quality": "ultra"},
        "quality",
        "Invalid 'quality' 'ultra' for the model 'image-openai'; supported: low, medium, high, "
        "auto.",
    ),
    (
        {"model": "image-openai", "prompt": "x", "style": "vivid"},
        "style",
        "The model 'image-openai' does not support 'style'.",
    ),
    (
        {
            "model": "image-openai",
            "prompt": "x",
            "background": "transparent",
            "output_format": "jpeg",
        },
        "background",
        "background=transparent needs output_format png or webp, not jpeg.",
    ),
    (
        {"model": "image-dalle3", "prompt": "x", "background": "transparent"},
        "background",
        "The model 'image-dalle3' cannot make transparent backgrounds.",
    ),
    (
        {"model": "image-openai", "prompt": "x", "output_format": "gif"},
        "output_format",
        "Invalid 'output_format' 'gif'; supported: png, jpeg, webp.",
    ),
    (
        {"model": "image-openai", "prompt": "x", "output_compression": 50},
        "output_compression",
        "'output_compression' applies only to output_format jpeg or webp.",
    ),
    (
        {"model": "image-openai", "prompt": "x", "response_format": "file"},
        "response_format",
        "Invalid 'response_format' 'file' for the model 'image-openai'; supported: url, b64_json.",
    ),
    (
        {"model": "demo-image", "prompt": "x", "size": "4097x100"},
        "size",
        "Invalid 'size' '4097x100' for the model 'demo-image'; each side must be 64-4096 px.",
    ),
    ({"model": 42, "prompt": "x"}, "model", "'model' must be a string."),
]


@pytest.mark.parametrize(("body", "param", "message"), BAD_BODIES)
def test_bad_fields_get_a_precise_400_and_nothing_reaches_the_upstream(
    client: APIClient,
    upstream_aliases: dict[str, ModelAlias],
    fake_upstream: FakeUpstream,
    body: dict,
    param: str,
    message: str,
) -> None:
    response = _post(client, body)
    assert response.status_code == 400, response.content
    assert response.json() == {
        "error": {"message": message, "type": "invalid_request_error", "param": param, "code": None}
    }
    assert fake_upstream.requests == []


@pytest.mark.parametrize(
    ("raw", "content_type", "status", "message"),
    [
        (b"{not json", "application/json", 400, "The request body is not valid JSON"),
        (b"[1, 2]", "application/json", 400, "The request body must be a JSON object."),
        (b"", "application/json", 400, "The request body is empty; send a JSON object."),
        (b"<xml/>", "application/xml", 415, "Unsupported content type 'application/xml'"),
        (
            b"--x\r\n",
            "multipart/form-data; boundary=x",
            400,
            "This endpoint takes a JSON body, not multipart/form-data.",
        ),
    ],
)
def test_unreadable_bodies_are_refused_before_any_upstream_call(
    client: APIClient,
    upstream_aliases: dict[str, ModelAlias],
    fake_upstream: FakeUpstream,
    raw: bytes,
    content_type: str,
    status: int,
    message: str,
) -> None:
    response = client.generic("POST", URL, raw.decode(), content_type=content_type)
    assert response.status_code == status
    assert response.json()["error"]["message"].startswith(message)
    assert fake_upstream.requests == []


def test_an_unknown_model_is_a_404_model_not_found(
    client: APIClient, upstream_aliases: dict[str, ModelAlias], fake_upstream: FakeUpstream
) -> None:
    response = _post(client, {"model": "nope", "prompt": "x"})
    assert response.status_code == 404
    assert response.json()["error"] == {
        "message": "The model 'nope' does not exist.",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }
    assert fake_upstream.requests == []


def test_a_model_outside_the_keys_allowed_aliases_is_a_403(
    team: Team, upstream_aliases: dict[str, ModelAlias], fake_upstream: FakeUpstream
) -> None:
    limited = key_create(actor="t", team=team, name="l", allowed_aliases=["demo-image"])
    response = _post(client_for(limited.secret), {"model": "image-openai", "prompt": "x"})
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "model_not_allowed"
    assert fake_upstream.requests == []


def test_another_workspaces_alias_is_a_404_for_an_outsider(
    outsider: APIClient, workspace: Workspace, local_credential: ProviderCredential
) -> None:
    alias = services.alias_create(actor="t", name="acme-only", workspace=workspace)
    services.deployment_create(
        actor="t", alias=alias, credential=local_credential, upstream_model="local-image"
    )
    response = _post(outsider, {"model": "acme-only", "prompt": "x"})
    assert response.status_code == 404


def test_an_alias_without_deployments_is_a_503(client: APIClient, db: None) -> None:
    services.alias_create(actor="t", name="empty")
    response = _post(client, {"model": "empty", "prompt": "x"})
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "no_deployment"


# --- what the upstream receives ----------------------------------------------------------


def test_openai_gets_the_upstream_model_and_the_providers_key_never_the_callers(
    client: APIClient,
    api_key: CreatedKey,
    upstream_aliases: dict[str, ModelAlias],
    fake_upstream: FakeUpstream,
) -> None:
    response = _post(
        client,
        {
            "model": "image-openai",
            "prompt": "a cat",
            "size": "1536x1024",
            "quality": "high",
            "output_format": "webp",
            "output_compression": 80,
            "background": "opaque",
            "moderation": "low",
            "user": "u-1",
            "future_option": {"x": 1},
        },
    )
    assert response.status_code == 200, response.content
    [received] = fake_upstream.requests
    assert received.path == "/v1/images/generations"
    assert received.body == {
        "model": "gpt-image-1",
        "prompt": "a cat",
        "n": 1,
        "size": "1536x1024",
        "quality": "high",
        "output_format": "webp",
        "output_compression": 80,
        "background": "opaque",
        "moderation": "low",
        "user": end_user_id(api_key.key.workspace_id, "u-1"),  # never the raw end user
        "future_option": {"x": 1},
    }
    assert received.headers["authorization"] == f"Bearer {UPSTREAM_SECRET}"
    assert api_key.secret not in json.dumps(received.headers)
    body = response.json()
    assert (_image(body["data"][0]).format, _image(body["data"][0]).size) == ("WEBP", (1536, 1024))
    assert body["usage"]["total_tokens"] == 1068


def test_dalle3_gets_style_and_b64_and_the_gateway_converts_formats_it_cannot_make(
    client: APIClient, upstream_aliases: dict[str, ModelAlias], fake_upstream: FakeUpstream
) -> None:
    response = _post(
        client,
        {
            "model": "image-dalle3",
            "prompt": "a cat",
            "size": "1792x1024",
            "style": "natural",
            "quality": "hd",
            "output_format": "jpeg",
        },
    )
    assert response.status_code == 200, response.content
    assert fake_upstream.requests[0].body == {
        "model": "dall-e-3",
        "prompt": "a cat",
        "n": 1,
        "size": "1792x1024",
        "quality": "hd",
        "style": "natural",
        "response_format": "b64_json",
    }
    image = _image(response.json()["data"][0])
    assert (image.format, image.size) == ("JPEG", (1792, 1024))


def test_dalle_urls_pass_through_when_the_caller_wants_a_url(
    client: APIClient, upstream_aliases: dict[str, ModelAlias], fake_upstream: FakeUpstream
) -> None:
    response = _post(
        client,
        {"model": "image-dalle2", "prompt": "x", "size": "256x256", "response_format": "url"},
    )
    assert response.status_code == 200
    assert fake_upstream.requests[0].body["response_format"] == "url"
    assert response.json()["data"][0]["url"].startswith(f"{fake_upstream.url}/files/")


def test_gpt_image_upstreams_never_get_response_format(
    client: APIClient, upstream_aliases: dict[str, ModelAlias], fake_upstream: FakeUpstream
) -> None:
    response = _post(client, {"model": "image-openai", "prompt": "x", "response_format": "url"})
    assert response.status_code == 200
    assert "response_format" not in fake_upstream.requests[0].body
    assert response.json()["data"][0]["url"].startswith("http://testserver/v1/images/files/")


# --- upstream failures -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("behaviour", "status", "code", "message"),
    [
        (
            Misbehave(
                status=400,
                body={
                    "error": {
                        "message": "Your prompt was rejected.",
                        "type": "x",
                        "param": "prompt",
                        "code": "moderation_blocked",
                    }
                },
            ),
            400,
            "content_policy_violation",
            "openai: Your prompt was rejected.",
        ),
        (
            Misbehave(status=401),
            502,
            "upstream_auth_failed",
            "openai refused the gateway's credential (HTTP 401).",
        ),
        (
            Misbehave(status=403),
            502,
            "upstream_auth_failed",
            "openai refused the gateway's credential (HTTP 403).",
        ),
        (
            Misbehave(status=500),
            502,
            "upstream_error",
            "openai failed with HTTP 500: scripted failure",
        ),
        (
            Misbehave(status=503, malformed=True),
            502,
            "upstream_error",
            "openai failed with HTTP 503: <html>oops, not json",
        ),
        (
            Misbehave(status=200, malformed=True),
            502,
            "upstream_error",
            "openai returned an unreadable body.",
        ),
        (
            Misbehave(reset=True),
            502,
            "upstream_error",
            "openai could not be reached (ConnectionError).",
        ),
    ],
)
def test_upstream_failures_map_to_the_documented_statuses(
    client: APIClient,
    upstream_aliases: dict[str, ModelAlias],
    fake_upstream: FakeUpstream,
    behaviour: Misbehave,
    status: int,
    code: str,
    message: str,
) -> None:
    fake_upstream.misbehave(behaviour)
    response = _post(client, {"model": "image-openai", "prompt": "x"})
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert (error["code"], error["message"]) == (code, message)
    assert UPSTREAM_SECRET not in response.content.decode()
    assert len(fake_upstream.requests) == 1  # no retry of the same deployment


def test_an_upstream_429_keeps_its_retry_after(
    client: APIClient, upstream_aliases: dict[str, ModelAlias], fake_upstream: FakeUpstream
) -> None:
    fake_upstream.misbehave(Misbehave(status=429, headers={"Retry-After": "7"}))
    response = _post(client, {"model": "image-openai", "prompt": "x"})
    assert response.status_code == 429
    assert response["Retry-After"] == "7"
    assert response.json()["error"]["type"] == "rate_limit_error"


def test_an_upstream_timeout_is_a_504(
    client: APIClient, openai_credential: ProviderCredential, fake_upstream: FakeUpstream
) -> None:
    make_alias("slow", openai_credential, "gpt-image-1", timeout_seconds=1)
    fake_upstream.misbehave(Misbehave(delay=1.5))
    response = _post(client, {"model": "slow", "prompt": "x"})
    assert response.status_code == 504
    assert response.json()["error"] == {
        "message": "openai did not answer within 1s.",
        "type": "upstream_error",
        "param": None,
        "code": "upstream_timeout",
    }


def test_a_failing_deployment_falls_back_to_the_next_but_a_rejection_does_not(
    client: APIClient, openai_credential: ProviderCredential, fake_upstream: FakeUpstream
) -> None:
    alias = make_alias("resilient", openai_credential, "gpt-image-1", priority=0)
    services.deployment_create(
        actor="t",
        alias=alias,
        credential=openai_credential,
        upstream_model="gpt-image-1-mini",
        priority=1,
    )
    fake_upstream.misbehave(Misbehave(status=500))
    response = _post(client, {"model": "resilient", "prompt": "x"})
    assert response.status_code == 200
    assert [r.body["model"] for r in fake_upstream.requests] == ["gpt-image-1", "gpt-image-1-mini"]

    fake_upstream.requests.clear()
    fake_upstream.misbehave(Misbehave(status=400))
    assert _post(client, {"model": "resilient", "prompt": "x"}).status_code == 400
    assert len(fake_upstream.requests) == 1

"""The image-API updates confirmed on 2026-12-02 (docs/providers.md, its opening section):
gpt-image-2.x sizes and backgrounds, retired OpenAI models, Gemini's 512 tier, new shapes
and 14 references, FLUX.2 sizes and references, xAI's multi-image edits, and the moderation
refusals of Seedream, Replicate and Stability."""

import base64
import json
from typing import Any

import openai
import pytest
from openai import OpenAI
from rest_framework.test import APIClient

from routing import health, services
from routing.models import ModelAlias
from routing.providers import registry
from routing.providers.base import UpstreamErrorBody
from tests.conftest import ACTOR, UPSTREAM_SECRET, make_alias
from tests.fakes.upstream import FakeUpstream, Misbehave, png

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _fast_polls_and_local_results(settings) -> None:
    settings.UPSTREAM_POLL_INTERVAL_SECONDS = 0.01
    settings.FETCH_ALLOWED_HOSTS = ["127.0.0.1"]  # the fake hosts BFL's and Replicate's results


@pytest.fixture
def alias(fake_upstream: FakeUpstream):
    """alias("openai", "gpt-image-2", "g2", options=…) → an alias on the fake, on a credential
    of its own that the operator marked free (these tests are about shapes, not prices)."""

    def make(provider: str, model: str, name: str, **credential: Any) -> ModelAlias:
        cred = services.credential_create(
            actor=ACTOR,
            name=f"{name}-cred",
            provider=provider,
            base_url=fake_upstream.url,
            secret=UPSTREAM_SECRET,
            free=True,
            **credential,
        )
        return make_alias(name, cred, model)

    return make


def _generate(client: APIClient, body: dict[str, Any]):
    return client.post("/v1/images/generations", json.dumps(body), content_type="application/json")


def _message(error: openai.APIStatusError) -> str:
    """The error envelope's message (the SDK's own `message` prefixes the status)."""
    assert isinstance(error.body, dict)
    return str(error.body["message"])


def _failures(alias: ModelAlias) -> int:
    """Failures counted against the alias's first deployment, read afresh."""
    deployment = alias.deployments.order_by("priority").first()
    assert deployment is not None
    health.forget_cached()
    return health.states([deployment.pk])[deployment.pk].failures


# --- OpenAI: gpt-image-2.x ---------------------------------------------------------------

G2_LIMITS = (
    "each side must be 256-3840 px and a multiple of 16, at most 8294400 pixels, at least "
    "655360 pixels, and no longer than 3:1 either way"
)


@pytest.mark.parametrize(
    ("size", "sent"),
    [
        ({"size": "1536x864"}, "1536x864"),
        ({"size": "3840x2160"}, "3840x2160"),  # the largest; above 2560x1440 is experimental
        ({"size": "1024x1024"}, "1024x1024"),
        ({"resolution": "4K", "aspect_ratio": "16:9"}, "3840x2160"),
        ({"resolution": "4K", "aspect_ratio": "8:1"}, "3840x1280"),  # 3:1 is its widest
        ({"resolution": "512"}, "816x816"),  # the smallest tier, raised to 655,360 pixels
    ],
)
def test_gpt_image_2_takes_any_multiple_of_16_within_its_shape_and_pixels(
    client: APIClient,
    alias,
    fake_upstream: FakeUpstream,
    size: dict[str, str],
    sent: str,
) -> None:
    alias("openai", "gpt-image-2", "g2")
    response = _generate(client, {"model": "g2", "prompt": "a fox", **size})
    assert response.status_code == 200, response.content
    (call,) = fake_upstream.requests
    assert call.body["size"] == sent
    assert response.json()["size"] == sent


@pytest.mark.parametrize(
    "size",
    [
        "1000x1000",  # not multiples of 16
        "3840x1088",  # wider than 3:1
        "3840x2176",  # 8,355,840 pixels
        "640x640",  # 409,600 pixels
        "4096x1536",  # a side over 3840
    ],
)
def test_gpt_image_2_refuses_other_sizes_before_the_call(
    client: APIClient, alias, fake_upstream: FakeUpstream, size: str
) -> None:
    alias("openai", "gpt-image-2.5-sunburst-2026-09-08", "sunburst")
    response = _generate(client, {"model": "sunburst", "prompt": "a fox", "size": size})
    assert response.status_code == 400
    assert response.json()["error"] == {
        "message": f"Invalid 'size' '{size}' for the model 'sunburst'; {G2_LIMITS}.",
        "type": "invalid_request_error",
        "param": "size",
        "code": None,
    }
    assert fake_upstream.requests == []


def test_a_transparent_background_is_refused_for_a_model_that_cannot_make_one(
    sdk: OpenAI, alias, fake_upstream: FakeUpstream
) -> None:
    """gpt-image-2's transparency is a preview (off unless the operator turns it on);
    gpt-image-2.5 makes it; Gemini never does."""
    alias("openai", "gpt-image-2", "g2")
    alias(
        "openai", "gpt-image-2-2026-04-21", "g2-preview", options={"transparent_background": True}
    )
    alias("openai", "gpt-image-2.6-flare", "flare")
    alias("gemini", "gemini-3.1-flash-image", "flash")
    for name in ("g2", "flash"):
        with pytest.raises(openai.BadRequestError) as refused:
            sdk.images.generate(model=name, prompt="a logo", background="transparent")
        assert (refused.value.param, _message(refused.value)) == (
            "background",
            f"The model '{name}' cannot make transparent backgrounds.",
        )
    assert fake_upstream.requests == []
    for name in ("g2-preview", "flare"):
        sdk.images.generate(model=name, prompt="a logo", background="transparent")
    assert [(c.body["model"], c.body["background"]) for c in fake_upstream.requests] == [
        ("gpt-image-2-2026-04-21", "transparent"),
        ("gpt-image-2.6-flare", "transparent"),
    ]
    listed = {m.id: (m.model_extra or {})["aperture"]["capabilities"] for m in sdk.models.list()}
    transparent = {name: caps["transparent_background"] for name, caps in listed.items()}
    assert transparent == {"g2": False, "g2-preview": True, "flare": True, "flash": False}


def test_gpt_image_2_5_has_more_qualities_and_gpt_image_2_takes_no_input_fidelity(
    sdk: OpenAI, alias, fake_upstream: FakeUpstream
) -> None:
    alias("openai", "gpt-image-2.5-flare", "flare")
    alias("openai", "gpt-image-2", "g2")
    sdk.images.generate(model="flare", prompt="x", quality="max")
    assert fake_upstream.requests[0].body["quality"] == "max"
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.images.generate(model="g2", prompt="x", quality="max")
    assert refused.value.param == "quality"
    with pytest.raises(openai.BadRequestError) as fidelity:
        sdk.images.edit(
            model="g2", prompt="x", image=("a.png", png(8, 8), "image/png"), input_fidelity="high"
        )
    assert _message(fidelity.value) == "The model 'g2' does not take 'input_fidelity'."
    assert len(fake_upstream.requests) == 1


# --- OpenAI: retired models --------------------------------------------------------------

GONE = Misbehave(
    status=404,
    body={
        "error": {
            "message": "The model `dall-e-3` does not exist or you do not have access to it.",
            "type": "invalid_request_error",
            "param": None,
            "code": "model_not_found",
        }
    },
)


def test_a_retired_model_the_upstream_no_longer_serves_is_named_and_the_next_deployment_serves(
    sdk: OpenAI, alias, fake_upstream: FakeUpstream
) -> None:
    legacy = alias("openai", "dall-e-3", "legacy")
    fake_upstream.misbehave(GONE)
    with pytest.raises(openai.APIStatusError) as gone:
        sdk.images.generate(model="legacy", prompt="x", size="1024x1024")
    assert (gone.value.status_code, gone.value.code) == (502, "model_retired")
    assert _message(gone.value).startswith(
        "openai no longer serves 'dall-e-3': OpenAI retired it on 2026-05-12 (use "
        "gpt-image-2.5-flare or another current model). Upstream said: openai: The model "
    )
    assert _failures(legacy) == 1  # the deployment's health counts it

    services.deployment_create(
        actor=ACTOR,
        alias=legacy,
        credential=legacy.deployments.get().credential,
        upstream_model="gpt-image-2.5-flare",
        priority=1,
    )
    fake_upstream.misbehave(GONE)
    result = sdk.images.generate(model="legacy", prompt="x", size="1024x1024")
    assert result.data and result.data[0].b64_json
    assert [c.body["model"] for c in fake_upstream.requests[1:]] == [
        "dall-e-3",
        "gpt-image-2.5-flare",
    ]
    (listed,) = [m for m in sdk.models.list() if m.id == "legacy"]
    capabilities = (listed.model_extra or {})["aperture"]["capabilities"]
    assert (capabilities["retired"], capabilities["successor"]) == (
        "2026-05-12",
        "gpt-image-2.5-flare",
    )


def test_a_retired_model_the_upstream_still_serves_is_served(
    sdk: OpenAI, alias, fake_upstream: FakeUpstream
) -> None:
    """An Azure deployment or a relay may serve gpt-image-1 still: the gateway lets it."""
    alias("openai", "gpt-image-1", "old")
    result = sdk.images.generate(model="old", prompt="x")
    assert result.data and result.data[0].b64_json
    assert fake_upstream.requests[0].body["model"] == "gpt-image-1"


# --- Gemini ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "options", "image_config"),
    [
        (
            "gemini-3.1-flash-image",
            {"resolution": "512", "aspect_ratio": "1:8"},
            {"aspectRatio": "1:8", "imageSize": "512"},
        ),
        ("gemini-3.1-flash-image", {"size": "2048x512"}, {"aspectRatio": "4:1", "imageSize": "1K"}),
        (
            "gemini-3.1-flash-image-preview",
            {"resolution": "4K", "aspect_ratio": "16:9"},
            {"aspectRatio": "16:9", "imageSize": "4K"},
        ),
        # Models without the new tier or shapes get the nearest they have.
        (
            "gemini-3-pro-image-preview",
            {"resolution": "512"},
            {"aspectRatio": "1:1", "imageSize": "1K"},
        ),
        ("gemini-2.5-flash-image", {"aspect_ratio": "1:8"}, {"aspectRatio": "9:16"}),
    ],
)
def test_gemini_gets_the_512_tier_and_the_new_shapes_where_the_model_has_them(
    client: APIClient,
    alias,
    fake_upstream: FakeUpstream,
    model: str,
    options: dict[str, str],
    image_config: dict[str, str],
) -> None:
    alias("gemini", model, "gem")
    response = _generate(client, {"model": "gem", "prompt": "a tall tower", **options})
    assert response.status_code == 200, response.content
    (call,) = fake_upstream.requests
    assert call.body["generationConfig"] == {
        "responseModalities": ["TEXT", "IMAGE"],
        "imageConfig": image_config,
    }


def test_gemini_3_takes_14_reference_images_and_2_5_flash_three(
    sdk: OpenAI, alias, fake_upstream: FakeUpstream
) -> None:
    alias("gemini", "gemini-3.1-flash-image", "flash31")
    alias("gemini", "gemini-2.5-flash-image", "flash25")
    images = [(f"{i}.png", png(8, 8 + i), "image/png") for i in range(15)]
    sdk.images.edit(model="flash31", prompt="all of them", image=images[:14])
    parts = fake_upstream.requests[0].body["contents"][0]["parts"]
    assert parts[0] == {"text": "all of them"}
    assert [base64.b64decode(p["inlineData"]["data"]) for p in parts[1:]] == [
        data for _, data, _ in images[:14]
    ]
    for model, count, most in (("flash31", 15, 14), ("flash25", 4, 3)):
        with pytest.raises(openai.BadRequestError) as refused:
            sdk.images.edit(model=model, prompt="x", image=images[:count])
        assert _message(refused.value) == (
            f"The model '{model}' edits at most {most} image(s) at once; got {count}."
        )
    assert len(fake_upstream.requests) == 1


def test_the_discontinued_gemini_preview_is_marked_in_the_model_list(sdk: OpenAI, alias) -> None:
    alias("gemini", "gemini-3.1-flash-image-preview", "preview")
    (listed,) = sdk.models.list().data
    capabilities = (listed.model_extra or {})["aperture"]["capabilities"]
    assert (capabilities["retired"], capabilities["successor"]) == (
        "2026-07-17",
        "gemini-3.1-flash-image",
    )
    assert capabilities["resolutions"] == ["512", "1K", "2K", "4K"]
    assert "192x1536" in capabilities["sizes"]  # 1:8 at the 512 tier


# --- Black Forest Labs FLUX.2 ------------------------------------------------------------


def test_flux_2_sends_its_16_px_grid_and_up_to_eight_references(
    sdk: OpenAI, alias, fake_upstream: FakeUpstream
) -> None:
    alias("bfl", "flux-2-pro", "flux2", options={"safety_tolerance": 4})
    sources = [(f"{i}.png", png(8 + i, 8), "image/png") for i in range(3)]
    result = sdk.images.edit(
        model="flux2",
        prompt="the person from image 1 in the room of image 3",
        image=sources,
        size="1920x1080",  # BFL's own example; its grid makes it 1920x1088
        extra_body={"seed": 7},
    )
    assert result.size == "1920x1088"
    submit = next(c for c in fake_upstream.requests if c.method == "POST")
    assert submit.path == "/v1/flux-2-pro"
    assert submit.body == {
        "safety_tolerance": 4,
        "prompt": "the person from image 1 in the room of image 3",
        "width": 1920,
        "height": 1088,
        "seed": 7,
        "output_format": "jpeg",
        "input_image": base64.b64encode(sources[0][1]).decode(),
        "input_image_2": base64.b64encode(sources[1][1]).decode(),
        "input_image_3": base64.b64encode(sources[2][1]).decode(),
    }


def test_flux_2_flex_options_pass_through_and_its_limits_are_checked_before_the_call(
    sdk: OpenAI, alias, fake_upstream: FakeUpstream
) -> None:
    alias("bfl", "flux-2-flex", "flex", options={"steps": 30, "guidance": 5.5})
    alias("bfl", "flux-2-klein-4b", "klein")
    sdk.images.generate(model="flex", prompt="SUMMER SALE", size="1024x1024")
    submit = next(c for c in fake_upstream.requests if c.method == "POST")
    assert (submit.body["steps"], submit.body["guidance"]) == (30, 5.5)
    calls = len(fake_upstream.requests)
    image = ("a.png", png(8, 8), "image/png")
    refusals = [
        (lambda: sdk.images.generate(model="flex", prompt="x", size="2048x2048"), "size"),
        (lambda: sdk.images.generate(model="flex", prompt="x", size="32x32"), "size"),
        (lambda: sdk.images.edit(model="flex", prompt="x", image=[image] * 9), "image"),
        (lambda: sdk.images.edit(model="klein", prompt="x", image=[image] * 5), "image"),
    ]
    for call, param in refusals:
        with pytest.raises(openai.BadRequestError) as refused:
            call()
        assert refused.value.param == param
    assert len(fake_upstream.requests) == calls


@pytest.mark.parametrize("status", ["Request Moderated", "Content Moderated"])
def test_flux_2_moderated_tasks_are_content_policy_refusals(
    sdk: OpenAI, alias, fake_upstream: FakeUpstream, status: str
) -> None:
    flux = alias("bfl", "flux-2-max", "max")
    fake_upstream.bfl_outcome = status
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.images.generate(model="max", prompt="x")
    assert (refused.value.code, _message(refused.value)) == (
        "content_policy_violation",
        f"bfl refused the task ({status}).",
    )
    assert _failures(flux) == 0


# --- xAI ---------------------------------------------------------------------------------


def test_xai_edits_up_to_three_images_and_grok_imagine_2_has_two_qualities(
    sdk: OpenAI, alias, fake_upstream: FakeUpstream
) -> None:
    alias("xai", "grok-imagine-image-quality", "grok")
    alias("xai", "grok-imagine-image-2.0", "grok2")
    sources = [(f"{i}.png", png(8, 8 + i), "image/png") for i in range(4)]
    sdk.images.edit(model="grok", prompt="<IMAGE_0> meets <IMAGE_1>", image=sources[:3])
    body = fake_upstream.requests[0].body
    assert "image" not in body
    assert body["images"] == [
        {"url": "data:image/png;base64," + base64.b64encode(data).decode(), "type": "image_url"}
        for _, data, _ in sources[:3]
    ]
    with pytest.raises(openai.BadRequestError) as too_many:
        sdk.images.edit(model="grok", prompt="x", image=sources)
    assert _message(too_many.value) == "The model 'grok' edits at most 3 image(s) at once; got 4."
    with pytest.raises(openai.BadRequestError) as quality:
        sdk.images.generate(model="grok2", prompt="x", quality="high")
    assert _message(quality.value) == (
        "Invalid 'quality' 'high' for the model 'grok2'; supported: low, medium."
    )
    assert len(fake_upstream.requests) == 1


# --- moderation refusals -----------------------------------------------------------------


@pytest.mark.parametrize(
    "code",
    [
        "InputTextSensitiveContentDetected",
        "InputImageSensitiveContentDetected",
        "InputImageSensitiveContentDetected.PrivacyInformation",
        "OutputImageSensitiveContentDetected",
        "InputTextRiskDetection",
        "ContentSecurityDetectionError",
    ],
)
def test_seedreams_safety_codes_are_content_policy_refusals_that_do_not_count_against_health(
    sdk: OpenAI, alias, fake_upstream: FakeUpstream, code: str
) -> None:
    seedream = alias("seedream", "doubao-seedream-4-5-251128", "seedream")
    fake_upstream.misbehave(
        Misbehave(status=400, body={"error": {"code": code, "message": "The request failed."}})
    )
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.images.generate(model="seedream", prompt="x")
    assert (refused.value.code, _message(refused.value)) == (
        "content_policy_violation",
        "seedream: The request failed.",
    )
    assert _failures(seedream) == 0


def test_other_seedream_400s_stay_the_upstreams_rejection(
    sdk: OpenAI, alias, fake_upstream: FakeUpstream
) -> None:
    alias("seedream", "doubao-seedream-4-5-251128", "seedream")
    fake_upstream.misbehave(
        Misbehave(status=400, body={"error": {"code": "InvalidParameter", "message": "bad size"}})
    )
    with pytest.raises(openai.BadRequestError) as rejected:
        sdk.images.generate(model="seedream", prompt="x")
    assert (rejected.value.code, _message(rejected.value)) == (
        "upstream_rejected",
        "seedream: bad size",
    )


def test_stabilitys_403_moderation_is_a_refusal_not_an_auth_failure(
    sdk: OpenAI, alias, fake_upstream: FakeUpstream
) -> None:
    core = alias("stability", "core", "core")
    flagged = (
        "Your request was flagged by our content moderation system, as a result your request "
        "was denied and you were not charged."
    )
    fake_upstream.misbehave(
        Misbehave(status=403, body={"id": "a1", "name": "content_moderation", "errors": [flagged]}),
        Misbehave(status=403, body={"id": "a2", "name": "forbidden", "errors": ["bad key"]}),
    )
    with pytest.raises(openai.BadRequestError) as moderated:
        sdk.images.generate(model="core", prompt="x")
    assert (moderated.value.code, _message(moderated.value)) == (
        "content_policy_violation",
        f"stability: {flagged}",
    )
    assert _failures(core) == 0
    with pytest.raises(openai.APIStatusError) as refused_key:
        sdk.images.generate(model="core", prompt="x")
    assert (refused_key.value.status_code, refused_key.value.code) == (502, "upstream_auth_failed")
    assert _failures(core) == 1


def test_replicates_problem_details_and_flagged_predictions(
    sdk: OpenAI, alias, fake_upstream: FakeUpstream
) -> None:
    alias("replicate", "black-forest-labs/flux-2-pro", "rep")
    fake_upstream.misbehave(
        Misbehave(
            status=422,
            body={
                "type": "https://replicate.com/docs/reference/http#validation",
                "title": "Input validation failed",
                "status": 422,
                "detail": "- input.width: Must be less than or equal to 1440",
                "instance": "/v1/models/black-forest-labs/flux-2-pro/predictions",
            },
        )
    )
    with pytest.raises(openai.BadRequestError) as rejected:
        sdk.images.generate(model="rep", prompt="x")
    assert (rejected.value.code, _message(rejected.value)) == (
        "upstream_rejected",
        "replicate: - input.width: Must be less than or equal to 1440",
    )
    fake_upstream.replicate_error = (
        "The input or output was flagged as sensitive. Please try again with different inputs. "
        "(E005)"
    )
    with pytest.raises(openai.BadRequestError) as moderated:
        sdk.images.generate(model="rep", prompt="x")
    assert moderated.value.code == "content_policy_violation"
    fake_upstream.replicate_error = "Model out of memory (E1001)"
    with pytest.raises(openai.APIStatusError) as failed:
        sdk.images.generate(model="rep", prompt="x")
    assert failed.value.status_code == 502


@pytest.mark.parametrize(
    ("provider", "status", "error", "moderated"),
    [
        ("stability", 403, UpstreamErrorBody("flagged", "content_moderation", None), True),
        ("stability", 403, UpstreamErrorBody("no", "forbidden", None), False),
        ("replicate", 422, UpstreamErrorBody("NSFW content detected", "Bad input", None), True),
        ("replicate", 422, UpstreamErrorBody("- input.safety_tolerance: <= 6", "x", None), False),
        ("replicate", 500, UpstreamErrorBody("flagged", "Internal", None), False),
        (
            "seedream",
            400,
            UpstreamErrorBody("m", "OutputVideoSensitiveContentDetected", None),
            True,
        ),
        ("seedream", 400, UpstreamErrorBody("m", "moderation_blocked", None), True),  # a proxy's
        ("seedream", 400, UpstreamErrorBody("m", "InvalidParameter", None), False),
        ("openai", 403, UpstreamErrorBody("m", "moderation_blocked", None), False),
    ],
)
def test_each_provider_declares_what_a_safety_refusal_looks_like(
    provider: str, status: int, error: UpstreamErrorBody, moderated: bool
) -> None:
    assert registry.is_moderation(provider, status, error) is moderated

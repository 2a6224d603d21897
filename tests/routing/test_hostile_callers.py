"""Hostile callers and upstreams against the request pipeline: native routes that make
images, provider options that would raise the count or stream, bodies read one way by the
gateway and another by the upstream, more images than asked for, and 500s on odd input."""

import base64

import pytest
import requests

from aperture.errors import InvalidRequest
from billing import services as billing_services
from billing.metering import Meter
from billing.models import Budget
from routing.models import ModelAlias, Provider
from routing.passthrough.body import IncomingBody, read_fields
from tenants.services import CreatedKey
from tests.conftest import ACTOR, make_alias
from tests.fakes.upstream import FakeUpstream, Misbehave, png
from tests.routing.passthrough_support import bearer, open_credential, the_record
from tests.support import Server

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _prices(list_prices: None) -> None:
    """Priced calls need the seeded list prices."""


def key_budget(
    key: CreatedKey, *, limit_micro: int | None = None, limit_images: int | None = None
) -> Budget:
    return billing_services.budget_set(
        actor=ACTOR,
        workspace=key.key.workspace,
        team=None,
        key=key.key,
        period=Budget.Period.LIFETIME,
        limit_micro=limit_micro,
        limit_images=limit_images,
    )


def served_images(response: requests.Response) -> int:
    body = response.json()
    return len(body.get("data") or body.get("predictions") or [])


# --- 1. Native image routes passthrough does not recognise: images for $0 -----------------


def test_passthrough_imagen_predict_is_refused_or_paid_for(
    gateway: Server, api_key: CreatedKey, fake_upstream: FakeUpstream
) -> None:
    """docs/providers.md §3.3: Imagen's :predict makes sampleCount images."""
    open_credential(fake_upstream, name="gem", provider=Provider.GEMINI)
    response = requests.post(
        f"{gateway}/gem/v1beta/models/imagen-4.0-generate-001:predict",
        json={"instances": [{"prompt": "a fox"}], "parameters": {"sampleCount": 4}},
        headers={"x-goog-api-key": api_key.secret},
        timeout=30,
    )
    if response.status_code == 400 and fake_upstream.requests == []:
        return  # refused before the upstream: fine
    assert served_images(response) == 4
    record = the_record(endpoint="passthrough")
    # imagen-4.0-generate*: $0.04 an image.
    assert (record.images, record.cost_micro) == (4, 160_000)


def test_passthrough_stability_generate_from_the_readme_is_refused_or_paid_for(
    gateway: Server, api_key: CreatedKey, fake_upstream: FakeUpstream
) -> None:
    """The README's own passthrough example makes an image."""
    open_credential(fake_upstream, name="stability", provider=Provider.STABILITY)
    response = requests.post(
        f"{gateway}/stability/v2beta/stable-image/generate/core",
        files={"prompt": (None, "a lighthouse"), "output_format": (None, "png")},
        headers={**bearer(api_key), "Accept": "image/*"},
        timeout=30,
    )
    if response.status_code == 400 and fake_upstream.requests == []:
        return  # refused before the upstream: fine
    assert response.content.startswith(b"\x89PNG")
    record = the_record(endpoint="passthrough")
    assert (record.images, record.cost_micro) == (1, 30_000)  # stability core: $0.03


def test_passthrough_xai_images_do_not_exceed_an_image_budget(
    gateway: Server, api_key: CreatedKey, fake_upstream: FakeUpstream
) -> None:
    open_credential(fake_upstream, name="xai", provider=Provider.XAI)
    key_budget(api_key, limit_images=1)
    response = requests.post(
        f"{gateway}/xai/v1/images/generations",
        json={"model": "grok-2-image", "prompt": "a fox", "n": 4},
        headers=bearer(api_key),
        timeout=30,
    )
    assert response.status_code == 402 or served_images(response) <= 1, (
        f"{served_images(response)} images served on a 1-image budget"
    )


# --- 2. /v1 provider options override what was estimated ----------------------------------


def test_v1_provider_options_cannot_raise_the_image_count_past_the_hold(
    gateway: Server, api_key: CreatedKey, fake_upstream: FakeUpstream
) -> None:
    credential = open_credential(fake_upstream, name="gem", provider=Provider.GEMINI)
    make_alias("imagen", credential, "imagen-4.0-generate-001")
    key_budget(api_key, limit_images=1)
    response = requests.post(
        f"{gateway}/v1/images/generations",
        json={
            "model": "imagen",
            "prompt": "a fox",
            "n": 1,
            "provider": {"gemini": {"sampleCount": 4}},
        },
        headers=bearer(api_key),
        timeout=30,
    )
    assert response.status_code in (400, 402) or served_images(response) <= 1, (
        f"{served_images(response)} images served, charged "
        f"{the_record(endpoint='images.generations').images}"
    )


def test_v1_provider_option_stream_makes_an_image_nobody_pays_for(
    gateway: Server,
    api_key: CreatedKey,
    upstream_aliases: dict[str, ModelAlias],
    fake_upstream: FakeUpstream,
) -> None:
    response = requests.post(
        f"{gateway}/v1/images/generations",
        json={
            "model": "image-openai",
            "prompt": "a fox",
            "size": "1024x1024",
            "quality": "low",
            "provider": {"openai": {"stream": True}},
        },
        headers=bearer(api_key),
        timeout=30,
    )
    record = the_record(endpoint="images.generations")
    produced = fake_upstream.final_sent.is_set()
    assert not produced or record.cost_micro > 0, (
        f"the upstream finished an image; the caller got {response.status_code} "
        f"and was charged {record.cost_micro}"
    )


# --- 3. Bad input: 500s ------------------------------------------------------------------------


def test_passthrough_n_that_isdigit_but_is_no_int_is_not_a_500(
    gateway: Server, api_key: CreatedKey, fake_upstream: FakeUpstream
) -> None:
    open_credential(fake_upstream)
    response = requests.post(
        f"{gateway}/openai/v1/images/generations",
        json={"model": "gpt-image-1", "prompt": "a fox", "n": "²"},
        headers=bearer(api_key),
        timeout=30,
    )
    assert response.status_code != 500, response.text


def test_passthrough_n_beyond_any_api_is_a_400_before_the_budget_arithmetic(
    gateway: Server, api_key: CreatedKey, fake_upstream: FakeUpstream
) -> None:
    open_credential(fake_upstream)
    budget = key_budget(api_key, limit_micro=250_000)
    Budget.objects.filter(pk=budget.pk).update(used_micro=100_000)
    # gpt-image-1 low 1024²: $0.011; n * 11_000 fits a bigint, + used_micro does not.
    n = (2**63 - 1) // 11_000
    response = requests.post(
        f"{gateway}/openai/v1/images/generations",
        json={
            "model": "gpt-image-1",
            "prompt": "a fox",
            "size": "1024x1024",
            "quality": "low",
            "n": n,
        },
        headers=bearer(api_key),
        timeout=30,
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "n"
    assert fake_upstream.requests == []


# --- 4. Bodies read one way by the gateway and another by the upstream ---------------------


def _form(boundary: str, parts: list[tuple[list[str], bytes]]) -> bytes:
    out = b""
    for headers, value in parts:
        out += f"--{boundary}\r\n".encode() + "".join(f"{h}\r\n" for h in headers).encode()
        out += b"\r\n" + value + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def _text(name: str, value: str) -> tuple[list[str], bytes]:
    return ([f'Content-Disposition: form-data; name="{name}"'], value.encode())


IMAGE_PART = (
    ['Content-Disposition: form-data; name="image"; filename="a.png"', "Content-Type: image/png"],
    png(16, 16),
)
EDIT_FIELDS = [
    _text("prompt", "add a hat"),
    _text("model", "gpt-image-1"),
    _text("size", "1024x1024"),
    _text("quality", "low"),
]


def _post_form(gateway: Server, key: CreatedKey, body: bytes, boundary: str) -> requests.Response:
    return requests.post(
        f"{gateway}/openai/v1/images/edits",
        data=body,
        headers={**bearer(key), "Content-Type": f"multipart/form-data; boundary={boundary}"},
        timeout=30,
    )


def test_a_part_with_two_content_dispositions_does_not_hide_n(
    gateway: Server, api_key: CreatedKey, fake_upstream: FakeUpstream
) -> None:
    """The gateway reads the last Content-Disposition, the upstream's parser the first."""
    open_credential(fake_upstream)
    key_budget(api_key, limit_images=1)
    hidden_n = (
        [
            'Content-Disposition: form-data; name="n"',
            'Content-Disposition: form-data; name="note"',
        ],
        b"4",
    )
    body = _form("B0undary", [IMAGE_PART, *EDIT_FIELDS, hidden_n])
    response = _post_form(gateway, api_key, body, "B0undary")
    assert response.status_code in (400, 402) or served_images(response) <= 1, (
        f"{served_images(response)} images served on a 1-image budget"
    )


def test_n_after_sixty_four_form_fields_is_not_dropped(
    gateway: Server, api_key: CreatedKey, fake_upstream: FakeUpstream
) -> None:
    open_credential(fake_upstream)
    key_budget(api_key, limit_images=1)
    filler = [_text(f"x{i}", "y") for i in range(64 - len(EDIT_FIELDS))]
    body = _form("B0undary", [IMAGE_PART, *EDIT_FIELDS, *filler, _text("n", "4")])
    response = _post_form(gateway, api_key, body, "B0undary")
    assert response.status_code in (400, 402) or served_images(response) <= 1, (
        f"{served_images(response)} images served on a 1-image budget"
    )


def test_gemini_snake_case_candidate_count_is_held(
    gateway: Server, api_key: CreatedKey, fake_upstream: FakeUpstream
) -> None:
    """Proto JSON accepts the field's proto name: candidate_count is candidateCount."""
    open_credential(fake_upstream, name="gem", provider=Provider.GEMINI)
    key_budget(api_key, limit_images=1)
    response = requests.post(
        f"{gateway}/gem/v1beta/models/gemini-2.5-flash-image:generateContent",
        json={
            "contents": [{"parts": [{"text": "a fox"}]}],
            "generationConfig": {"candidate_count": 4, "responseModalities": ["IMAGE"]},
        },
        headers={"x-goog-api-key": api_key.secret},
        timeout=30,
    )
    assert response.status_code == 402, response.text
    assert fake_upstream.requests == []


def test_a_content_type_with_two_boundaries_is_refused_not_read_as_the_first() -> None:
    """Servers disagree on which of two boundaries counts (Werkzeug takes the last): the
    gateway refuses the body rather than price it by one reading."""
    ask = [_text("prompt", "a hat"), _text("model", "gpt-image-1")]
    body = _form("AAA", [*ask, _text("n", "1")]) + _form("BBB", [*ask, _text("n", "10")])
    content_type = "multipart/form-data; boundary=AAA; boundary=BBB"
    chunks = [body, b""]
    incoming = IncomingBody(read=lambda _n: chunks.pop(0), length=None, content_type=content_type)
    with pytest.raises(InvalidRequest) as refused:
        read_fields(incoming, Meter(request_id="r", endpoint="passthrough"))
    assert refused.value.code == "invalid_body"


def test_more_images_than_n_never_pass_an_image_budget(
    gateway: Server,
    api_key: CreatedKey,
    upstream_aliases: dict[str, ModelAlias],
    fake_upstream: FakeUpstream,
) -> None:
    key_budget(api_key, limit_images=1)
    image = {"b64_json": base64.b64encode(png(16, 16)).decode()}
    fake_upstream.misbehave(Misbehave(body={"created": 1, "data": [image] * 3}))
    response = requests.post(
        f"{gateway}/v1/images/generations",
        json={"model": "image-dalle3", "prompt": "a fox", "n": 1, "size": "1024x1024"},
        headers=bearer(api_key),
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert served_images(response) <= 1, f"{served_images(response)} images on a 1-image budget"


# --- 7. Settlement and the budget rows ------------------------------------------------------

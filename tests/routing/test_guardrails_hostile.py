"""Guardrails attacked: a hostile tenant smuggling a prompt past the guard, a hostile or
broken moderation upstream, and an operator's everyday changes that silently switch a
policy off. Each test states what must hold; those that fail show a defect of #21."""

import json
from typing import Any

import pytest
from django.db import connection
from rest_framework.test import APIClient

from billing.models import UsageRecord
from routing import router as routing_router
from routing import services as routing_services
from routing.guardrails import matching
from routing.guardrails.services import guardrail_create
from routing.models import GuardrailPolicy, ModelAlias, Provider, ProviderCredential
from routing.providers import moderation as moderation_provider
from tenants.models import Workspace
from tests.conftest import ACTOR, make_alias
from tests.fakes.upstream import FakeUpstream, Misbehave, form_parts, png
from tests.openapi_check import SchemaCheckedClient
from tests.routing.passthrough_support import open_credential

URL = "/v1/images/generations"
RED = (220, 20, 20)


def _policy(name: str, workspace: Workspace | None = None, **fields: object) -> GuardrailPolicy:
    return guardrail_create(actor=ACTOR, workspace=workspace, fields={"name": name, **fields})


def _post(client: APIClient, body: dict[str, Any], url: str = URL):
    return client.post(url, json.dumps(body), content_type="application/json")


def _image_calls(fake: FakeUpstream) -> list[Any]:
    return [r for r in fake.requests if r.path != "/v1/moderations"]


def _refused_by(response: Any, policy: str) -> None:
    assert response.status_code == 400, (response.status_code, response.content[:300])
    error = response.json()["error"]
    assert error["code"] == "content_policy_violation", error
    assert f"'{policy}'" in error["message"], error


@pytest.fixture
def alias(openai_credential: ProviderCredential) -> ModelAlias:
    return make_alias("image-openai", openai_credential, "gpt-image-1")


# --- the prompt the upstream reads is not the prompt the guard read ---------------------------


def test_stability_provider_options_cannot_replace_the_prompt_the_guard_checked(
    client: APIClient, fake_upstream: FakeUpstream
) -> None:
    # StabilityProvider.fields() builds {"prompt": request.prompt, **merged_options}: the
    # caller's `provider.stability.prompt` wins, and "prompt" is not a CONTROLLED_OPTION.
    credential = open_credential(fake_upstream, name="stab", provider=Provider.STABILITY, free=True)
    make_alias("image-stab", credential, "core")
    _policy("no-dogs", kind="keywords", patterns=["dog"])

    response = _post(
        client,
        {
            "model": "image-stab",
            "prompt": "a cat",
            "size": "1024x1024",
            "provider": {"stability": {"prompt": "a dog"}},
        },
    )

    sent = [r.raw for r in _image_calls(fake_upstream)]
    assert response.status_code == 400, (response.status_code, sent)
    assert sent == []


def test_gemini_provider_options_cannot_add_text_the_guard_never_reads(
    client: APIClient, fake_upstream: FakeUpstream
) -> None:
    # GeminiProvider.content_body() spreads the caller's options over the body's top level:
    # `systemInstruction` reaches the model, the guard only read `prompt`.
    credential = open_credential(fake_upstream, name="gem", provider=Provider.GEMINI, free=True)
    make_alias("image-gemini", credential, "gemini-2.5-flash-image")
    _policy("no-dogs", kind="keywords", patterns=["dog"])

    response = _post(
        client,
        {
            "model": "image-gemini",
            "prompt": "draw what the instruction says",
            "provider": {
                "gemini": {"systemInstruction": {"parts": [{"text": "always draw a dog"}]}}
            },
        },
    )

    sent = [r.body for r in _image_calls(fake_upstream)]
    assert response.status_code == 400, (response.status_code, sent)
    assert sent == []


BOUNDARY = "x7f3e9a1c"


def _form(fields: list[tuple[str, str]], file: tuple[str, str, bytes]) -> bytes:
    """A multipart body as clients send it (Django's test client names its boundary
    "BoUnDaRyStRiNg", which the passthrough refuses as naming "boundary" twice)."""
    parts = [
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        for name, value in fields
    ]
    name, filename, data = file
    file_part = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"'
        "\r\nContent-Type: image/png\r\n\r\n".encode()
        + data
        + b"\r\n"
    )
    return "".join(parts).encode() + file_part + f"--{BOUNDARY}--\r\n".encode()


@pytest.mark.parametrize(
    "prompt",
    [
        ["a dog " + "in a very detailed style, " * 60],  # one text part over 1 KB
        # The field twice: the gateway keeps the first, servers' form parsers (Starlette's,
        # Django's, python-multipart's dict) the last.
        ["a cat", "a dog"],
    ],
    ids=["over-1kb", "repeated"],
)
def test_a_multipart_passthrough_edit_cannot_hide_its_prompt_from_the_guard(
    client: APIClient, fake_upstream: FakeUpstream, db: None, prompt: list[str]
) -> None:
    # FormFieldSniffer drops text parts over MAX_FIELD_BYTES and keeps the first of repeated
    # ones (noting them "unclear"); only priced fields make that a 400, so prompt_of() reads
    # "" (or the harmless first prompt) and the policy passes what the upstream reads.
    open_credential(fake_upstream, name="openai")
    _policy("no-dogs", kind="keywords", patterns=["dog"])

    fields = [("model", "gpt-image-1"), *(("prompt", text) for text in prompt)]
    response = client.post(
        "/openai/v1/images/edits",
        _form(fields, ("image", "in.png", png(32, 32))),
        content_type=f"multipart/form-data; boundary={BOUNDARY}",
    )

    relayed = [
        [(part.name, part.data[:40]) for part in form_parts(r) if part.filename is None]
        for r in _image_calls(fake_upstream)
    ]
    assert response.status_code == 400, (response.status_code, relayed)
    assert relayed == []


def test_a_passthrough_generation_is_not_served_unscreened_under_an_output_policy(
    client: APIClient,
    alias: ModelAlias,
    openai_credential: ProviderCredential,
    fake_upstream: FakeUpstream,
) -> None:
    # A stream under an output policy is refused (stream_not_moderated); the very same image
    # call through /openai/v1/images/generations is relayed with no screening at all, although
    # the policy applies to every route, passthrough included.
    open_credential(fake_upstream, name="openai")
    _policy(
        "no-gore-images",
        kind="moderation",
        credential=openai_credential,
        check_prompt=False,
        check_output=True,
    )
    fake_upstream.image_colors = [RED]  # the fake's moderation flags a red image

    assert _post(client, {"model": "image-openai", "prompt": "a swatch"}).status_code == 400
    response = _post(
        client, {"model": "gpt-image-1", "prompt": "a swatch"}, "/openai/v1/images/generations"
    )

    assert response.status_code == 400, "the flagged image went out through passthrough"


# --- unicode the model reads but the guard does not ---------------------------------------


@pytest.mark.parametrize(
    "prompt",
    ["a na\u200bzi flag", "a na\u00adzi flag", "a na\u200dzi flag", "a na\u2060zi flag"],
    ids=["zero-width-space", "soft-hyphen", "zero-width-joiner", "word-joiner"],
)
def test_invisible_format_characters_do_not_hide_a_keyword(prompt: str) -> None:
    # _fold() strips combining marks but keeps format characters (Unicode Cf), which render
    # as nothing and which tokenizers' NFKC/cleanup passes drop.
    find = matching.keywords_finder(["nazi"])

    assert find(matching.Prompt(prompt)) == "keyword"


def test_invisible_format_characters_do_not_hide_a_regex_match() -> None:
    find = matching.regex_finder([r"(?i)\bnazi\b"])

    assert find(matching.Prompt("a na\u200bzi flag")) == "pattern"


def test_keywords_already_see_through_width_styling_and_combining_marks() -> None:
    find = matching.keywords_finder(["nazi", "blood moon"])

    styled = (
        "\uff4e\uff41\uff5a\uff49",  # fullwidth
        "\U0001d427\U0001d41a\U0001d433\U0001d422",  # mathematical bold
        "\u24dd\u24d0\u24e9\u24d8",  # circled
        "n\u0336a\u0336z\u0336i",  # struck through with combining marks
        "blood\u3000moon",  # ideographic space
    )
    for prompt in styled:
        assert find(matching.Prompt(prompt)) == "keyword", prompt
    for prompt in ("nazism", "blood-moonlight"):
        assert find(matching.Prompt(prompt)) is None, prompt


@pytest.mark.parametrize(
    ("keyword", "prompt"),
    [
        ("\u70b8\u5f39", "\u5982\u4f55\u5236\u9020\u70b8\u5f39"),  # zh: "how to make a bomb"
        ("\u7206\u5f3e", "\u7206\u5f3e\u3092\u4f5c\u308b\u65b9\u6cd5"),  # ja: "how to make a bomb"
    ],
    ids=["chinese", "japanese"],
)
def test_a_keyword_in_a_language_written_without_spaces_is_found(keyword: str, prompt: str) -> None:
    # _word_at() wants no letter on either side, and every CJK character is a letter: in
    # Chinese or Japanese text a keyword is never a "whole word", so it never matches.
    find = matching.keywords_finder([keyword])

    assert find(matching.Prompt(prompt)) == "keyword"


# --- personal data the detectors miss ------------------------------------------------------


@pytest.mark.parametrize(
    "prompt",
    [
        "print my card 4111 1111 1111 1111 123 on the poster",  # number then CVV
        "card 4111 1111 1111 1111 12 27",  # number then expiry
        "card 4111  1111  1111  1111",  # two spaces between groups
        "card 4111.1111.1111.1111",  # dotted groups
    ],
)
def test_a_luhn_valid_card_number_is_found_whatever_follows_or_separates_it(prompt: str) -> None:
    # _CARD is greedy up to 19 digits and allows one space or hyphen; a card followed by its
    # CVV reads as one 19-digit run that fails Luhn, and no shorter reading is tried (as
    # _has_iban does for IBANs).
    find = matching.pii_finder(["payment_card"])

    assert find(matching.Prompt(prompt)) == "payment_card"


# --- moderation upstreams that give no verdict ---------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        {"results": [{}]},
        {"results": [{"flagged": True, "category_scores": {"violence": "0.99"}}]},
        {"results": [{"flagged": True, "category_scores": None}]},
    ],
    ids=["empty-result", "scores-as-strings", "no-scores"],
)
def test_a_moderation_answer_without_scores_is_no_verdict_for_a_fail_closed_policy(
    client: APIClient,
    alias: ModelAlias,
    openai_credential: ProviderCredential,
    fake_upstream: FakeUpstream,
    answer: dict[str, Any],
) -> None:
    # moderate() reads missing or unreadable category_scores as {} and the thresholds then
    # match nothing: a fail-closed policy serves a prompt nobody scored.
    _policy(
        "moderated", kind="moderation", credential=openai_credential, categories={"violence": 0.5}
    )
    fake_upstream.misbehave(Misbehave(status=200, body=answer))

    response = _post(client, {"model": "image-openai", "prompt": "a gore scene"})

    assert response.status_code == 503, response.content
    assert response.json()["error"]["code"] == "guardrail_unavailable"
    assert _image_calls(fake_upstream) == []


def test_a_moderation_endpoint_refusing_the_input_does_not_open_a_fail_open_policy(
    client: APIClient,
    alias: ModelAlias,
    openai_credential: ProviderCredential,
    fake_upstream: FakeUpstream,
) -> None:
    # fail_open is for outages. A 4xx about the input (too long, unreadable) is something the
    # caller chose: padding a Gemini passthrough prompt past the moderation endpoint's limit
    # turns every fail-open moderation policy off for that request.
    _policy("moderated", kind="moderation", credential=openai_credential, fail_open=True)
    fake_upstream.misbehave(
        Misbehave(
            status=400,
            body={
                "error": {
                    "message": "Input is too long.",
                    "type": "invalid_request_error",
                    "param": "input",
                    "code": "string_above_max_length",
                }
            },
        )
    )

    response = _post(client, {"model": "image-openai", "prompt": "a gore scene"})

    assert response.status_code != 200, "served with no verdict on a prompt the caller shaped"
    assert _image_calls(fake_upstream) == []


def test_a_fail_closed_moderation_policy_whose_credential_is_disabled_still_refuses(
    client: APIClient, alias: ModelAlias, fake_upstream: FakeUpstream
) -> None:
    # policies._load() drops a policy whose credential is disabled (a log line only), so an
    # operator who disables a credential switches off every fail-closed policy that uses it.
    moderation_credential = open_credential(fake_upstream, name="moderation", passthrough=False)
    _policy("moderated", kind="moderation", credential=moderation_credential, fail_open=False)
    routing_services.credential_update(
        actor=ACTOR, credential=moderation_credential, fields={"enabled": False}
    )

    response = _post(client, {"model": "image-openai", "prompt": "a gore scene"})

    assert response.status_code == 503, response.content
    assert _image_calls(fake_upstream) == []


@pytest.mark.django_db(transaction=True)
def test_no_database_connection_is_held_while_a_single_moderation_call_waits(
    client: APIClient,
    alias: ModelAlias,
    openai_credential: ProviderCredential,
    fake_upstream: FakeUpstream,
    list_prices: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # check._concurrently() releases the connection only for two calls or more; with one
    # moderation policy the call (up to 30 s, per read) runs with the connection held. A
    # workspace's own moderation endpoint that answers slowly then pins pool connections.
    held: dict[str, bool] = {}
    real_moderate = moderation_provider.moderate

    def moderate(*args: Any, **kwargs: Any) -> Any:
        held["moderation"] = connection.connection is not None
        return real_moderate(*args, **kwargs)

    real_router_call = routing_router.call

    def router_call(*args: Any, **kwargs: Any) -> Any:
        held["image call"] = connection.connection is not None
        return real_router_call(*args, **kwargs)

    monkeypatch.setattr(moderation_provider, "moderate", moderate)
    monkeypatch.setattr(routing_router, "call", router_call)
    _policy("moderated", kind="moderation", credential=openai_credential)

    response = _post(client, {"model": "image-openai", "prompt": "a calm lake"})

    assert response.status_code == 200, response.content
    assert held == {"image call": False, "moderation": False}


# --- output moderation: what is charged and what is said ----------------------------------

BLUE = (30, 120, 200)


def test_a_refused_request_does_not_charge_clean_images_it_withheld_when_the_policy_says_not(
    client: APIClient,
    alias: ModelAlias,
    openai_credential: ProviderCredential,
    fake_upstream: FakeUpstream,
) -> None:
    # Without allow_partial one flagged image refuses the whole request, so the clean image
    # is withheld too; check_output() counts as unpaid only the flagged one, and the caller
    # pays for an image it never received although the policy says withheld images are free.
    _policy(
        "no-gore-images",
        kind="moderation",
        credential=openai_credential,
        check_prompt=False,
        check_output=True,
        charge_withheld=False,
    )
    fake_upstream.image_colors = [RED, BLUE]

    response = _post(client, {"model": "image-openai", "prompt": "two swatches", "n": 2})

    _refused_by(response, "no-gore-images")
    record = UsageRecord.objects.get()
    assert (record.images, record.cost_micro) == (0, 0)


def test_an_output_moderation_outage_is_a_503_not_a_verdict_on_the_image(
    client: APIClient,
    alias: ModelAlias,
    openai_credential: ProviderCredential,
    fake_upstream: FakeUpstream,
) -> None:
    # On the prompt an outage of a fail-closed policy is 503 guardrail_unavailable (retry);
    # on the output the same outage reads "The generated image was refused by the content
    # policy" (400 content_policy_violation): the caller is told its content was judged.
    _policy(
        "no-gore-images",
        kind="moderation",
        credential=openai_credential,
        check_prompt=False,
        check_output=True,
    )
    fake_upstream.misbehave(Misbehave(), Misbehave(status=500))  # the image call, then moderation

    response = _post(client, {"model": "image-openai", "prompt": "a swatch"})

    assert response.status_code == 503, response.content
    assert response.json()["error"]["code"] == "guardrail_unavailable"


# --- a tenant's policy as a resource bomb ----------------------------------------------------


def test_a_tenant_regex_policy_that_would_hold_hundreds_of_megabytes_is_refused(
    admin: SchemaCheckedClient,
) -> None:
    # Within today's limits (200 patterns of up to 1,000 characters, RE2 max_mem 8 MB each):
    # measured here, matching one 32,000-character prompt against this policy takes ~1.2 s
    # of CPU (a gevent worker serves nobody else meanwhile) and keeps ~410 MB of DFA state
    # in the process's compiled-policy cache. Any number of such policies may be created.
    patterns = [f"[a-z]{{1000}}{i}" for i in range(200)]

    response = admin.post(
        "/api/v1/guardrails", {"name": "bomb", "kind": "regex", "patterns": patterns}, format="json"
    )

    assert response.status_code == 400, response.status_code
    assert response.json()["error"]["param"] == "patterns"
    assert not GuardrailPolicy.objects.filter(name="bomb").exists()


# --- what holds -----------------------------------------------------------------------------


def test_a_tenants_moderation_credential_on_a_private_address_is_never_called(
    client: APIClient,
    workspace: Workspace,
    alias: ModelAlias,
    fake_upstream: FakeUpstream,
) -> None:
    # The workspace's own credential (created here past the API's base-URL check) points at
    # loopback: the guarded session refuses the connection, and the fail-closed policy holds.
    own = open_credential(fake_upstream, name="own-openai", workspace=workspace)
    _policy("acme-moderation", workspace, kind="moderation", credential=own)

    response = _post(client, {"model": "image-openai", "prompt": "a calm lake"})

    assert response.status_code == 503, response.content
    assert response.json()["error"]["code"] == "guardrail_unavailable"
    assert fake_upstream.requests == []
    assert UsageRecord.objects.get().cost_micro == 0


def test_a_gemini_passthrough_prompt_is_read_in_every_part_and_spelling(
    client: APIClient, fake_upstream: FakeUpstream, db: None
) -> None:
    open_credential(fake_upstream, name="gemini", provider=Provider.GEMINI)
    _policy("no-dogs", kind="keywords", patterns=["dog"])
    path = "/gemini/v1beta/models/gemini-2.5-flash-image:generateContent"
    bodies: list[dict[str, Any]] = [
        {"contents": {"parts": {"text": "a dog"}}},
        {
            "contents": [{"parts": [{"text": "a"}]}],
            "system_instruction": {"parts": [{"text": "dog"}]},
        },
        {"contents": [{"parts": [{"text": "a"}]}], "systemInstruction": {"parts": {"text": "DOG"}}},
    ]

    for body in bodies:
        _refused_by(_post(client, body, path), "no-dogs")
    assert fake_upstream.requests == []


def test_the_azure_style_route_is_checked(
    client: APIClient, alias: ModelAlias, fake_upstream: FakeUpstream
) -> None:
    _policy("no-dogs", kind="keywords", patterns=["dog"])

    response = _post(
        client,
        {"prompt": "a DOG", "size": "1024x1024"},
        "/openai/deployments/image-openai/images/generations?api-version=2025-04-01-preview",
    )

    _refused_by(response, "no-dogs")
    assert fake_upstream.requests == []

"""Guardrails on the request path: a prompt is checked before anything is held or sent
upstream; with an output moderation policy, the images before they are returned."""

import json

import pytest
from rest_framework.test import APIClient

from billing.models import UsageRecord
from routing.guardrails.services import guardrail_create
from routing.models import GuardrailPolicy, ModelAlias, ProviderCredential
from tenants.models import AuditEvent, Workspace
from tenants.services import CreatedKey
from tests.conftest import ACTOR, make_alias
from tests.fakes.upstream import FakeUpstream, Misbehave
from tests.routing.passthrough_support import open_credential

URL = "/v1/images/generations"


def _post(client: APIClient, prompt: str, **fields: object):
    body = {"model": "image-openai", "prompt": prompt, "size": "1024x1024", **fields}
    return client.post(URL, json.dumps(body), content_type="application/json")


def _policy(name: str, workspace: Workspace | None = None, **fields: object) -> GuardrailPolicy:
    return guardrail_create(actor=ACTOR, workspace=workspace, fields={"name": name, **fields})


def _image_calls(fake: FakeUpstream) -> list[str]:
    return [r.path for r in fake.requests if r.path != "/v1/moderations"]


def _moderation_calls(fake: FakeUpstream) -> list[dict]:
    return [r.body for r in fake.requests if r.path == "/v1/moderations"]


@pytest.fixture
def alias(openai_credential: ProviderCredential) -> ModelAlias:
    return make_alias("image-openai", openai_credential, "gpt-image-1")


def _refusal(policy: str, what: str = "prompt") -> dict:
    return {
        "error": {
            "message": f"The {what} was refused by the content policy '{policy}'.",
            "type": "invalid_request_error",
            "param": "prompt",
            "code": "content_policy_violation",
        }
    }


def test_a_blocked_prompt_is_a_400_with_no_upstream_call_no_charge_and_a_named_record(
    client: APIClient, api_key: CreatedKey, alias: ModelAlias, fake_upstream: FakeUpstream
) -> None:
    policy = _policy("no-cafes", kind="keywords", patterns=["café", "blood moon"])

    response = _post(client, "A quiet CAFE at dawn")

    assert response.status_code == 400
    assert response.json() == _refusal("no-cafes")
    assert fake_upstream.requests == []
    record = UsageRecord.objects.get()
    assert (record.status, record.error_code, record.cost_micro, record.images) == (
        400,
        "guardrail",
        0,
        0,
    )
    assert record.guardrails == [
        {
            "policy": "no-cafes",
            "scope": "platform",
            "action": "block",
            "on": "prompt",
            "matched": "keyword",
        }
    ]
    event = AuditEvent.objects.get(event="guardrail.blocked")
    assert event.actor == f"key:{api_key.key.public_id}"
    assert (event.target_id, event.workspace_id) == (policy.public_id, api_key.key.workspace_id)
    assert event.data["policy"] == "no-cafes"
    assert event.data["request_id"] == record.request_id


@pytest.mark.parametrize(
    ("prompt", "blocked"),
    [
        ("a café in Paris", True),
        ("A CAFÉ in Paris", True),
        ("a cafe in paris", True),
        ("the cafeteria at noon", False),
        ("a blood   moon rising", True),
        ("bloodmoon festival", False),
    ],
)
def test_keywords_ignore_case_and_accents_but_match_whole_words_only(
    client: APIClient, alias: ModelAlias, fake_upstream: FakeUpstream, prompt: str, blocked: bool
) -> None:
    _policy("no-cafes", kind="keywords", patterns=["Café", "blood moon"])

    response = _post(client, prompt)

    assert response.status_code == (400 if blocked else 200), response.content
    assert len(_image_calls(fake_upstream)) == (0 if blocked else 1)


@pytest.mark.parametrize(
    ("prompt", "detector"),
    [
        ("mail the result to jane.doe+art@example.org", "email"),
        ("my card is 4111 1111 1111 1111, charge it", "payment_card"),
        ("wire it to DE89 3704 0044 0532 0130 00 today", "iban"),
        ("call me on +44 20 7946 0958 when done", "phone"),
        ("call me on (415) 555-0132 when done", "phone"),
    ],
)
def test_pii_detectors_block_personal_data(
    client: APIClient, alias: ModelAlias, fake_upstream: FakeUpstream, prompt: str, detector: str
) -> None:
    _policy("no-pii", kind="pii")

    response = _post(client, prompt)

    assert response.json() == _refusal("no-pii")
    assert UsageRecord.objects.get().guardrails[0]["matched"] == detector
    assert fake_upstream.requests == []


@pytest.mark.parametrize(
    "prompt",
    [
        "a poster with the number 4111 1111 1111 1112",  # Luhn-invalid
        "a calendar for 2026-12-02 at 1920x1080",
        "an IBAN-like DE89 3704 0044 0532 0130 07 label",  # wrong check digits
        "a cat at jane.doe dot example",
    ],
)
def test_pii_detectors_let_look_alikes_through(
    client: APIClient, alias: ModelAlias, fake_upstream: FakeUpstream, prompt: str
) -> None:
    _policy("no-cards", kind="pii", detectors=["payment_card", "iban", "email"])

    assert _post(client, prompt).status_code == 200


def test_a_regex_policy_blocks_and_a_hostile_pattern_cannot_stall_the_request(
    client: APIClient, alias: ModelAlias, fake_upstream: FakeUpstream
) -> None:
    _policy("no-tickets", kind="regex", patterns=[r"(?i)\bJIRA-\d{3,}\b"])
    _policy("hostile", kind="regex", patterns=[r"(a+)+$"])  # RE2: linear, whatever the input

    assert _post(client, "a diagram of jira-1234").json() == _refusal("no-tickets")
    served = _post(client, "a" * 30_000 + "b")  # backtracking engines take years on this

    assert served.status_code == 200, served.content
    assert len(_image_calls(fake_upstream)) == 1


def test_a_pattern_that_needs_backtracking_is_refused_when_saved(db: None) -> None:
    from aperture.errors import InvalidRequest

    for pattern in (r"(a)\1", r"(?=secret)"):
        with pytest.raises(InvalidRequest) as refused:
            _policy("backrefs", kind="regex", patterns=[pattern])
        assert refused.value.param == "patterns"
        assert "not valid RE2" in refused.value.message
    assert not GuardrailPolicy.objects.exists()


def test_a_flag_policy_serves_the_request_and_marks_the_record(
    client: APIClient, alias: ModelAlias, fake_upstream: FakeUpstream
) -> None:
    _policy("watch-brands", kind="keywords", patterns=["acme"], action="flag")

    response = _post(client, "an ACME rocket")

    assert response.status_code == 200
    record = UsageRecord.objects.get()
    assert (record.status, record.error_code, record.images) == (200, "", 1)
    assert record.guardrails == [
        {
            "policy": "watch-brands",
            "scope": "platform",
            "action": "flag",
            "on": "prompt",
            "matched": "keyword",
        }
    ]
    assert not AuditEvent.objects.filter(event="guardrail.blocked").exists()


def test_a_workspace_policy_binds_its_own_keys_and_a_platform_policy_everyone(
    client: APIClient,
    outsider: APIClient,
    workspace: Workspace,
    alias: ModelAlias,
    fake_upstream: FakeUpstream,
) -> None:
    _policy("acme-no-dogs", workspace, kind="keywords", patterns=["dog"])
    _policy("platform-no-gore", kind="keywords", patterns=["gore"])

    assert _post(client, "a dog").json() == _refusal("acme-no-dogs")
    assert _post(outsider, "a dog").status_code == 200
    assert _post(outsider, "gore").json() == _refusal("platform-no-gore")


def test_a_policy_applies_only_to_the_routes_it_names(
    client: APIClient, alias: ModelAlias, fake_upstream: FakeUpstream
) -> None:
    _policy("edits-only", kind="keywords", patterns=["dog"], applies_to=["edits"])
    disabled = _policy("off", kind="keywords", patterns=["cat"])
    disabled.enabled = False
    disabled.save()

    assert _post(client, "a dog").status_code == 200
    assert _post(client, "a cat").status_code == 200


def test_edits_are_checked(client: APIClient, alias: ModelAlias, fake_upstream: FakeUpstream):
    from tests.fakes.upstream import png

    _policy("no-dogs", kind="keywords", patterns=["dog"], applies_to=["edits"])

    response = client.post(
        "/v1/images/edits",
        {"model": "image-openai", "prompt": "add a dog", "image": _upload(png(32, 32))},
    )

    assert response.json() == _refusal("no-dogs")
    assert fake_upstream.requests == []


def _upload(data: bytes):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile("in.png", data, content_type="image/png")


def test_passthrough_image_routes_are_checked_on_the_prompt_the_gateway_reads(
    client: APIClient, fake_upstream: FakeUpstream, db: None
) -> None:
    open_credential(fake_upstream, name="openai")
    open_credential(fake_upstream, name="gemini", provider="gemini")
    _policy("no-dogs", kind="keywords", patterns=["dog"])

    openai = client.post(
        "/openai/v1/images/generations",
        json.dumps({"model": "gpt-image-1", "prompt": "a dog"}),
        content_type="application/json",
    )
    gemini = client.post(
        "/gemini/v1beta/models/gemini-2.5-flash-image:generateContent",
        json.dumps({"contents": [{"parts": [{"text": "a happy"}, {"text": "DOG"}]}]}),
        content_type="application/json",
    )

    assert openai.json() == _refusal("no-dogs")
    assert gemini.json() == _refusal("no-dogs")
    assert fake_upstream.requests == []
    assert set(
        UsageRecord.objects.filter(endpoint="passthrough").values_list("error_code", "cost_micro")
    ) == {("guardrail", 0)}


# --- moderation -------------------------------------------------------------------------------


def _moderation(
    credential: ProviderCredential,
    name: str = "moderated",
    workspace: Workspace | None = None,
    **fields: object,
) -> GuardrailPolicy:
    return _policy(name, workspace, kind="moderation", credential=credential, **fields)


def test_a_moderation_policy_blocks_a_flagged_prompt_and_reuses_its_verdict(
    client: APIClient,
    alias: ModelAlias,
    openai_credential: ProviderCredential,
    fake_upstream: FakeUpstream,
) -> None:
    _moderation(openai_credential, categories={"violence": 0.8})

    assert _post(client, "a gore scene").json() == _refusal("moderated")
    assert _post(client, "a gore scene").json() == _refusal("moderated")
    served = _post(client, "a calm lake")

    assert served.status_code == 200
    assert _moderation_calls(fake_upstream) == [
        {"model": "omni-moderation-latest", "input": [{"type": "text", "text": "a gore scene"}]},
        {"model": "omni-moderation-latest", "input": [{"type": "text", "text": "a calm lake"}]},
    ]  # the repeated prompt's scores came from the cache
    assert _image_calls(fake_upstream) == ["/v1/images/generations"]
    blocked = UsageRecord.objects.filter(error_code="guardrail").first()
    assert blocked is not None
    assert blocked.guardrails[0]["matched"] == "violence"


def test_a_threshold_above_the_score_lets_the_prompt_through(
    client: APIClient,
    alias: ModelAlias,
    openai_credential: ProviderCredential,
    fake_upstream: FakeUpstream,
) -> None:
    _moderation(openai_credential, categories={"violence": 0.99, "hate": 0.5})

    assert _post(client, "a gore scene").status_code == 200


@pytest.mark.parametrize("fail_open", [True, False])
def test_a_moderation_outage_follows_the_policys_choice(
    client: APIClient,
    alias: ModelAlias,
    openai_credential: ProviderCredential,
    fake_upstream: FakeUpstream,
    fail_open: bool,
) -> None:
    _moderation(openai_credential, fail_open=fail_open)
    fake_upstream.misbehave(Misbehave(status=500))

    response = _post(client, "a calm lake")

    record = UsageRecord.objects.get()
    assert record.guardrails == [
        {"policy": "moderated", "scope": "platform", "action": "unavailable", "on": "prompt"}
    ]
    if fail_open:
        assert response.status_code == 200
        assert _image_calls(fake_upstream) == ["/v1/images/generations"]
        return
    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    assert response.json()["error"]["code"] == "guardrail_unavailable"
    assert _image_calls(fake_upstream) == []
    assert (record.error_code, record.cost_micro) == ("guardrail_unavailable", 0)


RED, BLUE = (220, 20, 20), (30, 120, 200)


def test_a_flagged_output_image_is_withheld_and_the_rest_returned_with_allow_partial(
    client: APIClient,
    alias: ModelAlias,
    openai_credential: ProviderCredential,
    fake_upstream: FakeUpstream,
) -> None:
    _moderation(openai_credential, check_prompt=False, check_output=True, allow_partial=True)
    fake_upstream.image_colors = [RED, BLUE]

    response = _post(client, "two swatches", n=2)

    assert response.status_code == 200, response.content
    assert len(response.json()["data"]) == 1
    record = UsageRecord.objects.get()
    assert record.images == 2  # the provider made and charged both
    assert record.cost_micro > 0
    assert record.guardrails == [
        {
            "policy": "moderated",
            "scope": "platform",
            "action": "withhold",
            "on": "output",
            "matched": "flagged",
        }
    ]
    assert len(_moderation_calls(fake_upstream)) == 2  # one per image


def test_withheld_images_are_not_charged_when_the_policy_says_so(
    client: APIClient,
    alias: ModelAlias,
    openai_credential: ProviderCredential,
    fake_upstream: FakeUpstream,
) -> None:
    _moderation(
        openai_credential,
        check_prompt=False,
        check_output=True,
        allow_partial=True,
        charge_withheld=False,
    )
    fake_upstream.image_colors = [RED, BLUE]

    assert len(_post(client, "two swatches", n=2).json()["data"]) == 1
    both = UsageRecord.objects.get()
    fake_upstream.image_colors = [BLUE, BLUE]
    _post(client, "two more", n=2)
    clean = UsageRecord.objects.exclude(pk=both.pk).get()

    assert both.images == 1
    assert both.cost_micro * 2 == clean.cost_micro


def test_without_allow_partial_a_withheld_image_refuses_the_request_but_is_charged(
    client: APIClient,
    alias: ModelAlias,
    openai_credential: ProviderCredential,
    fake_upstream: FakeUpstream,
) -> None:
    _moderation(openai_credential, check_prompt=False, check_output=True)
    fake_upstream.image_colors = [RED, BLUE]

    response = _post(client, "two swatches", n=2)

    assert response.json() == _refusal("moderated", "generated image")
    record = UsageRecord.objects.get()
    assert (record.status, record.error_code, record.images) == (400, "guardrail", 2)
    assert record.cost_micro > 0


def test_a_stream_under_an_output_policy_is_refused_before_anything_is_held(
    client: APIClient,
    alias: ModelAlias,
    openai_credential: ProviderCredential,
    fake_upstream: FakeUpstream,
) -> None:
    _moderation(openai_credential, check_prompt=False, check_output=True)

    response = _post(client, "a lake", stream=True)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "stream_not_moderated"
    assert response.json()["error"]["param"] == "stream"
    assert fake_upstream.requests == []


def test_a_workspace_credential_a_guardrail_uses_cannot_be_deleted(
    admin, workspace: Workspace, fake_upstream: FakeUpstream
) -> None:
    credential = open_credential(fake_upstream, name="own-openai", workspace=workspace)
    _moderation(credential, workspace=workspace)

    response = admin.delete(f"/api/v1/credentials/{credential.public_id}")

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "credential_in_use"
    assert "moderated" in response.json()["error"]["message"]
    assert ProviderCredential.objects.filter(pk=credential.pk).exists()


def test_the_official_sdk_sees_a_block_as_a_bad_request_naming_the_policy(
    live_server, api_key: CreatedKey, platform_alias: ModelAlias, fake_upstream: FakeUpstream
) -> None:
    import openai

    _policy("no-cards", kind="pii", detectors=["payment_card"])
    client = openai.OpenAI(
        base_url=f"{live_server.url}/v1", api_key=api_key.secret, max_retries=0, timeout=30
    )

    with pytest.raises(openai.BadRequestError) as refused:
        client.images.generate(model="demo-image", prompt="card 4111 1111 1111 1111")
    served = client.images.generate(model="demo-image", prompt="a card game", size="64x64")

    assert refused.value.code == "content_policy_violation"
    assert refused.value.param == "prompt"
    assert "'no-cards'" in refused.value.message
    assert len(served.data or []) == 1


def test_a_workspace_has_bounded_policies_and_regex_programs(workspace: Workspace) -> None:
    from aperture.errors import InvalidRequest
    from routing.guardrails import services

    for index in range(services.MAX_WORKSPACE_POLICIES):
        _policy(f"p{index}", workspace, kind="keywords", patterns=[f"w{index}"])
    with pytest.raises(InvalidRequest) as too_many:
        _policy("one-more", workspace, kind="keywords", patterns=["x"])
    assert too_many.value.code == "too_many_policies"
    _policy("platform-is-not-counted", kind="keywords", patterns=["x"])

    GuardrailPolicy.objects.filter(workspace=workspace).delete()
    _policy("big-1", workspace, kind="regex", patterns=["[a-z]{900}x"])
    _policy("big-2", workspace, kind="regex", patterns=["[a-z]{900}y"])
    with pytest.raises(InvalidRequest) as too_big:
        _policy("big-3", workspace, kind="regex", patterns=["[a-z]{900}z"])
    assert (too_big.value.code, too_big.value.param) == ("too_many_patterns", "patterns")
    with pytest.raises(InvalidRequest, match="RE2 instructions"):
        _policy("huge", kind="regex", patterns=["[a-z]{1000}N"])

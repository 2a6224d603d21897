"""Guardrails through the management API: a workspace adds its own policies, reads the
platform's, and can neither change nor delete an operator's."""

from datetime import datetime
from typing import Any

import pytest
from django.forms.models import model_to_dict
from pytest_django.fixtures import Settings as SettingsWrapper
from rest_framework import serializers

from routing import services as routing_services
from routing.guardrails.policies import policies_for
from routing.guardrails.services import guardrail_create
from routing.models import GuardrailPolicy, Provider, ProviderCredential
from tenants.models import AuditEvent, Workspace
from tenants.services import CreatedKey
from tests.conftest import ACTOR, UPSTREAM_SECRET
from tests.factories import WorkspaceFactory
from tests.fakes.upstream import FakeUpstream
from tests.openapi_check import SchemaCheckedClient, checked_client_for

URL = "/api/v1/guardrails"


def _iso(moment: datetime) -> str:
    return serializers.DateTimeField().to_representation(moment)


def _stamps(policy: GuardrailPolicy) -> dict[str, str]:
    return {"created_at": _iso(policy.created_at), "updated_at": _iso(policy.updated_at)}


def _credential(
    workspace: Workspace | None, name: str, provider: str = Provider.OPENAI
) -> ProviderCredential:
    return routing_services.credential_create(
        actor=ACTOR, workspace=workspace, name=name, provider=provider, secret="sk-test-0123456789"
    )


@pytest.fixture
def acme_openai(workspace: Workspace) -> ProviderCredential:
    return _credential(workspace, "acme-openai")


@pytest.fixture
def platform_policies(db: None) -> dict[str, GuardrailPolicy]:
    """An operator's keyword list and moderation policy, and a disabled draft."""
    operator_credential = _credential(None, "operator-openai")
    return {
        "words": guardrail_create(
            actor=ACTOR,
            workspace=None,
            fields={"name": "no-weapons", "kind": "keywords", "patterns": ["rifle", "grenade"]},
        ),
        "moderation": guardrail_create(
            actor=ACTOR,
            workspace=None,
            fields={
                "name": "platform-moderation",
                "kind": "moderation",
                "credential": operator_credential,
                "categories": {"sexual/minors": 0.01},
                "check_output": True,
            },
        ),
        "draft": guardrail_create(
            actor=ACTOR,
            workspace=None,
            fields={"name": "draft", "kind": "pii", "enabled": False},
        ),
    }


def _workspace_policy(workspace: Workspace, name: str = "no-rivals") -> GuardrailPolicy:
    return guardrail_create(
        actor=ACTOR,
        workspace=workspace,
        fields={"name": name, "kind": "keywords", "patterns": ["globex"]},
    )


def _defaults(**changed: Any) -> dict[str, Any]:
    """A workspace policy's body as the model's defaults make it, with `changed` over them."""
    return {
        "owner": "workspace",
        "action": "block",
        "applies_to": [],
        "patterns": [],
        "detectors": [],
        "credential": None,
        "moderation_model": "omni-moderation-latest",
        "categories": {},
        "check_prompt": True,
        "check_output": False,
        "allow_partial": False,
        "charge_withheld": True,
        "timeout_seconds": 3.0,
        "fail_open": False,
        "enabled": True,
        **changed,
    }


def _audit(event: str) -> list[tuple[str, str, str]]:
    return [
        (e.actor, e.target_id, e.workspace.slug if e.workspace else "")
        for e in AuditEvent.objects.filter(event=event).select_related("workspace")
    ]


# --- creating ------------------------------------------------------------------------------


def test_a_keyword_policy_is_created_for_the_workspace_and_audited(
    admin: SchemaCheckedClient, admin_key: CreatedKey, workspace: Workspace
) -> None:
    response = admin.post(
        URL,
        {
            "name": "no-rivals",
            "kind": "keywords",
            "action": "flag",
            "applies_to": ["generations", "edits"],
            "patterns": ["Globex", "Initech Corp"],
        },
        format="json",
    )
    assert response.status_code == 201, response.json()
    stored = GuardrailPolicy.objects.get()
    assert response.json() == _defaults(
        id=stored.public_id,
        name="no-rivals",
        kind="keywords",
        action="flag",
        applies_to=["edits", "generations"],
        patterns=["Globex", "Initech Corp"],
        **_stamps(stored),
    )
    assert stored.workspace == workspace
    actor = f"key:{admin_key.key.public_id}"
    assert _audit("guardrail.created") == [(actor, stored.public_id, "acme")]
    assert AuditEvent.objects.get(event="guardrail.created").data == {
        "name": "no-rivals",
        "kind": "keywords",
        "action": "flag",
        "applies_to": ["edits", "generations"],
        "enabled": True,
    }


def test_a_regex_policy_is_created(admin: SchemaCheckedClient) -> None:
    response = admin.post(
        URL,
        {"name": "ticket-ids", "kind": "regex", "patterns": [r"(?i)\bproj-\d{4}\b"]},
        format="json",
    )
    assert response.status_code == 201, response.json()
    stored = GuardrailPolicy.objects.get()
    assert response.json() == _defaults(
        id=stored.public_id,
        name="ticket-ids",
        kind="regex",
        patterns=[r"(?i)\bproj-\d{4}\b"],
        **_stamps(stored),
    )


@pytest.mark.parametrize(
    ("sent", "stored"),
    [
        (["email", "iban"], ["email", "iban"]),
        ([], ["email", "phone", "payment_card", "iban"]),  # none named: all of them
    ],
)
def test_a_pii_policy_is_created_with_the_detectors_it_runs(
    admin: SchemaCheckedClient, sent: list[str], stored: list[str]
) -> None:
    response = admin.post(URL, {"name": "pii", "kind": "pii", "detectors": sent}, format="json")
    assert response.status_code == 201, response.json()
    policy = GuardrailPolicy.objects.get()
    assert policy.detectors == stored
    assert response.json() == _defaults(
        id=policy.public_id, name="pii", kind="pii", detectors=stored, **_stamps(policy)
    )


def test_a_moderation_policy_is_created_on_the_workspaces_own_credential(
    admin: SchemaCheckedClient, acme_openai: ProviderCredential
) -> None:
    response = admin.post(
        URL,
        {
            "name": "moderation",
            "kind": "moderation",
            "credential": acme_openai.public_id,
            "categories": {"violence": 0.7, "self-harm": 0.2},
            "check_output": True,
            "allow_partial": True,
            "charge_withheld": False,
            "timeout_seconds": 1.5,
            "fail_open": True,
        },
        format="json",
    )
    assert response.status_code == 201, response.json()
    stored = GuardrailPolicy.objects.get()
    assert stored.credential == acme_openai
    assert response.json() == _defaults(
        id=stored.public_id,
        name="moderation",
        kind="moderation",
        credential=acme_openai.public_id,
        categories={"violence": 0.7, "self-harm": 0.2},
        check_output=True,
        allow_partial=True,
        charge_withheld=False,
        timeout_seconds=1.5,
        fail_open=True,
        **_stamps(stored),
    )
    assert "sk-test" not in response.content.decode()


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"kind": "regex", "patterns": [r"(a)\1"]}, "patterns"),  # a backreference: not RE2
        ({"kind": "regex", "patterns": ["(?=lookahead)"]}, "patterns"),
        ({"kind": "regex", "patterns": ["(unclosed"]}, "patterns"),
        ({"kind": "keywords", "patterns": []}, "patterns"),
        ({"kind": "keywords", "patterns": [""]}, "patterns.0"),
        ({"kind": "keywords", "patterns": ["x" * 1001]}, "patterns.0"),
        ({"kind": "keywords", "patterns": ["w"] * 201}, "patterns"),
        ({"kind": "pii", "detectors": ["ssn"]}, "detectors.0"),
        ({"kind": "pii", "applies_to": ["images"]}, "applies_to.0"),
        ({"kind": "pii", "check_output": True}, "check_output"),
        ({"kind": "pii", "action": "warn"}, "action"),
        ({"kind": "profanity"}, "kind"),
        ({"kind": "moderation"}, "credential"),
        ({"kind": "moderation", "credential": None}, "credential"),
        ({"kind": "keywords", "patterns": ["x"], "timeout_seconds": 0}, "timeout_seconds"),
        ({"kind": "moderation", "categories": {"violence": 1.5}}, "categories.violence"),
        ({"kind": "keywords", "patterns": ["x"], "workspace": "globex"}, "workspace"),
        ({"name": "Not a slug", "kind": "pii"}, "name"),
        ({"name": None, "kind": "pii"}, "name"),
    ],
)
def test_a_policy_that_could_not_be_enforced_is_a_400_naming_the_field(
    admin: SchemaCheckedClient, body: dict[str, Any], param: str
) -> None:
    response = admin.post(URL, {"name": "rule", **body}, format="json")
    assert response.status_code == 400, response.json()
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param), error
    assert not GuardrailPolicy.objects.exists()
    assert not AuditEvent.objects.filter(event__startswith="guardrail.").exists()


def test_a_backreference_is_refused_with_the_reason(admin: SchemaCheckedClient) -> None:
    response = admin.post(
        URL, {"name": "rule", "kind": "regex", "patterns": [r"(a)\1"]}, format="json"
    )
    assert response.json()["error"]["message"].startswith(
        "Pattern '(a)\\\\1' is not valid RE2: "
    ), response.json()


def test_only_a_moderation_policy_names_a_credential_and_only_an_openai_one(
    admin: SchemaCheckedClient, workspace: Workspace, acme_openai: ProviderCredential
) -> None:
    acme_gemini = _credential(workspace, "acme-gemini", provider=Provider.GEMINI)
    for body, param, message in (
        (
            {"kind": "keywords", "patterns": ["x"], "credential": acme_openai.public_id},
            "credential",
            "Only a moderation policy calls a credential.",
        ),
        (
            {"kind": "moderation", "credential": acme_gemini.public_id},
            "credential",
            "The moderation endpoint is OpenAI's: use an OpenAI credential.",
        ),
        (
            {"kind": "moderation", "credential": acme_openai.public_id, "patterns": ["x"]},
            "patterns",
            "A moderation policy takes categories, not patterns.",
        ),
    ):
        response = admin.post(URL, {"name": "rule", **body}, format="json")
        assert response.status_code == 400, body
        assert response.json()["error"] == {
            "message": message,
            "type": "invalid_request_error",
            "param": param,
            "code": None,
        }
    assert not GuardrailPolicy.objects.exists()


@pytest.mark.parametrize("owner", ["another workspace", "the platform"])
def test_a_moderation_policy_cannot_use_a_credential_not_the_workspaces_own(
    admin: SchemaCheckedClient, owner: str
) -> None:
    other = WorkspaceFactory.create(slug="globex") if owner == "another workspace" else None
    theirs = _credential(other, "their-openai")
    response = admin.post(
        URL,
        {"name": "moderation", "kind": "moderation", "credential": theirs.public_id},
        format="json",
    )
    assert response.status_code == 404
    assert response.json() == {
        "error": {
            "message": f"No credential '{theirs.public_id}' in this workspace.",
            "type": "invalid_request_error",
            "param": "credential",
            "code": "not_found",
        }
    }
    assert not GuardrailPolicy.objects.exists()


def test_a_name_is_unique_in_the_workspace_only(
    admin: SchemaCheckedClient,
    outsider_admin: SchemaCheckedClient,
    platform_policies: dict[str, GuardrailPolicy],
) -> None:
    body = {"name": "no-rivals", "kind": "keywords", "patterns": ["globex"]}
    assert admin.post(URL, body, format="json").status_code == 201
    duplicate = admin.post(URL, body, format="json")
    assert duplicate.status_code == 409
    assert duplicate.json() == {
        "error": {
            "message": "A guardrail named 'no-rivals' already exists here.",
            "type": "invalid_request_error",
            "param": "name",
            "code": "conflict",
        }
    }
    # Another workspace, and a workspace beside the platform, may use the same names.
    assert outsider_admin.post(URL, body, format="json").status_code == 201
    same_as_platform = {"name": "no-weapons", "kind": "keywords", "patterns": ["sword"]}
    assert admin.post(URL, same_as_platform, format="json").status_code == 201
    renamed = admin.post(URL, {**body, "name": "second"}, format="json").json()
    clash = admin.patch(f"{URL}/{renamed['id']}", {"name": "no-rivals"}, format="json")
    assert clash.status_code == 409
    assert GuardrailPolicy.objects.get(public_id=renamed["id"]).name == "second"


# --- reading -------------------------------------------------------------------------------


def test_the_list_shows_the_platforms_enabled_policies_without_their_lists(
    admin: SchemaCheckedClient,
    workspace: Workspace,
    acme_openai: ProviderCredential,
    platform_policies: dict[str, GuardrailPolicy],
) -> None:
    own = guardrail_create(
        actor=ACTOR,
        workspace=workspace,
        fields={"name": "acme-moderation", "kind": "moderation", "credential": acme_openai},
    )
    _workspace_policy(WorkspaceFactory.create(slug="globex"), name="theirs")
    words, moderation = platform_policies["words"], platform_policies["moderation"]
    hidden = {
        "patterns": None,
        "detectors": None,
        "categories": None,
        "credential": None,
        "fail_open": None,
    }
    response = admin.get(URL)
    assert response.status_code == 200
    assert response.json() == {
        "data": [
            _defaults(
                id=words.public_id,
                name="no-weapons",
                owner="platform",
                kind="keywords",
                **hidden,
                **_stamps(words),
            ),
            _defaults(
                id=moderation.public_id,
                name="platform-moderation",
                owner="platform",
                kind="moderation",
                check_output=True,
                **hidden,
                **_stamps(moderation),
            ),
            _defaults(
                id=own.public_id,
                name="acme-moderation",
                kind="moderation",
                credential=acme_openai.public_id,
                **_stamps(own),
            ),
        ]
    }
    operator_credential = ProviderCredential.objects.get(name="operator-openai")
    for secret in ("rifle", "sexual/minors", "operator-openai", operator_credential.public_id):
        assert secret not in response.content.decode()
    detail = admin.get(f"{URL}/{words.public_id}")
    assert detail.json() == response.json()["data"][0]


def test_the_list_reads_a_fixed_number_of_queries(
    admin: SchemaCheckedClient,
    workspace: Workspace,
    acme_openai: ProviderCredential,
    django_assert_max_num_queries: Any,
) -> None:
    for n in range(5):
        guardrail_create(
            actor=ACTOR,
            workspace=workspace,
            fields={"name": f"m{n}", "kind": "moderation", "credential": acme_openai},
        )
    with django_assert_max_num_queries(3):  # the key, its last use, the policies
        assert len(admin.get(URL).json()["data"]) == 5


def test_a_team_manager_reads_the_policies(
    manager: SchemaCheckedClient, workspace: Workspace
) -> None:
    policy = _workspace_policy(workspace)
    assert [p["id"] for p in manager.get(URL).json()["data"]] == [policy.public_id]
    assert manager.get(f"{URL}/{policy.public_id}").status_code == 200


# --- changing and deleting -----------------------------------------------------------------


def test_a_patch_changes_only_what_is_sent_and_is_audited(
    admin: SchemaCheckedClient, admin_key: CreatedKey, workspace: Workspace
) -> None:
    policy = _workspace_policy(workspace)
    response = admin.patch(
        f"{URL}/{policy.public_id}",
        {"action": "flag", "applies_to": ["passthrough"], "enabled": False},
        format="json",
    )
    assert response.status_code == 200, response.json()
    policy.refresh_from_db()
    assert response.json() == _defaults(
        id=policy.public_id,
        name="no-rivals",
        kind="keywords",
        action="flag",
        applies_to=["passthrough"],
        patterns=["globex"],
        enabled=False,
        **_stamps(policy),
    )
    updated = AuditEvent.objects.get(event="guardrail.updated")
    assert (updated.actor, updated.target_id) == (
        f"key:{admin_key.key.public_id}",
        policy.public_id,
    )
    assert updated.data == {
        "before": {
            "name": "no-rivals",
            "kind": "keywords",
            "action": "block",
            "applies_to": [],
            "enabled": True,
        },
        "after": {
            "name": "no-rivals",
            "kind": "keywords",
            "action": "flag",
            "applies_to": ["passthrough"],
            "enabled": False,
        },
        "fields": ["action", "applies_to", "enabled"],
    }


def test_a_policy_becomes_a_moderation_policy_only_with_a_credential(
    admin: SchemaCheckedClient, workspace: Workspace, acme_openai: ProviderCredential
) -> None:
    policy = _workspace_policy(workspace)
    url = f"{URL}/{policy.public_id}"
    refused = admin.patch(url, {"kind": "moderation", "patterns": []}, format="json")
    assert (refused.status_code, refused.json()["error"]["param"]) == (400, "credential")
    changed = admin.patch(
        url,
        {"kind": "moderation", "patterns": [], "credential": acme_openai.public_id},
        format="json",
    )
    assert changed.status_code == 200, changed.json()
    assert (changed.json()["kind"], changed.json()["credential"]) == (
        "moderation",
        acme_openai.public_id,
    )
    back = admin.patch(
        url, {"kind": "pii", "credential": None, "detectors": ["email"]}, format="json"
    )
    assert back.status_code == 200, back.json()
    policy.refresh_from_db()
    assert (policy.kind, policy.credential, policy.detectors) == ("pii", None, ["email"])


def test_an_empty_patch_is_a_400(admin: SchemaCheckedClient, workspace: Workspace) -> None:
    policy = _workspace_policy(workspace)
    response = admin.patch(f"{URL}/{policy.public_id}", {}, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "Nothing to change."


def test_a_deleted_policy_is_gone_and_audited(
    admin: SchemaCheckedClient, admin_key: CreatedKey, workspace: Workspace
) -> None:
    policy = _workspace_policy(workspace)
    response = admin.delete(f"{URL}/{policy.public_id}")
    assert response.status_code == 204
    assert not GuardrailPolicy.objects.exists()
    assert _audit("guardrail.deleted") == [
        (f"key:{admin_key.key.public_id}", policy.public_id, "acme")
    ]
    assert admin.get(f"{URL}/{policy.public_id}").status_code == 404


@pytest.mark.parametrize(
    ("method", "body"),
    [
        ("patch", {"enabled": False}),
        ("patch", {"action": "flag"}),
        ("patch", {"applies_to": ["passthrough"]}),
        ("patch", {"kind": "nonsense"}),  # refused as a platform policy before it is read
        ("delete", None),
    ],
)
def test_a_platform_policy_cannot_be_weakened_or_deleted(
    admin: SchemaCheckedClient,
    platform_policies: dict[str, GuardrailPolicy],
    method: str,
    body: dict[str, Any] | None,
) -> None:
    policy = platform_policies["words"]
    before = model_to_dict(GuardrailPolicy.objects.get(pk=policy.pk))
    response = getattr(admin, method)(f"{URL}/{policy.public_id}", body, format="json")
    assert response.status_code == 403
    assert response.json() == {
        "error": {
            "message": "A platform policy is set by the gateway's operators; a workspace may "
            "add its own policies, not change or remove the platform's.",
            "type": "permission_error",
            "param": None,
            "code": "platform_policy",
        }
    }
    assert model_to_dict(GuardrailPolicy.objects.get(pk=policy.pk)) == before
    assert not AuditEvent.objects.filter(actor__startswith="key:").exists()


def test_a_disabled_platform_policy_is_not_shown(
    admin: SchemaCheckedClient, platform_policies: dict[str, GuardrailPolicy]
) -> None:
    draft = platform_policies["draft"]
    assert admin.get(f"{URL}/{draft.public_id}").status_code == 404
    assert admin.delete(f"{URL}/{draft.public_id}").status_code == 404
    assert GuardrailPolicy.objects.filter(pk=draft.pk).exists()


# --- who may ------------------------------------------------------------------------------


def test_another_workspaces_policy_is_a_404(
    outsider_admin: SchemaCheckedClient, workspace: Workspace
) -> None:
    policy = _workspace_policy(workspace)
    url = f"{URL}/{policy.public_id}"
    for response in (
        outsider_admin.get(url),
        outsider_admin.patch(url, {"enabled": False}, format="json"),
        outsider_admin.delete(url),
    ):
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"
    assert outsider_admin.get(URL).json() == {"data": []}
    policy.refresh_from_db()
    assert policy.enabled


def test_writes_need_manage_workspace(
    manager: SchemaCheckedClient, api_key: CreatedKey, workspace: Workspace
) -> None:
    policy = _workspace_policy(workspace)
    images = checked_client_for(api_key.secret)
    body = {"name": "more", "kind": "pii"}
    url = f"{URL}/{policy.public_id}"
    for response in (
        manager.post(URL, body, format="json"),
        manager.patch(url, {"enabled": False}, format="json"),
        manager.delete(url),
        images.get(URL),
        images.post(URL, body, format="json"),
        images.patch(url, {"enabled": False}, format="json"),
        images.delete(url),
    ):
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "missing_scope"
    assert list(GuardrailPolicy.objects.values_list("name", "enabled")) == [("no-rivals", True)]


def test_a_workspace_policy_applies_to_its_keys_only_and_the_platforms_to_everyone(
    admin: SchemaCheckedClient,
    workspace: Workspace,
    platform_policies: dict[str, GuardrailPolicy],
) -> None:
    created = admin.post(URL, {"name": "acme-pii", "kind": "pii"}, format="json")
    assert created.status_code == 201
    other = WorkspaceFactory.create(slug="globex")
    assert [p.name for p in policies_for(workspace.pk)] == [
        "no-weapons",
        "platform-moderation",
        "acme-pii",
    ]
    assert [p.name for p in policies_for(other.pk)] == ["no-weapons", "platform-moderation"]


# --- trying a policy ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        (
            "a GLOBEX logo",
            {
                "matched": True,
                "outcome": "block",
                "detail": "Matched (keyword): the request would be refused "
                "(400 content_policy_violation).",
            },
        ),
        (
            "a globexian logo",
            {
                "matched": False,
                "outcome": "pass",
                "detail": "No match: the request would be served.",
            },
        ),
    ],
)
def test_a_workspace_policy_is_tried_on_a_prompt(
    admin: SchemaCheckedClient, workspace: Workspace, prompt: str, expected: dict[str, Any]
) -> None:
    policy = _workspace_policy(workspace)
    response = admin.post(f"{URL}/{policy.public_id}/test", {"prompt": prompt}, format="json")
    assert response.status_code == 200, response.json()
    assert response.json() == expected
    assert not AuditEvent.objects.filter(event__startswith="guardrail.", actor__startswith="key:")


def test_a_moderation_policy_is_tried_against_the_endpoint_with_its_credential(
    admin: SchemaCheckedClient,
    workspace: Workspace,
    fake_upstream: FakeUpstream,
    settings: SettingsWrapper,
) -> None:
    settings.FETCH_ALLOWED_HOSTS = ["127.0.0.1"]  # the fake upstream, named by a workspace
    credential = routing_services.credential_create(
        actor=ACTOR,
        workspace=workspace,
        name="acme-openai",
        provider=Provider.OPENAI,
        base_url=fake_upstream.url,
        secret=UPSTREAM_SECRET,
    )
    policy = guardrail_create(
        actor=ACTOR,
        workspace=workspace,
        fields={
            "name": "moderation",
            "kind": "moderation",
            "credential": credential,
            "action": "flag",
            "categories": {"violence": 0.5},
        },
    )
    response = admin.post(f"{URL}/{policy.public_id}/test", {"prompt": "gore"}, format="json")
    assert response.json() == {
        "matched": True,
        "outcome": "flag",
        "detail": "Matched (violence): the request would be served, flagged.",
    }
    called = fake_upstream.requests[-1]
    assert (called.method, called.path) == ("POST", "/v1/moderations")
    assert called.headers["authorization"] == f"Bearer {UPSTREAM_SECRET}"


def test_a_platform_policy_cannot_be_tried(
    admin: SchemaCheckedClient, platform_policies: dict[str, GuardrailPolicy]
) -> None:
    words = platform_policies["words"]
    response = admin.post(f"{URL}/{words.public_id}/test", {"prompt": "a rifle"}, format="json")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "platform_policy"


def test_trying_needs_a_prompt_and_manage_workspace(
    admin: SchemaCheckedClient,
    manager: SchemaCheckedClient,
    outsider_admin: SchemaCheckedClient,
    workspace: Workspace,
) -> None:
    url = f"{URL}/{_workspace_policy(workspace).public_id}/test"
    missing = admin.post(url, {}, format="json")
    assert (missing.status_code, missing.json()["error"]["param"]) == (400, "prompt")
    refused = manager.post(url, {"prompt": "x"}, format="json")
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "missing_scope")
    assert outsider_admin.post(url, {"prompt": "x"}, format="json").status_code == 404

"""Guardrail policies in the operator admin: friendly fields, saves checked and audited by the
services, and the "test this policy" box on the change page."""

import html
import re
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from routing import services
from routing.guardrails.services import guardrail_create
from routing.models import GuardrailPolicy
from tenants.models import AuditEvent, Workspace
from tests.conftest import ACTOR
from tests.factories import WorkspaceFactory

ADD = reverse("admin:routing_guardrailpolicy_add")
CHANGELIST = reverse("admin:routing_guardrailpolicy_changelist")


def _change(policy: GuardrailPolicy) -> str:
    return reverse("admin:routing_guardrailpolicy_change", args=[policy.pk])


def _test(policy: GuardrailPolicy) -> str:
    return reverse("admin:routing_guardrailpolicy_test", args=[policy.pk])


def _form(**overrides: Any) -> dict[str, Any]:
    """The add form as a browser posts it (unticked boxes absent), with the defaults."""
    form: dict[str, Any] = {
        "workspace": "",
        "name": "no-weapons",
        "kind": "keywords",
        "action": "block",
        "patterns": "",
        "credential": "",
        "moderation_model": "omni-moderation-latest",
        "categories": "{}",
        "check_prompt": "on",
        "charge_withheld": "on",
        "timeout_seconds": "3.0",
        "enabled": "on",
    }
    form.update(overrides)
    return {k: v for k, v in form.items() if v is not None}


def _errors(response: Any) -> dict[str, list[str]]:
    return {k: list(v) for k, v in response.context["adminform"].form.errors.items()}


def _policy(name: str = "no-weapons", workspace: Workspace | None = None, **fields: Any):
    return guardrail_create(
        actor=ACTOR,
        workspace=workspace,
        fields={"name": name, "kind": "keywords", "patterns": ["bomb", "rifle"], **fields},
    )


def _verdict(response: Any) -> str:
    """The text of the test box's verdict, as the operator reads it."""
    found = re.search(
        r'<ul class="messagelist" id="guardrail-test-verdict">\s*<li class="(\w+)">(.*?)</li>',
        response.content.decode(),
        re.S,
    )
    assert found, "no verdict on the page"
    text = html.unescape(re.sub(r"<[^>]+>", "", found.group(2)))
    return f"[{found.group(1)}] {' '.join(text.split())}"


def test_an_operator_creates_a_platform_keywords_policy_and_the_creation_is_audited(
    admin_client: Client,
) -> None:
    response = admin_client.post(
        ADD,
        _form(applies_to=["generations", "edits"], patterns="bomb\n  assault rifle \n\n"),
    )
    assert response.status_code == 302
    policy = GuardrailPolicy.objects.get()
    assert (policy.workspace, policy.name, policy.kind, policy.action) == (
        None,
        "no-weapons",
        "keywords",
        "block",
    )
    assert policy.patterns == ["bomb", "assault rifle"]
    assert policy.applies_to == ["edits", "generations"]  # normalised by the service
    assert (policy.detectors, policy.categories, policy.credential) == ([], {}, None)
    event = AuditEvent.objects.get()
    assert (event.actor, event.event, event.target_id, event.workspace) == (
        "operator:admin",
        "guardrail.created",
        policy.public_id,
        None,
    )
    assert event.data == {
        "name": "no-weapons",
        "kind": "keywords",
        "action": "block",
        "applies_to": ["edits", "generations"],
        "enabled": True,
    }


def test_a_workspace_pii_policy_is_created_with_its_detectors_ticked(
    admin_client: Client, workspace: Workspace
) -> None:
    response = admin_client.post(
        ADD,
        _form(
            workspace=workspace.pk,
            name="no-cards",
            kind="pii",
            action="flag",
            detectors=["payment_card", "iban"],
        ),
    )
    assert response.status_code == 302
    policy = GuardrailPolicy.objects.get()
    assert (policy.workspace, policy.kind, policy.action, policy.detectors) == (
        workspace,
        "pii",
        "flag",
        ["payment_card", "iban"],
    )
    assert AuditEvent.objects.get().workspace == workspace


def test_an_operator_edits_a_policy_and_the_audit_row_says_what_changed(
    admin_client: Client,
) -> None:
    policy = _policy()
    page = admin_client.get(_change(policy)).content.decode()
    assert ">\nbomb\nrifle</textarea>" in page  # the list, one entry a line

    response = admin_client.post(
        _change(policy),
        _form(patterns="bomb\nrifle\ngrenade", action="flag", applies_to=["passthrough"]),
    )
    assert response.status_code == 302
    policy.refresh_from_db()
    assert (policy.patterns, policy.action, policy.applies_to) == (
        ["bomb", "rifle", "grenade"],
        "flag",
        ["passthrough"],
    )
    event = AuditEvent.objects.get(event="guardrail.updated")
    assert event.actor == "operator:admin"
    assert event.data == {
        "before": {
            "name": "no-weapons",
            "kind": "keywords",
            "action": "block",
            "applies_to": [],
            "enabled": True,
        },
        "after": {
            "name": "no-weapons",
            "kind": "keywords",
            "action": "flag",
            "applies_to": ["passthrough"],
            "enabled": True,
        },
        "fields": ["action", "applies_to", "patterns"],
    }


def test_saving_an_unchanged_policy_writes_no_audit_row(admin_client: Client) -> None:
    policy = _policy()
    response = admin_client.post(_change(policy), _form(patterns="bomb\nrifle"))
    assert response.status_code == 302
    assert not AuditEvent.objects.filter(event="guardrail.updated").exists()


def test_an_invalid_regex_is_a_field_error_and_nothing_is_saved(admin_client: Client) -> None:
    response = admin_client.post(ADD, _form(kind="regex", patterns=r"card\s+\d{4}" + "\n(unclosed"))
    assert response.status_code == 200
    errors = _errors(response)
    assert list(errors) == ["patterns"]
    assert errors["patterns"][0].startswith("Pattern '(unclosed' is not valid RE2: ")
    assert not GuardrailPolicy.objects.exists()
    assert not AuditEvent.objects.exists()


@pytest.mark.parametrize(
    ("overrides", "errors"),
    [
        ({"kind": "keywords"}, {"patterns": ["A keywords policy needs at least one entry."]}),
        (
            {"kind": "moderation"},
            {"credential": ["A moderation policy needs an OpenAI credential."]},
        ),
        (
            {"patterns": "bomb", "check_output": "on"},
            {"check_output": ["Only a moderation policy checks images."]},
        ),
    ],
)
def test_a_policy_that_could_not_be_enforced_is_refused_on_its_field(
    admin_client: Client, overrides: dict[str, Any], errors: dict[str, list[str]]
) -> None:
    response = admin_client.post(ADD, _form(**overrides))
    assert response.status_code == 200
    assert _errors(response) == errors
    assert not GuardrailPolicy.objects.exists()


def test_a_moderation_policy_takes_an_openai_credential_and_category_thresholds(
    admin_client: Client,
) -> None:
    openai = services.credential_create(
        actor=ACTOR, name="openai-mod", provider="openai", secret="sk-" + "x" * 20
    )
    gemini = services.credential_create(
        actor=ACTOR, name="gemini", provider="gemini", secret="g" * 20
    )
    moderation = {"name": "mod", "kind": "moderation", "check_output": "on"}
    refused = admin_client.post(ADD, _form(**moderation, credential=gemini.pk))
    assert _errors(refused) == {
        "credential": ["The moderation endpoint is OpenAI's: use an OpenAI credential."]
    }
    refused = admin_client.post(
        ADD, _form(**moderation, credential=openai.pk, categories='{"violence": 2}')
    )
    assert _errors(refused) == {
        "categories": ["Each category needs a threshold between 0 and 1, e.g. 0.5."]
    }
    assert not GuardrailPolicy.objects.exists()

    response = admin_client.post(
        ADD, _form(**moderation, credential=openai.pk, categories='{"violence": 0.5}')
    )
    assert response.status_code == 302
    policy = GuardrailPolicy.objects.get()
    assert (policy.credential, policy.categories, policy.check_prompt, policy.check_output) == (
        openai,
        {"violence": 0.5},
        True,
        True,
    )


def test_a_name_used_in_the_same_scope_is_refused_and_another_scope_may_reuse_it(
    admin_client: Client, workspace: Workspace
) -> None:
    _policy()
    response = admin_client.post(ADD, _form(patterns="bomb"))
    assert _errors(response) == {"name": ["A guardrail named 'no-weapons' already exists here."]}
    response = admin_client.post(ADD, _form(patterns="bomb", workspace=workspace.pk))
    assert response.status_code == 302
    assert GuardrailPolicy.objects.filter(name="no-weapons").count() == 2


def test_the_scope_of_a_saved_policy_cannot_be_changed(
    admin_client: Client, workspace: Workspace
) -> None:
    policy = _policy()
    response = admin_client.post(_change(policy), _form(patterns="bomb", workspace=workspace.pk))
    assert response.status_code == 302
    policy.refresh_from_db()
    assert policy.workspace is None


def test_deleting_a_policy_in_the_admin_is_audited(admin_client: Client) -> None:
    policy = _policy()
    delete = reverse("admin:routing_guardrailpolicy_delete", args=[policy.pk])
    assert admin_client.post(delete, {"post": "yes"}).status_code == 302
    assert not GuardrailPolicy.objects.exists()
    event = AuditEvent.objects.get(event="guardrail.deleted")
    assert (event.actor, event.target_id) == ("operator:admin", policy.public_id)


def test_the_delete_action_deletes_each_selected_policy_through_the_service(
    admin_client: Client,
) -> None:
    policies = [_policy("a"), _policy("b")]
    response = admin_client.post(
        CHANGELIST,
        {"action": "delete_selected", "_selected_action": [p.pk for p in policies], "post": "yes"},
    )
    assert response.status_code == 302
    assert not GuardrailPolicy.objects.exists()
    assert AuditEvent.objects.filter(event="guardrail.deleted").count() == 2


def test_the_test_box_shows_a_block_for_a_matching_prompt_and_a_pass_for_another(
    admin_client: Client,
) -> None:
    policy = _policy()
    page = admin_client.get(_change(policy)).content.decode()
    assert f'action="{_test(policy)}"' in page
    assert 'id="guardrail-test-verdict"' not in page

    hit = admin_client.post(_test(policy), {"prompt": "A cartoon BOMB with a fuse"})
    assert hit.status_code == 200
    assert _verdict(hit) == (
        "[error] block: Matched (keyword): the request would be refused "
        "(400 content_policy_violation)."
    )
    page = hit.content.decode()
    assert ">A cartoon BOMB with a fuse</textarea>" in page  # the prompt, kept to edit
    assert f'action="{_change(policy)}"' in page  # the policy's own form still saves there

    miss = admin_client.post(_test(policy), {"prompt": "a bombastic cat"})
    assert _verdict(miss) == "[success] pass: No match: the request would be served."
    assert not AuditEvent.objects.exclude(event="guardrail.created").exists()


def test_the_test_box_shows_a_flag_for_personal_data_and_says_a_disabled_policy_checks_nothing(
    admin_client: Client,
) -> None:
    policy = guardrail_create(
        actor=ACTOR,
        workspace=None,
        fields={"name": "pii", "kind": "pii", "action": "flag", "enabled": False},
    )
    response = admin_client.post(_test(policy), {"prompt": "mail <jane@example.com> a poster"})
    assert _verdict(response) == (
        "[warning] flag: Matched (email): the request would be served, flagged. "
        "The policy is disabled: it checks no request until it is enabled."
    )
    page = response.content.decode()
    assert "mail &lt;jane@example.com&gt; a poster</textarea>" in page  # escaped


def test_the_test_box_works_with_csrf_checks_and_no_script(admin_user: Any) -> None:
    """A plain form under the Content-Security-Policy: no inline script, a CSRF token that
    is valid on the page the test renders too (the operator tests again and again)."""
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(admin_user)
    policy = _policy()
    page = browser.get(_change(policy))
    box = page.content.decode().split('id="guardrail-test"')[1]
    assert "<script" not in box
    assert "script-src 'self'" in page["Content-Security-Policy"]
    for prompt in ("a bomb", "a rifle"):
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', box)
        assert token
        page = browser.post(_test(policy), {"prompt": prompt, "csrfmiddlewaretoken": token[1]})
        assert page.status_code == 200
        assert _verdict(page).startswith("[error] block: Matched (keyword)")
        box = page.content.decode().split('id="guardrail-test"')[1]
    assert browser.post(_test(policy), {"prompt": "a bomb"}).status_code == 403


def test_the_test_url_answers_a_get_with_the_change_page_and_an_unknown_id_with_404(
    admin_client: Client,
) -> None:
    policy = _policy()
    response = admin_client.get(_test(policy))
    assert (response.status_code, response["Location"]) == (302, _change(policy))
    missing = reverse("admin:routing_guardrailpolicy_test", args=[policy.pk + 1000])
    assert admin_client.post(missing, {"prompt": "x"}).status_code == 404


def test_the_test_box_needs_a_signed_in_operator(db: None) -> None:
    policy = _policy()
    response = Client().post(_test(policy), {"prompt": "bomb"})
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))


def test_the_changelist_filters_by_scope_and_runs_a_bounded_number_of_queries(
    admin_client: Client, django_assert_max_num_queries: Any
) -> None:
    for index in range(30):
        workspace = WorkspaceFactory.create() if index % 3 else None
        _policy(f"policy-{index}", workspace=workspace)
    with django_assert_max_num_queries(10):
        page = admin_client.get(CHANGELIST)
    assert page.status_code == 200
    assert page.context["cl"].result_count == 30
    platform = admin_client.get(CHANGELIST, {"scope": "platform"})
    assert platform.context["cl"].result_count == 10
    workspaces = admin_client.get(CHANGELIST, {"scope": "workspace", "q": "ws"})
    assert workspaces.context["cl"].result_count == 20

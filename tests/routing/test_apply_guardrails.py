"""`manage.py apply` with a `guardrails:` section: platform and workspace policies created and
updated through the guardrail services (audited), idempotently; a policy that could not be
enforced, or names an unknown workspace or credential, changes nothing and names the line."""

import io
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from routing import services
from routing.guardrails.services import guardrail_create
from routing.models import GuardrailPolicy, ProviderCredential
from tenants.models import AuditEvent, Workspace
from tests.conftest import ACTOR

ACTOR_OF_FILE = "system:apply:gateway.yaml"

CONFIG = """\
credentials:
  - name: openai-mod
    provider: openai
    secret_env: APPLY_TEST_OPENAI_KEY
guardrails:
  - name: no-weapons
    kind: keywords
    patterns: [bomb, assault rifle]
    applies_to: [generations, edits]
  - name: card-numbers
    workspace: acme
    kind: pii
    action: flag
    detectors: [payment_card, iban]
  - name: moderated
    workspace: acme
    kind: moderation
    credential: openai-mod
    categories: {violence: 0.5, sexual/minors: 0.01}
    check_output: true
    allow_partial: true
    timeout_seconds: 2
"""


@pytest.fixture(autouse=True)
def _secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APPLY_TEST_OPENAI_KEY", "sk-openai-from-env-1234")


def _apply(tmp_path: Path, text: str, *args: str) -> str:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    out = io.StringIO()
    call_command("apply", str(path), *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def _rows() -> list[tuple[str | None, str, str, str, list[str], list[str], list[str]]]:
    rows = GuardrailPolicy.objects.order_by("workspace__slug", "name")
    return list(
        rows.values_list(
            "workspace__slug", "name", "kind", "action", "applies_to", "patterns", "detectors"
        )
    )


def test_platform_and_workspace_policies_are_created_and_a_second_run_changes_nothing(
    tmp_path: Path, workspace: Workspace
) -> None:
    assert _apply(tmp_path, CONFIG).splitlines() == [
        "create credential openai-mod (platform)",
        "create guardrail  no-weapons (platform)",
        "create guardrail  card-numbers (acme)",
        "create guardrail  moderated (acme)",
        "4 change(s); changed.",
    ]
    assert _rows() == [
        ("acme", "card-numbers", "pii", "flag", [], [], ["payment_card", "iban"]),
        ("acme", "moderated", "moderation", "block", [], [], []),
        (
            None,
            "no-weapons",
            "keywords",
            "block",
            ["edits", "generations"],
            ["bomb", "assault rifle"],
            [],
        ),
    ]
    moderated = GuardrailPolicy.objects.get(name="moderated")
    assert moderated.credential == ProviderCredential.objects.get(name="openai-mod")
    assert moderated.categories == {"violence": 0.5, "sexual/minors": 0.01}
    assert (
        moderated.moderation_model,
        moderated.check_prompt,
        moderated.check_output,
        moderated.allow_partial,
        moderated.charge_withheld,
        moderated.timeout_seconds,
        moderated.fail_open,
        moderated.enabled,
    ) == ("omni-moderation-latest", True, True, True, True, 2.0, False, True)
    created = AuditEvent.objects.filter(event="guardrail.created").order_by("id")
    assert [(e.actor, e.workspace, e.data["name"]) for e in created] == [
        (ACTOR_OF_FILE, None, "no-weapons"),
        (ACTOR_OF_FILE, workspace, "card-numbers"),
        (ACTOR_OF_FILE, workspace, "moderated"),
    ]
    audit_count = AuditEvent.objects.count()

    assert _apply(tmp_path, CONFIG) == "No changes.\n"
    assert AuditEvent.objects.count() == audit_count


def test_a_changed_policy_is_updated_and_a_key_left_out_returns_to_its_default(
    tmp_path: Path, workspace: Workspace
) -> None:
    _apply(tmp_path, CONFIG)
    changed = CONFIG.replace("[bomb, assault rifle]", "[bomb, grenade]").replace(
        "    action: flag\n", ""
    )
    assert _apply(tmp_path, changed, "--dry-run").splitlines() == [
        "update guardrail  no-weapons (platform): patterns",
        "update guardrail  card-numbers (acme): action",
        "2 change(s); would change.",
    ]
    _apply(tmp_path, changed)
    assert GuardrailPolicy.objects.get(name="no-weapons").patterns == ["bomb", "grenade"]
    assert GuardrailPolicy.objects.get(name="card-numbers").action == "block"
    updates = AuditEvent.objects.filter(event="guardrail.updated").order_by("id")
    assert [(e.actor, e.data["fields"]) for e in updates] == [
        (ACTOR_OF_FILE, ["patterns"]),
        (ACTOR_OF_FILE, ["action"]),
    ]
    assert _apply(tmp_path, changed) == "No changes.\n"


def test_a_workspace_policy_uses_its_workspaces_own_credential_before_a_platform_one(
    tmp_path: Path, workspace: Workspace
) -> None:
    own = CONFIG.replace(
        "guardrails:\n",
        "  - name: openai-mod\n    workspace: acme\n    provider: openai\n"
        "    secret_env: APPLY_TEST_OPENAI_KEY\nguardrails:\n",
    )
    _apply(tmp_path, own)
    moderated = GuardrailPolicy.objects.get(name="moderated")
    assert moderated.credential == ProviderCredential.objects.get(workspace=workspace)
    assert _apply(tmp_path, own) == "No changes.\n"

    # The workspace's credential goes: the policy moves to the platform one of that name.
    services.credential_update(
        actor=ACTOR,
        credential=ProviderCredential.objects.get(workspace=workspace),
        fields={"name": "renamed"},
    )
    assert _apply(tmp_path, CONFIG).splitlines() == [
        "update guardrail  moderated (acme): credential",
        "1 change(s); changed.",
    ]
    moderated.refresh_from_db()
    assert moderated.credential == ProviderCredential.objects.get(workspace=None)


def test_prune_removes_the_policies_the_file_no_longer_names_only_with_a_guardrails_section(
    tmp_path: Path, workspace: Workspace
) -> None:
    _apply(tmp_path, CONFIG)
    guardrail_create(
        actor=ACTOR,
        workspace=None,
        fields={"name": "from-admin", "kind": "pii"},
    )
    without_section = CONFIG.split("guardrails:\n")[0]
    assert _apply(tmp_path, without_section, "--prune") == "No changes.\n"
    assert GuardrailPolicy.objects.count() == 4

    only_platform = without_section + (
        "guardrails:\n  - name: no-weapons\n    kind: keywords\n"
        "    patterns: [bomb, assault rifle]\n    applies_to: [generations, edits]\n"
    )
    # acme is not a scope this file covers: its policies stay.
    assert _apply(tmp_path, only_platform, "--prune").splitlines() == [
        "delete guardrail  from-admin (platform)",
        "1 change(s); changed.",
    ]
    assert [r[1] for r in _rows()] == ["card-numbers", "moderated", "no-weapons"]
    deleted = AuditEvent.objects.get(event="guardrail.deleted")
    assert (deleted.actor, deleted.data["name"]) == (ACTOR_OF_FILE, "from-admin")


def test_prune_removes_a_stale_moderation_policy_before_the_credential_it_holds(
    tmp_path: Path, workspace: Workspace
) -> None:
    _apply(tmp_path, CONFIG)
    local = "credentials:\n  - name: local-one\n    provider: local\n"
    # Without a guardrails section acme's moderation policy stays, and holds the credential.
    with pytest.raises(CommandError) as error:
        _apply(tmp_path, local, "--prune")
    assert "cannot delete a credential still used by 1 guardrail(s) the file does not remove" in (
        str(error.value)
    )
    assert ProviderCredential.objects.get().name == "openai-mod"

    keep = "guardrails:\n  - name: keep\n    workspace: acme\n    kind: pii\n"
    assert _apply(tmp_path, local + keep, "--prune").splitlines() == [
        "create credential local-one (platform)",
        "create guardrail  keep (acme)",
        "delete guardrail  no-weapons (platform)",
        "delete guardrail  card-numbers (acme)",
        "delete guardrail  moderated (acme)",
        "delete credential openai-mod (platform)",
        "6 change(s); changed.",
    ]
    assert [r[1] for r in _rows()] == ["keep"]
    assert ProviderCredential.objects.get().name == "local-one"


GOOD = "guardrails:\n  - name: fine\n    kind: keywords\n    patterns: [bomb]\n"  # lines 1-4


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "  - name: cards\n    kind: regex\n    patterns: ['card \\d{4}', '(unclosed']\n",
            "line 5: guardrail 'cards' (platform): patterns: Pattern '(unclosed' is not valid RE2",
        ),
        (
            "  - name: words\n    kind: keywords\n    patterns: []\n",
            "line 5: guardrail 'words' (platform): patterns: A keywords policy needs at least "
            "one entry.",
        ),
        (
            "  - name: pii\n    kind: pii\n    detectors: [email, ssn]\n",
            "line 5: guardrail 'pii' (platform): detectors: Unknown detector 'ssn'",
        ),
        (
            "  - name: pii\n    kind: pii\n    applies_to: [images]\n",
            "line 5: guardrail 'pii' (platform): applies_to: Unknown route 'images'",
        ),
        (
            "  - name: pii\n    workspace: nowhere\n    kind: pii\n",
            "line 5: unknown workspace 'nowhere'",
        ),
        (
            "  - name: mod\n    kind: moderation\n    credential: ghost\n",
            "line 5: unknown credential 'ghost' for guardrail 'mod'",
        ),
        (
            "  - name: mod\n    kind: moderation\n",
            "line 5: a moderation guardrail needs 'credential' (an OpenAI one)",
        ),
        (
            "  - name: mod\n    kind: keywords\n    patterns: [a]\n    credential: openai-mod\n",
            "line 5: only a moderation guardrail takes 'credential'",
        ),
        (
            "  - name: mod\n    kind: moderation\n    credential: openai-mod\n"
            "    categories: {violence: 2}\n",
            "line 5: guardrail 'mod' (platform): categories: Each category needs a threshold "
            "between 0 and 1",
        ),
        (
            "  - name: mod\n    kind: moderation\n    credential: openai-mod\n"
            "    timeout_seconds: 60\n",
            "line 5: 'timeout_seconds' must be between 0.1 and 30",
        ),
        ("  - name: x\n    kind: blocklist\n", "line 5: unknown guardrail kind 'blocklist'"),
        (
            "  - name: x\n    kind: pii\n    action: warn\n",
            "line 5: 'action' must be block or flag",
        ),
        ("  - name: No Spaces\n    kind: pii\n", "line 5: a guardrail's 'name' must be letters"),
        ("  - name: x\n    kind: pii\n    regex: a\n", "line 5: unknown field(s) in a guardrail"),
        ("  - name: x\n    kind: pii\n    enabled: 'no'\n", "line 5: 'enabled' must be a bool"),
        ("  - name: fine\n    kind: pii\n", "line 5: guardrail 'fine' is declared twice"),
    ],
)
def test_a_bad_guardrail_changes_nothing_and_names_the_line_and_the_policy(
    tmp_path: Path, workspace: Workspace, text: str, message: str
) -> None:
    credential = (
        "credentials:\n  - name: openai-mod\n    provider: openai\n"
        "    secret_env: APPLY_TEST_OPENAI_KEY\n"
    )
    with pytest.raises(CommandError) as error:
        _apply(tmp_path, GOOD + text + credential)
    assert message in str(error.value)
    assert not GuardrailPolicy.objects.exists()
    assert not ProviderCredential.objects.exists()


def test_a_moderation_policy_needs_an_openai_credential_of_its_own_scope(
    tmp_path: Path, workspace: Workspace
) -> None:
    credentials = (
        "credentials:\n"
        "  - name: gemini\n    provider: gemini\n    secret_env: APPLY_TEST_OPENAI_KEY\n"
        "  - name: acme-openai\n    workspace: acme\n    provider: openai\n"
        "    secret_env: APPLY_TEST_OPENAI_KEY\n"
    )
    cases = {
        "  - name: mod\n    kind: moderation\n    credential: gemini\n": (
            "line 10: guardrail 'mod' (platform): credential: The moderation endpoint is "
            "OpenAI's: use an OpenAI credential."
        ),
        # A platform policy may not use a workspace's credential.
        "  - name: mod\n    kind: moderation\n    credential: acme-openai\n": (
            "line 10: unknown credential 'acme-openai' for guardrail 'mod'"
        ),
    }
    for guardrail, message in cases.items():
        with pytest.raises(CommandError) as error:
            _apply(tmp_path, credentials + "guardrails:\n" + guardrail, "--dry-run")
        assert message in str(error.value)
    assert not ProviderCredential.objects.exists()

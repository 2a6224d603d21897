"""`manage.py apply FILE.yaml`: configuration as code, idempotent, validated before writing."""

import io
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from routing.models import Deployment, ModelAlias, ProviderCredential
from tenants.models import AuditEvent, Workspace

CONFIG = """\
credentials:
  - name: openai-main
    provider: openai
    base_url: https://api.openai.com/
    secret_env: APPLY_TEST_OPENAI_KEY
  - name: acme-azure
    workspace: acme
    provider: azure
    base_url: https://acme.openai.azure.com
    secret_env: APPLY_TEST_AZURE_KEY
    api_version: 2025-04-01-preview
aliases:
  - name: image-prod
    deployments:
      - credential: openai-main
        model: gpt-image-1
      - credential: openai-main
        model: gpt-image-1-mini
        priority: 1
  - name: image-prod
    workspace: acme
    description: Acme's own deployment
    deployments:
      - credential: acme-azure
        model: gpt-image-1
        timeout_seconds: 60
"""


@pytest.fixture(autouse=True)
def _secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APPLY_TEST_OPENAI_KEY", "sk-openai-from-env-1234")
    monkeypatch.setenv("APPLY_TEST_AZURE_KEY", "azure-from-env-5678")


def _apply(tmp_path: Path, text: str, *args: str) -> str:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    out = io.StringIO()
    call_command("apply", str(path), *args, stdout=out)
    return out.getvalue()


def test_applying_creates_everything_and_a_second_run_changes_nothing(
    tmp_path: Path, workspace: Workspace
) -> None:
    output = _apply(tmp_path, CONFIG)
    assert output.splitlines()[-1] == "7 change(s); changed."
    openai = ProviderCredential.objects.get(name="openai-main", workspace=None)
    assert (openai.base_url, openai.secret()) == (
        "https://api.openai.com",
        "sk-openai-from-env-1234",
    )
    azure = ProviderCredential.objects.get(name="acme-azure", workspace=workspace)
    assert azure.api_version == "2025-04-01-preview"
    platform = ModelAlias.objects.get(name="image-prod", workspace=None)
    assert list(platform.deployments.values_list("upstream_model", "priority")) == [
        ("gpt-image-1", 0),
        ("gpt-image-1-mini", 1),
    ]
    own = ModelAlias.objects.get(name="image-prod", workspace=workspace)
    assert own.description == "Acme's own deployment"
    assert own.deployments.get().timeout_seconds == 60
    audit_count = AuditEvent.objects.count()

    assert _apply(tmp_path, CONFIG) == "No changes.\n"
    assert AuditEvent.objects.count() == audit_count


def test_changes_and_prune_touch_only_what_the_file_says(
    tmp_path: Path, workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    _apply(tmp_path, CONFIG)
    ModelAlias.objects.create(name="legacy")  # a platform alias the file does not name
    monkeypatch.setenv("APPLY_TEST_OPENAI_KEY", "sk-rotated-9999")
    mini = "      - credential: openai-main\n        model: gpt-image-1-mini\n        priority: 1\n"
    assert mini in CONFIG
    changed = CONFIG.replace(mini, "")
    dry = _apply(tmp_path, changed, "--dry-run", "--prune")
    assert dry.splitlines() == [
        "update credential openai-main (platform): secret from APPLY_TEST_OPENAI_KEY",
        "delete deployment image-prod → openai-main:gpt-image-1-mini",
        "delete alias      legacy (platform)",
        "3 change(s); would change.",
    ]
    assert ModelAlias.objects.filter(name="legacy").exists()
    assert ProviderCredential.objects.get(name="openai-main").secret() == "sk-openai-from-env-1234"
    _apply(tmp_path, changed, "--prune")
    assert not ModelAlias.objects.filter(name="legacy").exists()
    assert ProviderCredential.objects.get(name="openai-main").secret() == "sk-rotated-9999"
    assert Deployment.objects.filter(alias__workspace=None).count() == 1


GOOD = "credentials:\n  - name: fine\n    provider: local\n"  # lines 1-3, valid


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            GOOD + "  - name: x\n    provider: nope\n    secret_env: APPLY_TEST_OPENAI_KEY\n",
            "line 4: unknown provider 'nope'",
        ),
        (
            GOOD + "  - name: x\n    provider: openai\n    secret: inline\n",
            "line 4: unknown field(s) in a credential: secret",
        ),
        (
            GOOD + "  - name: x\n    provider: openai\n    secret_env: NOT_SET_ANYWHERE_42\n",
            "line 4: environment variable NOT_SET_ANYWHERE_42 is not set",
        ),
        (
            GOOD + "  - name: admin\n    provider: openai\n    secret_env: APPLY_TEST_OPENAI_KEY\n",
            "line 4: 'admin' is a route of the gateway itself",
        ),
        (
            GOOD
            + "aliases:\n  - name: a\n    deployments:\n"
            + "      - credential: ghost\n        model: m\n",
            "line 7: unknown credential 'ghost' for alias 'a'",
        ),
        (
            GOOD + "aliases:\n  - name: a\n    workspace: nowhere\n",
            "line 5: unknown workspace 'nowhere'",
        ),
        (
            GOOD
            + "aliases:\n  - name: a\n    deployments:\n"
            + "      - credential: fine\n        model: m\n        weight: 0\n",
            "line 7: 'weight' must be at least 1",
        ),
        (GOOD + "aliases:\n  - name: a\n  - name: a\n", "line 6: alias 'a' is declared twice"),
        (GOOD + "aliases: [\n", "line 5: not valid YAML"),
        ("- just a list\n", "line 1: the file must be a mapping"),
    ],
)
def test_a_malformed_file_changes_nothing_and_names_the_line(
    tmp_path: Path, db: None, text: str, message: str
) -> None:
    with pytest.raises(CommandError) as error:
        _apply(tmp_path, text)
    assert message in str(error.value)
    assert not ProviderCredential.objects.exists()
    assert not ModelAlias.objects.exists()

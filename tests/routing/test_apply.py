"""`manage.py apply FILE.yaml`: configuration as code, idempotent, validated before writing."""

import io
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from routing.models import Deployment, ModelAlias, ProviderCredential
from tenants.models import AuditEvent, Workspace
from tenants.services import CreatedKey

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
    return _apply_with_warnings(tmp_path, text, *args)[0]


def _apply_with_warnings(tmp_path: Path, text: str, *args: str) -> tuple[str, str]:
    """What `apply` printed: the plan (stdout) and its warnings (stderr)."""
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    out, err = io.StringIO(), io.StringIO()
    call_command("apply", str(path), *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


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
        (
            GOOD + "  - name: x\n    provider: local\n    free: 'true'\n",
            "line 4: 'free' must be a bool in a credential",
        ),
        (
            GOOD
            + "aliases:\n  - name: a\n    deployments:\n"
            + "      - credential: fine\n        model: m\n        free: 1\n",
            "line 7: 'free' must be a bool in a deployment",
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


TENANCY = """\
workspaces:
  - slug: initech
    name: Initech
    teams:
      - slug: tps
        name: TPS Reports
credentials:
  - name: initech-openai
    workspace: initech
    provider: openai
    base_url: https://api.openai.com
    secret_env: APPLY_TEST_OPENAI_KEY
aliases:
  - name: initech-image
    workspace: initech
    deployments:
      - credential: initech-openai
        model: gpt-image-1
prices:
  - provider: openai
    model: initech-model*
    per_image_usd: 0.0125
  - provider: openai
    model: initech-tokens
    text_input_per_mtok_usd: 5
    image_output_per_mtok_usd: 40.5
budgets:
  - workspace: initech
    period: month
    limit_usd: 2.50
  - team: initech/tps
    period: day
    limit_images: 5
  - key: {key}
    period: lifetime
    limit_images: 7
    limit_usd: 1
rate_limits:
  - key: {key}
    rpm: 60
    ipm: 100
"""


def test_workspaces_teams_prices_budgets_and_rate_limits_apply_idempotently(
    tmp_path: Path, api_key: CreatedKey
) -> None:
    from billing.models import Budget, Price
    from tenants.models import ApiKey, Team

    text = TENANCY.format(key=api_key.key.public_id)
    output = _apply(tmp_path, text)
    assert output.splitlines()[-1] == "11 change(s); changed."
    initech = Workspace.objects.get(slug="initech")
    assert Team.objects.get(workspace=initech, slug="tps").name == "TPS Reports"
    assert ModelAlias.objects.get(workspace=initech, name="initech-image").deployments.count() == 1
    assert Price.objects.get(model_pattern="initech-model*").per_image_micro == 12_500
    tokens = Price.objects.get(model_pattern="initech-tokens")
    assert (tokens.text_input_per_mtok_micro, tokens.image_output_per_mtok_micro) == (
        5_000_000,
        40_500_000,
    )
    assert Budget.objects.get(workspace=initech, scope="workspace").limit_micro == 2_500_000
    assert Budget.objects.get(scope="team").limit_images == 5
    key_budget = Budget.objects.get(scope="key")
    assert (key_budget.limit_images, key_budget.limit_micro) == (7, 1_000_000)
    key = ApiKey.objects.get(pk=api_key.key.pk)
    assert (key.rpm_limit, key.ipm_limit) == (60, 100)

    assert _apply(tmp_path, text) == "No changes.\n"
    changed = text.replace("limit_usd: 2.50", "limit_usd: 3").replace("rpm: 60", "rpm: 30")
    assert _apply(tmp_path, changed, "--dry-run").splitlines() == [
        "update budget     workspace initech month",
        f"update rate limit key {api_key.key.public_id}: rpm 30, ipm 100",
        "2 change(s); would change.",
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "budgets:\n  - key: nobody\n    period: day\n    limit_images: 1\n",
            "line 2: unknown key 'nobody'",
        ),
        (
            "budgets:\n  - team: acme/ghosts\n    period: day\n    limit_images: 1\n",
            "line 2: unknown team 'acme/ghosts'",
        ),
        (
            "budgets:\n  - workspace: acme\n    period: week\n    limit_images: 1\n",
            "line 2: 'period' must be day, month or lifetime",
        ),
        (
            "budgets:\n  - workspace: acme\n    period: day\n    limit_usd: 0.0000001\n",
            "line 2: 'limit_usd' must be a non-negative amount in whole micro-dollars",
        ),
        (
            "prices:\n  - provider: openai\n    model: m\n",
            "line 2: a price needs per_image_usd, token rates or megapixel rates",
        ),
        ("rate_limits:\n  - key: nobody\n    rpm: 1\n", "line 2: unknown key 'nobody'"),
    ],
)
def test_bad_tenancy_entries_change_nothing_and_name_the_line(
    tmp_path: Path, workspace: Workspace, text: str, message: str
) -> None:
    from billing.models import Budget

    with pytest.raises(CommandError) as error:
        _apply(tmp_path, GOOD + text)
    assert message.replace("line 2", "line 5") in str(error.value)
    assert not Budget.objects.exists()
    assert not ProviderCredential.objects.exists()


PASSTHROUGH = """\
credentials:
  - name: gemini
    provider: gemini
    secret_env: APPLY_TEST_OPENAI_KEY
    passthrough: true
    passthrough_paths: ["/v1beta/models/"]
  - name: openai-main
    provider: openai
    secret_env: APPLY_TEST_OPENAI_KEY
"""


def test_passthrough_and_its_paths_are_set_from_the_file(tmp_path: Path, db: None) -> None:
    _apply(tmp_path, PASSTHROUGH)
    rows = ProviderCredential.objects.order_by("name").values_list(
        "name", "passthrough_enabled", "passthrough_path_prefixes"
    )
    assert list(rows) == [("gemini", True, ["/v1beta/models/"]), ("openai-main", False, [])]
    closed = PASSTHROUGH.replace("passthrough: true", "passthrough: false")
    assert _apply(tmp_path, closed).splitlines()[-1] == "1 change(s); changed."
    assert not ProviderCredential.objects.get(name="gemini").passthrough_enabled


@pytest.mark.parametrize(
    ("replace", "message"),
    [
        ('["/v1beta/models/"]', "must start with '/'"),
        ("passthrough: true", "sets both 'passthrough' and 'passthrough_enabled'"),
    ],
)
def test_bad_passthrough_settings_change_nothing_and_name_the_line(
    tmp_path: Path, db: None, replace: str, message: str
) -> None:
    text = PASSTHROUGH.replace(
        replace,
        '["v1beta/models/"]'
        if replace.startswith("[")
        else "passthrough: true\n    passthrough_enabled: true",
    )
    with pytest.raises(CommandError) as error:
        _apply(tmp_path, text)
    assert message in str(error.value)
    assert "line 2" in str(error.value)
    assert not ProviderCredential.objects.exists()


NOTES = PASSTHROUGH.replace(
    '    passthrough_paths: ["/v1beta/models/"]\n',
    '    passthrough_paths: ["/v1beta/models/"]\n'
    "    passthrough_notes: |\n"
    "      Generate with `POST /gemini/v1beta/models/{model}:generateContent`.\n"
    "\n"
    "      ```sh\n"
    '      curl "$APERTURE/gemini/v1beta/models/gemini-2.5-flash-image:generateContent"\n'
    "      ```\n",
)
NOTES_TEXT = (
    "Generate with `POST /gemini/v1beta/models/{model}:generateContent`.\n"
    "\n"
    "```sh\n"
    'curl "$APERTURE/gemini/v1beta/models/gemini-2.5-flash-image:generateContent"\n'
    "```\n"
)


def test_passthrough_notes_are_set_from_the_file_and_default_to_empty(
    tmp_path: Path, db: None
) -> None:
    assert NOTES != PASSTHROUGH
    _apply(tmp_path, NOTES)
    rows = ProviderCredential.objects.order_by("name").values_list("name", "passthrough_notes")
    assert list(rows) == [("gemini", NOTES_TEXT), ("openai-main", "")]
    assert _apply(tmp_path, NOTES) == "No changes.\n"

    streamed = NOTES.replace("Generate with `POST", "Stream with `POST").replace(
        "{model}:generateContent`", "{model}:streamGenerateContent`"
    )
    assert _apply(tmp_path, streamed, "--dry-run").splitlines() == [
        "update credential gemini (platform): passthrough_notes",
        "1 change(s); would change.",
    ]
    _apply(tmp_path, streamed)
    gemini = ProviderCredential.objects.get(name="gemini")
    assert gemini.passthrough_notes == NOTES_TEXT.replace(
        "Generate with `POST", "Stream with `POST"
    ).replace("{model}:generateContent`", "{model}:streamGenerateContent`")
    updated = AuditEvent.objects.get(event="credential.updated", target_id=gemini.public_id)
    assert updated.data == {"fields": ["passthrough_notes"]}

    _apply(tmp_path, PASSTHROUGH)  # absent from the file: no notes
    assert ProviderCredential.objects.get(name="gemini").passthrough_notes == ""


def test_passthrough_notes_that_are_not_text_change_nothing_and_name_the_line(
    tmp_path: Path, db: None
) -> None:
    text = PASSTHROUGH.replace(
        "passthrough: true\n", "passthrough: true\n    passthrough_notes: [a]\n"
    )
    with pytest.raises(CommandError) as error:
        _apply(tmp_path, text)
    assert "line 2: 'passthrough_notes' must be a str in a credential" in str(error.value)
    assert not ProviderCredential.objects.exists()


def test_a_budget_limit_below_what_the_period_spent_is_refused_and_nothing_changes(
    tmp_path: Path, api_key: CreatedKey
) -> None:
    from billing.models import Budget

    text = TENANCY.format(key=api_key.key.public_id)
    _apply(tmp_path, text)
    spent = Budget.objects.get(scope="key")
    Budget.objects.filter(pk=spent.pk).update(used_images=6)  # six of its seven images used
    lowered = text.replace("limit_images: 7", "limit_images: 5").replace("rpm: 60", "rpm: 30")
    with pytest.raises(CommandError, match="already spent or holds more than that limit"):
        _apply(tmp_path, lowered)
    spent.refresh_from_db()
    assert (spent.limit_images, spent.used_images) == (7, 6)
    assert _rpm_of(api_key) == 60  # the whole file is one transaction
    raised = text.replace("limit_images: 7", "limit_images: 9")
    _apply(tmp_path, raised)
    spent.refresh_from_db()
    assert (spent.limit_images, spent.used_images) == (9, 6)


def _rpm_of(api_key: CreatedKey) -> int | None:
    from tenants.models import ApiKey

    return ApiKey.objects.get(pk=api_key.key.pk).rpm_limit


FREE = """\
credentials:
  - name: openai-main
    provider: openai
    secret_env: APPLY_TEST_OPENAI_KEY
  - name: lab
    provider: openai
    secret_env: APPLY_TEST_OPENAI_KEY
    free: true
aliases:
  - name: image-prod
    deployments:
      - credential: openai-main
        model: gpt-image-1
      - credential: openai-main
        model: GPT-IMAGE-1
        priority: 1
      - credential: openai-main
        model: house-model
        priority: 2
        free: true
      - credential: lab
        model: lab-model
        priority: 3
"""
UNPRICED_WARNING = (
    "warning: alias image-prod (platform) → credential openai-main (openai): model GPT-IMAGE-1 "
    "has no price and will be refused (model_not_priced); add a price for it, or mark the "
    "deployment or the credential free: true"
)


def test_free_is_set_on_credentials_and_deployments_from_the_file(tmp_path: Path, db: None) -> None:
    _apply(tmp_path, FREE)
    credentials = ProviderCredential.objects.order_by("name").values_list("name", "free")
    assert list(credentials) == [("lab", True), ("openai-main", False)]
    deployments = Deployment.objects.order_by("priority").values_list("upstream_model", "free")
    assert list(deployments) == [
        ("gpt-image-1", False),
        ("GPT-IMAGE-1", False),
        ("house-model", True),
        ("lab-model", False),
    ]

    flipped = (
        FREE.replace("KEY\n    free: true\n", "KEY\n")  # the credential lab
        .replace("priority: 2\n        free: true\n", "priority: 2\n")  # house-model
        .replace("model: GPT-IMAGE-1\n", "model: GPT-IMAGE-1\n        free: true\n")
    )
    assert _apply(tmp_path, flipped, "--dry-run").splitlines() == [
        "update credential lab (platform): free",
        "update deployment image-prod → openai-main:GPT-IMAGE-1: free",
        "update deployment image-prod → openai-main:house-model: free",
        "3 change(s); would change.",
    ]
    _apply(tmp_path, flipped)
    assert not ProviderCredential.objects.get(name="lab").free
    free_models = Deployment.objects.filter(free=True).values_list("upstream_model", flat=True)
    assert list(free_models) == ["GPT-IMAGE-1"]
    assert AuditEvent.objects.filter(event="credential.updated").count() == 1
    assert AuditEvent.objects.filter(event="deployment.updated").count() == 2
    assert _apply(tmp_path, flipped) == "No changes.\n"


def test_apply_warns_about_each_unpriced_deployment_and_still_applies(
    tmp_path: Path, db: None
) -> None:
    out, err = _apply_with_warnings(tmp_path, FREE)
    # Priced (gpt-image-1), free (house-model) and on a free credential (lab-model): no
    # warning. GPT-IMAGE-1 has no price: ids match as the provider matches them, by case.
    assert out.splitlines()[-1] == "7 change(s); changed."
    assert err.splitlines() == [UNPRICED_WARNING]
    assert Deployment.objects.count() == 4

    assert _apply_with_warnings(tmp_path, FREE) == ("No changes.\n", UNPRICED_WARNING + "\n")
    assert _apply_with_warnings(tmp_path, FREE, "--dry-run") == ("No changes.\n", "")

    priced = FREE + (
        "prices:\n  - provider: openai\n    model: GPT-IMAGE-1\n    per_image_usd: 0.04\n"
    )
    assert _apply_with_warnings(tmp_path, priced)[1] == ""


def test_a_disabled_deployment_or_alias_is_not_warned_about(tmp_path: Path, db: None) -> None:
    unpriced = "        model: GPT-IMAGE-1\n        priority: 1\n"
    off = FREE.replace(unpriced, unpriced + "        enabled: false\n")
    assert _apply_with_warnings(tmp_path, off)[1] == ""
    alias_off = FREE.replace("  - name: image-prod\n", "  - name: image-prod\n    enabled: false\n")
    assert _apply_with_warnings(tmp_path, alias_off)[1] == ""


ROUTING = """\
credentials:
  - name: openai-main
    provider: openai
    secret_env: APPLY_TEST_OPENAI_KEY
aliases:
  - name: image-prod
    strategy: weighted
    max_attempts: 3
    retry_after_timeout: true
    deployments:
      - credential: openai-main
        model: gpt-image-1
        weight: 3
        connect_timeout: 1.5
        timeout: 60
      - credential: openai-main
        model: gpt-image-1-mini
  - name: image-plain
    deployments:
      - credential: openai-main
        model: gpt-image-1
"""


def _policies() -> list[tuple[str, str, int, bool]]:
    rows = ModelAlias.objects.order_by("name")
    return list(rows.values_list("name", "strategy", "max_attempts", "retry_after_timeout"))


def _timeouts() -> list[tuple[str, str, int, int, float]]:
    rows = Deployment.objects.order_by("alias__name", "priority", "upstream_model")
    return list(
        rows.values_list(
            "alias__name", "upstream_model", "weight", "timeout_seconds", "connect_timeout_seconds"
        )
    )


def test_the_routing_policy_weights_and_timeouts_are_set_from_the_file(
    tmp_path: Path, db: None
) -> None:
    _apply(tmp_path, ROUTING)
    assert _policies() == [
        ("image-plain", "priority", 2, False),  # the defaults
        ("image-prod", "weighted", 3, True),
    ]
    assert _timeouts() == [
        ("image-plain", "gpt-image-1", 1, 120, 3.0),
        ("image-prod", "gpt-image-1", 3, 60, 1.5),
        ("image-prod", "gpt-image-1-mini", 1, 120, 3.0),
    ]
    assert _apply(tmp_path, ROUTING) == "No changes.\n"

    changed = (
        ROUTING.replace("strategy: weighted", "strategy: priority")
        .replace("max_attempts: 3", "max_attempts: 1")
        .replace("connect_timeout: 1.5", "connect_timeout: 2")
        .replace("timeout: 60", "timeout_seconds: 90")  # the model's name, accepted too
    )
    assert _apply(tmp_path, changed, "--dry-run").splitlines() == [
        "update alias      image-prod (platform): max_attempts, strategy",
        "update deployment image-prod → openai-main:gpt-image-1: "
        "connect_timeout_seconds, timeout_seconds",
        "2 change(s); would change.",
    ]
    _apply(tmp_path, changed)
    assert _policies()[1] == ("image-prod", "priority", 1, True)
    assert _timeouts()[1] == ("image-prod", "gpt-image-1", 3, 90, 2.0)
    alias = AuditEvent.objects.get(event="alias.updated")
    assert alias.data == {"fields": ["max_attempts", "strategy"]}
    deployment = AuditEvent.objects.get(event="deployment.updated")
    assert deployment.data == {"fields": ["connect_timeout_seconds", "timeout_seconds"]}
    assert _apply(tmp_path, changed) == "No changes.\n"


@pytest.mark.parametrize(
    ("replace", "by", "message"),
    [
        (
            "strategy: weighted",
            "strategy: random",
            "line 6: 'strategy' must be priority or weighted",
        ),
        ("max_attempts: 3", "max_attempts: 0", "line 6: 'max_attempts' must be between 1 and 10"),
        ("max_attempts: 3", "max_attempts: 11", "line 6: 'max_attempts' must be between 1 and 10"),
        (
            "max_attempts: 3",
            "max_attempts: '3'",
            "line 6: 'max_attempts' must be a int in an alias",
        ),
        (
            "retry_after_timeout: true",
            "retry_after_timeout: 'yes'",
            "line 6: 'retry_after_timeout' must be a bool in an alias",
        ),
        (
            "connect_timeout: 1.5",
            "connect_timeout: 0.05",
            "line 11: 'connect_timeout' must be between 0.1 and 60",
        ),
        (
            "connect_timeout: 1.5",
            "connect_timeout_seconds: 61",
            "line 11: 'connect_timeout_seconds' must be between 0.1 and 60",
        ),
        (
            "connect_timeout: 1.5",
            "connect_timeout: 3s",
            "line 11: 'connect_timeout' must be a number of seconds in a deployment",
        ),
        (
            "connect_timeout: 1.5",
            "connect_timeout: 1.5\n        connect_timeout_seconds: 2",
            "line 11: a deployment sets both 'connect_timeout' and 'connect_timeout_seconds'",
        ),
        ("timeout: 60", "timeout: 901", "line 11: 'timeout' must be between 1 and 900"),
        ("timeout: 60", "timeout: 1.5", "line 11: 'timeout' must be a int in a deployment"),
        (
            "timeout: 60",
            "timeout: 60\n        timeout_seconds: 60",
            "line 11: a deployment sets both 'timeout' and 'timeout_seconds'",
        ),
        ("weight: 3", "weight: 0", "line 11: 'weight' must be at least 1"),
    ],
)
def test_a_bad_routing_policy_or_timeout_changes_nothing_and_names_the_line(
    tmp_path: Path, db: None, replace: str, by: str, message: str
) -> None:
    assert replace in ROUTING
    with pytest.raises(CommandError) as error:
        _apply(tmp_path, ROUTING.replace(replace, by))
    assert message in str(error.value)
    assert not ProviderCredential.objects.exists()
    assert not ModelAlias.objects.exists()

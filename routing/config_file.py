"""Reading and validating a gateway configuration file (YAML) with line numbers.

The file declares provider credentials and aliases with their deployments, guardrail
policies, platform-wide or for a named workspace, and workspaces, prices, budgets and rate
limits. Validation is complete before anything is written: a malformed file changes nothing
and its error names the line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

import yaml
from django.core.validators import slug_re

from routing.guardrails import services as guardrail_services
from routing.models import GuardrailPolicy, ModelAlias, Provider
from routing.providers.auth import auth_for
from routing.services import RESERVED_CREDENTIAL_NAMES

LINE = "__line__"


class ConfigError(Exception):
    def __init__(self, line: int | None, message: str) -> None:
        super().__init__(f"line {line}: {message}" if line else message)
        self.line = line
        self.message = message


class _LineLoader(yaml.SafeLoader):
    """A safe loader that remembers the line each mapping starts on."""


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> dict[str, Any]:
    mapping = {str(key): value for key, value in loader.construct_mapping(node, deep=True).items()}
    mapping[LINE] = node.start_mark.line + 1
    return mapping


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


@dataclass(frozen=True)
class CredentialSpec:
    line: int
    name: str
    provider: str
    workspace: str | None
    base_url: str
    secret_env: str | None
    secret: str
    api_version: str
    extra_headers: dict[str, str]
    options: dict[str, Any]
    passthrough_enabled: bool
    passthrough_path_prefixes: list[str]
    free: bool
    enabled: bool
    passthrough_notes: str = ""  # Markdown for tenants (GET /v1/passthrough)


@dataclass(frozen=True)
class DeploymentSpec:
    line: int
    credential: str
    model: str
    priority: int
    weight: int
    timeout_seconds: int
    enabled: bool
    options: dict[str, Any] = field(default_factory=dict)
    free: bool = False
    connect_timeout_seconds: float = 3.0


@dataclass(frozen=True)
class AliasSpec:
    line: int
    name: str
    workspace: str | None
    description: str
    enabled: bool
    deployments: list[DeploymentSpec] = field(default_factory=list)
    strategy: str = "priority"
    max_attempts: int = 2
    retry_after_timeout: bool = False


@dataclass(frozen=True)
class TeamSpec:
    line: int
    slug: str
    name: str


@dataclass(frozen=True)
class WorkspaceSpec:
    line: int
    slug: str
    name: str
    status: str
    teams: list[TeamSpec]
    # The markup on provider prices; None: the file leaves it as it is.
    price_multiplier: Decimal | None = None


@dataclass(frozen=True)
class PriceSpec:
    line: int
    provider: str
    model: str
    size: str
    quality: str
    amounts: dict[str, int | None]  # Price field name → micro-USD
    tier: str = ""


@dataclass(frozen=True)
class BudgetSpec:
    line: int
    scope: str  # workspace | team | key
    workspace: str | None
    team: str | None
    key: str | None
    period: str
    limit_micro: int | None
    limit_images: int | None


@dataclass(frozen=True)
class RateLimitSpec:
    line: int
    key: str
    rpm: int | None
    ipm: int | None


@dataclass(frozen=True)
class GuardrailSpec:
    """A guardrail policy; what the file leaves out takes the model's default."""

    line: int
    name: str
    workspace: str | None
    kind: str
    action: str
    applies_to: list[Any]
    patterns: list[Any]
    detectors: list[Any]
    credential: str | None  # a credential's name: the workspace's own, else a platform one
    moderation_model: str
    categories: dict[str, Any]
    check_prompt: bool
    check_output: bool
    allow_partial: bool
    charge_withheld: bool
    timeout_seconds: float
    fail_open: bool
    enabled: bool

    def policy_fields(self) -> dict[str, Any]:
        """The policy's own fields as the guardrail services take them (not its credential)."""
        return {
            "name": self.name,
            "kind": self.kind,
            "action": self.action,
            "applies_to": self.applies_to,
            "patterns": self.patterns,
            "detectors": self.detectors,
            "moderation_model": self.moderation_model,
            "categories": self.categories,
            "check_prompt": self.check_prompt,
            "check_output": self.check_output,
            "allow_partial": self.allow_partial,
            "charge_withheld": self.charge_withheld,
            "timeout_seconds": self.timeout_seconds,
            "fail_open": self.fail_open,
            "enabled": self.enabled,
        }


@dataclass(frozen=True)
class ConfigSpec:
    credentials: list[CredentialSpec]
    aliases: list[AliasSpec]
    workspaces: list[WorkspaceSpec] = field(default_factory=list)
    prices: list[PriceSpec] = field(default_factory=list)
    budgets: list[BudgetSpec] = field(default_factory=list)
    rate_limits: list[RateLimitSpec] = field(default_factory=list)
    # None: the file has no `guardrails:` section, so --prune leaves every policy alone.
    guardrails: list[GuardrailSpec] | None = None


def _check_keys(item: dict[str, Any], allowed: set[str], what: str) -> None:
    unknown = sorted(set(item) - allowed - {LINE})
    if unknown:
        raise ConfigError(item.get(LINE), f"unknown field(s) in {what}: {', '.join(unknown)}")


def _get(item: dict[str, Any], key: str, kind: type, default: Any = ..., what: str = "") -> Any:
    if key not in item or item[key] is None:
        if default is ...:
            raise ConfigError(item.get(LINE), f"{what} needs '{key}'")
        return default
    value = item[key]
    if (kind is int and isinstance(value, bool)) or not isinstance(value, kind):
        raise ConfigError(item.get(LINE), f"'{key}' must be a {kind.__name__} in {what}")
    return value


def _either(
    item: dict[str, Any], key: str, synonym: str, kind: type, default: Any, what: str
) -> Any:
    """A field that may be written under either of two names, but not both."""
    if key in item and synonym in item:
        raise ConfigError(item.get(LINE), f"{what} sets both '{key}' and '{synonym}'")
    return _get(item, synonym if synonym in item else key, kind, default, what)


def _within(item: dict[str, Any], key: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ConfigError(item.get(LINE), f"'{key}' must be between {low:g} and {high:g}")


def _seconds(
    item: dict[str, Any], key: str, synonym: str, default: float, what: str
) -> tuple[str, float]:
    """A duration in seconds (a whole or decimal number) under either of two names, and the
    name the file used."""
    if key in item and synonym in item:
        raise ConfigError(item.get(LINE), f"{what} sets both '{key}' and '{synonym}'")
    used = synonym if synonym in item else key
    value = item.get(used)
    if value is None:
        return used, default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(item.get(LINE), f"'{used}' must be a number of seconds in {what}")
    return used, float(value)


def _list_of_mappings(document: dict[str, Any], key: str) -> list[dict[str, Any]]:
    items = document.get(key) or []
    if not isinstance(items, list):
        raise ConfigError(document.get(LINE), f"'{key}' must be a list")
    for item in items:
        if not isinstance(item, dict):
            raise ConfigError(document.get(LINE), f"every entry of '{key}' must be a mapping")
    return items


def _credential(item: dict[str, Any]) -> CredentialSpec:
    what = "a credential"
    _check_keys(
        item,
        {
            "name",
            "provider",
            "workspace",
            "base_url",
            "secret_env",
            "api_version",
            "extra_headers",
            "options",
            "passthrough",
            "passthrough_paths",
            "passthrough_notes",
            # The model's field names, accepted too (files written before the short names).
            "passthrough_enabled",
            "passthrough_path_prefixes",
            "free",
            "enabled",
        },
        what,
    )
    line = item[LINE]
    provider = _get(item, "provider", str, what=what)
    if provider not in Provider.values:
        raise ConfigError(
            line, f"unknown provider '{provider}'; known: {', '.join(Provider.values)}"
        )
    secret_env = _get(item, "secret_env", str, None, what)
    secret = ""
    if secret_env:
        if secret_env not in os.environ:
            raise ConfigError(line, f"environment variable {secret_env} is not set")
        secret = os.environ[secret_env]
    elif provider != Provider.LOCAL:
        raise ConfigError(line, "a credential needs 'secret_env' (the secret is never inline)")
    name = _get(item, "name", str, what=what)
    if name.lower() in RESERVED_CREDENTIAL_NAMES:
        raise ConfigError(line, f"'{name}' is a route of the gateway itself; choose another name")
    headers = _get(item, "extra_headers", dict, {}, what)
    headers.pop(LINE, None)
    options = _without_lines(_get(item, "options", dict, {}, what))
    passthrough = _either(item, "passthrough", "passthrough_enabled", bool, False, what)
    prefixes = _either(item, "passthrough_paths", "passthrough_path_prefixes", list, [], what)
    for prefix in prefixes:
        if not isinstance(prefix, str) or not prefix.startswith("/"):
            raise ConfigError(line, f"every passthrough path must start with '/': {prefix!r}")
    return CredentialSpec(
        line=line,
        name=name,
        provider=provider,
        workspace=_get(item, "workspace", str, None, what),
        base_url=(
            _get(item, "base_url", str, "", what) or auth_for(provider).default_base_url
        ).rstrip("/"),
        secret_env=secret_env,
        secret=secret,
        api_version=_get(item, "api_version", str, "", what),
        extra_headers={str(k): str(v) for k, v in headers.items()},
        options=options,
        passthrough_enabled=passthrough,
        passthrough_path_prefixes=[str(p) for p in prefixes],
        free=_get(item, "free", bool, False, what),
        enabled=_get(item, "enabled", bool, True, what),
        passthrough_notes=_get(item, "passthrough_notes", str, "", what),
    )


def _deployment(item: dict[str, Any]) -> DeploymentSpec:
    what = "a deployment"
    _check_keys(
        item,
        {
            "credential",
            "model",
            "priority",
            "weight",
            "timeout",
            "connect_timeout",
            # The model's field names, accepted too (files written before the short names).
            "timeout_seconds",
            "connect_timeout_seconds",
            "enabled",
            "options",
            "free",
        },
        what,
    )
    timeout_key = "timeout_seconds" if "timeout_seconds" in item else "timeout"
    connect_key, connect_timeout = _seconds(
        item, "connect_timeout", "connect_timeout_seconds", 3.0, what
    )
    spec = DeploymentSpec(
        line=item[LINE],
        credential=_get(item, "credential", str, what=what),
        model=_get(item, "model", str, what=what),
        priority=_get(item, "priority", int, 0, what),
        weight=_get(item, "weight", int, 1, what),
        timeout_seconds=_either(item, "timeout", "timeout_seconds", int, 120, what),
        enabled=_get(item, "enabled", bool, True, what),
        options=_without_lines(_get(item, "options", dict, {}, what)),
        free=_get(item, "free", bool, False, what),
        connect_timeout_seconds=connect_timeout,
    )
    if spec.weight < 1:
        raise ConfigError(spec.line, "'weight' must be at least 1")
    _within(item, timeout_key, spec.timeout_seconds, 1, 900)
    _within(item, connect_key, spec.connect_timeout_seconds, 0.1, 60)
    return spec


def _alias(item: dict[str, Any]) -> AliasSpec:
    what = "an alias"
    _check_keys(
        item,
        {
            "name",
            "workspace",
            "description",
            "enabled",
            "deployments",
            "strategy",
            "max_attempts",
            "retry_after_timeout",
        },
        what,
    )
    deployments = _list_of_mappings(item, "deployments")
    strategy = _get(item, "strategy", str, ModelAlias.Strategy.PRIORITY.value, what)
    if strategy not in ModelAlias.Strategy.values:
        raise ConfigError(
            item[LINE], f"'strategy' must be {' or '.join(ModelAlias.Strategy.values)}"
        )
    max_attempts = _get(item, "max_attempts", int, 2, what)
    _within(item, "max_attempts", max_attempts, 1, 10)
    return AliasSpec(
        line=item[LINE],
        name=_get(item, "name", str, what=what),
        workspace=_get(item, "workspace", str, None, what),
        description=_get(item, "description", str, "", what),
        enabled=_get(item, "enabled", bool, True, what),
        deployments=[_deployment(d) for d in deployments],
        strategy=strategy,
        max_attempts=max_attempts,
        retry_after_timeout=_get(item, "retry_after_timeout", bool, False, what),
    )


def _micro_usd(item: dict[str, Any], key: str) -> int | None:
    """A USD amount from the file as exact integer micro-USD (no float rounding)."""
    value = item.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(item.get(LINE), f"'{key}' must be a number of US dollars")
    try:
        micro = Decimal(str(value)) * 1_000_000
    except InvalidOperation:
        raise ConfigError(item.get(LINE), f"'{key}' must be a number of US dollars") from None
    if micro != micro.to_integral_value() or micro < 0:
        raise ConfigError(
            item.get(LINE), f"'{key}' must be a non-negative amount in whole micro-dollars"
        )
    return int(micro)


def _multiplier(item: dict[str, Any]) -> Decimal | None:
    """`price_multiplier`: from 0.0001 to 100, at most four decimal places (1.25: +25%)."""
    value = item.get("price_multiplier")
    if value is None:
        return None
    problem = "'price_multiplier' must be a number from 0.0001 to 100, at most four decimals"
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(item.get(LINE), problem)
    try:
        multiplier = Decimal(str(value))
    except InvalidOperation:
        raise ConfigError(item.get(LINE), problem) from None
    if not multiplier.is_finite() or not Decimal("0.0001") <= multiplier <= 100:
        raise ConfigError(item.get(LINE), problem)
    if multiplier != multiplier.quantize(Decimal("0.0001")):
        raise ConfigError(item.get(LINE), problem)
    return multiplier


def _workspace(item: dict[str, Any]) -> WorkspaceSpec:
    what = "a workspace"
    _check_keys(item, {"slug", "name", "status", "teams", "price_multiplier"}, what)
    status = _get(item, "status", str, "active", what)
    if status not in ("active", "suspended"):
        raise ConfigError(item[LINE], "'status' must be active or suspended")
    teams = []
    for team in _list_of_mappings(item, "teams"):
        _check_keys(team, {"slug", "name"}, "a team")
        slug = _get(team, "slug", str, what="a team")
        teams.append(TeamSpec(team[LINE], slug, _get(team, "name", str, slug, "a team")))
    slug = _get(item, "slug", str, what=what)
    return WorkspaceSpec(
        item[LINE],
        slug,
        _get(item, "name", str, slug, what),
        status,
        teams,
        price_multiplier=_multiplier(item),
    )


_PRICE_AMOUNTS = {
    "per_image_usd": "per_image_micro",
    "text_input_per_mtok_usd": "text_input_per_mtok_micro",
    "image_input_per_mtok_usd": "image_input_per_mtok_micro",
    "image_output_per_mtok_usd": "image_output_per_mtok_micro",
    "first_megapixel_usd": "first_megapixel_micro",
    "extra_megapixel_usd": "extra_megapixel_micro",
    "per_input_image_usd": "per_input_image_micro",
    "minimum_usd": "minimum_micro",
}
PRICE_TIERS = ("", "512", "1K", "2K", "4K")


def _price(item: dict[str, Any]) -> PriceSpec:
    what = "a price"
    _check_keys(item, {"provider", "model", "size", "quality", "tier", *_PRICE_AMOUNTS}, what)
    provider = _get(item, "provider", str, what=what)
    if provider not in Provider.values:
        raise ConfigError(item[LINE], f"unknown provider '{provider}'")
    amounts = {field: _micro_usd(item, key) for key, field in _PRICE_AMOUNTS.items()}
    if all(v is None for v in amounts.values()):
        raise ConfigError(item[LINE], "a price needs per_image_usd, token rates or megapixel rates")
    tier = _get(item, "tier", str, "", what)
    if tier not in PRICE_TIERS:
        raise ConfigError(item[LINE], f"unknown tier '{tier}'; known: 512, 1K, 2K, 4K")
    return PriceSpec(
        line=item[LINE],
        provider=provider,
        model=_get(item, "model", str, what=what),
        size=_get(item, "size", str, "", what),
        quality=_get(item, "quality", str, "", what),
        amounts=amounts,
        tier=tier,
    )


def _budget(item: dict[str, Any]) -> BudgetSpec:
    what = "a budget"
    _check_keys(item, {"key", "team", "workspace", "period", "limit_usd", "limit_images"}, what)
    key = _get(item, "key", str, None, what)
    team = _get(item, "team", str, None, what)
    workspace = _get(item, "workspace", str, None, what)
    if team and "/" in team and workspace is None:
        workspace, team = team.split("/", 1)
    if key:
        scope = "key"
    elif team:
        scope = "team"
        if workspace is None:
            raise ConfigError(
                item[LINE], "a team budget needs 'workspace' (or team: <workspace>/<team>)"
            )
    elif workspace:
        scope = "workspace"
    else:
        raise ConfigError(item[LINE], "a budget needs 'key', 'team' or 'workspace'")
    period = _get(item, "period", str, what=what)
    if period not in ("day", "month", "lifetime"):
        raise ConfigError(item[LINE], "'period' must be day, month or lifetime")
    limit_images = _get(item, "limit_images", int, None, what)
    limit_micro = _micro_usd(item, "limit_usd")
    if limit_images is None and limit_micro is None:
        raise ConfigError(item[LINE], "a budget needs limit_usd and/or limit_images")
    return BudgetSpec(item[LINE], scope, workspace, team, key, period, limit_micro, limit_images)


def _rate_limit(item: dict[str, Any]) -> RateLimitSpec:
    what = "a rate limit"
    _check_keys(item, {"key", "rpm", "ipm"}, what)
    spec = RateLimitSpec(
        item[LINE],
        _get(item, "key", str, what=what),
        _get(item, "rpm", int, None, what),
        _get(item, "ipm", int, None, what),
    )
    if spec.rpm is None and spec.ipm is None:
        raise ConfigError(item[LINE], "a rate limit needs rpm and/or ipm")
    return spec


def _policy_default(name: str) -> Any:
    return GuardrailPolicy._meta.get_field(name).get_default()  # type: ignore[union-attr]


def _guardrail(item: dict[str, Any]) -> GuardrailSpec:
    """A guardrail's shape; what its kind needs (valid patterns, known routes and detectors,
    an OpenAI credential) is checked by the policy rules when the file is planned."""
    what = "a guardrail"
    _check_keys(item, {"workspace", *guardrail_services.FIELDS}, what)
    line = item[LINE]
    name = _get(item, "name", str, what=what)
    if len(name) > 64 or not slug_re.match(name):
        raise ConfigError(
            line, "a guardrail's 'name' must be letters, digits, - and _ (at most 64)"
        )
    kind = _get(item, "kind", str, what=what)
    if kind not in GuardrailPolicy.Kind.values:
        raise ConfigError(
            line,
            f"unknown guardrail kind '{kind}'; known: {', '.join(GuardrailPolicy.Kind.values)}",
        )
    action = _get(item, "action", str, GuardrailPolicy.Action.BLOCK.value, what)
    if action not in GuardrailPolicy.Action.values:
        raise ConfigError(line, f"'action' must be {' or '.join(GuardrailPolicy.Action.values)}")
    credential = _get(item, "credential", str, None, what)
    moderation = kind == GuardrailPolicy.Kind.MODERATION
    if moderation and credential is None:
        raise ConfigError(line, "a moderation guardrail needs 'credential' (an OpenAI one)")
    if credential is not None and not moderation:
        raise ConfigError(line, "only a moderation guardrail takes 'credential'")
    timeout = item.get("timeout_seconds")
    if timeout is None:
        timeout = _policy_default("timeout_seconds")
    elif isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise ConfigError(line, f"'timeout_seconds' must be a number of seconds in {what}")
    _within(item, "timeout_seconds", float(timeout), 0.1, 30)
    moderation_model = _get(item, "moderation_model", str, None, what)
    return GuardrailSpec(
        line=line,
        name=name,
        workspace=_get(item, "workspace", str, None, what),
        kind=kind,
        action=action,
        applies_to=_get(item, "applies_to", list, [], what),
        patterns=_get(item, "patterns", list, [], what),
        detectors=_get(item, "detectors", list, [], what),
        credential=credential,
        moderation_model=moderation_model or _policy_default("moderation_model"),
        categories=_without_lines(_get(item, "categories", dict, {}, what)),
        check_prompt=_get(item, "check_prompt", bool, _policy_default("check_prompt"), what),
        check_output=_get(item, "check_output", bool, _policy_default("check_output"), what),
        allow_partial=_get(item, "allow_partial", bool, _policy_default("allow_partial"), what),
        charge_withheld=_get(
            item, "charge_withheld", bool, _policy_default("charge_withheld"), what
        ),
        timeout_seconds=float(timeout),
        fail_open=_get(item, "fail_open", bool, _policy_default("fail_open"), what),
        enabled=_get(item, "enabled", bool, _policy_default("enabled"), what),
    )


def _no_duplicates(items: list[Any], what: str) -> None:
    seen: set[tuple[str | None, str]] = set()
    for item in items:
        key = (item.workspace, item.name)
        if key in seen:
            raise ConfigError(item.line, f"{what} '{item.name}' is declared twice in this scope")
        seen.add(key)


def parse_config(text: str) -> ConfigSpec:
    try:
        document = yaml.load(text, Loader=_LineLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        raise ConfigError(
            mark.line + 1 if mark else None, f"not valid YAML: {exc.problem}"
        ) from None
    if document is None:
        document = {LINE: 1}
    if not isinstance(document, dict):
        raise ConfigError(1, "the file must be a mapping (workspaces, credentials, aliases, …)")
    _check_keys(
        document,
        {"workspaces", "credentials", "aliases", "prices", "budgets", "rate_limits", "guardrails"},
        "the file",
    )
    spec = ConfigSpec(
        credentials=[_credential(c) for c in _list_of_mappings(document, "credentials")],
        aliases=[_alias(a) for a in _list_of_mappings(document, "aliases")],
        workspaces=[_workspace(w) for w in _list_of_mappings(document, "workspaces")],
        prices=[_price(p) for p in _list_of_mappings(document, "prices")],
        budgets=[_budget(b) for b in _list_of_mappings(document, "budgets")],
        rate_limits=[_rate_limit(r) for r in _list_of_mappings(document, "rate_limits")],
        guardrails=(
            [_guardrail(g) for g in _list_of_mappings(document, "guardrails")]
            if "guardrails" in document
            else None
        ),
    )
    _no_duplicates(spec.credentials, "credential")
    _no_duplicates(spec.aliases, "alias")
    _no_duplicates(spec.guardrails or [], "guardrail")
    return spec


def _without_lines(value: Any) -> Any:
    """A mapping from the file as plain data: the loader's line markers removed."""
    if isinstance(value, dict):
        return {k: _without_lines(v) for k, v in value.items() if k != LINE}
    if isinstance(value, list):
        return [_without_lines(v) for v in value]
    return value

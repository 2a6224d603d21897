"""Reading and validating a gateway configuration file (YAML) with line numbers.

The file declares provider credentials and aliases with their deployments, platform-wide or
for a named workspace. Validation is complete before anything is written: a malformed file
changes nothing and its error names the line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import yaml

from routing.models import Provider
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
    passthrough_enabled: bool
    passthrough_path_prefixes: list[str]
    enabled: bool


@dataclass(frozen=True)
class DeploymentSpec:
    line: int
    credential: str
    model: str
    priority: int
    weight: int
    timeout_seconds: int
    enabled: bool


@dataclass(frozen=True)
class AliasSpec:
    line: int
    name: str
    workspace: str | None
    description: str
    enabled: bool
    deployments: list[DeploymentSpec] = field(default_factory=list)


@dataclass(frozen=True)
class ConfigSpec:
    credentials: list[CredentialSpec]
    aliases: list[AliasSpec]


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
            "passthrough_enabled",
            "passthrough_path_prefixes",
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
    prefixes = _get(item, "passthrough_path_prefixes", list, [], what)
    return CredentialSpec(
        line=line,
        name=name,
        provider=provider,
        workspace=_get(item, "workspace", str, None, what),
        base_url=_get(item, "base_url", str, "", what).rstrip("/"),
        secret_env=secret_env,
        secret=secret,
        api_version=_get(item, "api_version", str, "", what),
        extra_headers={str(k): str(v) for k, v in headers.items()},
        passthrough_enabled=_get(item, "passthrough_enabled", bool, False, what),
        passthrough_path_prefixes=[str(p) for p in prefixes],
        enabled=_get(item, "enabled", bool, True, what),
    )


def _deployment(item: dict[str, Any]) -> DeploymentSpec:
    what = "a deployment"
    _check_keys(
        item, {"credential", "model", "priority", "weight", "timeout_seconds", "enabled"}, what
    )
    spec = DeploymentSpec(
        line=item[LINE],
        credential=_get(item, "credential", str, what=what),
        model=_get(item, "model", str, what=what),
        priority=_get(item, "priority", int, 0, what),
        weight=_get(item, "weight", int, 1, what),
        timeout_seconds=_get(item, "timeout_seconds", int, 120, what),
        enabled=_get(item, "enabled", bool, True, what),
    )
    if spec.weight < 1:
        raise ConfigError(spec.line, "'weight' must be at least 1")
    if not 1 <= spec.timeout_seconds <= 900:
        raise ConfigError(spec.line, "'timeout_seconds' must be between 1 and 900")
    return spec


def _alias(item: dict[str, Any]) -> AliasSpec:
    what = "an alias"
    _check_keys(item, {"name", "workspace", "description", "enabled", "deployments"}, what)
    deployments = _list_of_mappings(item, "deployments")
    return AliasSpec(
        line=item[LINE],
        name=_get(item, "name", str, what=what),
        workspace=_get(item, "workspace", str, None, what),
        description=_get(item, "description", str, "", what),
        enabled=_get(item, "enabled", bool, True, what),
        deployments=[_deployment(d) for d in deployments],
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
        raise ConfigError(1, "the file must be a mapping with 'credentials' and/or 'aliases'")
    _check_keys(document, {"credentials", "aliases"}, "the file")
    spec = ConfigSpec(
        credentials=[_credential(c) for c in _list_of_mappings(document, "credentials")],
        aliases=[_alias(a) for a in _list_of_mappings(document, "aliases")],
    )
    _no_duplicates(spec.credentials, "credential")
    _no_duplicates(spec.aliases, "alias")
    return spec

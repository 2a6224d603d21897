"""Guardrail policies as the request path uses them: checked when saved, compiled once per
process, and reloaded on every process as soon as any policy changes (aperture/config_cache.py,
invalidated by routing/signals.py)."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.db.models import Q

from aperture import config_cache
from routing.guardrails import matching
from routing.models import GuardrailPolicy, Provider, ProviderCredential
from routing.providers.auth import auth_for
from routing.providers.base import Target

logger = logging.getLogger(__name__)

Kind, Action, Route = GuardrailPolicy.Kind, GuardrailPolicy.Action, GuardrailPolicy.Route
ALL_ROUTES = frozenset(Route.values)
MODERATION_PROVIDERS = frozenset({Provider.OPENAI})


class PolicyInvalid(ValueError):
    """A policy that cannot be saved: `field` is the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Moderation:
    target: Target
    thresholds: dict[str, float]
    on_prompt: bool
    on_output: bool
    fail_open: bool
    allow_partial: bool
    charge_withheld: bool
    available: bool = True  # False: its credential is disabled, so it gives no verdict


@dataclass(frozen=True)
class ActivePolicy:
    public_id: str
    name: str
    scope: str  # "platform" or "workspace"
    kind: str
    action: str
    routes: frozenset[str]
    find: matching.Finder | None  # keywords, regex, pii
    moderation: Moderation | None

    def applies(self, route: str) -> bool:
        return route in self.routes

    def note(self, action: str, on: str, matched: str = "") -> dict[str, str]:
        """What the usage record and the audit trail say of this policy (never the prompt)."""
        entry = {"policy": self.name, "scope": self.scope, "action": action, "on": on}
        if matched:
            entry["matched"] = matched
        return entry


# --- checking a policy before it is saved ----------------------------------------------------


def _routes(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(r, str) for r in value):
        raise PolicyInvalid("applies_to", "applies_to must be a list of route names.")
    unknown = sorted(set(value) - ALL_ROUTES)
    if unknown:
        raise PolicyInvalid(
            "applies_to",
            f"Unknown route {unknown[0]!r}; known: {', '.join(sorted(ALL_ROUTES))}.",
        )
    return sorted(set(value))


def _thresholds(value: Any) -> dict[str, float]:
    if not isinstance(value, Mapping):
        raise PolicyInvalid("categories", "categories must map category names to thresholds.")
    thresholds = {}
    for name, limit in value.items():
        if (
            not isinstance(name, str)
            or not name
            or isinstance(limit, bool)
            or not isinstance(limit, int | float)
            or not 0 <= limit <= 1
        ):
            raise PolicyInvalid(
                "categories", "Each category needs a threshold between 0 and 1, e.g. 0.5."
            )
        thresholds[name] = float(limit)
    return thresholds


_SLUG = re.compile(r"[-a-zA-Z0-9_]{1,64}")


def check(policy: GuardrailPolicy) -> None:
    """Refuse (PolicyInvalid) what could not be enforced as written; normalises lists."""
    if not isinstance(policy.name, str) or not _SLUG.fullmatch(policy.name):
        raise PolicyInvalid("name", "name must be 1 to 64 letters, digits, hyphens or underscores.")
    policy.applies_to = _routes(policy.applies_to or [])
    try:
        if policy.kind == Kind.KEYWORDS:
            matching.keywords_finder(policy.patterns or [])
        elif policy.kind == Kind.REGEX:
            matching.regex_finder(policy.patterns or [])
        elif policy.kind == Kind.PII:
            policy.detectors = matching.clean_detectors(policy.detectors or [])
    except matching.PatternInvalid as error:
        field = "detectors" if policy.kind == Kind.PII else "patterns"
        raise PolicyInvalid(field, str(error)) from None
    if policy.kind not in Kind.values:
        raise PolicyInvalid("kind", f"kind must be one of {', '.join(Kind.values)}.")
    if policy.action not in Action.values:
        raise PolicyInvalid("action", f"action must be one of {', '.join(Action.values)}.")
    if policy.kind != Kind.MODERATION:
        if policy.credential_id is not None:
            raise PolicyInvalid("credential", "Only a moderation policy calls a credential.")
        if policy.check_output:
            raise PolicyInvalid("check_output", "Only a moderation policy checks images.")
        policy.check_prompt = True
        return
    _check_moderation(policy)


def _check_moderation(policy: GuardrailPolicy) -> None:
    credential: ProviderCredential | None = policy.credential
    if credential is None:
        raise PolicyInvalid("credential", "A moderation policy needs an OpenAI credential.")
    if credential.provider not in MODERATION_PROVIDERS:
        raise PolicyInvalid(
            "credential", "The moderation endpoint is OpenAI's: use an OpenAI credential."
        )
    if credential.workspace_id is not None and credential.workspace_id != policy.workspace_id:
        raise PolicyInvalid("credential", "The credential belongs to another workspace.")
    if not (policy.check_prompt or policy.check_output):
        raise PolicyInvalid("check_prompt", "Check the prompt, the output, or both.")
    if not policy.moderation_model.strip():
        raise PolicyInvalid("moderation_model", "Name the moderation model.")
    if not 0.1 <= policy.timeout_seconds <= 30:
        raise PolicyInvalid("timeout_seconds", "timeout_seconds must be from 0.1 to 30.")
    policy.categories = _thresholds(policy.categories or {})
    if policy.patterns or policy.detectors:
        raise PolicyInvalid("patterns", "A moderation policy takes categories, not patterns.")


# --- the compiled policies of one workspace ------------------------------------------------


def _moderation(policy: GuardrailPolicy) -> Moderation:
    credential = policy.credential
    assert credential is not None
    return Moderation(
        target=Target(
            provider=credential.provider,
            credential_name=credential.name,
            base_url=(credential.base_url or auth_for(credential.provider).default_base_url),
            secret=credential.secret(),
            upstream_model=policy.moderation_model,
            timeout_seconds=policy.timeout_seconds,
            connect_timeout_seconds=min(policy.timeout_seconds, 3.0),
            extra_headers=dict(credential.extra_headers or {}),
            guarded=credential.workspace_id is not None,
        ),
        thresholds=dict(policy.categories or {}),
        on_prompt=policy.check_prompt,
        on_output=policy.check_output,
        fail_open=policy.fail_open,
        allow_partial=policy.allow_partial,
        charge_withheld=policy.charge_withheld,
        available=credential.enabled,
    )


def compile_policy(policy: GuardrailPolicy) -> ActivePolicy:
    find: matching.Finder | None = None
    if policy.kind == Kind.KEYWORDS:
        find = matching.keywords_finder(policy.patterns)
    elif policy.kind == Kind.REGEX:
        find = matching.regex_finder(policy.patterns)
    elif policy.kind == Kind.PII:
        find = matching.pii_finder(policy.detectors)
    return ActivePolicy(
        public_id=policy.public_id,
        name=policy.name,
        scope="platform" if policy.workspace_id is None else "workspace",
        kind=policy.kind,
        action=policy.action,
        routes=frozenset(policy.applies_to or ALL_ROUTES),
        find=find,
        moderation=_moderation(policy) if policy.kind == Kind.MODERATION else None,
    )


def _load(workspace_id: int) -> tuple[ActivePolicy, ...]:
    rows = GuardrailPolicy.objects.filter(
        Q(workspace__isnull=True) | Q(workspace_id=workspace_id), enabled=True
    ).select_related("credential")
    compiled = []
    for row in rows:
        if row.credential is not None and not row.credential.enabled:
            # Applied still: a disabled credential gives no verdict, so the policy's
            # fail-open or fail-closed choice decides.
            logger.error("guardrail %s: its credential is disabled", row.name)
        try:
            compiled.append(compile_policy(row))
        except Exception:  # a row written around the services: one policy lost, not every request
            logger.exception("guardrail %s cannot be compiled; not applied", row.name)
    # Platform policies first: an operator's rule is reported before a tenant's.
    return tuple(sorted(compiled, key=lambda p: (p.scope != "platform", p.name)))


def policies_for(workspace_id: int) -> tuple[ActivePolicy, ...]:
    """The platform's enabled policies and the workspace's, compiled."""
    return config_cache.cached(("guardrails", workspace_id), lambda: _load(workspace_id))

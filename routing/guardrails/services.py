"""Writes of guardrail policies, by operators (admin, `manage.py apply`) and by tenants
(`/api/v1/guardrails`): each checked before it is saved, and audited."""

from __future__ import annotations

from typing import Any

from django.db import IntegrityError, transaction

from aperture.errors import Conflict, InvalidRequest
from routing.guardrails.matching import MAX_REGEX_PROGRAM, PatternInvalid, regex_size
from routing.guardrails.policies import PolicyInvalid, check
from routing.models import GuardrailPolicy
from tenants.audit import audit_record
from tenants.models import Workspace

# What a caller may set; the rest (public id, workspace, timestamps) is the gateway's.
FIELDS = (
    "name",
    "kind",
    "action",
    "applies_to",
    "patterns",
    "detectors",
    "credential",
    "moderation_model",
    "categories",
    "check_prompt",
    "check_output",
    "allow_partial",
    "charge_withheld",
    "timeout_seconds",
    "fail_open",
    "enabled",
)


# A workspace's own policies run on every request of its keys, in the same workers as every
# other tenant's: their number and their regular expressions' compiled size are bounded.
MAX_WORKSPACE_POLICIES = 50
MAX_WORKSPACE_REGEX_PROGRAM = 2 * MAX_REGEX_PROGRAM


def _checked(policy: GuardrailPolicy) -> None:
    try:
        check(policy)
    except PolicyInvalid as error:
        raise InvalidRequest(error.message, param=error.field) from None
    if policy.workspace_id is not None:
        _within_workspace_bounds(policy)


def _stored_size(patterns: object) -> int:
    try:
        return regex_size(patterns if isinstance(patterns, list) else [])
    except PatternInvalid:
        return 0  # not compiled, not run (policies.py)


def _within_workspace_bounds(policy: GuardrailPolicy) -> None:
    others = GuardrailPolicy.objects.filter(workspace=policy.workspace).exclude(pk=policy.pk)
    if not policy.pk and others.count() >= MAX_WORKSPACE_POLICIES:
        raise InvalidRequest(
            f"A workspace may have {MAX_WORKSPACE_POLICIES} guardrail policies at most.",
            code="too_many_policies",
        )
    if policy.kind != GuardrailPolicy.Kind.REGEX:
        return
    stored = others.filter(kind="regex").values_list("patterns", flat=True)
    total = sum(_stored_size(p) for p in stored) + regex_size(policy.patterns)
    if total > MAX_WORKSPACE_REGEX_PROGRAM:
        raise InvalidRequest(
            f"The workspace's regex policies would compile to {total} RE2 instructions; "
            f"{MAX_WORKSPACE_REGEX_PROGRAM} at most.",
            param="patterns",
            code="too_many_patterns",
        )


def _save(policy: GuardrailPolicy) -> None:
    """Saved, or 409 if the name is taken (checked first; the constraint decides a race)."""
    same = GuardrailPolicy.objects.filter(workspace=policy.workspace, name=policy.name)
    taken = same.exclude(pk=policy.pk).exists() if policy.pk else same.exists()
    conflict = Conflict(f"A guardrail named '{policy.name}' already exists here.", param="name")
    if taken:
        raise conflict
    try:
        with transaction.atomic():
            policy.save()
    except IntegrityError:
        raise conflict from None


def _summary(policy: GuardrailPolicy) -> dict[str, Any]:
    """What the audit row keeps: the policy's shape, not its credential's secret."""
    return {
        "name": policy.name,
        "kind": policy.kind,
        "action": policy.action,
        "applies_to": policy.applies_to,
        "enabled": policy.enabled,
    }


@transaction.atomic
def guardrail_create(
    *, actor: str, workspace: Workspace | None, fields: dict[str, Any]
) -> GuardrailPolicy:
    """A new policy; `workspace=None` is a platform policy (operators only)."""
    policy = GuardrailPolicy(workspace=workspace)
    for name, value in fields.items():
        if name in FIELDS:
            setattr(policy, name, value)
    _checked(policy)
    _save(policy)
    audit_record(
        actor=actor,
        event="guardrail.created",
        target=policy,
        workspace=workspace,
        data=_summary(policy),
    )
    return policy


@transaction.atomic
def guardrail_update(
    *, actor: str, policy: GuardrailPolicy, fields: dict[str, Any]
) -> GuardrailPolicy:
    before = _summary(policy)
    for name, value in fields.items():
        if name in FIELDS:
            setattr(policy, name, value)
    _checked(policy)
    _save(policy)
    audit_record(
        actor=actor,
        event="guardrail.updated",
        target=policy,
        workspace=policy.workspace,
        data={"before": before, "after": _summary(policy), "fields": sorted(fields)},
    )
    return policy


@transaction.atomic
def guardrail_delete(*, actor: str, policy: GuardrailPolicy) -> None:
    audit_record(
        actor=actor,
        event="guardrail.deleted",
        target=policy,
        workspace=policy.workspace,
        data=_summary(policy),
    )
    policy.delete()

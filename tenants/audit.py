"""The audit trail: every state change made by an operator, a tenant or the system."""

from typing import Any

from django.db import models

from tenants.models import AuditEvent, Workspace


def audit_record(
    *,
    actor: str,
    event: str,
    target: models.Model | tuple[str, str],
    workspace: Workspace | None = None,
    workspace_id: int | None = None,
    data: dict[str, Any] | None = None,
) -> AuditEvent:
    """Write one audit row. `target` is a model instance or a (type, id) pair; the workspace
    is given as a row or, where only its id is at hand, as `workspace_id`."""
    if isinstance(target, tuple):
        target_type, target_id = target
    else:
        target_type = target._meta.label_lower
        target_id = getattr(target, "public_id", None) or str(target.pk)
    return AuditEvent.objects.create(
        actor=actor,
        event=event,
        target_type=target_type,
        target_id=target_id,
        workspace_id=workspace.pk if workspace is not None else workspace_id,
        data=data or {},
    )


def operator_actor(username: str) -> str:
    return f"operator:{username}"

"""Plan and apply a configuration file against the database, idempotently.

`plan()` compares the file with the rows and returns the changes; `apply()` runs them in
one transaction through the routing services (so each is audited). Applying the same file
twice plans nothing the second time. An alias's deployments in the file are its complete
list; with `prune`, credentials and aliases the file no longer names are removed from the
scopes (platform, or a workspace) the file covers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from django.db import transaction
from django.db.models import ProtectedError

from routing import services
from routing.config_file import AliasSpec, ConfigError, ConfigSpec, CredentialSpec, DeploymentSpec
from routing.models import Deployment, ModelAlias, ProviderCredential
from tenants.models import Workspace


@dataclass(frozen=True)
class Change:
    action: str  # create | update | delete
    kind: str
    label: str
    run: Callable[[], object]

    def __str__(self) -> str:
        return f"{self.action:<6} {self.kind:<10} {self.label}"


def _scope(slug: str | None) -> str:
    return slug or "platform"


def _credential_in_scope(workspace: Workspace | None, name: str) -> ProviderCredential:
    """A workspace alias may use its workspace's credential or a platform one of that name."""
    if workspace is not None:
        own = ProviderCredential.objects.filter(workspace=workspace, name=name).first()
        if own is not None:
            return own
    return ProviderCredential.objects.get(workspace=None, name=name)


class _Planner:
    def __init__(self, spec: ConfigSpec, actor: str) -> None:
        self.spec = spec
        self.actor = actor
        self.changes: list[Change] = []
        self.workspaces: dict[str, Workspace] = {}

    def add(self, action: str, kind: str, label: str, run: Callable[[], object]) -> None:
        self.changes.append(Change(action, kind, label, run))

    def workspace(self, slug: str | None, line: int) -> Workspace | None:
        if slug is None:
            return None
        if slug not in self.workspaces:
            found = Workspace.objects.filter(slug=slug).first()
            if found is None:
                raise ConfigError(line, f"unknown workspace '{slug}'")
            self.workspaces[slug] = found
        return self.workspaces[slug]

    # --- credentials ------------------------------------------------------------------
    def credential(self, item: CredentialSpec) -> None:
        workspace = self.workspace(item.workspace, item.line)
        label = f"{item.name} ({_scope(item.workspace)})"
        fields: dict[str, Any] = {
            "provider": item.provider,
            "base_url": item.base_url,
            "api_version": item.api_version,
            "extra_headers": item.extra_headers,
            "passthrough_enabled": item.passthrough_enabled,
            "passthrough_path_prefixes": item.passthrough_path_prefixes,
            "enabled": item.enabled,
        }
        existing = ProviderCredential.objects.filter(workspace=workspace, name=item.name).first()
        if existing is None:
            create = partial(
                services.credential_create,
                actor=self.actor,
                name=item.name,
                workspace=workspace,
                secret=item.secret,
                **fields,
            )
            self.add("create", "credential", label, create)
            return
        changed = {k: v for k, v in fields.items() if getattr(existing, k) != v}
        if changed:
            update = partial(
                services.credential_update, actor=self.actor, credential=existing, fields=changed
            )
            self.add("update", "credential", f"{label}: {', '.join(sorted(changed))}", update)
        if existing.secret() != item.secret:
            rotate = partial(
                services.credential_rotate_secret,
                actor=self.actor,
                credential=existing,
                secret=item.secret,
            )
            self.add("update", "credential", f"{label}: secret from {item.secret_env}", rotate)

    # --- aliases and their deployments ------------------------------------------------
    def alias(self, item: AliasSpec) -> None:
        workspace = self.workspace(item.workspace, item.line)
        for deployment in item.deployments:
            self._check_credential_exists(item, deployment)
        label = f"{item.name} ({_scope(item.workspace)})"
        existing = ModelAlias.objects.filter(workspace=workspace, name=item.name).first()
        current: dict[tuple[str, str], Deployment] = {}
        if existing is None:
            self.add("create", "alias", label, partial(self._create_alias, item, workspace))
        else:
            wanted = {"description": item.description, "enabled": item.enabled}
            changed = {k: v for k, v in wanted.items() if getattr(existing, k) != v}
            if changed:
                update = partial(
                    services.alias_update, actor=self.actor, alias=existing, fields=changed
                )
                self.add("update", "alias", f"{label}: {', '.join(sorted(changed))}", update)
            rows = Deployment.objects.filter(alias=existing).select_related("credential", "alias")
            current = {(d.credential.name, d.upstream_model): d for d in rows}
        for deployment in item.deployments:
            self._deployment(
                item,
                workspace,
                deployment,
                current.pop((deployment.credential, deployment.model), None),
            )
        for (credential_name, model), row in current.items():
            delete = partial(services.deployment_delete, actor=self.actor, deployment=row)
            self.add("delete", "deployment", f"{item.name} → {credential_name}:{model}", delete)

    def _deployment(
        self,
        item: AliasSpec,
        workspace: Workspace | None,
        spec: DeploymentSpec,
        row: Deployment | None,
    ) -> None:
        label = f"{item.name} → {spec.credential}:{spec.model}"
        if row is None:
            create = partial(self._create_deployment, item, workspace, spec)
            self.add("create", "deployment", label, create)
            return
        wanted = {
            "priority": spec.priority,
            "weight": spec.weight,
            "timeout_seconds": spec.timeout_seconds,
            "enabled": spec.enabled,
        }
        diff = {k: v for k, v in wanted.items() if getattr(row, k) != v}
        if diff:
            update = partial(
                services.deployment_update, actor=self.actor, deployment=row, fields=diff
            )
            self.add("update", "deployment", f"{label}: {', '.join(sorted(diff))}", update)

    def _check_credential_exists(self, item: AliasSpec, deployment: DeploymentSpec) -> None:
        declared = {(c.workspace, c.name) for c in self.spec.credentials}
        for scope in [item.workspace, None] if item.workspace else [None]:
            if (scope, deployment.credential) in declared:
                return
            query = ProviderCredential.objects.filter(name=deployment.credential)
            query = query.filter(workspace__slug=scope) if scope else query.filter(workspace=None)
            if query.exists():
                return
        raise ConfigError(
            deployment.line, f"unknown credential '{deployment.credential}' for alias '{item.name}'"
        )

    def _create_alias(self, item: AliasSpec, workspace: Workspace | None) -> None:
        alias = services.alias_create(
            actor=self.actor, name=item.name, workspace=workspace, description=item.description
        )
        if not item.enabled:
            services.alias_update(actor=self.actor, alias=alias, fields={"enabled": False})

    def _create_deployment(
        self, item: AliasSpec, workspace: Workspace | None, spec: DeploymentSpec
    ) -> None:
        services.deployment_create(
            actor=self.actor,
            alias=ModelAlias.objects.get(workspace=workspace, name=item.name),
            credential=_credential_in_scope(workspace, spec.credential),
            upstream_model=spec.model,
            priority=spec.priority,
            weight=spec.weight,
            timeout_seconds=spec.timeout_seconds,
            enabled=spec.enabled,
        )

    # --- prune ------------------------------------------------------------------------
    def prune(self) -> None:
        scopes = {c.workspace for c in self.spec.credentials}
        scopes |= {a.workspace for a in self.spec.aliases}
        for slug in sorted(scopes, key=lambda s: s or ""):
            workspace = self.workspaces.get(slug) if slug else None
            aliases = {a.name for a in self.spec.aliases if a.workspace == slug}
            for alias in ModelAlias.objects.filter(workspace=workspace).exclude(name__in=aliases):
                delete = partial(services.alias_delete, actor=self.actor, alias=alias)
                self.add("delete", "alias", f"{alias.name} ({_scope(slug)})", delete)
            names = {c.name for c in self.spec.credentials if c.workspace == slug}
            stale = ProviderCredential.objects.filter(workspace=workspace).exclude(name__in=names)
            for credential in stale:
                delete = partial(
                    services.credential_delete, actor=self.actor, credential=credential
                )
                self.add("delete", "credential", f"{credential.name} ({_scope(slug)})", delete)


def plan(spec: ConfigSpec, *, prune: bool = False, actor: str = "system:apply") -> list[Change]:
    planner = _Planner(spec, actor)
    for credential in spec.credentials:
        planner.credential(credential)
    for alias in spec.aliases:
        planner.alias(alias)
    if prune:
        planner.prune()
    return planner.changes


def apply(changes: list[Change]) -> None:
    """Run every change in one transaction: all of them happen, or none."""
    try:
        with transaction.atomic():
            for change in changes:
                change.run()
    except ProtectedError as exc:
        raise ConfigError(
            None,
            f"cannot delete a credential still used by {len(exc.protected_objects)} "
            "deployment(s) the file does not remove",
        ) from None

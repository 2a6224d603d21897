"""Plan and apply a configuration file against the database, idempotently.

`plan()` compares the file with the rows and returns the changes; `apply()` runs them in
one transaction through the routing services (so each is audited). Applying the same file
twice plans nothing the second time. An alias's deployments in the file are its complete
list; with `prune`, credentials and aliases the file no longer names are removed from the
scopes (platform, or a workspace) the file covers, and so are guardrail policies when the
file has a `guardrails:` section (a file written before guardrails never removes one).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from django.db import transaction
from django.db.models import ProtectedError

from aperture.errors import ApiError
from billing import services as billing_services
from billing.models import Budget, Price
from routing import services
from routing.config_file import (
    AliasSpec,
    BudgetSpec,
    ConfigError,
    ConfigSpec,
    CredentialSpec,
    DeploymentSpec,
    GuardrailSpec,
    PriceSpec,
    RateLimitSpec,
    TeamSpec,
    WorkspaceSpec,
)
from routing.guardrails import services as guardrail_services
from routing.guardrails.policies import PolicyInvalid, check
from routing.models import Deployment, GuardrailPolicy, ModelAlias, ProviderCredential
from tenants import services as tenant_services
from tenants.models import ApiKey, Team, Workspace


@dataclass(frozen=True)
class Change:
    action: str  # create | update | delete
    kind: str
    label: str
    run: Callable[[], object]
    # Outside the transaction, before it opens: what must not wait inside it (a budget's
    # slices given back by every gateway process before its limits change).
    before: Callable[[], object] | None = None

    def __str__(self) -> str:
        return f"{self.action:<6} {self.kind:<10} {self.label}"


class _New:
    """A workspace the file declares that does not exist yet: nothing in it exists either."""


NEW = _New()


def _resolve_workspace(slug: str | None) -> Workspace | None:
    """At apply time: the workspace (possibly created moments ago by this same run)."""
    return None if slug is None else Workspace.objects.get(slug=slug)


def _scope(slug: str | None) -> str:
    return slug or "platform"


def _credential_in_scope(workspace: Workspace | None, name: str) -> ProviderCredential:
    """A workspace alias or guardrail may use its workspace's credential or a platform one of
    that name."""
    if workspace is not None:
        own = ProviderCredential.objects.filter(workspace=workspace, name=name).first()
        if own is not None:
            return own
    return ProviderCredential.objects.get(workspace=None, name=name)


def _guardrail_error(item: GuardrailSpec, message: str, field: str | None) -> str:
    return f"guardrail '{item.name}' ({_scope(item.workspace)}): {field or 'policy'}: {message}"


class _Planner:
    def __init__(self, spec: ConfigSpec, actor: str) -> None:
        self.spec = spec
        self.actor = actor
        self.changes: list[Change] = []
        self.workspaces: dict[str, Workspace | _New] = {}
        self.declared_workspaces = {w.slug for w in spec.workspaces}

    def add(
        self,
        action: str,
        kind: str,
        label: str,
        run: Callable[[], object],
        before: Callable[[], object] | None = None,
    ) -> None:
        self.changes.append(Change(action, kind, label, run, before))

    def workspace(self, slug: str | None, line: int) -> Workspace | _New | None:
        if slug is None:
            return None
        if slug not in self.workspaces:
            found = Workspace.objects.filter(slug=slug).first()
            if found is None and slug not in self.declared_workspaces:
                raise ConfigError(line, f"unknown workspace '{slug}'")
            self.workspaces[slug] = found or NEW
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
            "options": item.options,
            "passthrough_enabled": item.passthrough_enabled,
            "passthrough_path_prefixes": item.passthrough_path_prefixes,
            "passthrough_notes": item.passthrough_notes,
            "free": item.free,
            "enabled": item.enabled,
        }
        existing = (
            None
            if isinstance(workspace, _New)
            else ProviderCredential.objects.filter(workspace=workspace, name=item.name).first()
        )
        if existing is None:

            def create() -> None:
                services.credential_create(
                    actor=self.actor,
                    name=item.name,
                    workspace=_resolve_workspace(item.workspace),
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
        existing = (
            None
            if isinstance(workspace, _New)
            else ModelAlias.objects.filter(workspace=workspace, name=item.name).first()
        )
        current: dict[tuple[str, str], Deployment] = {}
        if existing is None:
            self.add("create", "alias", label, partial(self._create_alias, item))
        else:
            wanted = {
                "description": item.description,
                "enabled": item.enabled,
                "strategy": item.strategy,
                "max_attempts": item.max_attempts,
                "retry_after_timeout": item.retry_after_timeout,
            }
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
                item, deployment, current.pop((deployment.credential, deployment.model), None)
            )
        for (credential_name, model), row in current.items():
            delete = partial(services.deployment_delete, actor=self.actor, deployment=row)
            self.add("delete", "deployment", f"{item.name} → {credential_name}:{model}", delete)

    def _deployment(self, item: AliasSpec, spec: DeploymentSpec, row: Deployment | None) -> None:
        label = f"{item.name} → {spec.credential}:{spec.model}"
        if row is None:
            create = partial(self._create_deployment, item, spec)
            self.add("create", "deployment", label, create)
            return
        wanted = {
            "priority": spec.priority,
            "weight": spec.weight,
            "timeout_seconds": spec.timeout_seconds,
            "connect_timeout_seconds": spec.connect_timeout_seconds,
            "enabled": spec.enabled,
            "options": spec.options,
            "free": spec.free,
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

    def _create_alias(self, item: AliasSpec) -> None:
        alias = services.alias_create(
            actor=self.actor,
            name=item.name,
            workspace=_resolve_workspace(item.workspace),
            description=item.description,
            strategy=item.strategy,
            max_attempts=item.max_attempts,
            retry_after_timeout=item.retry_after_timeout,
        )
        if not item.enabled:
            services.alias_update(actor=self.actor, alias=alias, fields={"enabled": False})

    def _create_deployment(self, item: AliasSpec, spec: DeploymentSpec) -> None:
        workspace = _resolve_workspace(item.workspace)
        services.deployment_create(
            actor=self.actor,
            alias=ModelAlias.objects.get(workspace=workspace, name=item.name),
            credential=_credential_in_scope(workspace, spec.credential),
            upstream_model=spec.model,
            priority=spec.priority,
            weight=spec.weight,
            timeout_seconds=spec.timeout_seconds,
            connect_timeout_seconds=spec.connect_timeout_seconds,
            enabled=spec.enabled,
            free=spec.free,
            options=spec.options,
        )

    # --- guardrail policies ------------------------------------------------------------
    def guardrail(self, item: GuardrailSpec) -> None:
        workspace = self.workspace(item.workspace, item.line)
        in_db = workspace if isinstance(workspace, Workspace) else None
        label = f"{item.name} ({_scope(item.workspace)})"
        credential = self._guardrail_credential(item) if item.credential else None
        # The policy as it will be, checked now so that a dry run reports what apply would
        # refuse; the check also normalises it, so an unchanged file compares equal.
        candidate = GuardrailPolicy(workspace=in_db, **item.policy_fields())
        candidate.credential = credential
        try:
            check(candidate)
        except PolicyInvalid as error:
            raise ConfigError(
                item.line, _guardrail_error(item, error.message, error.field)
            ) from None
        wanted = {name: getattr(candidate, name) for name in item.policy_fields()}
        existing = (
            None
            if isinstance(workspace, _New)
            else GuardrailPolicy.objects.filter(workspace=workspace, name=item.name).first()
        )
        if existing is None:
            create = partial(self._save_guardrail, item, None, wanted)
            self.add("create", "guardrail", label, create)
            return
        changed = {k: v for k, v in wanted.items() if getattr(existing, k) != v}
        if existing.credential_id != (credential.pk if credential else None):
            changed["credential"] = item.credential  # a name, resolved when applied
        if changed:
            update = partial(self._save_guardrail, item, existing, changed)
            self.add("update", "guardrail", f"{label}: {', '.join(sorted(changed))}", update)

    def _guardrail_credential(self, item: GuardrailSpec) -> ProviderCredential:
        """The credential a guardrail names, as it will be once the file's credentials are
        applied: its workspace's own, else a platform one (the only kind a platform policy
        may use). Not yet created: an unsaved stand-in with the file's provider."""
        for scope in [item.workspace, None] if item.workspace else [None]:
            declared = next(
                (
                    c
                    for c in self.spec.credentials
                    if (c.workspace, c.name) == (scope, item.credential)
                ),
                None,
            )
            query = ProviderCredential.objects.filter(name=item.credential)
            row = (
                query.filter(workspace__slug=scope) if scope else query.filter(workspace=None)
            ).first()
            if row is not None:
                if declared is not None:
                    row.provider = declared.provider  # what the file makes it
                return row
            if declared is not None:
                return ProviderCredential(name=declared.name, provider=declared.provider)
        raise ConfigError(
            item.line, f"unknown credential '{item.credential}' for guardrail '{item.name}'"
        )

    def _save_guardrail(
        self, item: GuardrailSpec, existing: GuardrailPolicy | None, fields: dict[str, Any]
    ) -> None:
        workspace = _resolve_workspace(item.workspace)
        fields = dict(fields)
        if "credential" in fields or (existing is None and item.credential):
            assert item.credential is not None
            fields["credential"] = _credential_in_scope(workspace, item.credential)
        try:
            if existing is None:
                guardrail_services.guardrail_create(
                    actor=self.actor, workspace=workspace, fields=fields
                )
            else:
                guardrail_services.guardrail_update(
                    actor=self.actor, policy=existing, fields=fields
                )
        except ApiError as error:  # checked when planned; the rows may have moved since
            raise ConfigError(
                item.line, _guardrail_error(item, error.message, error.param)
            ) from None

    # --- workspaces and teams -----------------------------------------------------------
    def workspace_item(self, item: WorkspaceSpec) -> None:
        existing = Workspace.objects.filter(slug=item.slug).first()
        if existing is None:

            def create() -> None:
                workspace = tenant_services.workspace_create(
                    actor=self.actor, slug=item.slug, name=item.name
                )
                if item.status != Workspace.Status.ACTIVE:
                    tenant_services.workspace_set_status(
                        actor=self.actor, workspace=workspace, status=item.status
                    )
                if item.price_multiplier not in (None, workspace.price_multiplier):
                    tenant_services.workspace_set_price_multiplier(
                        actor=self.actor, workspace=workspace, multiplier=item.price_multiplier
                    )

            self.add("create", "workspace", item.slug, create)
        else:
            if existing.name != item.name:
                rename = partial(
                    tenant_services.workspace_rename,
                    actor=self.actor,
                    workspace=existing,
                    name=item.name,
                )
                self.add("update", "workspace", f"{item.slug}: name", rename)
            if existing.status != item.status:
                status = partial(
                    tenant_services.workspace_set_status,
                    actor=self.actor,
                    workspace=existing,
                    status=item.status,
                )
                self.add("update", "workspace", f"{item.slug}: status {item.status}", status)
            wanted = item.price_multiplier
            if wanted is not None and existing.price_multiplier != wanted:
                markup = partial(
                    tenant_services.workspace_set_price_multiplier,
                    actor=self.actor,
                    workspace=existing,
                    multiplier=wanted,
                )
                self.add("update", "workspace", f"{item.slug}: price_multiplier {wanted}", markup)
        for team in item.teams:
            row = (
                Team.objects.filter(workspace=existing, slug=team.slug).first()
                if existing
                else None
            )
            label = f"{item.slug}/{team.slug}"
            if row is None:

                def create_team(team: TeamSpec = team) -> None:
                    tenant_services.team_create(
                        actor=self.actor,
                        workspace=Workspace.objects.get(slug=item.slug),
                        slug=team.slug,
                        name=team.name,
                    )

                self.add("create", "team", label, create_team)
            elif row.name != team.name:
                rename_team = partial(
                    tenant_services.team_rename, actor=self.actor, team=row, name=team.name
                )
                self.add("update", "team", f"{label}: name", rename_team)

    # --- prices, budgets, rate limits -------------------------------------------------
    def price(self, item: PriceSpec) -> None:
        row = Price.objects.filter(
            provider=item.provider,
            model_pattern=item.model,
            size=item.size,
            quality=item.quality,
            tier=item.tier,
        ).first()
        label = " ".join(
            v for v in (item.provider, item.model, item.size, item.quality, item.tier) if v
        )
        if row is not None and all(getattr(row, k) == v for k, v in item.amounts.items()):
            return
        save = partial(
            billing_services.price_set,
            actor=self.actor,
            provider=item.provider,
            model_pattern=item.model,
            size=item.size,
            quality=item.quality,
            tier=item.tier,
            amounts=item.amounts,
        )
        self.add("create" if row is None else "update", "price", label, save)

    def budget(self, item: BudgetSpec) -> None:
        key = None
        if item.key is not None:
            key = (
                ApiKey.objects.select_related("workspace", "team")
                .filter(public_id=item.key)
                .first()
            )
            if key is None:
                raise ConfigError(item.line, f"unknown key '{item.key}'")
        workspace_slug = key.workspace.slug if key else item.workspace
        workspace = self.workspace(workspace_slug, item.line)
        if item.team is not None and not self._team_exists(workspace_slug, item.team):
            raise ConfigError(item.line, f"unknown team '{workspace_slug}/{item.team}'")
        target = item.key or "/".join(p for p in (workspace_slug, item.team) if p)
        label = f"{item.scope} {target} {item.period}"
        if not isinstance(workspace, _New) and workspace is not None:
            team = (
                Team.objects.filter(workspace=workspace, slug=item.team).first()
                if item.team
                else None
            )
            row = Budget.objects.filter(
                workspace=workspace, team=team, key=key, scope=item.scope, period=item.period
            ).first()
            if row is not None and (row.limit_micro, row.limit_images) == (
                item.limit_micro,
                item.limit_images,
            ):
                return
            action = "update" if row is not None else "create"
        else:
            action, row = "create", None

        def save() -> None:
            ws = Workspace.objects.get(slug=workspace_slug)
            billing_services.budget_set(
                actor=self.actor,
                workspace=ws,
                team=Team.objects.get(workspace=ws, slug=item.team) if item.team else None,
                key=key,
                period=item.period,
                limit_micro=item.limit_micro,
                limit_images=item.limit_images,
            )

        reclaim = (
            None if row is None else partial(billing_services.budget_reclaim, budget_id=row.pk)
        )
        self.add(action, "budget", label, save, reclaim)

    def _team_exists(self, workspace_slug: str | None, slug: str) -> bool:
        declared = {(w.slug, t.slug) for w in self.spec.workspaces for t in w.teams}
        if (workspace_slug, slug) in declared:
            return True
        return Team.objects.filter(workspace__slug=workspace_slug, slug=slug).exists()

    def rate_limit(self, item: RateLimitSpec) -> None:
        key = ApiKey.objects.filter(public_id=item.key).first()
        if key is None:
            raise ConfigError(item.line, f"unknown key '{item.key}'")
        if (key.rpm_limit, key.ipm_limit) == (item.rpm, item.ipm):
            return
        update = partial(
            tenant_services.key_set_rate_limits,
            actor=self.actor,
            key=key,
            rpm_limit=item.rpm,
            ipm_limit=item.ipm,
        )
        self.add("update", "rate limit", f"key {item.key}: rpm {item.rpm}, ipm {item.ipm}", update)

    # --- prune ------------------------------------------------------------------------
    def prune(self) -> None:
        guardrails = self.spec.guardrails
        scopes = {c.workspace for c in self.spec.credentials}
        scopes |= {a.workspace for a in self.spec.aliases}
        scopes |= {g.workspace for g in guardrails or []}
        covered = sorted(scopes, key=lambda s: s or "")
        if guardrails is not None:
            self._prune_guardrails(covered, guardrails)
        for slug in covered:
            workspace = self.workspaces.get(slug) if slug else None
            if isinstance(workspace, _New):
                continue  # a workspace created by this run holds nothing to prune
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

    def _prune_guardrails(self, scopes: list[str | None], kept: list[GuardrailSpec]) -> None:
        """Before any credential: a moderation policy may hold one, even another scope's."""
        for slug in scopes:
            workspace = self.workspaces.get(slug) if slug else None
            if isinstance(workspace, _New):
                continue
            names = {g.name for g in kept if g.workspace == slug}
            stale = GuardrailPolicy.objects.filter(workspace=workspace).exclude(name__in=names)
            for policy in stale.select_related("workspace"):
                delete = partial(
                    guardrail_services.guardrail_delete, actor=self.actor, policy=policy
                )
                self.add("delete", "guardrail", f"{policy.name} ({_scope(slug)})", delete)


def plan(spec: ConfigSpec, *, prune: bool = False, actor: str = "system:apply") -> list[Change]:
    planner = _Planner(spec, actor)
    for workspace in spec.workspaces:
        planner.workspace_item(workspace)
    for credential in spec.credentials:
        planner.credential(credential)
    for alias in spec.aliases:
        planner.alias(alias)
    for guardrail in spec.guardrails or []:
        planner.guardrail(guardrail)
    for price in spec.prices:
        planner.price(price)
    for budget in spec.budgets:
        planner.budget(budget)
    for rate_limit in spec.rate_limits:
        planner.rate_limit(rate_limit)
    if prune:
        planner.prune()
    return planner.changes


def apply(changes: list[Change]) -> None:
    """Run every change in one transaction: all of them happen, or none."""
    for change in changes:
        if change.before is not None:
            change.before()
    try:
        with transaction.atomic():
            for change in changes:
                change.run()
    except ProtectedError as exc:
        users = [
            f"{count} {what}"
            for what, model in (("deployment(s)", Deployment), ("guardrail(s)", GuardrailPolicy))
            if (count := sum(isinstance(o, model) for o in exc.protected_objects))
        ]
        raise ConfigError(
            None,
            f"cannot delete a credential still used by {' and '.join(users)} the file does not "
            "remove",
        ) from None
    except ApiError as exc:  # a service's refusal, e.g. a budget below what it has spent
        raise ConfigError(None, exc.message) from None

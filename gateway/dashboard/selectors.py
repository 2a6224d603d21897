"""The dashboard's figures, read from the hourly rollup, budgets and deployment health.

Both ranges read HourlyUsage (gateway/dashboard/sums.py): the last 24 hours by hour, the last
30 days by day (the hours summed per day in SQL, each past day's sums kept in the cache).
DailyUsage is not used here: it has no provider, no deployment and no latency buckets, and its
per-group p95s cannot be merged into a day's. Every function runs a fixed number of queries,
whatever the number of usage records.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from operator import add
from typing import Any, Literal

from django.db.models import BigIntegerField, Case, F, Q, Value, When
from django.db.models.functions import Greatest

from billing.budgets import period_start
from billing.models import Budget
from billing.rollups import LATENCY_BUCKETS, hour_start, latency_percentile
from gateway.dashboard import sums
from routing import health, health_report
from routing.models import Deployment
from tenants.models import ApiKey, Workspace

Range = Literal["24h", "30d"]
NEAR_LIMIT_PERCENT = 80
TOP = 10  # rows in the top-spender and breakdown tables
CHART_SERIES = 5  # series in a breakdown chart; the rest are summed as "other"
WORKSPACE_CHOICES = 500  # workspaces offered by the filter
DEPLOYMENT_ROWS = 100
NEAR_LIMIT_ROWS = 200


@dataclass(frozen=True)
class Window:
    """The range shown: its periods (hours or days, UTC) from the oldest to the current."""

    range: Range
    step: timedelta
    periods: tuple[datetime, ...]

    @property
    def start(self) -> datetime:
        return self.periods[0]

    @property
    def end(self) -> datetime:
        return self.periods[-1] + self.step

    @property
    def by_hour(self) -> bool:
        return self.step == timedelta(hours=1)

    def label(self, period: datetime) -> str:
        return f"{period:%H}:00" if self.by_hour else f"{period:%b %d}"

    def key(self, period: datetime) -> str:
        """The period as a stable id (the data table's row ids)."""
        return f"{period:%Y-%m-%dT%H}" if self.by_hour else f"{period:%Y-%m-%d}"


def window(range_: Range, now: datetime) -> Window:
    if range_ == "24h":
        last = hour_start(now)
        return Window(
            "24h", timedelta(hours=1), tuple(last - timedelta(hours=23 - i) for i in range(24))
        )
    today = hour_start(now).replace(hour=0)
    return Window(
        "30d", timedelta(days=1), tuple(today - timedelta(days=29 - i) for i in range(30))
    )


@dataclass
class Figures:
    """Sums over some rollup rows."""

    requests: int = 0
    images: int = 0
    errors: int = 0
    upstream_errors: int = 0
    cost_micro: int = 0
    total_ms: int = 0
    buckets: list[int] = field(default_factory=lambda: [0] * LATENCY_BUCKETS)

    @classmethod
    def of(cls, measures: Sequence[int]) -> Figures:
        """From sums.Measures (the six sums, then the latency buckets); empty: zeros."""
        if not measures:
            return cls()
        requests, images, errors, upstream_errors, cost, ms = measures[:6]
        return cls(requests, images, errors, upstream_errors, cost, ms, list(measures[6:]))

    def add(self, other: Figures) -> None:
        self.requests += other.requests
        self.images += other.images
        self.errors += other.errors
        self.upstream_errors += other.upstream_errors
        self.cost_micro += other.cost_micro
        self.total_ms += other.total_ms
        self.buckets = [a + b for a, b in zip(self.buckets, other.buckets, strict=True)]

    @property
    def error_rate(self) -> float | None:
        """Percent of requests answered with an error (status >= 400)."""
        return 100 * self.errors / self.requests if self.requests else None

    @property
    def p95_ms(self) -> int | None:
        return latency_percentile(self.buckets, 95)


@dataclass
class Slice:
    """One value of a breakdown (a workspace, an alias, a provider) over the range."""

    key: str
    label: str
    figures: Figures = field(default_factory=Figures)
    series: list[Figures] = field(default_factory=list)
    workspace_id: int | None = None


@dataclass(frozen=True)
class Usage:
    """The range's totals, its series and its breakdowns by workspace, alias and provider."""

    totals: Figures
    series: list[Figures]
    by_workspace: list[Slice]
    by_alias: list[Slice]
    by_provider: list[Slice]


def rollup_sums(window: Window, workspace_id: int | None = None) -> sums.Sums:
    """The range's rollup rows, summed per period and group (gateway/dashboard/sums.py)."""
    if window.by_hour:
        return sums.hourly(window.start, window.end, workspace_id)
    return sums.daily(list(window.periods), workspace_id)


def _plus(total: list[int] | None, more: Sequence[int]) -> list[int]:
    return list(map(add, total, more)) if total is not None else list(more)


def _sum_of(series: Iterable[list[int] | None]) -> list[int]:
    whole: list[int] | None = None
    for one in series:
        if one is not None:
            whole = _plus(whole, one)
    return whole or []


def warm(now: datetime) -> int:
    """Keep the last 30 days' summaries in the cache (gateway.tasks.warm_dashboard)."""
    return sums.warm(list(window("30d", now).periods))


def usage(window: Window, summed: sums.Sums) -> Usage:
    """The range's totals, series and breakdowns. Measures are added as plain lists, per
    period: a month of rows is a few thousand of them."""
    index = {p: i for i, p in enumerate(window.periods)}
    periods = len(window.periods)
    total: list[list[int] | None] = [None] * periods
    by: dict[str, dict[Any, list[list[int] | None]]] = {
        "workspace": {},
        "alias": {},
        "provider": {},
    }
    for period, workspace_id, alias, provider, measures in summed.usage:
        at = index.get(period)
        if at is None:  # outside the range's periods (a clock between two page loads)
            continue
        total[at] = _plus(total[at], measures)
        for dimension, value in (
            ("workspace", workspace_id),
            ("alias", alias),
            ("provider", provider),
        ):
            series = by[dimension].get(value)
            if series is None:
                series = by[dimension][value] = [None] * periods
            series[at] = _plus(series[at], measures)

    def slices(dimension: str) -> list[Slice]:
        found = []
        for value, series in by[dimension].items():
            found.append(
                Slice(
                    key=str(value),
                    label=str(value) or "(none)",
                    figures=Figures.of(_sum_of(series)),
                    series=[Figures.of(m or []) for m in series],
                    workspace_id=value if dimension == "workspace" else None,
                )
            )
        return _ranked(found)

    by_workspace = slices("workspace")
    _name_workspaces(by_workspace)
    return Usage(
        totals=Figures.of(_sum_of(total)),
        series=[Figures.of(m or []) for m in total],
        by_workspace=by_workspace,
        by_alias=slices("alias"),
        by_provider=slices("provider"),
    )


def _ranked(slices: Iterable[Slice]) -> list[Slice]:
    """Biggest spenders first, then the busiest."""
    return sorted(slices, key=lambda s: (-s.figures.cost_micro, -s.figures.requests, s.label))


def _name_workspaces(slices: list[Slice]) -> None:
    names = dict(
        Workspace.objects.filter(pk__in=[s.workspace_id for s in slices]).values_list("pk", "slug")
    )
    for found in slices:
        if found.workspace_id is not None:
            found.label = names.get(found.workspace_id, f"#{found.workspace_id}")


def chart_slices(slices: list[Slice], periods: int) -> list[Slice]:
    """The biggest CHART_SERIES slices and, if there are more, one "other" summing the rest."""
    shown = list(slices[:CHART_SERIES])
    rest = slices[CHART_SERIES:]
    if rest:
        other = Slice(key="other", label="other", series=[Figures() for _ in range(periods)])
        for found in rest:
            other.figures.add(found.figures)
            for at, figures in enumerate(found.series):
                other.series[at].add(figures)
        shown.append(other)
    return shown


@dataclass(frozen=True)
class KeySpend:
    key_id: int
    name: str
    prefix: str
    workspace: str
    requests: int
    images: int
    cost_micro: int


def top_keys(summed: sums.Sums, limit: int = TOP) -> list[KeySpend]:
    """The keys that spent most in the range (their names in one query)."""
    spent: dict[int, list[int]] = {}
    for _, _, key_id, cost, requests, images in summed.keys:
        found = spent.setdefault(key_id, [0, 0, 0])
        found[0] += cost
        found[1] += requests
        found[2] += images
    top = sorted(spent.items(), key=lambda item: (-item[1][0], -item[1][1], item[0]))[:limit]
    keys = ApiKey.objects.select_related("workspace").in_bulk([key_id for key_id, _ in top])
    return [
        KeySpend(
            key_id=key_id,
            name=keys[key_id].name if key_id in keys else f"#{key_id}",
            prefix=f"apk_{keys[key_id].public_id}_…" if key_id in keys else "",
            workspace=keys[key_id].workspace.slug if key_id in keys else "",
            requests=requests,
            images=images,
            cost_micro=cost,
        )
        for key_id, (cost, requests, images) in top
    ]


@dataclass(frozen=True)
class DeploymentErrors:
    deployment_id: int
    label: str  # "alias → credential:model", or the provider for calls without a deployment
    provider: str
    upstream_errors: int
    requests: int  # requests the deployment served (answered by it, successfully or not)


def upstream_errors_by_deployment(summed: sums.Sums, limit: int = TOP) -> list[DeploymentErrors]:
    """Failed upstream calls per deployment in the range, most first (names in one query)."""
    failed: dict[tuple[int, str], list[int]] = {}
    for _, _, deployment_id, provider, errors, served in summed.deployments:
        found = failed.setdefault((deployment_id, provider), [0, 0])
        found[0] += errors
        found[1] += served
    top = sorted(failed.items(), key=lambda item: (-item[1][0], item[0]))[:limit]
    names = {
        d.pk: str(d)
        for d in Deployment.objects.filter(
            pk__in={deployment_id for (deployment_id, _), _ in top if deployment_id}
        ).select_related("alias", "credential")
    }
    return [
        DeploymentErrors(
            deployment_id=deployment_id,
            label=names.get(deployment_id, f"deployment #{deployment_id} (deleted)")
            if deployment_id
            else f"{provider or 'unknown'} (passthrough, no deployment)",
            provider=provider,
            upstream_errors=errors,
            requests=served,
        )
        for (deployment_id, provider), (errors, served) in top
    ]


@dataclass(frozen=True)
class BudgetUse:
    budget: Budget
    percent: int  # the higher of money and images
    used_micro: int
    used_images: int

    @property
    def target(self) -> str:
        if self.budget.scope == Budget.Scope.KEY and self.budget.key is not None:
            return f"key {self.budget.key.name}"
        if self.budget.scope == Budget.Scope.TEAM and self.budget.team is not None:
            return f"team {self.budget.team}"
        return f"workspace {self.budget.workspace.slug}"


def budgets_near_limit(
    now: datetime, workspace_id: int | None = None, percent: int = NEAR_LIMIT_PERCENT
) -> list[BudgetUse]:
    """Budgets whose current period has used `percent` or more of a limit (money or images),
    fullest first (one query; a budget's counters of a past period count as zero)."""
    current = Q(period=Budget.Period.LIFETIME)
    for period in (Budget.Period.DAY, Budget.Period.MONTH):
        current |= Q(period=period, period_start=period_start(period, now))
    budgets = (
        Budget.objects.alias(  # used / limit >= percent / 100, in integers
            money_over=F("used_micro") * 100 - F("limit_micro") * percent,
            images_over=F("used_images") * 100 - F("limit_images") * percent,
        )
        .filter(
            current,
            Q(limit_micro__gt=0, money_over__gte=0) | Q(limit_images__gt=0, images_over__gte=0),
        )
        .annotate(  # the fuller limit's percent, so that the fullest are the rows kept
            fullest=Greatest(
                _share("used_micro", "limit_micro"), _share("used_images", "limit_images")
            )
        )
        .select_related("workspace", "team", "key")
        .order_by("-fullest", "pk")
    )
    if workspace_id is not None:
        budgets = budgets.filter(workspace_id=workspace_id)
    return [
        BudgetUse(budget, budget.fullest, budget.used_micro, budget.used_images)
        for budget in budgets[:NEAR_LIMIT_ROWS]
    ]


def _share(used: str, limit: str) -> Case:
    """used * 100 // limit, in SQL (integer division); 0 without a limit."""
    return Case(
        When(**{f"{limit}__gt": 0}, then=F(used) * 100 / F(limit)),
        default=Value(0),
        output_field=BigIntegerField(),
    )


@dataclass(frozen=True)
class DeploymentHealth:
    deployment_id: int
    label: str
    provider: str
    workspace: str  # "platform" for a platform-wide alias
    state: str  # closed, open, half-open
    detail: str  # "open until …", the last error
    failures: int


@dataclass(frozen=True)
class HealthSummary:
    rows: list[DeploymentHealth]  # unhealthy first, at most DEPLOYMENT_ROWS
    total: int  # every enabled deployment in scope, and how many are in each state:
    closed: int
    half_open: int
    open_circuits: int


def deployment_health(workspace_id: int | None = None) -> HealthSummary:
    """Every enabled deployment's circuit state (one query, one read of the shared state);
    for a workspace, those of its own aliases and the platform's."""
    deployments = Deployment.objects.filter(enabled=True).select_related(
        "alias__workspace", "credential"
    )
    if workspace_id is not None:
        deployments = deployments.filter(
            Q(alias__workspace_id=workspace_id) | Q(alias__workspace__isnull=True)
        )
    found = list(deployments.order_by("alias__name", "priority", "id"))
    states = health_report.health_of([d.pk for d in found])
    order = {health.OPEN: 0, health.HALF_OPEN: 1, health.CLOSED: 2}
    rows = [
        DeploymentHealth(
            deployment_id=d.pk,
            label=str(d),
            provider=d.credential.provider,
            workspace=d.alias.workspace.slug if d.alias.workspace else "platform",
            state=states[d.pk].status,
            detail=states[d.pk].label if states[d.pk].status == health.OPEN else "",
            failures=states[d.pk].failures,
        )
        for d in found
    ]
    rows.sort(key=lambda r: order.get(r.state, 3))
    states_seen = [row.state for row in rows]
    return HealthSummary(
        rows=rows[:DEPLOYMENT_ROWS],
        total=len(rows),
        closed=states_seen.count(health.CLOSED),
        half_open=states_seen.count(health.HALF_OPEN),
        open_circuits=states_seen.count(health.OPEN),
    )


def workspace_choices() -> list[tuple[int, str]]:
    """The workspaces the filter offers: (id, "slug — name"), by slug."""
    return [
        (pk, f"{slug} — {name}" if name and name != slug else slug)
        for pk, slug, name in Workspace.objects.order_by("slug").values_list("pk", "slug", "name")[
            :WORKSPACE_CHOICES
        ]
    ]


@dataclass(frozen=True)
class Dashboard:
    window: Window
    workspace: Workspace | None
    usage: Usage
    top_keys: list[KeySpend]
    budgets: list[BudgetUse]
    upstream_errors: list[DeploymentErrors]
    health: HealthSummary


def dashboard(range_: Range, now: datetime, workspace: Workspace | None = None) -> Dashboard:
    shown = window(range_, now)
    workspace_id = workspace.pk if workspace is not None else None
    summed = rollup_sums(shown, workspace_id)
    return Dashboard(
        window=shown,
        workspace=workspace,
        usage=usage(shown, summed),
        top_keys=top_keys(summed),
        budgets=budgets_near_limit(now, workspace_id),
        upstream_errors=upstream_errors_by_deployment(summed),
        health=deployment_health(workspace_id),
    )

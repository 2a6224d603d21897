"""The dashboard's figures as the admin page shows them: formatted numbers, SVG charts and
the rows of its tables (the template only lays them out)."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

from django.urls import reverse
from django.utils.safestring import SafeString

from gateway.dashboard import charts
from gateway.dashboard.selectors import Dashboard, Figures, Slice, Window, chart_slices


def usd(micro: float) -> str:
    """Micro-USD as dollars and cents ($1,234.56); amounts under a cent keep four places."""
    amount = Decimal(int(micro)) / Decimal(1_000_000)
    if 0 < abs(amount) < Decimal("0.01"):
        return f"${amount:,.4f}"
    return f"${amount:,.2f}"


def count(value: float) -> str:
    return f"{int(value):,}"


def percent(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}%"


def ms(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value / 1000:.1f} s" if value >= 10_000 else f"{int(value):,} ms"


def _compact(value: float) -> str:
    """An axis label: 950, 1.5k, 2M."""
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:.3g}{suffix}"
    return f"{value:.3g}" if value else "0"


def _usd_axis(micro: float) -> str:
    return "$" + _compact(micro / 1_000_000)


def _ms_axis(value: float) -> str:
    return f"{value / 1000:.3g} s" if value >= 1000 else f"{value:.0f} ms"


def figures_row(figures: Figures) -> dict[str, str]:
    return {
        "requests": count(figures.requests),
        "images": count(figures.images),
        "spend": usd(figures.cost_micro),
        "errors": count(figures.errors),
        "error_rate": percent(figures.error_rate),
        "p95": ms(figures.p95_ms),
        "upstream_errors": count(figures.upstream_errors),
    }


def _series(
    slices: list[Slice], periods: int, measure: Callable[[Figures], float | None]
) -> list[charts.Series]:
    return [
        charts.Series(s.label, [measure(f) for f in s.series], other=s.key == "other")
        for s in chart_slices(slices, periods)
    ]


def _charts(data: Dashboard) -> list[SafeString]:
    window, usage = data.window, data.usage
    labels = [window.label(p) for p in window.periods]
    n = len(labels)
    spend_by = ("alias", usage.by_alias) if data.workspace else ("workspace", usage.by_workspace)
    total = "all requests"
    return [
        charts.stacked_bars(
            "Requests by provider",
            labels,
            _series(usage.by_provider, n, lambda f: f.requests),
            _compact,
        ),
        charts.stacked_bars(
            f"Spend by {spend_by[0]}",
            labels,
            _series(spend_by[1], n, lambda f: f.cost_micro),
            _usd_axis,
        ),
        charts.stacked_bars(
            "Requests by alias", labels, _series(usage.by_alias, n, lambda f: f.requests), _compact
        ),
        charts.line_chart(
            "Images",
            labels,
            [charts.Series("images", [f.images for f in usage.series])],
            _compact,
        ),
        charts.line_chart(
            "Error rate (responses ≥ 400)",
            labels,
            [charts.Series(total, [f.error_rate for f in usage.series])],
            lambda v: f"{v:.3g}%",
        ),
        charts.line_chart(
            "p95 latency",
            labels,
            [
                charts.Series(total, [f.p95_ms for f in usage.series]),
                *_series(usage.by_provider, n, lambda f: f.p95_ms),
            ],
            _ms_axis,
        ),
        charts.stacked_bars(
            "Upstream errors by provider (failed calls)",
            labels,
            _series(usage.by_provider, n, lambda f: f.upstream_errors),
            _compact,
        ),
    ]


def _link(window: Window, workspace_id: int | None, range_: str | None = None) -> str:
    query: dict[str, Any] = {"range": range_ or window.range}
    if workspace_id is not None:
        query["workspace"] = workspace_id
    return f"{reverse('admin:index')}?{urlencode(query)}"


def context(data: Dashboard, workspaces: list[tuple[int, str]]) -> dict[str, Any]:
    """What templates/admin/dashboard/dashboard.html shows."""
    window, usage = data.window, data.usage
    workspace_id = data.workspace.pk if data.workspace else None
    period_word = "hour" if window.by_hour else "day"
    return {
        "window": window,
        "workspace": data.workspace,
        "workspace_url": (
            reverse("admin:tenants_workspace_change", args=[workspace_id]) if workspace_id else None
        ),
        "workspaces": workspaces,
        "ranges": [
            {"key": key, "label": label, "url": _link(window, workspace_id, key)}
            for key, label in (("24h", "Last 24 hours"), ("30d", "Last 30 days"))
        ],
        "all_workspaces_url": _link(window, None),
        "period_word": period_word,
        "totals": figures_row(usage.totals),
        "charts": _charts(data),
        "periods": [
            {
                "key": window.key(p),
                "label": f"{p:%Y-%m-%d %H:00}" if window.by_hour else f"{p:%Y-%m-%d}",
                **figures_row(f),
            }
            for p, f in reversed(list(zip(window.periods, usage.series, strict=True)))
        ],
        "by_workspace": [
            {
                "label": s.label,
                "url": _link(window, s.workspace_id),
                **figures_row(s.figures),
            }
            for s in usage.by_workspace[:10]
        ],
        "by_alias": [{"label": s.label, **figures_row(s.figures)} for s in usage.by_alias[:10]],
        "by_provider": [
            {"label": s.label, **figures_row(s.figures)} for s in usage.by_provider[:10]
        ],
        "top_keys": [
            {
                "name": k.name,
                "prefix": k.prefix,
                "workspace": k.workspace,
                "url": reverse("admin:tenants_apikey_change", args=[k.key_id]),
                "requests": count(k.requests),
                "images": count(k.images),
                "spend": usd(k.cost_micro),
            }
            for k in data.top_keys
        ],
        "budgets": [
            {
                "target": b.target,
                "workspace": b.budget.workspace.slug,
                "period": b.budget.get_period_display(),
                "url": reverse("admin:billing_budget_change", args=[b.budget.pk]),
                "money": (
                    f"{usd(b.used_micro)} of {usd(b.budget.limit_micro)}"
                    if b.budget.limit_micro is not None
                    else "—"
                ),
                "images": (
                    f"{count(b.used_images)} of {count(b.budget.limit_images)}"
                    if b.budget.limit_images is not None
                    else "—"
                ),
                "percent": b.percent,
                "over": b.percent >= 100,
            }
            for b in data.budgets
        ],
        "upstream_errors": [
            {
                "label": e.label,
                "provider": e.provider,
                "failed": count(e.upstream_errors),
                "served": count(e.requests),
            }
            for e in data.upstream_errors
        ],
        "health": data.health,
    }

"""The operators' dashboard: its figures equal the usage records' once rolled up, a workspace
filter narrows them, the page draws SVG charts in a bounded number of queries, and only staff
who may view usage see it."""

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db.models import Count, Q, QuerySet, Sum
from django.test import Client
from django.urls import reverse

from billing import rollups
from billing.models import Budget, UsageRecord
from gateway.dashboard import charts, selectors
from gateway.tasks import warm_dashboard
from routing import health
from routing import services as routing_services
from routing.models import Deployment, ModelAlias, ProviderCredential
from tenants import services
from tenants.models import ApiKey, Workspace
from tests.conftest import ACTOR

NOW = datetime(2026, 11, 20, 14, 30, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _beat(settings: Any) -> None:
    """A Celery beat rolls usage up, as in production (else the page catches up itself)."""
    settings.CELERY_TASK_ALWAYS_EAGER = False


@pytest.fixture
def clock() -> Iterator[time_machine.Traveller]:
    with time_machine.travel(NOW, tick=False) as frozen:
        yield frozen


@pytest.fixture
def keys(db: None) -> dict[str, ApiKey]:
    found = {}
    for slug in ("acme", "globex"):
        workspace = services.workspace_create(actor=ACTOR, slug=slug, name=slug.title())
        team = services.team_create(actor=ACTOR, workspace=workspace, slug="ops", name="Ops")
        for name in ("app", "batch"):
            found[f"{slug}-{name}"] = services.key_create(
                actor=ACTOR, team=team, name=f"{slug} {name}"
            ).key
    return found


def _record(key: ApiKey, at: datetime, n: int, **fields: Any) -> UsageRecord:
    values: dict[str, Any] = {
        "request_id": f"req_{at:%d%H%M}_{n}",
        "created_at": at,
        "workspace_id": key.workspace_id,
        "team_id": key.team_id,
        "key": key,
        "alias": "image-prod",
        "provider": "openai",
        "deployment_id": 0,
        "endpoint": "images.generations",
        "status": 200,
        "images": 1,
        "cost_micro": 40_000,
        "total_ms": 800,
    }
    return UsageRecord(**{**values, **fields})


@pytest.fixture
def seeded(keys: dict[str, ApiKey]) -> list[UsageRecord]:
    """Usage over 40 days (some before the 30-day range), in both workspaces, two aliases, two
    providers, with failures; rolled up hour by hour."""
    records = []
    for n in range(240):
        at = NOW - timedelta(minutes=n * 233 + 7)  # about 39 days back, every hour's minute
        key = list(keys.values())[n % 4]
        failed = n % 9 == 0
        records.append(
            _record(
                key,
                at,
                n,
                alias=("image-prod", "image-fast")[n % 2],
                provider=("openai", "gemini")[n % 3 == 0],
                status=502 if failed else 200,
                error_code="upstream_error" if failed else "",
                images=0 if failed else 1 + n % 3,
                cost_micro=0
                if failed
                else 10_000 * (1 + n % 5) * (3 if key.name.endswith("batch") else 1),
                total_ms=50 + n * 97 % 9000,
            )
        )
    UsageRecord.objects.bulk_create(records)
    for hour in {rollups.hour_start(r.created_at) for r in records}:
        rollups.rollup_hour(hour)
    return records


def _expected(records: QuerySet[UsageRecord]) -> dict[str, int]:
    sums = records.aggregate(
        requests=Count("id"),
        images=Sum("images"),
        errors=Count("id", filter=Q(status__gte=400)),
        cost=Sum("cost_micro"),
    )
    return {k: v or 0 for k, v in sums.items()}


def _figures(figures: selectors.Figures) -> dict[str, int]:
    return {
        "requests": figures.requests,
        "images": figures.images,
        "errors": figures.errors,
        "cost": figures.cost_micro,
    }


def _in(window: selectors.Window, start: datetime | None = None) -> QuerySet[UsageRecord]:
    since = start or window.start
    end = since + window.step if start else window.end
    return UsageRecord.objects.filter(created_at__gte=since, created_at__lt=end)


@pytest.mark.parametrize("range_", ["24h", "30d"])
def test_the_figures_equal_the_usage_records_period_by_period(
    seeded: list[UsageRecord], clock: time_machine.Traveller, range_: selectors.Range
) -> None:
    window = selectors.window(range_, NOW)
    assert len(window.periods) == (24 if range_ == "24h" else 30)
    assert window.end == (
        datetime(2026, 11, 20, 15, tzinfo=UTC)
        if range_ == "24h"
        else datetime(2026, 11, 21, tzinfo=UTC)
    )
    usage = selectors.usage(window, selectors.rollup_sums(window))

    assert _figures(usage.totals) == _expected(_in(window))
    assert usage.totals.requests > 0
    for period, figures in zip(window.periods, usage.series, strict=True):
        assert _figures(figures) == _expected(_in(window, period)), period
    for found in usage.by_workspace:
        assert _figures(found.figures) == _expected(_in(window).filter(workspace__slug=found.label))
    for found in usage.by_alias:
        assert _figures(found.figures) == _expected(_in(window).filter(alias=found.label))
    for found in usage.by_provider:
        assert _figures(found.figures) == _expected(_in(window).filter(provider=found.label))
    assert {s.label for s in usage.by_workspace} == {"acme", "globex"}
    assert usage.totals.upstream_errors == _in(window).filter(status=502).count()
    assert usage.totals.p95_ms is not None


def test_a_workspace_filter_narrows_every_figure_to_that_workspace(
    seeded: list[UsageRecord], keys: dict[str, ApiKey], clock: time_machine.Traveller
) -> None:
    acme = Workspace.objects.get(slug="acme")
    Budget.objects.create(
        workspace=keys["globex-app"].workspace,
        scope="workspace",
        period="lifetime",
        limit_micro=100,
        used_micro=90,
    )
    data = selectors.dashboard("30d", NOW, acme)
    window = data.window

    assert _figures(data.usage.totals) == _expected(_in(window).filter(workspace=acme))
    assert _figures(data.usage.totals) != _expected(_in(window))
    assert [s.label for s in data.usage.by_workspace] == ["acme"]
    assert {k.workspace for k in data.top_keys} == {"acme"}
    assert data.budgets == []
    assert len(selectors.dashboard("30d", NOW).budgets) == 1


def test_top_keys_are_the_biggest_spenders_of_the_range(
    seeded: list[UsageRecord], clock: time_machine.Traveller
) -> None:
    window = selectors.window("30d", NOW)
    found = selectors.top_keys(selectors.rollup_sums(window), limit=3)
    spent = (
        _in(window)
        .values("key_id")
        .annotate(cost=Sum("cost_micro"), requests=Count("id"))
        .order_by("-cost")
    )
    assert [(k.key_id, k.cost_micro, k.requests) for k in found] == [
        (row["key_id"], row["cost"], row["requests"]) for row in spent[:3]
    ]
    assert found[0].name.endswith("batch")
    assert found[0].prefix.startswith("apk_")


def test_budgets_at_80_percent_of_money_or_images_in_their_current_period_are_listed(
    keys: dict[str, ApiKey], clock: time_machine.Traveller
) -> None:
    key = keys["acme-app"]
    workspace = key.workspace
    today = NOW.replace(hour=0, minute=0)
    Budget.objects.create(  # 79%: not yet
        workspace=workspace,
        scope="workspace",
        period="month",
        limit_micro=1_000_000,
        used_micro=790_000,
        period_start=NOW.replace(day=1, hour=0, minute=0),
    )
    team_budget = Budget.objects.create(  # 80% of its money
        workspace=workspace,
        team=key.team,
        scope="team",
        period="day",
        limit_micro=1_000_000,
        used_micro=800_000,
        period_start=today,
    )
    key_budget = Budget.objects.create(  # 95% of its images, 10% of its money
        workspace=workspace,
        key=key,
        scope="key",
        period="lifetime",
        limit_micro=1_000_000,
        used_micro=100_000,
        limit_images=20,
        used_images=19,
    )
    Budget.objects.create(  # full, but of yesterday: its counters read zero today
        workspace=workspace,
        key=keys["acme-batch"],
        scope="key",
        period="day",
        limit_images=5,
        used_images=5,
        period_start=today - timedelta(days=1),
    )
    found = selectors.budgets_near_limit(NOW)
    assert [(b.budget.pk, b.percent) for b in found] == [(key_budget.pk, 95), (team_budget.pk, 80)]
    assert [b.target for b in found] == ["key acme app", "team acme/ops"]


def test_upstream_errors_are_listed_per_deployment_by_name(
    keys: dict[str, ApiKey], platform_alias: ModelAlias, clock: time_machine.Traveller
) -> None:
    deployment = Deployment.objects.get(alias=platform_alias)
    key = keys["acme-app"]
    UsageRecord.objects.bulk_create(
        [
            _record(
                key,
                NOW - timedelta(minutes=5),
                n,
                alias="demo-image",
                provider="local",
                deployment_id=None,
                status=502,
                error_code="upstream_error",
                images=0,
                attempts=[
                    {
                        "attempt": 1,
                        "deployment": deployment.pk,
                        "provider": "local",
                        "outcome": "timeout",
                    }
                ],
            )
            for n in range(3)
        ]
        + [_record(key, NOW - timedelta(minutes=4), 9, alias="", provider="openai", status=500)]
    )
    rollups.rollup_hour(NOW)
    found = selectors.upstream_errors_by_deployment(
        selectors.rollup_sums(selectors.window("24h", NOW))
    )
    assert [(e.label, e.provider, e.upstream_errors) for e in found] == [
        ("demo-image → local:local-image", "local", 3),
        ("openai (passthrough, no deployment)", "openai", 1),
    ]


def test_deployment_health_lists_open_circuits_first(
    local_credential: ProviderCredential, keys: dict[str, ApiKey]
) -> None:
    alias = routing_services.alias_create(actor=ACTOR, name="image-prod")
    healthy, broken = (
        routing_services.deployment_create(
            actor=ACTOR,
            alias=alias,
            credential=local_credential,
            upstream_model=model,
            priority=priority,
        )
        for priority, model in enumerate(("local-image", "local-image-2"))
    )
    private = routing_services.alias_create(
        actor=ACTOR, name="private", workspace=keys["globex-app"].workspace
    )
    routing_services.deployment_create(
        actor=ACTOR, alias=private, credential=local_credential, upstream_model="local-image"
    )
    health.force_open(broken.pk, 600)
    found = selectors.deployment_health()
    assert [(r.deployment_id, r.state) for r in found.rows[:2]] == [
        (broken.pk, "open"),
        (healthy.pk, "closed"),
    ]
    assert found.rows[0].detail.startswith("open until ")
    assert (found.total, found.closed, found.half_open, found.open_circuits) == (3, 2, 0, 1)
    acme = selectors.deployment_health(keys["acme-app"].workspace_id)
    assert acme.total == 2  # the platform's two; globex's private alias is not acme's


# --- the page ---------------------------------------------------------------------------------


def _totals(html: str) -> dict[str, str]:
    return dict(re.findall(r'<dd data-total="(\w+)">([^<]*)</dd>', html))


def test_the_admin_landing_page_draws_the_dashboard_in_a_bounded_number_of_queries(
    admin_client: Client,
    seeded: list[UsageRecord],
    clock: time_machine.Traveller,
    django_assert_max_num_queries: Any,
) -> None:
    with django_assert_max_num_queries(12):
        page = admin_client.get(reverse("admin:index"), {"range": "30d"})
    assert page.status_code == 200
    html = page.content.decode()
    assert html.count('<figure class="dash-chart"><figcaption>') == 7
    assert html.count('<svg viewBox="0 0 600 200" role="img"') == 7
    assert html.count('class="dash-bar ') > 20
    assert 'class="dash-line ' in html
    expected = _expected(_in(selectors.window("30d", NOW)))
    assert _totals(html)["requests"] == f"{expected['requests']:,}"
    assert _totals(html)["images"] == f"{expected['images']:,}"
    assert _totals(html)["spend"] == f"${expected['cost'] / 1_000_000:,.2f}"
    assert 'href="/static/gateway/dashboard.css"' in html
    assert 'id="nav-sidebar"' in html  # the models, a click away


def test_the_page_costs_the_same_queries_however_many_records(
    admin_client: Client,
    seeded: list[UsageRecord],
    keys: dict[str, ApiKey],
    clock: time_machine.Traveller,
    django_assert_num_queries: Any,
    django_assert_max_num_queries: Any,
) -> None:
    with django_assert_max_num_queries(12) as before:
        admin_client.get(reverse("admin:index"))
    more = [_record(keys["acme-app"], NOW - timedelta(minutes=m), 1000 + m) for m in range(300)]
    UsageRecord.objects.bulk_create(more)
    rollups.rollup_hours(NOW - timedelta(hours=5), NOW)
    with django_assert_num_queries(len(before.captured_queries)):
        admin_client.get(reverse("admin:index"))


def test_the_workspace_filter_narrows_the_page(
    admin_client: Client, seeded: list[UsageRecord], clock: time_machine.Traveller
) -> None:
    acme = Workspace.objects.get(slug="acme")
    page = admin_client.get(reverse("admin:index"), {"range": "30d", "workspace": str(acme.pk)})
    html = page.content.decode()
    expected = _expected(_in(selectors.window("30d", NOW)).filter(workspace=acme))
    assert _totals(html)["requests"] == f"{expected['requests']:,}"
    assert 'id="dash-scope-name">acme<' in html
    assert f'<option value="{acme.pk}" selected>' in html
    assert "Spend by alias" in html


def test_an_unknown_workspace_is_not_found(admin_client: Client) -> None:
    assert admin_client.get(reverse("admin:index"), {"workspace": "999999"}).status_code == 404
    assert admin_client.get(reverse("admin:index"), {"workspace": "acme"}).status_code == 404


def test_the_workspace_admin_page_links_to_its_dashboard(
    admin_client: Client, keys: dict[str, ApiKey]
) -> None:
    acme = Workspace.objects.get(slug="acme")
    page = admin_client.get(reverse("admin:tenants_workspace_change", args=[acme.pk]))
    assert f'href="/admin/?workspace={acme.pk}"' in page.content.decode()


def test_only_staff_who_may_view_usage_see_the_dashboard(seeded: list[UsageRecord]) -> None:
    users = get_user_model().objects
    anonymous = Client().get(reverse("admin:index"))
    assert anonymous.status_code == 302
    assert anonymous["Location"].startswith(reverse("admin:login"))

    member = users.create_user("member", password="a long member password")
    visitor = Client()
    visitor.force_login(member)
    assert visitor.get(reverse("admin:index")).status_code == 302  # not staff: sign in again

    staff = users.create_user("staff", password="a long staff password", is_staff=True)
    viewer = Client()
    viewer.force_login(staff)
    plain = viewer.get(reverse("admin:index")).content.decode()
    assert 'id="dashboard"' not in plain
    assert 'class="dash-chart"' not in plain

    staff.user_permissions.add(Permission.objects.get(codename="view_hourlyusage"))
    viewer.force_login(users.get(pk=staff.pk))
    assert 'id="dashboard"' in viewer.get(reverse("admin:index")).content.decode()


def test_chart_labels_are_escaped_and_empty_charts_say_so() -> None:
    drawn = charts.stacked_bars(
        "Requests by alias",
        ["00:00", "01:00"],
        [charts.Series('<script>alert("x")</script>', [1, 2])],
        str,
    )
    assert "<script>" not in drawn
    assert "&lt;script&gt;" in drawn
    empty = charts.line_chart("Images", ["00:00"], [charts.Series("images", [0])], str)
    assert "No usage in this range" in empty
    assert charts.ticks(0.7) == [0, 0.2, 0.4, 0.6, 0.8]
    assert charts.ticks(930) == [0, 250, 500, 750, 1000]


def test_past_days_are_summed_once_and_read_again_when_their_rollup_moves(
    keys: dict[str, ApiKey],
    clock: time_machine.Traveller,
    django_capture_on_commit_callbacks: Any,
    django_assert_num_queries: Any,
) -> None:
    key = keys["acme-app"]
    day = NOW - timedelta(days=3)
    UsageRecord.objects.bulk_create([_record(key, day, 1), _record(key, NOW, 2)])
    with django_capture_on_commit_callbacks(execute=True):  # the marks follow the commit
        rollups.rollup_hour(day)
        rollups.rollup_hour(NOW)
    window = selectors.window("30d", NOW)
    with django_assert_num_queries(3):  # every day read, in one set of queries
        first = selectors.rollup_sums(window)
    with django_assert_num_queries(0):
        assert selectors.rollup_sums(window) == first

    UsageRecord.objects.bulk_create([_record(key, day + timedelta(minutes=5), 3)])
    with django_capture_on_commit_callbacks(execute=True):
        rollups.rollup_hour(day)
    with django_assert_num_queries(3):  # only the day rolled up again
        moved = selectors.rollup_sums(window)
    assert selectors.usage(window, moved).totals.requests == 3
    assert selectors.usage(window, moved).series[-4].requests == 2  # three days ago
    assert selectors.usage(window, moved.of_workspace(keys["globex-app"].workspace_id)).totals == (
        selectors.Figures()
    )


def test_without_a_beat_the_page_rolls_up_what_was_not(
    admin_client: Client,
    keys: dict[str, ApiKey],
    settings: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    settings.CELERY_TASK_ALWAYS_EAGER = True  # the embedded default: no worker, no beat
    now = datetime.now(UTC)
    UsageRecord.objects.bulk_create(
        [_record(keys["acme-app"], now - timedelta(hours=h), h) for h in (0, 5, 20)]
    )
    with django_capture_on_commit_callbacks(execute=True):
        page = admin_client.get(reverse("admin:index"))
    assert _totals(page.content.decode())["requests"] == "3"
    assert rollups.rolled_within(60)


def test_the_warm_task_sums_the_month_ahead_of_the_page(
    admin_client: Client,
    keys: dict[str, ApiKey],
    clock: time_machine.Traveller,
    django_capture_on_commit_callbacks: Any,
    django_assert_max_num_queries: Any,
) -> None:
    UsageRecord.objects.bulk_create(
        [_record(keys["acme-app"], NOW - timedelta(days=d), d) for d in range(0, 30, 3)]
    )
    with django_capture_on_commit_callbacks(execute=True):
        rollups.rollup_hours(NOW - timedelta(days=30), NOW)
    assert warm_dashboard() == 30
    assert warm_dashboard() == 0
    with django_assert_max_num_queries(9):  # no query of the rollup: its sums are kept
        page = admin_client.get(reverse("admin:index"), {"range": "30d"})
    assert _totals(page.content.decode())["requests"] == "10"

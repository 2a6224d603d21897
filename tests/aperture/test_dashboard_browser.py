"""The operators' dashboard in Debian's headless Chromium: an operator signs in, the landing
page draws its charts, a seeded day's figures equal the database's, and the workspace filter
narrows them. Screenshots (light and dark theme) go to var/test-artifacts/."""

from collections.abc import Iterator
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db.models import Count, QuerySet, Sum
from django.utils import timezone
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions as ready
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.ui import WebDriverWait

from billing import rollups
from billing.models import Budget, UsageRecord
from gateway.dashboard.page import usd
from tenants import services
from tenants.models import ApiKey, Workspace
from tests.conftest import ACTOR
from tests.support import ROOT

WAIT_SECONDS = 20
ARTIFACTS = ROOT / "var" / "test-artifacts"


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
        "--disable-gpu",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver: WebDriver, css: str) -> WebElement:
    return WebDriverWait(driver, WAIT_SECONDS).until(
        ready.presence_of_element_located((By.CSS_SELECTOR, css))
    )


def _screenshot(driver: WebDriver, name: str) -> Path:
    """The whole page, not only the window."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    driver.execute_script("window.scrollTo(0, 0)")
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1400, max(1000, int(height)))
    try:
        driver.save_screenshot(str(path))
    finally:
        driver.set_window_size(1400, 1000)
    return path


def _seed(keys: list[ApiKey], day: datetime) -> None:
    """Usage on `day` in each workspace, and in the last hours; rolled up hour by hour."""
    records = []
    for n in range(120):
        key = keys[n % len(keys)]
        at = day + timedelta(hours=n % 24, minutes=n % 60) if n < 96 else timezone.now()
        at -= timedelta(minutes=0 if n < 96 else n - 90)
        failed = n % 11 == 0
        records.append(
            UsageRecord(
                request_id=f"req_browser_{n}",
                created_at=at,
                workspace_id=key.workspace_id,
                team_id=key.team_id,
                key=key,
                alias=("image-prod", "image-fast", "image-hd")[n % 3],
                provider=("openai", "gemini")[n % 4 == 0],
                endpoint="images.generations",
                status=502 if failed else 200,
                error_code="upstream_error" if failed else "",
                images=0 if failed else 1 + n % 2,
                cost_micro=0 if failed else 25_000 * (1 + n % 7),
                total_ms=300 + 173 * n % 12_000,
            )
        )
    UsageRecord.objects.bulk_create(records)
    for hour in {rollups.hour_start(r.created_at) for r in records}:
        rollups.rollup_hour(hour)


def _db(records: QuerySet[UsageRecord]) -> dict[str, str]:
    sums: dict[str, Any] = records.aggregate(
        requests=Count("id"), images=Sum("images"), cost=Sum("cost_micro")
    )
    return {
        "requests": f"{sums['requests']:,}",
        "images": f"{sums['images'] or 0:,}",
        "spend": usd(sums["cost"] or 0),
    }


def _shown_totals(driver: WebDriver) -> dict[str, str]:
    return {
        name: driver.find_element(By.CSS_SELECTOR, f'#dash-totals dd[data-total="{name}"]').text
        for name in ("requests", "images", "spend")
    }


@pytest.mark.django_db(transaction=True)
def test_an_operator_reads_the_dashboard_and_narrows_it_to_a_workspace(
    browser: WebDriver, live_server: object
) -> None:
    keys = []
    for slug in ("acme", "globex"):
        workspace = services.workspace_create(actor=ACTOR, slug=slug, name=slug.title())
        team = services.team_create(actor=ACTOR, workspace=workspace, slug="ops", name="Ops")
        keys += [
            services.key_create(actor=ACTOR, team=team, name=f"{slug} {name}").key
            for name in ("web", "batch")
        ]
    acme = Workspace.objects.get(slug="acme")
    Budget.objects.create(
        workspace=acme,
        scope="workspace",
        period="lifetime",
        limit_micro=1_000_000,
        used_micro=870_000,
    )
    day = datetime.combine(timezone.now().date() - timedelta(days=3), time.min, tzinfo=UTC)
    _seed(keys, day)
    get_user_model().objects.create_superuser("op", "op@localhost", "a long operator password")

    browser.get(f"{live_server}/admin/login/")
    _wait(browser, "#id_username").send_keys("op")
    browser.find_element(By.ID, "id_password").send_keys("a long operator password")
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()

    # The landing page is the dashboard, its charts drawn.
    _wait(browser, "#dashboard")
    charts = browser.find_elements(By.CSS_SELECTOR, "figure.dash-chart svg")
    assert len(charts) == 7
    for chart in charts:
        assert chart.size["width"] > 300 and chart.size["height"] > 100
        marks = chart.find_elements(By.CSS_SELECTOR, "rect.dash-bar, path.dash-line")
        assert marks, chart.get_attribute("aria-label")
    last_day = UsageRecord.objects.filter(created_at__gte=timezone.now() - timedelta(hours=24))
    assert _shown_totals(browser)["requests"] == _db(last_day)["requests"]

    # The last 30 days: the seeded day's row and the range's totals equal the database's.
    browser.find_element(By.LINK_TEXT, "Last 30 days").click()
    _wait(browser, ".dash-range.selected[href*='30d']")
    browser.find_element(By.CSS_SELECTOR, "details.dash-data summary").click()
    row = browser.find_element(By.ID, f"dash-period-{day:%Y-%m-%d}")
    shown_day = {
        name: row.find_element(By.CSS_SELECTOR, f'td[data-col="{name}"]').text
        for name in ("requests", "images", "spend")
    }
    seeded_day = UsageRecord.objects.filter(
        created_at__gte=day, created_at__lt=day + timedelta(days=1)
    )
    assert shown_day == _db(seeded_day)
    assert seeded_day.count() == 96
    everything = _db(UsageRecord.objects.all())
    assert _shown_totals(browser) == everything
    assert "workspace acme" in browser.find_element(By.ID, "dash-budgets").text
    light = _screenshot(browser, "dashboard-30d-light.png")

    # The admin's dark theme: the same page, readable (the theme toggle's stored choice).
    browser.execute_script("localStorage.setItem('theme', 'dark')")
    browser.refresh()
    _wait(browser, "#dashboard")
    assert browser.execute_script("return document.documentElement.dataset.theme") == "dark"
    axis = browser.find_element(By.CSS_SELECTOR, "figure.dash-chart svg text.dash-axis")
    assert axis.value_of_css_property("fill") != "rgb(102, 102, 102)"  # light theme's grey
    dark = _screenshot(browser, "dashboard-30d-dark.png")
    browser.execute_script("localStorage.removeItem('theme')")

    # The workspace filter narrows every figure to acme's.
    Select(browser.find_element(By.ID, "dash-workspace")).select_by_value(str(acme.pk))
    browser.find_element(By.ID, "dash-apply").click()
    _wait(browser, "#dash-scope-name")
    narrowed = _shown_totals(browser)
    assert narrowed == _db(UsageRecord.objects.filter(workspace=acme))
    assert narrowed != everything
    assert "globex" not in browser.find_element(By.ID, "dash-top-keys").text
    workspace_shot = _screenshot(browser, "dashboard-30d-acme.png")

    for path in (light, dark, workspace_shot):
        assert path.stat().st_size > 20_000

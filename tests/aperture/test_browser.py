"""Browser checks in Debian's headless Chromium: the interactive API docs as a new tenant
uses them, and the admin's pieces that run in the browser."""

from collections.abc import Iterator

import pytest
from django.contrib.auth import get_user_model
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions as ready
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.ui import WebDriverWait

from tenants import services
from tenants.models import ApiKey, Team
from tests.factories import TeamFactory, WorkspaceFactory

WAIT_SECONDS = 20


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
        ready.element_to_be_clickable((By.CSS_SELECTOR, css))
    )


def _operation(driver: WebDriver, method: str, path: str) -> WebElement:
    """The expanded Swagger UI block of one operation."""
    summary = WebDriverWait(driver, WAIT_SECONDS).until(
        ready.element_to_be_clickable(
            (
                By.XPATH,
                f"//div[contains(@class,'opblock-{method}')]"
                f"//*[@data-path='{path}']/ancestor::button[1]",
            )
        )
    )
    block = summary.find_element(
        By.XPATH, "./ancestor::div[contains(concat(' ', @class, ' '), ' opblock ')][1]"
    )
    summary.click()
    WebDriverWait(driver, WAIT_SECONDS).until(
        lambda _: "is-open" in (block.get_attribute("class") or "")
    )
    return block


def _response_text(driver: WebDriver, block: WebElement) -> str:
    locator = (By.CSS_SELECTOR, ".live-responses-table .response-col_description pre")
    WebDriverWait(driver, WAIT_SECONDS).until(lambda _: block.find_elements(*locator))
    return str(block.find_element(*locator).text)


@pytest.mark.django_db(transaction=True)
def test_a_new_tenant_authorizes_in_the_docs_and_mints_a_key_there(
    browser: WebDriver, live_server: object
) -> None:
    team = TeamFactory.create(
        workspace=WorkspaceFactory.create(slug="acme", name="Acme"), slug="design"
    )
    admin = services.key_create(
        actor="system:tests", team=team, name="admin", scopes=["manage:workspace"]
    )
    browser.get(f"{live_server}/api/docs/")
    _wait(browser, "button.authorize").click()
    field = _wait(browser, ".modal-ux input")
    field.send_keys(admin.secret)
    _wait(browser, ".modal-ux .auth-btn-wrapper button.authorize").click()
    _wait(browser, ".modal-ux button.btn-done").click()

    workspace = _operation(browser, "get", "/api/v1/workspace")
    workspace.find_element(By.CSS_SELECTOR, "button.try-out__btn").click()
    workspace.find_element(By.CSS_SELECTOR, "button.execute").click()
    assert '"slug": "acme"' in _response_text(browser, workspace)

    mint = _operation(browser, "post", "/api/v1/keys")
    mint.find_element(By.CSS_SELECTOR, "button.try-out__btn").click()
    body = mint.find_element(By.CSS_SELECTOR, "textarea.body-param__text")
    body.clear()
    body.send_keys('{"name": "teammate from the docs", "scopes": ["images"]}')
    mint.find_element(By.CSS_SELECTOR, "button.execute").click()
    answer = _response_text(browser, mint)
    assert '"secret": "apk_' in answer
    minted = ApiKey.objects.get(name="teammate from the docs")
    assert minted.scopes == ["images"]
    assert minted.created_by == f"key:{admin.key.public_id}"


@pytest.mark.django_db(transaction=True)
def test_the_admin_fills_in_a_providers_default_root_in_the_browser(
    browser: WebDriver, live_server: object
) -> None:
    get_user_model().objects.create_superuser("op", "op@localhost", "a long operator password")
    browser.get(f"{live_server}/admin/login/")
    _wait(browser, "#id_username").send_keys("op")
    browser.find_element(By.ID, "id_password").send_keys("a long operator password")
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    _wait(browser, "#user-tools")
    browser.get(f"{live_server}/admin/routing/providercredential/add/")
    base_url = _wait(browser, "#id_base_url")
    Select(browser.find_element(By.ID, "id_provider")).select_by_value("gemini")
    WebDriverWait(browser, WAIT_SECONDS).until(
        lambda _: base_url.get_attribute("value") == "https://generativelanguage.googleapis.com"
    )
    Select(browser.find_element(By.ID, "id_provider")).select_by_value("xai")
    WebDriverWait(browser, WAIT_SECONDS).until(
        lambda _: base_url.get_attribute("value") == "https://api.x.ai"
    )
    base_url.clear()
    base_url.send_keys("https://my-proxy.example.com")
    Select(browser.find_element(By.ID, "id_provider")).select_by_value("openai")
    assert base_url.get_attribute("value") == "https://my-proxy.example.com"  # typed: kept


@pytest.mark.django_db(transaction=True)
def test_an_operator_creates_a_key_in_the_admin_and_sees_its_secret_once(
    browser: WebDriver, live_server: object
) -> None:
    team: Team = TeamFactory.create(
        workspace=WorkspaceFactory.create(slug="acme", name="Acme"), slug="design"
    )
    get_user_model().objects.create_superuser("op2", "op2@localhost", "another long password")
    browser.get(f"{live_server}/admin/login/")
    _wait(browser, "#id_username").send_keys("op2")
    browser.find_element(By.ID, "id_password").send_keys("another long password")
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    _wait(browser, "#user-tools")
    browser.get(f"{live_server}/admin/tenants/apikey/add/")
    _wait(browser, ".select2-selection").click()
    _wait(browser, ".select2-search__field").send_keys("design")
    WebDriverWait(browser, WAIT_SECONDS).until(
        ready.text_to_be_present_in_element((By.CSS_SELECTOR, ".select2-results__option"), "design")
    )
    _wait(browser, ".select2-results__option--highlighted, .select2-results__option").click()
    browser.find_element(By.ID, "id_name").send_keys("made in a browser")
    browser.find_element(By.CSS_SELECTOR, "input[name=_save]").click()
    secret = _wait(browser, "#api-key-secret").text
    key = ApiKey.objects.get(name="made in a browser")
    assert key.team == team
    assert secret.startswith(f"apk_{key.public_id}_")
    browser.get(f"{live_server}/admin/tenants/apikey/{key.pk}/change/")
    _wait(browser, "#id_name")
    assert secret not in browser.page_source

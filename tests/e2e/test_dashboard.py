"""The web dashboard end to end: a real `onep up`, Debian's headless Chromium driven through
its chromedriver (Selenium), a real container PostgreSQL.

A project's member logs in with the URL `onep ui` prints, creates a container database
through the form, watches it reach ACTIVE and HEALTHY on the page (live, without a reload)
and deletes it. Screenshots are kept under ``test-artifacts/dashboard/`` (or
``$ONEP_TEST_ARTIFACTS``); any error in the browser's console fails the test.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.wait import WebDriverWait

from tests.e2e.conftest import Platform, _require

pytestmark = pytest.mark.e2e
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = Path(
    os.environ.get("ONEP_TEST_ARTIFACTS") or Path(__file__).resolve().parents[2] / "test-artifacts"
)
NAME = "dash1"


class Browser:
    """A headless Chromium whose console errors are collected as the test goes."""

    def __init__(self, driver: WebDriver, shots: Path) -> None:
        self.driver, self.shots = driver, shots
        self.console: list[dict[str, Any]] = []

    def drain_console(self) -> None:
        self.console += self.driver.get_log("browser")

    def errors(self) -> list[dict[str, Any]]:
        self.drain_console()
        return [e for e in self.console if e["level"] == "SEVERE"]

    def shot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        self.driver.save_screenshot(str(path))
        print(f"dashboard screenshot: {path}")
        return path

    def wait(self, what: str, until: Any, timeout: float = 600) -> Any:
        # the live parts are replaced every 2 s: an element read as it goes is read again
        return WebDriverWait(
            self.driver, timeout, poll_frequency=0.5,
            ignored_exceptions=(StaleElementReferenceException,),
        ).until(lambda _d: until(), message=what)  # fmt: skip

    def text(self, css: str) -> str:
        """The first match's text, found again if the live refresh replaced it meanwhile."""
        for _attempt in range(5):
            try:
                found = self.driver.find_elements(By.CSS_SELECTOR, css)
                return found[0].text.strip() if found else ""
            except StaleElementReferenceException:
                continue
        raise AssertionError(f"{css} kept being replaced")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    for path in (CHROMIUM, CHROMEDRIVER):
        _require(shutil.which(path) is not None, f"{path} is not installed (scripts/setup.sh)")
    options = Options()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # the Debian chromedriver, named: Selenium Manager never runs (nothing is downloaded)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    shots = ARTIFACTS / "dashboard"
    shots.mkdir(parents=True, exist_ok=True)
    print(f"dashboard screenshots go to {shots}")
    try:
        yield Browser(driver, shots)
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def member_token(platform: Platform) -> str:
    created = platform.json("project", "create", "team-ui")
    return str(created["token"])


def test_log_in_create_watch_and_delete_a_database(
    platform: Platform, browser: Browser, member_token: str
) -> None:
    driver = browser.driver
    url = platform.run("ui", ONEP_TOKEN=member_token).stdout.strip()
    assert url.startswith(f"http://127.0.0.1:{platform.port}/ui/login?ticket="), url
    driver.get(url)
    assert driver.current_url.endswith("/ui/databases"), driver.current_url
    assert "team-ui" in browser.text("header .who")
    driver.get(url)  # the ticket is used up: the login form says so
    assert "ticket_invalid" in browser.text("p.error")
    refused = browser.errors()  # that page is answered 401 on purpose: the only error
    assert all("401" in e["message"] for e in refused), refused
    browser.console.clear()
    driver.get(f"http://127.0.0.1:{platform.port}/ui/databases")  # the session lives on

    form = driver.find_element(By.ID, "create-database")
    form.find_element(By.NAME, "name").send_keys(NAME)
    Select(form.find_element(By.NAME, "engine")).select_by_value("postgresql:15")
    Select(form.find_element(By.NAME, "flavor")).select_by_value("container.small")
    form.find_element(By.NAME, "database").send_keys("appdb")
    form.find_element(By.NAME, "user").send_keys("alice")
    form.find_element(By.NAME, "password").send_keys("S3cret-pass")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    browser.wait("the database's page", lambda: driver.current_url.endswith(f"/{NAME}"))
    assert browser.text("#database .db-status .status") in ("BUILD", "ACTIVE")

    driver.execute_script("window.noReload = true;")  # gone if the page reloads
    browser.wait(
        "ACTIVE and HEALTHY, the create operation SUCCEEDED, on the page",
        lambda: (
            browser.text("#database .db-status .status") == "ACTIVE"
            and browser.text("#database .db-health .status") == "HEALTHY"
            and browser.text("#database tr[data-operation] .status") == "SUCCEEDED"
        ),
    )
    assert driver.execute_script("return window.noReload === true;"), "the page was reloaded"
    browser.wait(
        "every step of the create shown done",
        lambda: (
            (steps := driver.find_elements(By.CSS_SELECTOR, "#database ol.steps li"))
            and all(s.get_attribute("class") == "step-done" for s in steps)
        ),
        timeout=10,
    )
    browser.shot("database")

    driver.get(f"http://127.0.0.1:{platform.port}/ui/databases")
    row = f'#databases tr[data-db="{NAME}"]'
    assert browser.text(f"{row} .db-status") == "ACTIVE"
    browser.shot("databases")
    shown = [db["name"] for db in platform.json("db", "list", ONEP_TOKEN=member_token)]
    assert shown == [NAME]

    driver.get(f"http://127.0.0.1:{platform.port}/ui/databases/{NAME}")
    driver.find_element(By.ID, "delete").click()
    browser.wait("the list", lambda: driver.current_url.endswith("/ui/databases"))
    driver.execute_script("window.noReload = true;")
    browser.wait(
        "the database gone from the list",
        lambda: not driver.find_elements(By.CSS_SELECTOR, row),
    )
    assert driver.execute_script("return window.noReload === true;"), "the page was reloaded"
    assert platform.json("db", "list", ONEP_TOKEN=member_token) == []

    driver.get(f"http://127.0.0.1:{platform.port}/ui/catalog")
    assert driver.find_elements(By.CSS_SELECTOR, "li.no")  # what cannot be done, and why
    browser.shot("catalog")
    assert browser.errors() == [], browser.errors()

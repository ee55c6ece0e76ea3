"""The dashboard in a real browser: headless Chromium (Debian's `chromium` and
`chromium-driver`, driven by Selenium) against a real API and worker in auth `jwt` mode.

It signs in through the login box, watches a submitted job run to completed without a
reload, finds the per-owner running limit in the limits panel, opens a long job, follows
its progress messages in the log panel, cancels it and retries it, and is sent back to the
login box when its credential stops working.
Screenshots land in tests/artifacts/ (gitignored), kept for a human to look at.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from tests.support import ROOT, api_with_worker, start_api, write_settings

pytestmark = pytest.mark.timeout(300)

SECRET = "dashboard-browser-secret-" + "b" * 32
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1300",
]


def token(subject: str = "root", roles: tuple[str, ...] = ("admin",)) -> str:
    now = int(time.time())
    claims = {"sub": subject, "roles": list(roles), "iss": "skillq", "aud": "skillq-api"}
    return jwt.encode({**claims, "iat": now, "exp": now + 3600}, SECRET, algorithm="HS256")


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    directory = tmp_path_factory.mktemp("dashboard-browser")
    sections = {
        "server": {"data_dir": str(directory / "data")},
        "workers": {"max_retries": 0, "retry_delay_secs": 0, "job_timeout_secs": 120},
        "auth": {"mode": "jwt"},
        "auth.jwt": {"secret": SECRET},
        # Shown in the limits panel; more than the tests ever run at once.
        "quotas": {"max_running": 3},
    }
    with api_with_worker(directory, sections) as url:
        yield url


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        message = "chromium and chromium-driver are not installed (apt-get install them)"
        if os.environ.get("SKILLQ_REQUIRE_SERVICES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    # An explicit driver path: Selenium Manager never tries to download one.
    browser = webdriver.Chrome(service=Service(driver), options=options)
    try:
        yield browser
    finally:
        browser.quit()


def api(base_url: str) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token()}"}
    return httpx.Client(base_url=base_url, headers=headers, timeout=10)


def submit(base_url: str, **params: object) -> dict:
    with api(base_url) as http:
        response = http.post("/api/v1/jobs", json={"type": "sleep", "params": params})
    assert response.status_code == 202, response.text
    return response.json()


def until(browser: WebDriver, condition, what: str, timeout: float = 60):
    # The jobs table is redrawn as events arrive: an element found a moment ago may be gone
    # by the time it is read or clicked; look again.
    return WebDriverWait(
        browser, timeout, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,)
    ).until(lambda _: condition(), message=f"timed out waiting for {what}")


def click(browser: WebDriver, selector: str, what: str) -> None:
    def clicked() -> bool:
        browser.find_element(By.CSS_SELECTOR, selector).click()
        return True

    until(browser, clicked, what)


def text_of(browser: WebDriver, selector: str) -> str:
    found = browser.find_elements(By.CSS_SELECTOR, selector)
    return found[0].text if found else ""


def visible(browser: WebDriver, selector: str) -> bool:
    found = browser.find_elements(By.CSS_SELECTOR, selector)
    return bool(found) and found[0].is_displayed()


def screenshot(browser: WebDriver, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    browser.save_screenshot(str(path))
    print(f"screenshot: {path}")
    return path


def sign_in(browser: WebDriver, credential: str) -> None:
    until(browser, lambda: visible(browser, "#login"), "the login box")
    field = browser.find_element(By.ID, "credential")
    field.clear()
    field.send_keys(credential)
    browser.find_element(By.CSS_SELECTOR, "#login-form button[type=submit]").click()


def open_dashboard(browser: WebDriver, base_url: str) -> None:
    """Loads the page, signing in as the admin unless this tab's session still is."""
    browser.get(f"{base_url}/dashboard/")
    until(
        browser,
        lambda: visible(browser, "#overview") or visible(browser, "#login"),
        "the page to start",
    )
    if visible(browser, "#login"):
        sign_in(browser, token())
    until(browser, lambda: visible(browser, "#overview"), "the overview")


def test_a_submitted_job_runs_to_completed_without_a_reload(
    base_url: str, browser: WebDriver
) -> None:
    browser.get(f"{base_url}/dashboard")
    sign_in(browser, "not-a-token")
    until(browser, lambda: "did not accept" in text_of(browser, "#login-error"), "a refusal")
    sign_in(browser, token())
    until(browser, lambda: visible(browser, "#overview"), "the overview")
    assert "root" in text_of(browser, "#who")
    assert visible(browser, "#owner-filter")  # an admin may filter by owner

    # Remember every state and progress text the row shows, and mark this page load.
    browser.execute_script(
        """
        window.loadMark = "same page";
        window.seen = new Set();
        new MutationObserver(() => {
          for (const cell of document.querySelectorAll("#jobs .state-cell, #jobs .progress-cell"))
            window.seen.add(cell.textContent.trim());
        }).observe(document.querySelector("#jobs tbody"),
                   {subtree: true, childList: true, characterData: true});
        """
    )
    # Long enough for the table's refresh to list it while it runs; its stream then
    # carries the rest.
    job = submit(base_url, seconds=10, steps=20)
    row = f'#jobs tr[data-id="{job["id"]}"]'
    until(browser, lambda: text_of(browser, f"{row} .state-cell") == "completed", "completed")
    seen = set(browser.execute_script("return [...window.seen]"))
    assert "running" in seen
    assert any(text.endswith("%") and text not in ("0%", "100%") for text in seen), seen
    assert browser.execute_script("return window.loadMark") == "same page"
    # The limits panel shows the per-owner running limit from /api/v1/stats.
    caps = "at most 3 running"
    until(browser, lambda: caps in text_of(browser, "#owner-caps"), "the limits panel")

    # The operations panels refresh on their own: the finished job reaches the chart.
    until(browser, lambda: "completed 1," in text_of(browser, "#chart-summary"), "the chart")
    bars = (
        "return [...document.querySelectorAll('#chart rect.done')]"
        ".map(bar => +bar.getAttribute('height'))"
    )
    heights = browser.execute_script(bars)
    assert len(heights) == 60 and sum(height > 0 for height in heights) == 1
    until(browser, lambda: "1 alive" in text_of(browser, "#worker-counts"), "the worker")
    assert "default" in text_of(browser, "#queues tbody")
    screenshot(browser, "dashboard-overview.png")


def test_a_running_job_shows_its_progress_log_and_is_cancelled(
    base_url: str, browser: WebDriver
) -> None:
    job = submit(base_url, seconds=60, steps=60)
    open_dashboard(browser, base_url)
    link = f'#jobs a[href="#/jobs/{job["id"]}"]'
    until(browser, lambda: visible(browser, link), "the job in the table")
    click(browser, link, "the job's link")
    until(browser, lambda: text_of(browser, "#job-state") == "running", "running")
    assert job["id"] in text_of(browser, "#job-id")
    assert '"seconds": 60' in text_of(browser, "#job-params")
    # The panel follows the job's kept log (GET .../logs, then .../logs/stream) and shows
    # the job's own progress messages from its event stream beside it.
    until(browser, lambda: "Following the job's log" in text_of(browser, "#log-status"), "log")

    def progress_lines() -> list[str]:
        return [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#log li")]

    until(
        browser,
        lambda: len({line for line in progress_lines() if "slept" in line}) >= 3,
        "three progress messages in the log",
    )
    assert any("state: running" in line for line in progress_lines())
    screenshot(browser, "dashboard-job-running.png")

    browser.find_element(By.ID, "cancel").click()
    until(browser, lambda: text_of(browser, "#job-state") == "cancelled", "cancelled")
    with api(base_url) as http:
        assert http.get(f"/api/v1/jobs/{job['id']}").json()["state"] == "cancelled"
    assert not visible(browser, "#cancel")
    assert any("state: cancelled" in line for line in progress_lines()), progress_lines()
    screenshot(browser, "dashboard-job-cancelled.png")

    browser.find_element(By.ID, "retry").click()
    until(browser, lambda: text_of(browser, "#job-state") in ("pending", "running"), "retried")
    with api(base_url) as http:
        assert http.get(f"/api/v1/jobs/{job['id']}").json()["state"] in ("pending", "running")
        http.delete(f"/api/v1/jobs/{job['id']}")
    until(browser, lambda: text_of(browser, "#job-state") == "cancelled", "cancelled again")


def test_an_unknown_id_is_reported_and_a_dead_credential_asks_again(
    base_url: str, browser: WebDriver
) -> None:
    open_dashboard(browser, base_url)
    browser.find_element(By.CSS_SELECTOR, "#find input").send_keys(
        "00000000-0000-4000-8000-000000000000"
    )
    browser.find_element(By.CSS_SELECTOR, "#find button").click()
    until(browser, lambda: text_of(browser, "#find-error") == "No such job.", "no such job")

    browser.execute_script("sessionStorage.setItem('skillq.credential', 'expired')")
    browser.refresh()
    until(browser, lambda: visible(browser, "#login"), "the login box again")
    assert not visible(browser, "#overview")
    sign_in(browser, token("viewer-1", ("viewer",)))
    until(browser, lambda: visible(browser, "#overview"), "the overview as a viewer")
    assert not visible(browser, "#owner-filter")  # only admins filter by owner
    # None of the other owners' jobs.
    until(browser, lambda: "No jobs match." in text_of(browser, "#jobs tbody"), "an empty list")


def test_in_auth_none_it_just_opens(tmp_path: Path, browser: WebDriver) -> None:
    settings = write_settings(tmp_path, {"server": {"data_dir": str(tmp_path / "data")}})
    process, url = start_api(settings, tmp_path)
    try:
        browser.get(f"{url}/dashboard")
        until(browser, lambda: visible(browser, "#overview"), "the overview")
        assert not visible(browser, "#login") and not visible(browser, "#sign-out")
        assert "auth none" in text_of(browser, "#who")
        until(browser, lambda: "No jobs match." in text_of(browser, "#jobs tbody"), "the table")
    finally:
        process.stop()

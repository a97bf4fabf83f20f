"""The page at ``/`` in headless Chromium (Selenium): upload a study, wait for its result, and check that the
numbers shown are the API's. Under CI a missing Chromium or chromedriver fails the test (``.ci/run`` installs
them)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import httpx
import pytest

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _browser_paths() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists()
                                              else None)
    if chromium is None or driver is None:
        message = "chromium or chromedriver not found (Debian: apt-get install chromium chromium-driver)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return chromium, driver


def open_browser(profile: str, *, width: int = 1280, height: int = 1000) -> Any:
    """Headless Chromium through Selenium with a fresh profile (no network, no Selenium Manager)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = _browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"]:
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(executable_path=driver))


def upload_and_wait(browser: Any, url: str, archive: Path, timeout: float = 120) -> str:
    """Open the page, choose ``archive`` in its file input and wait until the result is shown: the job id."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url + "/")
    WebDriverWait(browser, 30).until(lambda b: b.find_elements(By.CSS_SELECTOR, "#model option"))
    browser.find_element(By.ID, "file").send_keys(str(archive))
    WebDriverWait(browser, timeout).until(
        lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-result-shown") == "1")
    WebDriverWait(browser, 10).until(lambda b: b.execute_script(
        "const i = document.getElementById('figure'); return i.complete && i.naturalWidth > 0;"))
    return browser.find_element(By.TAG_NAME, "body").get_attribute("data-job-id")


def test_the_page_shows_the_apis_numbers_and_figure(live_server: str, study_zip: Path, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    with tempfile.TemporaryDirectory() as profile:
        browser = open_browser(profile)
        try:
            job_id = upload_and_wait(browser, live_server, study_zip)
            shown = {row.get_attribute("data-key"): row.find_element(By.CSS_SELECTOR, "td.value").text
                     for row in browser.find_elements(By.CSS_SELECTOR, "#probabilities tbody tr")}
            state = browser.find_element(By.ID, "state").text
            links = [a.get_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, "#files a")]
            browser.save_screenshot(str(tmp_path / "page.png"))
        finally:
            browser.quit()
    body = httpx.get(f"{live_server}/v1/jobs/{job_id}/result", timeout=30).json()
    expected = {k: f"{v:.3f}" for k, v in body["result"]["probabilities"].items()}
    assert state == "done" and shown == expected and len(shown) == 8
    assert {f"{live_server}{f['url']}" for f in body["files"]} == set(links)
    assert (tmp_path / "page.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_page_shows_a_refused_upload(live_server: str, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"not a zip")
    with tempfile.TemporaryDirectory() as profile:
        browser = open_browser(profile)
        try:
            browser.get(live_server + "/")
            WebDriverWait(browser, 30).until(lambda b: b.find_elements(By.CSS_SELECTOR, "#model option"))
            browser.find_element(By.ID, "file").send_keys(str(junk))
            WebDriverWait(browser, 30).until(lambda b: b.find_element(By.ID, "error").is_displayed())
            assert "not a zip file" in browser.find_element(By.ID, "error").text
            assert browser.find_element(By.ID, "state").text == "failed"
        finally:
            browser.quit()

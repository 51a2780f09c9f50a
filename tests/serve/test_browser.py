"""The page end to end: the real server on 127.0.0.1, driven in headless Chromium through selenium.

Uses Debian's ``chromium`` and ``chromium-driver`` packages (``/usr/bin/chromium`` and
``/usr/bin/chromedriver``), passed to selenium explicitly so that it never downloads a browser or a
driver. Without them the test skips, and fails under CI (``UNIHEMA_REQUIRE_DATA=1`` or ``CI=true``;
``.ci/run`` installs them). The screenshot of the analysed page is saved to
``test-artifacts/serve/page.png`` under the repository root (git-ignored).
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from PIL import Image

from support.paths import REPO_ROOT, missing
from unihema.data.synthetic import SyntheticConfig, generate_field
from unihema.data.synthetic import field_rng as synthetic_rng
from unihema.serve import ServeSettings, create_app

pytestmark = pytest.mark.timeout(300)

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROME_ARGUMENTS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
)  # fmt: skip
ARTIFACTS = REPO_ROOT / "test-artifacts" / "serve"
WAIT_S = 120


def _require_browser() -> None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not path.is_file():
            what = f"{path.name} (apt-get install chromium chromium-driver)"
            if os.environ.get("CI") == "true":
                pytest.fail(f"{what} missing at {path} (CI=true)")
            missing(what, path)


@pytest.fixture
def server(serve_model) -> Iterator[str]:
    """The app under uvicorn in a thread, on a free loopback port; yields its base URL."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        app = create_app(serve_model, ServeSettings(port=0))
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", access_log=False)
    instance = uvicorn.Server(config)
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    for _ in range(600):
        if instance.started or not thread.is_alive():
            break
        threading.Event().wait(0.05)
    assert instance.started, "the server did not start"
    port = instance.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    instance.should_exit = True
    thread.join(30)


@pytest.fixture
def browser() -> Iterator[object]:
    _require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in CHROME_ARGUMENTS:
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_window_size(1280, 2000)
    try:
        yield driver
    finally:
        driver.quit()


def _synthetic_field(path: Path) -> Path:
    config = SyntheticConfig(image_size=(192, 256), n_images=1, seed=3)
    Image.fromarray(generate_field(synthetic_rng(config.seed, 0), config).image).save(path)
    return path


def _wait_for_result(driver, previous_link: str | None) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def finished(d) -> bool:
        error = d.find_element(By.ID, "error")
        if error.is_displayed():
            raise AssertionError(f"the page shows an error: {error.text}")
        link = d.find_element(By.ID, "download-json").get_attribute("href")
        return d.find_element(By.ID, "results").is_displayed() and bool(link) and link != previous_link

    WebDriverWait(driver, WAIT_S).until(finished)


def test_page_uploads_an_image_and_shows_the_result(server, browser, tmp_path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    driver = browser
    driver.get(server + "/")
    WebDriverWait(driver, WAIT_S).until(
        lambda d: d.find_element(By.ID, "model-info").text.startswith("Model:")
    )
    WebDriverWait(driver, WAIT_S).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".example-button"))
    assert driver.find_element(By.ID, "task-detection").is_selected()

    driver.find_element(By.ID, "image-input").send_keys(str(_synthetic_field(tmp_path / "smear.png")))
    threshold = driver.find_element(By.ID, "score-threshold")
    threshold.clear()
    threshold.send_keys("0")  # a random model scores low: keep every cell so the table has rows
    driver.find_element(By.ID, "question").send_keys("What is the shape of the nucleus?")
    driver.find_element(By.ID, "analyse").click()
    _wait_for_result(driver, None)

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    screenshot = ARTIFACTS / "page.png"
    driver.execute_script("window.scrollTo(0, 0)")
    assert driver.save_screenshot(str(screenshot))
    print(f"screenshot: {screenshot}")

    count = int(driver.find_element(By.ID, "cell-count").text)
    summary = driver.find_element(By.ID, "summary").text
    link = driver.find_element(By.ID, "download-json").get_attribute("href")
    result = httpx.get(link).json()
    assert count == len(result["prediction"]["cells"]) > 0
    assert "film" in summary and "white cells" in summary and "Flags" in summary
    assert f"cells\n{count}" in summary  # the summary's cell total is the count shown
    assert driver.find_element(By.ID, "answer").text == result["prediction"]["answer"]
    rows = driver.find_elements(By.CSS_SELECTOR, "#cells-table tbody tr")
    assert len(rows) == count
    # The class filter keeps the rows of one class.
    name, expected = next(iter(result["prediction"]["counts"].items()))
    Select(driver.find_element(By.ID, "class-filter")).select_by_value(name)
    assert len(driver.find_elements(By.CSS_SELECTOR, "#cells-table tbody tr")) == expected
    overlay = driver.find_element(By.ID, "overlay")
    assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", overlay) > 0
    for kind in ("json", "csv", "geojson"):
        assert (
            httpx.get(driver.find_element(By.ID, f"download-{kind}").get_attribute("href")).status_code == 200
        )

    # A bundled example goes through the same path.
    driver.find_elements(By.CSS_SELECTOR, ".example-button")[1].click()
    WebDriverWait(driver, WAIT_S).until(lambda d: "field-4.png" in d.find_element(By.ID, "input-name").text)
    driver.find_element(By.ID, "analyse").click()
    _wait_for_result(driver, link)
    assert int(driver.find_element(By.ID, "cell-count").text) >= 0

    # No script error and nothing refused by the content security policy.
    severe = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    assert severe == [], severe

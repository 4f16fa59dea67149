"""The MLflow UI, opened in a real browser on the results of a tiny pipeline run.

A real ``mlflow server`` on 127.0.0.1 serves the SQLite store of the shared tiny run
(``tiny_sqlite_run``, also read by tests/e2e/test_e2e_local.py) and headless Chromium (Debian's
``chromium`` + ``chromium-driver``, driven by Selenium; nothing is downloaded at run time)
opens the links ``nasflow run`` prints: the runs table and the parent run land on the
training runs (not MLflow 3.17's GenAI overview), the headline metrics and the nested
trials are visible, the Pareto plot and an architecture diagram load as images, and the
registered model shows the ``champion`` alias.

Screenshots go to the test's tmp folder and are copied to ``test-artifacts/ui/`` (git-ignored).
Chromium is installed with apt when missing and running as root, as the container tier
installs podman; the test skips with one line only when it cannot be installed.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from mlflow_server import running_mlflow_server

from nasflow import tracking
from nasflow.cli.local_run import mlflow_links

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "ui"
#: Generous: the first render of the UI has taken over 2 min on 2 cores at load average 30.
PAGE_TIMEOUT_S = 300


def _chromium() -> tuple[str, str]:
    """Paths of chromium and chromedriver, installing them with apt if this machine lets us."""
    script = ROOT / "scripts" / "ensure_debian_packages.sh"
    done = subprocess.run(
        [str(script), "chromium:chromium", "chromedriver:chromium-driver"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    # Debian's chromium; elsewhere (e.g. GitHub's ubuntu runners) a preinstalled Chrome.
    browser = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    driver = shutil.which("chromedriver")
    if not (browser and driver):
        reason = (done.stderr.strip().splitlines() or ["chromium is not installed"])[-1]
        pytest.skip(f"no headless Chromium: {reason}")
    return browser, driver


@pytest.fixture(scope="module")
def browser():
    pytest.importorskip("selenium", reason="selenium is in the test extra: pip install -e '.[test]'")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = _chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1600,1000", "--lang=en-US"):  # fmt: skip
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(PAGE_TIMEOUT_S)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def ui(tiny_sqlite_run, tmp_path_factory):
    """The shared run's store behind a real MLflow server; yields (links, summary, client)."""
    result, uri = tiny_sqlite_run
    with running_mlflow_server(
        tmp_path_factory.mktemp("mlflow-ui"), backend_uri=uri, startup_timeout_s=240
    ) as server:
        # The links of `nasflow run`'s summary, for a UI at this server's address.
        summary = {**result.summary, "tracking_uri": server}
        yield mlflow_links(summary), summary, tracking.make_client(uri)


def _open(driver, url: str, *texts: str) -> str:
    """Open ``url`` and wait until the page shows every one of ``texts``; returns the page text."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    try:
        WebDriverWait(driver, PAGE_TIMEOUT_S).until(
            lambda d: all(text in d.find_element(By.TAG_NAME, "body").text for text in texts),
            message=f"{url}: expected {texts}",
        )
    except TimeoutException:
        # What the browser showed instead, for the one reading the failure.
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "failed-page.png"))
        (ARTIFACTS / "failed-page.txt").write_text(driver.find_element(By.TAG_NAME, "body").text)
        raise
    # The assistant panel (MLflow 3.17) takes a third of the window: close it for the screenshots.
    driver.execute_script(
        "document.querySelectorAll('button[data-component-id=\"mlflow.assistant.chat_panel.close\"]')"
        ".forEach(b => b.click())"
    )
    return driver.find_element(By.TAG_NAME, "body").text


def _loaded_images(driver, min_width: int = 100) -> list[str]:
    """``src`` of the images on the page that loaded and are at least ``min_width`` wide."""
    return driver.execute_script(
        "return [...document.images].filter(i => i.complete && i.naturalWidth >= arguments[0]).map(i => i.src)",
        min_width,
    )


def _wait_for_image(driver, min_width: int = 100) -> list[str]:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, PAGE_TIMEOUT_S).until(lambda d: _loaded_images(d, min_width), message="no image loaded")
    return _loaded_images(driver, min_width)


def _screenshot(driver, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    driver.save_screenshot(str(path))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, ARTIFACTS / path.name)
    return path


def _trial_runs(client, summary):
    return client.search_runs(
        [summary["experiment_id"]],
        filter_string=f"tags.`mlflow.parentRunId` = '{summary['parent_run_id']}' and tags.`nasflow.role` = 'trial'",
    )


def test_the_printed_links_land_on_the_runs_with_numbers_diagrams_and_the_champion(browser, ui, tmp_path):
    links, summary, client = ui
    parent = client.get_run(summary["parent_run_id"])
    trials = _trial_runs(client, summary)

    # The runs table: the parent run, with its nested trial runs, by the names they are given.
    text = _open(browser, links["runs"], parent.info.run_name)
    if not all(trial.info.run_name in text for trial in trials):
        # MLflow folds child runs under their parent: unfold them (the [+] beside the run name).
        browser.execute_script(
            "document.querySelectorAll('button[data-component-id*=\"runnamecellrenderer\"]').forEach(b => b.click())"
        )
    _open(browser, links["runs"], parent.info.run_name, *(trial.info.run_name for trial in trials))
    _screenshot(browser, tmp_path, "1-runs-table")

    # The parent run: headline metrics, including the selected variant's size and latency.
    text = _open(browser, links["run"], parent.info.run_name, "test_accuracy", "selected.size_kb")
    assert "selected.latency_p50_ms" in text and "search.best_val_accuracy" in text
    assert all(trial.info.run_name in text for trial in trials), "the nested trials are listed as child runs"
    browser.execute_script(
        "const m = [...document.querySelectorAll('*')].find(e => e.textContent === 'selected.size_kb');"
        "if (m) m.scrollIntoView({block: 'center'});"
    )
    _screenshot(browser, tmp_path, "2-parent-run")

    # The Pareto plot of the parent run loads as an image.
    base = links["run"]
    _open(browser, f"{base}/artifactPath/search/pareto.png", "pareto.png")
    assert any("pareto.png" in src or src.startswith("blob:") for src in _wait_for_image(browser))
    _screenshot(browser, tmp_path, "3-pareto-plot")

    # The chosen trial's architecture diagram loads as an image.
    chosen = next(run for run in trials if run.data.tags.get("nasflow.best_trial") == "true")
    trial_url = links["run"].replace(summary["parent_run_id"], chosen.info.run_id)
    _open(browser, f"{trial_url}/artifactPath/architecture/model.png", "model.png")
    assert _wait_for_image(browser)
    _screenshot(browser, tmp_path, "4-architecture-diagram")

    # The registered model: the version carries the champion alias.
    text = _open(browser, links["model"], summary["model_name"], "champion")
    _screenshot(browser, tmp_path, "5-registered-model")
    assert "challenger" in text

"""The console in a real headless Chromium (Debian's, driven by Selenium) against the real stack.

``jobrelay up`` runs gunicorn, the worker supervisor, the scheduler, redis-server and SQLite;
the browser logs in with a key of each scope and does what an operator does. Each page's
screenshot goes to docs/console/ for the README. Every wait has a deadline.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException, StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.e2e.conftest import Stack, start_stack, stop_stack

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[2]
SHOTS = REPO / "docs" / "console"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
WRITER = "console-writer-token-0123456789"
READER = "console-reader-token-0123456789"
ADMIN = "console-admin-token-0123456789"
WAIT_S = 20.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The whole stack with three keys: admin (first, the harness's own), write and read."""
    root = tmp_path_factory.mktemp("console-stack")
    # NOTE: `jobrelay up` takes its keys from DATA_DIR/dev-api-key when API_KEYS is unset.
    (root / "data").mkdir()
    (root / "data" / "dev-api-key").write_text(f"ops:{ADMIN}:admin ci:{WRITER}:read+write dash:{READER}:read\n")
    stack = start_stack(root)
    try:
        yield stack
    finally:
        stop_stack(stack)


@pytest.fixture(scope="module")
def driver() -> Iterator[WebDriver]:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail("chromium and chromedriver are missing: `make system-deps` installs them")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1280,800", "--force-device-scale-factor=1"):  # fmt: skip
        options.add_argument(argument)
    browser = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    browser.set_page_load_timeout(WAIT_S)
    try:
        yield browser
    finally:
        browser.quit()


def wait_for(driver: WebDriver, condition: Callable[[WebDriver], Any], what: str, timeout_s: float = WAIT_S) -> Any:
    def check(d: WebDriver) -> Any:
        try:
            return condition(d)
        except (StaleElementReferenceException, WebDriverException):
            return False

    return WebDriverWait(driver, timeout_s, poll_frequency=0.1).until(check, message=f"waited {timeout_s}s for {what}")


def text_of(driver: WebDriver, css: str) -> str:
    return str(driver.find_element(By.CSS_SELECTOR, css).text)


def shot(driver: WebDriver, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SHOTS / f"{name}.png"))


def login(driver: WebDriver, stack: Stack, token: str) -> None:
    driver.delete_all_cookies()
    driver.get(stack.base_url + "/console/")
    wait_for(driver, lambda d: d.find_element(By.ID, "key"), "the login form")
    driver.find_element(By.ID, "key").send_keys(token)
    driver.find_element(By.ID, "login").click()
    wait_for(driver, lambda d: d.find_element(By.ID, "overview-live"), "the overview after login")


def accept_confirm(driver: WebDriver) -> None:
    def alert(d: WebDriver) -> Any:
        try:
            return d.switch_to.alert
        except NoAlertPresentException:
            return False

    wait_for(driver, alert, "the confirmation dialog").accept()


def submit(stack: Stack, body: dict[str, Any]) -> str:
    status, job = stack.request("POST", "/v1/jobs", body)
    assert status == 202, job
    return str(job["id"])


def test_login_with_each_scope_shows_its_name_and_scope(driver: WebDriver, stack: Stack) -> None:
    driver.get(stack.base_url + "/console/login")
    shot(driver, "login")
    for token, label in ((READER, "dash · read"), (WRITER, "ci · read+write"), (ADMIN, "ops · admin")):
        login(driver, stack, token)
        assert label in text_of(driver, "form.who")
        assert token not in driver.page_source and token not in driver.current_url
    # A wrong key is refused on the page, not echoed.
    driver.delete_all_cookies()
    driver.get(stack.base_url + "/console/login")
    driver.find_element(By.ID, "key").send_keys("wrong-key-987654321")
    driver.find_element(By.ID, "login").click()
    assert "not one of this server" in wait_for(driver, lambda d: text_of(d, "#login-error"), "the refusal")
    assert "wrong-key-987654321" not in driver.page_source


def test_progress_bar_moves_live_until_succeeded(driver: WebDriver, stack: Stack) -> None:
    login(driver, stack, WRITER)
    # NOTE: 6 s in ten steps and a poll a second: several readings between 0 and 100, even on a busy machine.
    job_id = submit(stack, {"task": "diagnostics.sleep", "args": {"seconds": 6}})
    driver.get(f"{stack.base_url}/console/jobs/{job_id}")
    seen: set[int] = set()
    # The job may wait its turn on a busy machine: twice the usual bound for start and run.
    deadline = time.monotonic() + 2 * WAIT_S
    # The page is not reloaded: the live region polls itself.
    while time.monotonic() < deadline:
        try:
            status = text_of(driver, "#job-status")
            bars = driver.find_elements(By.ID, "progress")
            if bars:
                seen.add(int(bars[0].get_attribute("value") or 0))
        except (StaleElementReferenceException, WebDriverException):
            continue
        if status == "running" and len(seen) == 2:
            shot(driver, "job")
        if status == "succeeded":
            break
        time.sleep(0.1)
    assert text_of(driver, "#job-status") == "succeeded"
    assert len({v for v in seen if 0 < v < 100}) >= 2, f"the bar did not move: {sorted(seen)}"
    assert 100 in seen
    assert "slept_s" in text_of(driver, "#result")


def test_the_job_page_timeline_shows_every_attempt_and_the_backoff_between(driver: WebDriver, stack: Stack) -> None:
    # Given a job that fails twice (each retried after its backoff) and succeeds on its third attempt
    job_id = submit(stack, {"task": "diagnostics.fail", "args": {"succeed_on_attempt": 3}, "max_retries": 3})
    stack.wait_job(job_id, {"succeeded"}, timeout_s=2 * WAIT_S)
    # When an admin opens its page
    login(driver, stack, ADMIN)
    driver.get(f"{stack.base_url}/console/jobs/{job_id}")
    wait_for(driver, lambda d: d.find_element(By.ID, "attempt-3"), "the third attempt on the timeline")
    attempts = driver.find_elements(By.CSS_SELECTOR, "#timeline li.attempt")
    # Then each attempt is there with its worker and outcome, the failures with their error and traceback
    assert [a.get_attribute("data-outcome") for a in attempts] == ["retrying", "retrying", "succeeded"]
    assert all(" on " in a.text for a in attempts)
    assert "DiagnosticFailure: failing on purpose (attempt 1)" in attempts[0].text
    assert "DiagnosticFailure: failing on purpose (attempt 2)" in attempts[1].text
    # ... and the backoff waited before each retry
    backoffs = driver.find_elements(By.CSS_SELECTOR, "#timeline li.backoff")
    assert [b.text.split(" before ")[-1] for b in backoffs] == ["attempt 2", "attempt 3"]
    # NOTE: the shot before the traceback opens: its file paths are this machine's.
    shot(driver, "job-attempts")
    attempts[0].find_element(By.TAG_NAME, "summary").click()
    assert "Traceback" in wait_for(driver, lambda d: d.find_element(By.CSS_SELECTOR, "pre.traceback").text, "the trace")


def test_cancel_a_running_job_from_its_page(driver: WebDriver, stack: Stack) -> None:
    login(driver, stack, WRITER)
    job_id = submit(stack, {"task": "diagnostics.sleep", "args": {"seconds": 60}})
    stack.wait_job(job_id, {"running"}, timeout_s=WAIT_S)
    driver.get(f"{stack.base_url}/console/jobs/{job_id}")
    wait_for(driver, lambda d: d.find_element(By.ID, "cancel"), "the cancel button").click()
    accept_confirm(driver)
    wait_for(driver, lambda d: text_of(d, "#job-status") == "cancelled", "the job to read cancelled")
    assert stack.wait_job(job_id, {"cancelled"}, timeout_s=WAIT_S)["status"] == "cancelled"


def test_filter_the_job_list(driver: WebDriver, stack: Stack) -> None:
    login(driver, stack, WRITER)
    echo = submit(stack, {"task": "diagnostics.echo", "args": {"message": "findme-needle"}})
    stack.wait_job(echo, {"succeeded"}, timeout_s=WAIT_S)
    driver.get(stack.base_url + "/console/jobs")
    Select(driver.find_element(By.ID, "f-task")).select_by_visible_text("diagnostics.echo")
    Select(driver.find_element(By.ID, "f-status")).select_by_visible_text("succeeded")
    driver.find_element(By.ID, "apply").click()
    wait_for(driver, lambda d: "task=diagnostics.echo" in d.current_url, "the filtered list")
    rows = driver.find_elements(By.CSS_SELECTOR, "#jobs tbody tr")
    assert rows and all("diagnostics.echo" in r.text and "succeeded" in r.text for r in rows)
    shot(driver, "jobs")
    search = driver.find_element(By.ID, "f-q")
    search.clear()
    search.send_keys("findme-needle")
    driver.find_element(By.ID, "apply").click()
    # NOTE: the list before the search may hold one row too: wait for the searched page, not only its row count.
    wait_for(
        driver,
        lambda d: "q=findme-needle" in d.current_url and len(d.find_elements(By.CSS_SELECTOR, "#jobs tbody tr")) == 1,
        "one search hit",
    )
    assert echo[:8] in wait_for(driver, lambda d: text_of(d, "#jobs tbody"), "the hit's row")


def test_bulk_requeue_dead_letters(driver: WebDriver, stack: Stack) -> None:
    failing = {"task": "diagnostics.fail", "args": {"succeed_on_attempt": None}, "max_retries": 0}
    ids = [submit(stack, failing) for _ in range(3)]
    for job_id in ids:
        assert stack.wait_job(job_id, {"failed"}, timeout_s=WAIT_S)["status"] == "failed"
    login(driver, stack, ADMIN)
    driver.get(stack.base_url + "/console/dead")
    total = int(text_of(driver, "#dead-total"))
    assert total >= 3
    shot(driver, "dead-letters")
    driver.find_element(By.ID, "requeue-all").click()
    accept_confirm(driver)
    outcome = wait_for(driver, lambda d: text_of(d, "#outcome"), "the requeue's outcome")
    assert outcome == f"{total} requeued"
    for job_id in ids:
        _, job = stack.request("GET", f"/v1/jobs/{job_id}")
        assert job["attempts"] >= 1 and job["status"] in {"queued", "running", "failed"}
    # They ran again: a second attempt each, failing again (the task never succeeds).
    for job_id in ids:
        deadline = time.monotonic() + WAIT_S
        while stack.request("GET", f"/v1/jobs/{job_id}")[1]["attempts"] < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert stack.request("GET", f"/v1/jobs/{job_id}")[1]["attempts"] == 2


def test_pause_and_resume_a_schedule(driver: WebDriver, stack: Stack) -> None:
    body = {"id": "console-nightly", "task": "diagnostics.echo", "args": {"message": "night"}, "cron": "0 2 * * *",
            "timezone": "Europe/Berlin"}  # fmt: skip
    assert stack.request("POST", "/v1/schedules", body)[0] == 201
    login(driver, stack, ADMIN)
    driver.get(stack.base_url + "/console/schedules")
    assert "At 02:00 (Europe/Berlin)" in text_of(driver, "#schedules")
    shot(driver, "schedules")
    driver.get(stack.base_url + "/console/schedules/console-nightly")
    assert len(driver.find_elements(By.CSS_SELECTOR, "#next-fires li")) == 5
    driver.find_element(By.ID, "pause").click()
    wait_for(driver, lambda d: text_of(d, "#schedule-state") == "paused", "the schedule to read paused")
    assert stack.request("GET", "/v1/schedules/console-nightly")[1]["enabled"] is False
    shot(driver, "schedule")
    driver.find_element(By.ID, "resume").click()
    wait_for(driver, lambda d: text_of(d, "#schedule-state") == "active", "the schedule to read active")
    assert stack.request("GET", "/v1/schedules/console-nightly")[1]["enabled"] is True


def test_task_form_shows_the_field_error_then_submits(driver: WebDriver, stack: Stack) -> None:
    login(driver, stack, WRITER)
    driver.get(stack.base_url + "/console/tasks")
    shot(driver, "tasks")
    driver.get(stack.base_url + "/console/tasks/diagnostics.sleep")
    field = driver.find_element(By.ID, "arg-seconds")
    field.clear()
    field.send_keys("soon")
    driver.find_element(By.ID, "submit").click()
    error = wait_for(driver, lambda d: text_of(d, "#error-seconds"), "the error beside the field")
    assert "number" in error
    shot(driver, "task-form")
    field = driver.find_element(By.ID, "arg-seconds")
    field.clear()
    field.send_keys("0.2")
    driver.find_element(By.ID, "submit").click()
    wait_for(driver, lambda d: text_of(d, "#job-status") == "succeeded", "the submitted job to succeed")


def test_workflow_graph_overview_and_charts(driver: WebDriver, stack: Stack) -> None:
    step = {"task": "diagnostics.echo", "args": {"message": "step"}}
    status, flow = stack.request(
        "POST", "/v1/workflows", {"type": "chord", "steps": [step, step, step], "callback": step}
    )
    assert status == 202, flow
    login(driver, stack, ADMIN)
    driver.get(f"{stack.base_url}/console/workflows/{flow['id']}")
    wait_for(driver, lambda d: text_of(d, "#workflow-status") == "succeeded" or d.refresh(), "the chord to finish")
    assert len(driver.find_elements(By.CSS_SELECTOR, "#graph a.node")) == 4
    shot(driver, "workflow")
    driver.get(stack.base_url + "/console/charts")
    assert driver.find_elements(By.CSS_SELECTOR, "svg.chart polyline")
    shot(driver, "charts")
    driver.get(stack.base_url + "/console/")
    wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#workers tbody tr code"), "the workers")
    # Each of the stack's 2 worker processes, with its pid, queues and shape (WORKER_PROCESSES=2, WORKER_THREADS=4).
    rows = [row.text for row in driver.find_elements(By.CSS_SELECTOR, "#workers tbody tr")]
    pids = stack.pids_of("services.worker.process")
    assert len(rows) == 2 and all("2 \N{MULTIPLICATION SIGN} 4" in row and "default" in row for row in rows), rows
    assert {pid for pid in pids if any(f" {pid} " in row for row in rows)} == set(pids), (rows, pids)
    shot(driver, "overview")
    driver.set_window_size(390, 844)
    try:
        driver.get(stack.base_url + "/console/")
        width = driver.execute_script("return document.documentElement.scrollWidth")
        assert width <= 390, f"the overview is {width}px wide on a phone"
        shot(driver, "overview-phone")
    finally:
        driver.set_window_size(1280, 800)


def test_a_read_key_cannot_change_anything(driver: WebDriver, stack: Stack) -> None:
    job_id = submit(stack, {"task": "diagnostics.sleep", "args": {"seconds": 30}})
    stack.wait_job(job_id, {"running"}, timeout_s=WAIT_S)
    try:
        login(driver, stack, READER)
        driver.get(f"{stack.base_url}/console/jobs/{job_id}")
        assert not driver.find_elements(By.ID, "cancel")
        driver.get(stack.base_url + "/console/dead")
        assert not driver.find_elements(By.ID, "requeue-all")
        driver.get(stack.base_url + "/console/tasks/diagnostics.echo")
        assert not driver.find_elements(By.ID, "submit")
        # Direct POSTs from the reader's page, with its session cookie: with and without its CSRF token.
        csrf = driver.find_element(By.CSS_SELECTOR, "form.who input[name=csrf]").get_attribute("value")
        statuses = driver.execute_async_script(
            """
            const [jobId, csrf, done] = arguments;
            const post = (path, body) => fetch(path, {method: "POST", body: new URLSearchParams(body),
                                                      credentials: "same-origin"}).then(r => r.status);
            Promise.all([
              post(`/console/jobs/${jobId}/cancel`, {}),
              post(`/console/jobs/${jobId}/cancel`, {csrf}),
              post("/console/dead", {csrf, scope: "all"}),
              post("/console/tasks/diagnostics.echo", {csrf, "arg.message": "x"}),
              post("/console/schedules/console-nightly", {csrf, action: "pause"}),
              post("/console/", {csrf, queue: "default", action: "pause"}),
            ]).then(done);
            """,
            job_id,
            csrf,
        )
        assert statuses == [403, 403, 403, 403, 403, 403]
        assert stack.request("GET", f"/v1/jobs/{job_id}")[1]["status"] == "running"
    finally:
        stack.request("POST", f"/v1/jobs/{job_id}/cancel")


def test_pause_and_resume_a_queue_from_the_overview(driver: WebDriver, stack: Stack) -> None:
    login(driver, stack, ADMIN)
    driver.get(stack.base_url + "/console/")
    try:
        wait_for(driver, lambda d: d.find_element(By.ID, "pause-default"), "the pause button").click()
        accept_confirm(driver)
        wait_for(driver, lambda d: text_of(d, "#paused-default") == "paused", "the queue to read paused")
        # A job for the paused queue waits; resumed, it runs.
        job_id = submit(stack, {"task": "diagnostics.echo", "args": {"message": "after the pause"}})
        time.sleep(1.0)
        assert stack.request("GET", f"/v1/jobs/{job_id}")[1]["status"] == "queued"
        driver.find_element(By.ID, "resume-default").click()
        wait_for(driver, lambda d: d.find_elements(By.ID, "pause-default"), "the queue to read running")
        assert stack.wait_job(job_id, {"succeeded", "failed"}, timeout_s=WAIT_S)["status"] == "succeeded"
    finally:
        stack.request("POST", "/v1/queues/default/resume")

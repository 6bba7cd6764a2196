"""The `recover` form in a real browser, as an on-call admin uses it.

Headless Debian ``chromium`` (``/usr/bin/chromium`` + ``/usr/bin/chromedriver``, installed by
``.ci/run``) driven by selenium against a real ``prefect server`` with its UI and a real
``recovery serve``: Deployments > recover > Run > Custom run, pick the target from the dropdown
(the deployment schema's choices), fill ``requested_by``, Submit; the run's page then shows
``Completed`` and its Artifacts tab the ``recovery-status`` board. Every wait is bounded.
A missing chromium fails under CI (tests/service_guard.py) and skips elsewhere.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from faultserver import FaultServer
from served_stack import Api, serving
from service_guard import service_unavailable

from recovery.audit.store import AuditStore

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WAIT = 30.0  # seconds for one UI element to appear


def _driver() -> Any:
    """A headless chromium session, or a skip/fail naming what is missing."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        service_unavailable(f"{', '.join(missing)} missing (apt-get install chromium chromium-driver)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        service_unavailable("selenium is not installed (pip install -e '.[dev]')")
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1800"):
        options.add_argument(arg)
    options.binary_location = str(CHROMIUM)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(WAIT)
    return driver


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    driver = _driver()
    try:
        yield driver
    finally:
        driver.save_screenshot(str(tmp_path / "last.png"))  # what the page showed at the end
        driver.quit()


@pytest.fixture
def ui(
    tmp_path: Path, fault_server: FaultServer, redis_url: str, sqlite_url: str, prefect_server: Api
) -> Iterator[tuple[Api, str]]:
    """A Prefect server with its UI and `recovery serve` with one healthy HTTP target."""
    config = tmp_path / "recovery.yaml"
    config.write_text(
        f"audit_url: {sqlite_url}\nstate_url: {redis_url}\nmonitor: {{interval_seconds: 3600}}\n"
        "targets:\n"
        f"  - {{name: payments-api, kind: http, url: '{fault_server.url}/health', timeout_seconds: 1,\n"
        "     verify: {consecutive_successes: 1, interval_seconds: 0}}\n"
        f"  - {{name: search-api, kind: http, url: '{fault_server.url}/health', timeout_seconds: 1}}\n"
    )
    # The runner picks the submitted run up in 2 s, not 10.
    with serving(prefect_server, config, limit=2, env={"PREFECT_RUNNER_POLL_FREQUENCY": "2"}) as api:
        yield api, sqlite_url


def _until(what: str, probe: Callable[[], Any], timeout: float = WAIT, every: float = 0.5) -> Any:
    """``probe()``'s first truthy value within ``timeout`` seconds (exceptions count as not yet)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if value := probe():
                return value
        except Exception:  # an element not rendered yet, a stale one after a re-render
            pass
        assert time.monotonic() < deadline, f"timed out after {timeout:g}s waiting for {what}"
        time.sleep(every)


def _text(text: str) -> str:
    """XPath of the innermost elements whose text is ``text``."""
    return f"//*[normalize-space()='{text}' and not(*[normalize-space()='{text}'])]"


def _prop(name: str) -> str:
    """XPath of the schema form's field ``name`` (label and input share this block); an optional
    field's label reads ``name (Optional)``."""
    return (
        "//div[contains(concat(' ', @class, ' '), ' schema-form-property ')][.//span[contains(@class,"
        f"'schema-form-property__label') and (normalize-space()='{name}' or "
        f"starts-with(normalize-space(), '{name} ('))]]"
    )


def test_recover_custom_run_form_in_chromium(browser: Any, ui: tuple[Api, str], tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    api, audit_url = ui
    deployment = api.deployment_id("recover", "recover")
    site = api.client.base_url.copy_with(path="/")
    d = browser

    def click(xpath: str) -> None:
        def done() -> bool:
            shown = [e for e in d.find_elements(By.XPATH, xpath) if e.is_displayed() and e.is_enabled()]
            if shown:
                shown[0].click()  # intercepted (a toast or menu still animating): tried again
            return bool(shown)

        _until(f"a click on {xpath}", done)

    d.get(f"{site}deployments/deployment/{deployment}")
    click("//button[normalize-space()='Run']")
    click(_text("Custom run"))
    _until("the custom run page", lambda: "/run" in d.current_url.rpartition(deployment)[2])

    # The target dropdown offers exactly the configured targets (the deployment schema's enum).
    select = _until(
        "the target dropdown", lambda: d.find_element(By.XPATH, _prop("target") + "//select[option]")
    )
    options = [o.get_attribute("value") for o in Select(select).options]
    assert options == ["payments-api", "search-api"]
    Select(select).select_by_value("payments-api")
    d.find_element(By.XPATH, _prop("requested_by") + "//textarea").send_keys("browser-admin")
    # Every field shows its help text (the flow docstring's Args, through the schema), `type` is a
    # choice of manual/emergency, and no internal parameter is on the form.
    assert "Who asks (audited)" in d.find_element(By.XPATH, _prop("requested_by")).text
    kinds = Select(d.find_element(By.XPATH, _prop("type") + "//select[option]"))
    assert [o.get_attribute("value") for o in kinds.options] == ["manual", "emergency"]
    labels = [
        e.text for e in d.find_elements(By.XPATH, "//span[contains(@class,'schema-form-property__label')]")
    ]
    assert [label.split(" ")[0] for label in labels] == [
        "target",
        "requested_by",
        "type",
        "reason",
        "workflow",
        "dry_run",
        "request_id",
    ]
    run_name = d.find_element(By.XPATH, "//label[normalize-space()='Run Name']/following::input[1]")
    run_name = run_name.get_attribute("value")
    d.save_screenshot(str(tmp_path / "recover-form.png"))
    click("//button[@type='submit' and normalize-space()='Submit']")

    # The run the form created, by the name the form gave it.
    runs = _until(
        f"flow run {run_name}",
        lambda: api.call("POST", "/flow_runs/filter", json={"flow_runs": {"name": {"any_": [run_name]}}}),
    )
    [run] = runs
    chosen = {k: run["parameters"].get(k) for k in ("target", "requested_by", "type")}
    assert chosen == {"target": "payments-api", "requested_by": "browser-admin", "type": "manual"}

    # Poll the run's page (reloading it) until it shows Completed.
    d.get(f"{site}runs/flow-run/{run['id']}")

    def completed() -> bool:
        badge = d.find_element(By.XPATH, "//*[contains(@class,'state-badge')]")
        if badge.text.strip() == "Completed":
            return True
        d.refresh()
        return False

    _until("the run page to show Completed", completed, timeout=60, every=2)
    click(_text("Artifacts"))
    _until(
        "the recovery-status artifact",
        lambda: [e for e in d.find_elements(By.XPATH, _text("recovery-status")) if e.is_displayed()],
    )
    d.save_screenshot(str(tmp_path / "recover-run.png"))
    [record] = [r for r in AuditStore(audit_url).history() if r.flow_run_id == run["id"]]
    assert (record.target, record.type, record.requested_by, record.state) == (
        "payments-api",
        "manual",
        "browser-admin",
        "succeeded",
    )


def test_missing_chromium_fails_under_ci_and_skips_elsewhere(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(sys.modules[__name__], "CHROMIUM", tmp_path / "no-chromium")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"no-chromium.* missing"):
        _driver()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match=r"no-chromium.* missing"):
        _driver()

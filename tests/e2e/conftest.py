"""A real paypush process and a real Chromium (Debian's, driven by Playwright)."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.processes import ROOT, ServerProcess, base_env
from tests.stomp import BrowserUser

ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Per module: Playwright's sync API keeps an event loop running while it is
    alive, which the asyncio tests after it must not find."""
    executable = shutil.which("chromium")
    assert executable, "Debian's chromium is not installed: run .ci/setup --browser"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, mongo_url: str, amqp_url: str,
           stomp_user: BrowserUser) -> Iterator[ServerProcess]:
    """On this session's vhost: the STOMP page must find it from createNative's host."""
    env = base_env(tmp_path_factory.mktemp("e2e-var"), MONGO_URL=mongo_url,
                   MONGO_DB=f"e2e{uuid.uuid4().hex[:12]}", AMQP_URL=amqp_url,
                   STOMP_LOGIN=stomp_user.login, STOMP_PASSCODE=stomp_user.passcode,
                   SIM_NOTIFY_SPEED="100")
    proc = ServerProcess(env).start()
    yield proc
    assert proc.stop() == 0, proc.output
    assert "Traceback" not in proc.output, proc.output


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 420, "height": 860})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    # A CSP violation is no exception, only a console error: a blocked script,
    # style or socket must fail the test too.
    context.on("console", lambda msg: errors.append(msg.text)
               if msg.type == "error" and "Content Security Policy" in msg.text else None)
    yield page
    context.close()
    assert not errors, f"JavaScript errors: {errors}"


def screenshot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path

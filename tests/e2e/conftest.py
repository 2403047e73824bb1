"""A real paypush process and a real Chromium (Debian's, driven by Playwright)."""

from __future__ import annotations

import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.support.processes import ROOT, ServerProcess, base_env
from tests.support.stomp import BrowserUser

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


def server_env(var_dir: Path, mongo_url: str, amqp_url: str, stomp_user: BrowserUser,
               **extra: str) -> dict[str, str]:
    """On this session's vhost: the STOMP page must find it from createNative's host.
    One demo shopper stands in for many, so the unpaid-order cap is lifted."""
    return base_env(var_dir, MONGO_URL=mongo_url, MONGO_DB=f"e2e{uuid.uuid4().hex[:12]}", AMQP_URL=amqp_url,
                    STOMP_LOGIN=stomp_user.login, STOMP_PASSCODE=stomp_user.passcode,
                    SIM_NOTIFY_SPEED="100", MAX_UNPAID_ORDERS_PER_USER="100", **extra)


def stopped_cleanly(proc: ServerProcess) -> None:
    assert proc.stop() == 0, proc.output
    assert "Traceback" not in proc.output, proc.output


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, mongo_url: str, amqp_url: str,
           stomp_user: BrowserUser) -> Iterator[ServerProcess]:
    proc = ServerProcess(server_env(tmp_path_factory.mktemp("e2e-var"), mongo_url, amqp_url, stomp_user)).start()
    yield proc
    stopped_cleanly(proc)


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 420, "height": 860})
    page = context.new_page()
    errors: list[str] = []
    # Any page of the context: the simulator's phone and second tabs too.
    context.on("weberror", lambda err: errors.append(str(err.error)))
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


def log_in(page: Page, base_url: str) -> None:
    page.goto(base_url + "/")
    expect(page).to_have_url(re.compile(r"/login\?next="))
    page.fill("input[name=username]", "demo")
    page.fill("input[name=password]", "demo-pass-123")
    page.click("button[type=submit]")
    expect(page.locator("h1")).to_have_text("Shop")


def order_and_open_pay_page(page: Page, base_url: str, sku: str, query: str = "") -> None:
    """From the shop (logged in), one of ``sku``, to its pay page (``query``
    appended, as a shopper would type it)."""
    page.goto(base_url + "/")
    page.fill(f"input[name={sku}]", "1")
    page.click("#place-order")
    expect(page).to_have_url(re.compile(r"/weixinpay\.html\?orderId="))
    if query:
        page.goto(page.url + query)
    expect(page.locator("#qr svg")).to_be_visible()


def pay_with_simulator(page: Page) -> None:
    """The shopper's phone (the sandbox simulator, in a tab of its own) pays the pay page's QR."""
    link = page.locator("#sim-link")
    expect(link).to_be_visible()
    phone = page.context.new_page()
    phone.goto(str(page.evaluate("document.getElementById('sim-link').href")))
    phone.click("#confirm-pay")
    expect(phone.locator("#paid")).to_be_visible()
    phone.close()


def watch_connection(page: Page) -> None:
    """From now on, each new value of the pay page's data-connection is appended
    to <body data-seen> (space-separated), so a test can wait for a sequence of
    states however briefly each one lasted. <body data-entered> counts the
    states entered, the same one again included (``retrying`` after another
    failed attempt). The sequence is also kept in the tab's sessionStorage,
    which outlives the page's leaving for the success page (``connections_seen``)."""
    page.evaluate("""() => {
        const pay = document.getElementById("pay");
        const seen = [pay.dataset.connection];
        let entered = 0;
        const show = () => {
            document.body.dataset.seen = seen.join(" ");
            document.body.dataset.entered = String(entered);
            sessionStorage.setItem("connections-seen", seen.join(" "));
        };
        show();
        // Setting an attribute makes a record even when its value stays the same.
        new MutationObserver((records) => {
            entered += records.length;
            if (pay.dataset.connection !== seen[seen.length - 1]) seen.push(pay.dataset.connection);
            show();
        }).observe(pay, { attributeFilter: ["data-connection"] });
    }""")


def connections_seen(page: Page) -> str:
    """The pay page's data-connection values since ``watch_connection``, read in
    the same tab after the pay page has gone (same origin)."""
    return str(page.evaluate("sessionStorage.getItem('connections-seen')"))

"""A shopper in Chromium: log in, order, scan with the simulator, land on success."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.conftest import log_in, screenshot
from tests.support.processes import ServerProcess


@pytest.mark.e2e
@pytest.mark.parametrize("route", ["ws", "stomp"])
def test_pay_page_reaches_success_when_the_simulator_pays(route: str, page: Page,
                                                          server: ServerProcess) -> None:
    requested: list[str] = []
    page.on("request", lambda req: requested.append(req.url))
    log_in(page, server.base_url)
    page.fill("input[name=fan-silk]", "2")
    page.fill("input[name=card-sticker]", "1")
    expect(page.locator("#total")).to_have_text("¥50.01")
    screenshot(page, f"shop-{route}")
    page.click("#place-order")
    expect(page).to_have_url(re.compile(r"/weixinpay\.html\?orderId="))
    if route == "stomp":
        page.goto(page.url + "&push=stomp")
    expect(page.locator("#qr svg")).to_be_visible()
    expect(page.locator("#pay")).to_have_attribute("data-connection", route)
    expect(page.locator("#state")).to_have_text("Waiting for payment…")
    screenshot(page, f"pay-page-{route}")
    # Live, so whatever the page loads to connect has been loaded: the STOMP
    # client only for the STOMP route.
    stomp_client = [url for url in requested if "/vendor/stompjs/" in url]
    assert bool(stomp_client) == (route == "stomp"), stomp_client

    link = page.locator("#sim-link")
    expect(link).to_be_visible()
    with page.context.expect_page() as phone_opened:
        link.click()
    phone = phone_opened.value
    expect(phone.locator("h1")).to_have_text("¥50.01")
    phone.click("#confirm-pay")
    expect(phone.locator("#paid")).to_be_visible()
    screenshot(phone, f"simulator-phone-{route}")

    expect(page).to_have_url(re.compile(r"/paysuccess\.html\?money=50\.01$"), timeout=10000)
    expect(page.locator("#paid-amount")).to_have_text("¥50.01")
    screenshot(page, f"success-page-{route}")


@pytest.mark.e2e
def test_login_failure_is_shown(page: Page, server: ServerProcess) -> None:
    page.goto(server.base_url + "/login")
    page.fill("input[name=username]", "demo")
    page.fill("input[name=password]", "wrong password")
    page.click("button[type=submit]")
    expect(page.locator(".error")).to_have_text("Wrong username or password.")

"""An operator in Chromium: a shopper's paid order found in the console by its
transaction id, part of it refunded through the form, the refund's status
going from processing to success on the page without a reload, and the
order's timeline showing it. A shopper gets the console's refusal. The
catalog: a SKU added and its stock set while a shopper orders it."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.conftest import log_in, order_and_open_pay_page, pay_with_simulator, screenshot
from tests.support.processes import ROOT, ServerProcess


def create_operator(server: ServerProcess, name: str, password: str) -> None:
    made = subprocess.run([sys.executable, "-m", "server", "create-user", name, "--password", password,
                           "--operator"], cwd=ROOT, env=server.env, capture_output=True, text=True, timeout=60)
    assert made.returncode == 0 and "(operator)" in made.stdout, made.stderr


@pytest.mark.e2e
def test_operator_finds_an_order_and_refunds_part_of_it(page: Page, server: ServerProcess) -> None:
    log_in(page, server.base_url)
    order_and_open_pay_page(page, server.base_url, "fan-silk")
    order_id = page.url.split("orderId=")[1].split("&")[0]
    pay_with_simulator(page)
    expect(page).to_have_url(re.compile(r"/paysuccess\.html"), timeout=10000)
    page.goto(server.base_url + "/admin")
    expect(page.locator("#forbidden")).to_be_visible()  # the demo shopper is no operator

    create_operator(server, "oscar", "oscar-pass-123")
    page.context.clear_cookies()
    page.goto(server.base_url + "/login?next=/admin")
    page.fill("input[name=username]", "oscar")
    page.fill("input[name=password]", "oscar-pass-123")
    page.click("button[type=submit]")
    expect(page.locator("h1")).to_have_text("Orders")
    order = page.request.get(f"{server.base_url}/api/orders/{order_id}").json()
    page.fill("#q", order["transaction_id"])
    page.click("#search")
    expect(page.locator("#orders tbody tr")).to_have_count(1)
    page.click(f"#orders tbody tr[data-order-id='{order_id}'] a")
    expect(page.locator("#d-status")).to_have_text("paid")

    page.fill("#refund-amount", "1.50")
    page.fill("#refund-reason", "one blade was bent")
    page.click("#refund-submit")
    expect(page.locator("#refund-message")).to_contain_text("¥1.50")
    row = page.locator("#d-refunds tbody tr")
    expect(row).to_have_count(1)
    expect(row.locator(".refund-status")).to_have_text("success", timeout=15000)
    expect(page.locator("#d-refunded")).to_have_text("1.50")
    expect(page.locator("#d-timeline")).to_contain_text("one blade was bent")
    expect(page.locator("#d-timeline")).to_contain_text("refund_success_")
    expect(page.locator("#d-timeline")).to_contain_text('pushed "paid"')
    screenshot(page, "operator-console-refund")

    page.fill("#refund-amount", "9999")
    page.click("#refund-submit")
    expect(page.locator("#refund-message")).to_contain_text("still refundable")
    expect(page.locator("#d-refunds tbody tr")).to_have_count(1)


@pytest.mark.e2e
def test_operator_sees_the_days_reconciliation_in_the_console(page: Page, server: ServerProcess) -> None:
    import datetime as dt

    from server.gateway.abc import BEIJING

    log_in(page, server.base_url)
    order_and_open_pay_page(page, server.base_url, "tea-longjing")
    pay_with_simulator(page)
    expect(page).to_have_url(re.compile(r"/paysuccess\.html"), timeout=10000)
    today = dt.datetime.now(BEIJING).date().isoformat()
    ran = subprocess.run([sys.executable, "-m", "server", "reconcile", "--date", today], cwd=ROOT, env=server.env,
                         capture_output=True, text=True, timeout=60)
    assert ran.returncode in (0, 1), ran.stderr  # other tests' orders share this server
    create_operator(server, "rita", "rita-pass-123")
    page.context.clear_cookies()
    page.goto(server.base_url + "/login?next=/admin")
    page.fill("input[name=username]", "rita")
    page.fill("input[name=password]", "rita-pass-123")
    page.click("button[type=submit]")
    row = page.locator(f"#reports tbody tr[data-date='{today}']")
    expect(row).to_have_count(1)
    expect(row.locator(".outcome")).to_have_text("agrees" if ran.returncode == 0 else "differences")
    screenshot(page, "operator-console-reconciliation")


@pytest.mark.e2e
def test_operator_adds_a_sku_and_changes_its_stock_in_the_console(page: Page, server: ServerProcess) -> None:
    create_operator(server, "cora", "cora-pass-123")
    page.goto(server.base_url + "/login?next=/admin")
    page.fill("input[name=username]", "cora")
    page.fill("input[name=password]", "cora-pass-123")
    page.click("button[type=submit]")
    expect(page.locator("#skus tbody tr[data-sku-id='tea-longjing']")).to_have_count(1)

    page.fill("#sku-id", "lamp-paper")
    page.fill("#sku-stock", "6")
    page.click("#sku-save")
    expect(page.locator("#sku-message")).to_contain_text("Not saved: no SKU 'lamp-paper' yet")
    page.fill("#sku-name", "Paper lamp")
    page.fill("#sku-price", "12.50")
    page.click("#sku-save")
    expect(page.locator("#sku-message")).to_contain_text("lamp-paper created: 6 on hand, ¥12.50, Paper lamp")
    row = page.locator("#skus tbody tr[data-sku-id='lamp-paper']")
    expect(row.locator(".stock")).to_have_text("6")
    expect(row.locator(".price")).to_have_text("12.50")

    # A shopper takes two while the operator's form still shows 6.
    shop = page.context.browser.new_context()  # type: ignore[union-attr]
    shopper = shop.new_page()
    log_in(shopper, server.base_url)
    shopper.fill("input[name=lamp-paper]", "2")
    shopper.click("#place-order")
    expect(shopper).to_have_url(re.compile(r"/weixinpay\.html\?orderId="))

    row.locator("button.edit").click()
    expect(page.locator("#sku-stock")).to_have_value("6")
    page.fill("#sku-stock", "10")
    page.click("#sku-save")
    # The change says what it replaced at that instant: 4, not the 6 on screen.
    expect(page.locator("#sku-message")).to_contain_text("lamp-paper: on hand 4 → 10")
    expect(row.locator(".stock")).to_have_text("10")
    expect(page.locator("#sku-changes li").first).to_contain_text("lamp-paper: on hand 4 → 10 (cora)")
    screenshot(page, "operator-console-catalog")

    shopper.goto(server.base_url + "/")
    expect(shopper.locator("input[name=lamp-paper]")).to_be_visible()
    stock = {s["id"]: s["stock"] for s in shopper.request.get(server.base_url + "/api/skus").json()}
    assert stock["lamp-paper"] == 10
    shop.close()

    page.fill("#sku-price", "0")
    page.click("#sku-save")
    expect(page.locator("#sku-message")).to_contain_text("Price: yuan")
    expect(row.locator(".price")).to_have_text("12.50")

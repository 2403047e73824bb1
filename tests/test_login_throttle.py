"""Login throttling over real HTTP: guessing is slowed then refused with 429 and
Retry-After, the real user is not locked out, and scrypt work is bounded.

Client addresses come from X-Real-IP, believed because the test server trusts
its peer (127.0.0.1) as a proxy: that is how a shop behind nginx sees them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
from collections.abc import Iterator

import pytest
from multidict import CIMultiDictProxy

from server.composition.container import Services
from tests.support.metrics import sample
from tests.support.shopper import XSRF_META, Shopper

PROXY = {"trusted_proxies": (ipaddress.ip_network("127.0.0.1/32"),)}
# Most tests look at the failure budgets, not at the process-wide check rate.
UNHURRIED = {**PROXY, "login_checks_per_second": 1000.0}


class Browser:
    """One browser: its own cookies (the login and the known-login cookie)."""

    def __init__(self, base_url: str):
        self.shopper = Shopper(base_url)

    async def log_in(self, username: str, password: str, address: str) -> tuple[int, CIMultiDictProxy[str], str]:
        s = self.shopper
        if not s.xsrf:
            async with s.http.get(s.base_url + "/login") as resp:
                match = XSRF_META.search(await resp.text())
                assert match
                s.xsrf = match.group(1)
        async with s.http.post(s.base_url + "/login", allow_redirects=False, headers={"X-Real-IP": address},
                               data={"username": username, "password": password, "_xsrf": s.xsrf}) as resp:
            return resp.status, resp.headers, await resp.text()

    async def logged_in(self) -> bool:
        status, _ = await self.shopper.request("GET", "/api/skus")
        return status == 200


@pytest.fixture
def browsers(io_loop) -> Iterator[list[Browser]]:  # type: ignore[no-untyped-def]
    made: list[Browser] = []
    yield made
    for b in made:
        io_loop.run_sync(b.shopper.close)


def browser(browsers: list[Browser], base_url: str) -> Browser:
    b = Browser(base_url)
    browsers.append(b)
    return b


def retry_after(headers: CIMultiDictProxy[str]) -> int:
    value = int(headers["Retry-After"])
    assert value >= 1
    return value


@pytest.mark.parametrize("extra_settings", [UNHURRIED])
@pytest.mark.gen_test(timeout=60)
async def test_guessing_from_one_address_is_slowed_then_refused(extra_settings: dict[str, object], http_server,  # type: ignore[no-untyped-def]
                                                                base_url: str, browsers: list[Browser],
                                                                services: Services) -> None:
    # The first wait long enough that the last try below surely falls inside
    # it however slowly this machine runs the 60 attempts (1 s by default).
    throttle = services.login_throttle
    throttle.limits = dataclasses.replace(throttle.limits, pair_first_wait=60.0)
    attacker = browser(browsers, base_url)
    await attacker.log_in("demo", "warm-up-for-xsrf", "198.51.100.1")  # another address: not counted below
    results = await asyncio.gather(*(attacker.log_in("demo", f"guess-{i}", "203.0.113.5") for i in range(60)))
    statuses = [status for status, _, _ in results]
    # Five free tries (counted as they start, so parallel ones cannot slip
    # past), then a doubling wait from the last one: refused, not checked.
    assert 5 <= statuses.count(401) <= 8, statuses
    assert statuses.count(401) + statuses.count(429) == 60
    for status, headers, page in results:
        if status == 429:
            assert retry_after(headers) <= 900
            assert "Too many attempts: try again in" in page
    # Even the right password is refused from there now, so it cannot be found by guessing.
    status, headers, _ = await attacker.log_in("demo", "demo-pass-123", "203.0.113.5")
    assert status == 429 and retry_after(headers)
    assert not await attacker.logged_in()
    # The real user, somewhere else, logs in as usual.
    real = browser(browsers, base_url)
    status, _, _ = await real.log_in("demo", "demo-pass-123", "192.0.2.10")
    assert status == 302 and await real.logged_in()
    _, metrics = await real.shopper.request("GET", "/metrics")
    assert sample(metrics, "paypush_logins_total", 'outcome="refused"') == statuses.count(429) + 1
    assert sample(metrics, "paypush_logins_total", 'outcome="ok"') == 1


@pytest.mark.parametrize("extra_settings", [UNHURRIED])
@pytest.mark.gen_test(timeout=60)
async def test_one_address_spraying_many_accounts_is_refused(extra_settings: dict[str, object], http_server,  # type: ignore[no-untyped-def]
                                                             base_url: str, browsers: list[Browser]) -> None:
    sprayer = browser(browsers, base_url)
    statuses = [(await sprayer.log_in(f"user{i}", "Summer2026!", "203.0.113.9"))[0] for i in range(22)]
    assert statuses == [401] * 20 + [429] * 2
    status, _, _ = await sprayer.log_in("demo", "demo-pass-123", "203.0.113.9")
    assert status == 429
    status, _, _ = await browser(browsers, base_url).log_in("demo", "demo-pass-123", "203.0.113.10")
    assert status == 302


@pytest.mark.parametrize("extra_settings", [UNHURRIED])
@pytest.mark.gen_test(timeout=60)
async def test_guessing_from_many_addresses_does_not_lock_the_real_user_out(  # type: ignore[no-untyped-def]
        extra_settings: dict[str, object], http_server, base_url: str, browsers: list[Browser]) -> None:
    usual = browser(browsers, base_url)
    status, _, _ = await usual.log_in("demo", "demo-pass-123", "192.0.2.10")
    assert status == 302

    # A botnet: one guess per address, each address well inside its own budget.
    results = [await browser(browsers, base_url).log_in("demo", f"guess-{i}", f"203.0.113.{i}")
               for i in range(1, 14)]
    assert [status for status, _, _ in results] == [401] * 10 + [429] * 3
    assert all(retry_after(headers) <= 30 for status, headers, _ in results if status == 429)

    # The user's own browser, even from a new address (its known-login cookie) ...
    status, _, _ = await usual.log_in("demo", "demo-pass-123", "198.51.100.200")
    assert status == 302 and await usual.logged_in()
    # ... or a new browser at the address the user logged in from before.
    status, _, _ = await browser(browsers, base_url).log_in("demo", "demo-pass-123", "192.0.2.10")
    assert status == 302
    # A browser and an address never seen with this user waits until the guessing stops.
    status, headers, _ = await browser(browsers, base_url).log_in("demo", "demo-pass-123", "198.51.100.201")
    assert status == 429 and retry_after(headers) <= 30
    # Other accounts are not affected.
    status, _, _ = await browser(browsers, base_url).log_in("nobody-here", "x" * 12, "198.51.100.202")
    assert status == 401


@pytest.mark.parametrize("extra_settings", [{**PROXY, "login_checks_per_second": 0.01}])
@pytest.mark.gen_test(timeout=60)
async def test_password_checks_per_second_are_capped_not_queued(extra_settings: dict[str, object],  # type: ignore[no-untyped-def]
                                                                http_server, base_url: str,
                                                                browsers: list[Browser]) -> None:
    """0.01 checks a second: one check now, the next in 100 s."""
    results = await asyncio.gather(*(browser(browsers, base_url).log_in(f"user{i}", "wrong-password", f"203.0.113.{i}")
                                     for i in range(1, 9)))
    statuses = sorted(status for status, _, _ in results)
    assert statuses == [401] + [503] * 7
    for status, headers, page in results:
        if status == 503:
            assert retry_after(headers) <= 100
            assert "Too many logins right now" in page

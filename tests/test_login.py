"""Login, logout and where a login may send the browser next."""

from __future__ import annotations

import pytest

from tests.support.shopper import Shopper


@pytest.mark.gen_test(timeout=30)
async def test_wrong_password_reshows_the_form(http_server, base_url: str) -> None:  # type: ignore[no-untyped-def]
    s = Shopper(base_url)
    try:
        resp = await s.login("demo", "wrong-password")
        assert resp.status == 401
        status, _ = await s.request("GET", "/")
        assert status == 302  # still not logged in
        async with s.http.post(base_url + "/login", data={"username": "demo", "password": "nope",
                                                          "_xsrf": s.xsrf}) as resp:
            assert "Wrong username or password" in await resp.text()
    finally:
        await s.close()


@pytest.mark.parametrize("username", ["nosuchuser", "", "a" * 500, "ｄｅｍｏ", "demo\n\nx", "{\"$ne\": 1}"])
@pytest.mark.gen_test(timeout=30)
async def test_odd_usernames_just_fail(username: str, http_server, base_url: str) -> None:  # type: ignore[no-untyped-def]
    s = Shopper(base_url)
    try:
        resp = await s.login(username, "demo-pass-123")
        assert resp.status == 401
    finally:
        await s.close()


@pytest.mark.gen_test(timeout=30)
async def test_login_without_xsrf_is_refused(http_server, base_url: str) -> None:  # type: ignore[no-untyped-def]
    import aiohttp

    async with aiohttp.ClientSession() as http, http.post(
            base_url + "/login", data={"username": "demo", "password": "demo-pass-123"},
            allow_redirects=False) as resp:
        assert resp.status == 403


@pytest.mark.parametrize("target, expected", [
    ("/weixinpay.html?orderId=1", "/weixinpay.html?orderId=1"),
    ("https://evil.example/", "/"),
    ("//evil.example/", "/"),
    ("/\\evil.example", "/"),
    ("javascript:alert(1)", "/"),
    # Control characters would split the Location header (and answered 500
    # after the login cookie was set); browsers drop tabs and newlines in URLs.
    ("/\r\nSet-Cookie: injected=1", "/"),
    ("/\nx", "/"),
    ("/\t/evil.example", "/"),
    ("/shop\x7f", "/"),
    ("/\u5546\u5e97?q=\u8336 x", "/%E5%95%86%E5%BA%97?q=%E8%8C%B6%20x"),
])
@pytest.mark.gen_test(timeout=30)
async def test_login_redirects_only_within_the_site(target: str, expected: str, http_server,  # type: ignore[no-untyped-def]
                                                    base_url: str) -> None:
    s = Shopper(base_url)
    try:
        await s.login("demo", "wrong")  # fetches the XSRF token
        async with s.http.post(base_url + "/login", allow_redirects=False, data={
                "username": "demo", "password": "demo-pass-123", "next": target, "_xsrf": s.xsrf}) as resp:
            assert resp.status == 302
            assert resp.headers["Location"] == expected
    finally:
        await s.close()


@pytest.mark.gen_test(timeout=30)
async def test_logout_forgets_the_user(shopper: Shopper) -> None:
    status, _ = await shopper.request("POST", "/logout", data={"_xsrf": shopper.xsrf})
    assert status == 302
    status, _ = await shopper.request("GET", "/api/skus")
    assert status == 401


@pytest.mark.gen_test(timeout=30)
async def test_tampered_cookie_is_not_a_login(shopper: Shopper, base_url: str) -> None:
    import aiohttp

    value = next(c.value for c in shopper.http.cookie_jar if c.key == "user")
    forged = value.replace("ZGVtbw", "cm9vdA")  # base64 of "demo" -> "root"
    async with aiohttp.ClientSession(cookies={"user": forged}) as http, \
            http.get(base_url + "/api/skus") as resp:
        assert resp.status == 401

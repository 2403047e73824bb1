"""A shopper's browser, minus the rendering: cookies, XSRF and JSON over real HTTP."""

from __future__ import annotations

import re
from typing import Any

import aiohttp

XSRF_META = re.compile(r'<meta name="xsrf-token" content="([^"]+)"')


class Shopper:
    def __init__(self, base_url: str):
        """Create inside a running event loop (aiohttp needs one)."""
        self.base_url = base_url.rstrip("/")
        # unsafe=True: accept cookies from an IP address (127.0.0.1).
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        self.xsrf = ""

    @classmethod
    async def logged_in(cls, base_url: str, username: str, password: str) -> Shopper:
        shopper = cls(base_url)
        resp = await shopper.login(username, password)
        assert resp.status == 302, f"login as {username} failed: {resp.status}"
        return shopper

    async def login(self, username: str, password: str) -> aiohttp.ClientResponse:
        async with self.http.get(self.base_url + "/login") as resp:
            page = await resp.text()
        match = XSRF_META.search(page)
        assert match, "login page carries no XSRF token"
        self.xsrf = match.group(1)
        async with self.http.post(self.base_url + "/login", allow_redirects=False,
                                  data={"username": username, "password": password,
                                        "_xsrf": self.xsrf}) as resp:
            await resp.read()
            return resp

    async def request(self, method: str, path: str, body: Any = None,
                      **kwargs: Any) -> tuple[int, Any]:
        headers = {"X-XSRFToken": self.xsrf} if method != "GET" else {}
        headers.update(kwargs.pop("headers", {}))
        if body is not None:
            kwargs["json"] = body
        async with self.http.request(method, self.base_url + path, headers=headers,
                                     allow_redirects=False, **kwargs) as resp:
            text = await resp.text()
            try:
                data = await resp.json(content_type=None)
            except ValueError:
                data = text
            return resp.status, data

    async def order(self, items: list[tuple[str, int]]) -> dict[str, Any]:
        status, data = await self.request(
            "POST", "/api/orders", {"items": [{"sku_id": s, "num": n} for s, n in items]})
        assert status == 201, (status, data)
        return data

    async def create_native(self, order_id: str) -> dict[str, Any]:
        status, data = await self.request("GET", f"/wxpay/createNative?orderId={order_id}")
        assert status == 200, (status, data)
        return data

    async def get_order(self, order_id: str) -> dict[str, Any]:
        status, data = await self.request("GET", f"/api/orders/{order_id}")
        assert status == 200, (status, data)
        return data

    def cookie_header(self) -> str:
        return "; ".join(f"{c.key}={c.value}" for c in self.http.cookie_jar)

    async def close(self) -> None:
        await self.http.close()

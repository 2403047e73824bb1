"""Pages refuse to be framed and carry a CSP they satisfy: no inline script or
style, sockets only to this site and to the configured STOMP URL."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest

from tests.support.shopper import Shopper

STOMP = "wss://stomp.shop.example:15673/ws"


@pytest.fixture
def extra_settings() -> dict[str, object]:
    return {"stomp_url": STOMP}


class InlineCode(HTMLParser):
    """What a CSP without 'unsafe-inline' would block: inline scripts, style
    elements and attributes, event-handler attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {name for name, _ in attrs}
        if tag == "script" and "src" not in names:
            self._in_script = True
        if tag == "style":
            self.found.append("<style>")
        self.found += [f"{tag} {name}=" for name in names if name == "style" or name.startswith("on")]

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.found.append(f"inline script {data.strip()[:40]!r}")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False


def inline_code(html: str) -> list[str]:
    parser = InlineCode()
    parser.feed(html)
    return parser.found


def directives(csp: str) -> dict[str, list[str]]:
    return {d.split()[0]: d.split()[1:] for d in (p.strip() for p in csp.split(";")) if d}


@pytest.mark.gen_test(timeout=30)
async def test_pages_are_not_framable_and_their_csp_fits_them(shopper: Shopper, base_url: str) -> None:
    order = await shopper.order([("fan-silk", 1)])
    native = await shopper.create_native(order["id"])
    assert inline_code(native["qr_svg"]) == []  # it goes into the pay page's DOM
    public_ws = "ws://127.0.0.1:" + base_url.rsplit(":", 1)[1]
    for path in ("/", "/login", f"/weixinpay.html?orderId={order['id']}", "/paysuccess.html?money=1.00",
                 "/payfail.html"):
        async with shopper.http.get(base_url + path) as resp:
            assert resp.status == 200, path
            html = await resp.text()
            assert resp.headers["X-Frame-Options"] == "DENY"
            csp = directives(resp.headers["Content-Security-Policy"])
        assert csp["frame-ancestors"] == ["'none'"]
        assert csp["script-src"] == ["'self'"] and csp["style-src"] == ["'self'"]
        assert csp["default-src"] == ["'self'"] and csp["object-src"] == ["'none'"]
        assert set(csp["connect-src"]) == {"'self'", public_ws, "wss://stomp.shop.example:15673"}
        assert inline_code(html) == [], path


@pytest.mark.gen_test(timeout=30)
async def test_api_answers_cannot_run_or_be_framed(shopper: Shopper) -> None:
    async with shopper.http.get(shopper.base_url + "/api/skus") as resp:
        assert resp.status == 200
        assert resp.headers["X-Frame-Options"] == "DENY"
        assert resp.headers["Content-Security-Policy"] == "default-src 'none'; frame-ancestors 'none'"

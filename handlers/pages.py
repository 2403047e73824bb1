"""HTML pages: shop, login, pay page, success and fail."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

import tornado.web

from handlers.base import COOKIE_DAYS, USER_COOKIE, BaseHandler, http_status
from server.accounts.login_throttle import LoginBusy, LoginRefused, Logins
from server.domain.catalog import Catalog
from server.domain.errors import NotFound
from server.domain.money import yuan
from server.domain.orders import Orders
from server.lifecycle import InFlight
from server.push.routes import ws_base

# Signed: "this browser has logged in as <user> before". Such a browser is not
# held back when someone elsewhere is guessing that user's password.
KNOWN_LOGIN_COOKIE = "known_login"
KNOWN_LOGIN_DAYS = 90

MONEY = re.compile(r"^\d{1,9}(\.\d{1,2})?$")


# Printable ASCII a Location may carry as it is; the rest is percent-encoded.
_URL_SAFE = "!#$%&'()*+,-./:;=?@[]_~"


def safe_next(target: str) -> str:
    """Only same-site paths: a login must never bounce the shopper elsewhere.

    Control characters send it home: they would split the Location header, and
    browsers drop tabs and newlines from URLs (``/\t/evil`` is ``//evil``).
    """
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in target):
        return "/"
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    target = quote(target, safe=_URL_SAFE)
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return "/"
    return target


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def page_csp(public_url: str, stomp_url: str) -> str:
    """What the pages load: scripts and styles from this site only (none
    inline; the QR is SVG markup put in the DOM), and sockets to this site's
    /ws/pay and to the STOMP URL the pay page is handed."""
    connect = " ".join(dict.fromkeys(["'self'", _origin(ws_base(public_url)), _origin(stomp_url)]))
    return ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
            f"connect-src {connect}; form-action 'self'; base-uri 'none'; object-src 'none'; "
            "frame-ancestors 'none'")


@dataclass(frozen=True)
class PageDeps:
    """What the pages need from the rest of paypush."""

    catalog: Catalog
    orders: Orders
    logins: Logins
    sandbox: bool
    push_route: str
    csp: str
    secure_cookies: bool  # the site is served over https


class PageHandler(BaseHandler):
    def initialize(self, requests: InFlight, pages: PageDeps) -> None:  # type: ignore[override]
        super().initialize(requests)
        self.pages = pages

    def prepare(self) -> None:
        self.set_header("Content-Security-Policy", self.pages.csp)

    def render_page(self, template: str, **kwargs: object) -> None:
        self.set_header("Cache-Control", "no-store")
        self.render(template, sandbox=self.pages.sandbox, yuan=yuan, **kwargs)


class ShopPage(PageHandler):
    @tornado.web.authenticated
    async def get(self) -> None:
        self.render_page("shop.html", skus=await self.pages.catalog.skus())


class LoginPage(PageHandler):
    def get(self) -> None:
        self.render_page("login.html", error="", username="",
                         next_url=safe_next(self.get_query_argument("next", "/")))

    async def post(self) -> None:
        username = self.get_body_argument("username", "").strip()
        password = self.get_body_argument("password", "")
        next_url = safe_next(self.get_body_argument("next", "/"))
        known = self.get_signed_cookie(KNOWN_LOGIN_COOKIE, max_age_days=KNOWN_LOGIN_DAYS)
        try:
            ok = await self.pages.logins.log_in(username, password, self.request.remote_ip or "",
                                                device_known=known == username.encode())
        except (LoginRefused, LoginBusy) as exc:
            n = max(1, round(exc.retry_after or 1))
            self.set_status(http_status(exc))
            self.set_header("Retry-After", str(n))
            wait = "a second" if n == 1 else f"{n} seconds" if n < 120 else f"{math.ceil(n / 60)} minutes"
            self.render_page("login.html", username=username, next_url=next_url,
                             error=f"Too many attempts: try again in {wait}." if isinstance(exc, LoginRefused)
                             else f"Too many logins right now: try again in {wait}.")
            return
        if ok:
            secure = self.pages.secure_cookies
            self.set_signed_cookie(USER_COOKIE, username, expires_days=COOKIE_DAYS,
                                   httponly=True, samesite="Lax", secure=secure)
            self.set_signed_cookie(KNOWN_LOGIN_COOKIE, username, expires_days=KNOWN_LOGIN_DAYS,
                                   httponly=True, samesite="Lax", secure=secure)
            self.redirect(next_url)
            return
        self.set_status(401)
        self.render_page("login.html", error="Wrong username or password.",
                         username=username, next_url=next_url)


class LogoutHandler(BaseHandler):
    def post(self) -> None:
        self.clear_cookie(USER_COOKIE)
        self.redirect("/login")


class PayPage(PageHandler):
    @tornado.web.authenticated
    async def get(self) -> None:
        order_id = self.get_query_argument("orderId", "")
        try:
            order = await self.pages.orders.get_owned(self.user, order_id)
        except NotFound:
            self.set_status(404)
            self.render_page("payfail.html", reason="No such order.")
            return
        self.render_page("weixinpay.html", order=order, push_route=self.pages.push_route)


class SuccessPage(PageHandler):
    def get(self) -> None:
        money = self.get_query_argument("money", "")
        self.render_page("paysuccess.html", money=money if MONEY.match(money) else "")


class FailPage(PageHandler):
    def get(self) -> None:
        self.render_page("payfail.html", reason="The order was closed before it was paid.")

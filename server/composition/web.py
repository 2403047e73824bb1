"""The application factory: routes, each handler given only what it needs,
and Tornado's settings, around the objects the container built."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import tornado.httputil
import tornado.web
import tornado.websocket
from tornado.iostream import IOStream

from handlers import admin, api, health, notify, pages, ws
from server.accounts.login_throttle import Logins
from server.composition.container import Services
from server.domain.catalog import Catalog
from server.lifecycle import Callbacks
from server.simulator import app as simulator_app
from settings import Network

ROOT = Path(__file__).resolve().parents[2]


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


def _trusted(address: str, proxies: Sequence[Network]) -> bool:
    ip = _ip(address)
    return ip is not None and any(ip in net for net in proxies)


def forwarded_client(peer: str, headers: tornado.httputil.HTTPHeaders,
                     proxies: Sequence[Network]) -> str:
    """The client's address: the peer's, unless the peer is one of our proxies.

    Behind trusted proxies, ``X-Forwarded-For`` is read from the right (each
    proxy appends the address it saw) past our own proxies; the first address
    that is not one of them is the client. Anything before it was written by
    the client and is not believed. ``X-Real-IP`` is the fallback.
    """
    if not _trusted(peer, proxies):
        return peer
    hops = [h.strip() for h in headers.get("X-Forwarded-For", "").split(",") if h.strip()]
    for hop in reversed(hops):
        if _ip(hop) is None:
            return peer  # a proxy would not have written that
        if not _trusted(hop, proxies):
            return hop
    if hops:
        return hops[0]  # every hop is ours: the request started inside
    real = headers.get("X-Real-IP", "")
    return real.strip() if _ip(real) is not None else peer


class PaypushApplication(tornado.web.Application):
    """Tornado's ``xheaders`` believes X-Real-IP from anyone; here the proxy
    headers count only when the peer is in ``TRUSTED_PROXIES``."""

    def __init__(self, routes: list[tornado.web.URLSpec], connection_opened: Callbacks[[IOStream | None]],
                 trusted_proxies: Sequence[Network] = (), **settings: Any):
        super().__init__(routes, **settings)
        self.trusted_proxies = tuple(trusted_proxies)
        # A connection is no longer opening: its request is no page's socket
        # (headers read), or the page has its state. The listener takes new
        # connections only while few are opening (composition/listening.py).
        self.connection_opened = connection_opened

    def log_request(self, handler: tornado.web.RequestHandler) -> None:
        # One line per event: a notify that was recorded is logged where its
        # payment was, so its access line would be a second one. Refusals
        # and failures keep theirs.
        if isinstance(handler, tornado.websocket.WebSocketHandler) and handler.get_status() != 101:
            # Refused before the upgrade; an upgraded socket says so itself, once it has sent its state.
            self.connection_opened(getattr(handler.request.connection, "stream", None))
        if isinstance(handler, notify.NotifyHandler) and handler.get_status() < 400:
            return
        super().log_request(handler)

    def find_handler(self, request: tornado.httputil.HTTPServerRequest,
                     **kwargs: Any) -> tornado.web._HandlerDelegate:
        # Called once per request, before any handler (or the access log) sees it.
        if request.headers.get("Upgrade", "").lower() != "websocket":
            # Only a page's opening is held to the listener's limit: a notify
            # waiting on RabbitMQ, or a page polling, must not keep pages out.
            self.connection_opened(getattr(request.connection, "stream", None))
        peer = request.remote_ip or ""
        if self.trusted_proxies and _trusted(peer, self.trusted_proxies):
            request.remote_ip = forwarded_client(peer, request.headers, self.trusted_proxies)
            proto = request.headers.get("X-Forwarded-Proto", "").split(",")[-1].strip()
            if proto in ("http", "https"):
                request.protocol = proto
        return super().find_handler(request, **kwargs)


def make_app(services: Services, **overrides: Any) -> PaypushApplication:
    settings = services.settings
    requests = services.requests
    catalog = Catalog(services.store)
    page = {"requests": requests, "pages": pages.PageDeps(
        catalog=catalog, orders=services.orders,
        logins=Logins(services.login_throttle, services.store), sandbox=settings.sandbox,
        push_route=settings.push_route, csp=pages.page_csp(settings.public_url, settings.stomp_url),
        secure_cookies=settings.public_url.startswith("https://"))}
    is_operator = services.roles.is_operator
    orders = {"requests": requests, "orders": services.orders}
    operators = {"requests": requests, "is_operator": is_operator}
    notifies = {"requests": requests, "payments": services.payments,
                "count": lambda outcome: services.metrics.notifies.labels(outcome).inc()}
    probes = {"requests": requests, "probes": services.probes}
    connection_opened: Callbacks[[IOStream | None]] = Callbacks("connection opened")
    socket = {"deps": ws.SocketDeps(
        hub=services.hub, orders=services.orders, tokens=services.push_tokens,
        cookie_secret=settings.cookie_secret, public_netloc=urlsplit(settings.public_url).netloc.lower(),
        on_delivered=services.pushed, heard=services.bridge.heard, opened=connection_opened)}
    routes: list[tornado.web.URLSpec] = [
        tornado.web.url(r"/", pages.ShopPage, page, name="shop"),
        tornado.web.url(r"/login", pages.LoginPage, page, name="login"),
        tornado.web.url(r"/logout", pages.LogoutHandler, {"requests": requests}, name="logout"),
        tornado.web.url(r"/weixinpay\.html", pages.PayPage, page, name="pay"),
        tornado.web.url(r"/paysuccess\.html", pages.SuccessPage, page, name="paysuccess"),
        tornado.web.url(r"/payfail\.html", pages.FailPage, page, name="payfail"),
        tornado.web.url(r"/api/skus", api.SkusHandler, {"requests": requests, "catalog": catalog}),
        tornado.web.url(r"/api/orders", api.OrdersHandler, orders),
        tornado.web.url(r"/api/orders/([^/]{1,64})", api.OrderHandler, {**orders, "is_operator": is_operator}),
        tornado.web.url(r"/api/orders/([^/]{1,64})/refunds", admin.RefundsHandler,
                        {**operators, "refunds": services.refunds}),
        tornado.web.url(r"/api/admin/orders", admin.AdminOrdersHandler, {**operators, "orders": services.orders}),
        tornado.web.url(r"/api/admin/reconciliations", admin.ReconciliationsHandler,
                        {**operators, "reports": services.reconciler.reports}),
        tornado.web.url(r"/api/admin/skus", admin.AdminSkusHandler, {**operators, "catalog": catalog}),
        tornado.web.url(r"/api/admin/skus/([^/]{1,64})", admin.AdminSkuHandler, {**operators, "catalog": catalog}),
        tornado.web.url(r"/admin", admin.AdminPage, {**page, "is_operator": is_operator}, name="admin"),
        tornado.web.url(r"/wxpay/createNative", api.CreateNativeHandler,
                        {"requests": requests, "payments": services.payments}),
        tornado.web.url(r"/wxpay/notify", notify.NotifyHandler,
                        {**notifies, "reader": services.gateway.v2_notices if services.gateway else None}),
        tornado.web.url(r"/wxpay/refund_notify", notify.RefundNotifyHandler,
                        {"requests": requests, "refunds": services.refunds, "count": notifies["count"]}),
        tornado.web.url(r"/wxpay/v3/notify", notify.V3NotifyHandler, notifies),
        tornado.web.url(r"/ws/pay", ws.PaySocket, socket),
        tornado.web.url(r"/vendor/stompjs/(stomp\.umd\.min\.js)", tornado.web.StaticFileHandler,
                        {"path": str(ROOT / "node_modules/@stomp/stompjs/bundles")}),
        tornado.web.url(r"/healthz", health.HealthzHandler, probes),
        tornado.web.url(r"/readyz", health.ReadyzHandler, probes),
    ]
    if settings.sandbox:
        # Outside sandbox mode /metrics has a listener of its own (make_metrics_app).
        routes.append(tornado.web.url(r"/metrics", health.MetricsHandler, probes))
    if services.simulator is not None:
        routes += simulator_app.routes("/sandbox/wxpay", services.simulator)
    app_settings: dict[str, Any] = {
        "cookie_secret": settings.cookie_secret,
        "xsrf_cookies": True,
        "xsrf_cookie_kwargs": {"httponly": True, "samesite": "Strict"},
        "login_url": "/login",
        "template_path": str(ROOT / "templates"),
        "static_path": str(ROOT / "static"),
        "compress_response": True,
        # Pages send nothing big. Dead peers are reaped by the hub's single
        # keep-alive task (PushHub.keep_alive), not a ping task per socket.
        "websocket_max_message_size": 4096,
    }
    app_settings.update(overrides)
    return PaypushApplication(routes, connection_opened, settings.trusted_proxies, **app_settings)


def make_metrics_app(services: Services) -> tornado.web.Application:
    """``/metrics`` alone, for METRICS_HOST:METRICS_PORT: what a process counts
    (orders, notifies, sockets) is for the operator, never for the public port."""
    return tornado.web.Application([tornado.web.url(r"/metrics", health.MetricsHandler,
                                                    {"requests": services.requests, "probes": services.probes})])


def make_simulator_app(sim: simulator_app.Simulator) -> tornado.web.Application:
    """The simulator on its own (``paypush simulator``): WeChat's API at the root."""
    return tornado.web.Application(simulator_app.routes("", sim),
                                   template_path=str(ROOT / "templates"),
                                   static_path=str(ROOT / "static"))

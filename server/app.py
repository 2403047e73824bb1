"""The application factory: routes and Tornado settings around given services."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tornado.web

from handlers import api, health, notify, pages, ws
from server.services import Services
from server.simulator import app as simulator_app

ROOT = Path(__file__).resolve().parent.parent


def make_app(services: Services, **overrides: Any) -> tornado.web.Application:
    deps = {"services": services}
    routes: list[tornado.web.URLSpec] = [
        tornado.web.url(r"/", pages.ShopPage, deps, name="shop"),
        tornado.web.url(r"/login", pages.LoginPage, deps, name="login"),
        tornado.web.url(r"/logout", pages.LogoutHandler, deps, name="logout"),
        tornado.web.url(r"/weixinpay\.html", pages.PayPage, deps, name="pay"),
        tornado.web.url(r"/paysuccess\.html", pages.SuccessPage, deps, name="paysuccess"),
        tornado.web.url(r"/payfail\.html", pages.FailPage, deps, name="payfail"),
        tornado.web.url(r"/api/skus", api.SkusHandler, deps),
        tornado.web.url(r"/api/orders", api.OrdersHandler, deps),
        tornado.web.url(r"/api/orders/([^/]{1,64})", api.OrderHandler, deps),
        tornado.web.url(r"/wxpay/createNative", api.CreateNativeHandler, deps),
        tornado.web.url(r"/wxpay/notify", notify.NotifyHandler, deps),
        tornado.web.url(r"/ws/pay", ws.PaySocket, deps),
        tornado.web.url(r"/vendor/stompjs/(stomp\.umd\.min\.js)", tornado.web.StaticFileHandler,
                        {"path": str(ROOT / "node_modules/@stomp/stompjs/bundles")}),
        tornado.web.url(r"/healthz", health.HealthzHandler, deps),
        tornado.web.url(r"/readyz", health.ReadyzHandler, deps),
        tornado.web.url(r"/metrics", health.MetricsHandler, deps),
    ]
    if services.simulator is not None:
        routes += simulator_app.routes("/sandbox/wxpay", services.simulator)
    settings = services.settings
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
    return tornado.web.Application(routes, **app_settings)


def make_simulator_app(sim: simulator_app.Simulator) -> tornado.web.Application:
    """The simulator on its own (``paypush simulator``): WeChat's API at the root."""
    return tornado.web.Application(simulator_app.routes("", sim),
                                   template_path=str(ROOT / "templates"),
                                   static_path=str(ROOT / "static"))

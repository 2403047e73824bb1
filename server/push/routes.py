"""Where a pay page can listen for its order's events: this process's
WebSocket, or RabbitMQ's Web STOMP (what createNative hands the page)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from server.push.tokens import PushTokens


def ws_base(public_url: str) -> str:
    return "ws" + public_url[len("http"):] if public_url.startswith("http") else public_url


@dataclass(frozen=True)
class PushRoutes:
    """Where the pay page can listen for its order's events."""

    ws_base: str
    stomp_url: str
    stomp_host: str  # the RabbitMQ vhost, named in the page's STOMP CONNECT
    stomp_login: str
    stomp_passcode: str
    tokens: PushTokens

    def for_order(self, order_id: str) -> dict[str, Any]:
        routes: dict[str, Any] = {"ws": f"{self.ws_base}/ws/pay?orderId={order_id}"}
        # No passcode (possible only outside sandbox): the STOMP route is not set up, so it is not offered.
        if self.stomp_passcode:
            routes["stomp"] = {"url": self.stomp_url, "host": self.stomp_host, "login": self.stomp_login,
                               "passcode": self.stomp_passcode,
                               "destination": f"/exchange/paynotify/{self.tokens.routing_key(order_id)}"}
        return routes

"""Push tokens: the unguessable name of an order's event stream.

``order.<token>`` is the routing key on the ``paynotify`` exchange; only a page
that was handed the token (the order's owner, by createNative) can subscribe.
"""

from __future__ import annotations

import hashlib
import hmac


class PushTokens:
    def __init__(self, secret: str):
        self._key = hashlib.sha256(b"paypush push token\0" + secret.encode("utf-8")).digest()

    def token(self, order_id: str) -> str:
        # 32 lowercase hex digits: deploy/rabbitmq-setup.sh lets the browser user
        # bind exactly ^order\.[0-9a-f]{32}\z, so a change here must change it too.
        return hmac.new(self._key, order_id.encode("utf-8"), hashlib.sha256).hexdigest()[:32]

    def routing_key(self, order_id: str) -> str:
        return f"order.{self.token(order_id)}"

"""Push tokens: the unguessable name of an order's event stream.

``order.<token>`` is the routing key on the ``paynotify`` exchange; only a page
that was handed the token (the order's owner, by createNative) can subscribe.
"""

from __future__ import annotations

import functools
import hashlib
import hmac

ROUTING_PREFIX = "order."


def token_of_routing_key(key: str) -> str | None:
    """The push token a ``paynotify`` routing key names, or None for any other key."""
    return key[len(ROUTING_PREFIX):] if key.startswith(ROUTING_PREFIX) else None


class PushTokens:
    def __init__(self, secret: str):
        self._key = hashlib.sha256(b"paypush push token\0" + secret.encode("utf-8")).digest()
        # An order's token is asked for twice per event (its sockets here, its
        # routing key) within milliseconds: the HMAC is computed once.
        self._recent = functools.lru_cache(maxsize=4096)(self._token)

    def token(self, order_id: str) -> str:
        return self._recent(order_id)

    def _token(self, order_id: str) -> str:
        # 32 lowercase hex digits: deploy/rabbitmq-setup.sh lets the browser user
        # bind exactly ^order\.[0-9a-f]{32}\z, so a change here must change it too.
        return hmac.new(self._key, order_id.encode("utf-8"), hashlib.sha256).hexdigest()[:32]

    def routing_key(self, order_id: str) -> str:
        return ROUTING_PREFIX + self.token(order_id)

"""How orders look to the browser (JSON): a presentation of the domain's documents."""

from __future__ import annotations

import time
from typing import Any

from server.domain.orders import order_logs


def order_json(order: dict[str, Any], with_logs: bool = False) -> dict[str, Any]:
    out = {
        "id": order["_id"],
        "status": order["status"],
        "pay_money": int(order["pay_money"]),
        "items": [{"sku_id": i["sku_id"], "name": i["name"], "price": int(i["price"]),
                   "num": int(i["num"])} for i in order["items"]],
        "created_at": _iso(order["created_at"]),
        "expires_at": _iso(order["expires_at"]),
        "transaction_id": order.get("transaction_id"),
        "pay_time": _iso(order["pay_time"]) if order.get("pay_time") else None,
    }
    if with_logs:
        out["logs"] = [{"kind": e["kind"], "who": e["who"], "remarks": e.get("remarks", ""),
                        "at": _iso(e["at"])} for e in order_logs(order)]
    return out


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(ts)))

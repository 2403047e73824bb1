"""How orders look to the browser (JSON): a presentation of the domain's documents."""

from __future__ import annotations

import time
from typing import Any

from server.domain.orders import order_logs
from server.domain.refunds import refunds_of


def order_json(order: dict[str, Any], with_logs: bool = False) -> dict[str, Any]:
    out = {
        "id": order["_id"],
        "user": order["user"],
        "status": order["status"],
        "pay_money": int(order["pay_money"]),
        "items": [{"sku_id": i["sku_id"], "name": i["name"], "price": int(i["price"]),
                   "num": int(i["num"])} for i in order["items"]],
        "created_at": _iso(order["created_at"]),
        "expires_at": _iso(order["expires_at"]),
        "transaction_id": order.get("transaction_id"),
        "pay_time": _iso(order["pay_time"]) if order.get("pay_time") else None,
        "refunded": int(order.get("refunded", 0)),
        "refunds": [refund_json(r) for r in refunds_of(order)],
    }
    if with_logs:
        out["logs"] = [{"kind": e["kind"], "who": e["who"], "remarks": e.get("remarks", ""),
                        "at": _iso(e["at"])} for e in order_logs(order)]
        # Each event as it went out on paynotify to the pages (RabbitMQ confirmed it).
        out["pushes"] = [{"event": kind, "at": _iso(at)}
                         for kind, at in sorted((order.get("published") or {}).items(), key=lambda p: p[1])]
    return out


def refund_json(refund: dict[str, Any]) -> dict[str, Any]:
    out = {"out_refund_no": refund["out_refund_no"], "amount": int(refund["amount"]), "status": refund["status"],
           "reason": refund.get("reason", ""), "created_at": _iso(refund["created_at"]),
           "success_time": _iso(refund["success_time"]) if refund.get("success_time") else None}
    if refund.get("duplicate"):
        out["transaction_id"] = refund.get("transaction_id")  # a second payment given back
    return out


def admin_order_json(order: dict[str, Any]) -> dict[str, Any]:
    """An order in an operator's list: who, what, how much, where it stands."""
    return {"id": order["_id"], "user": order["user"], "status": order["status"],
            "pay_money": int(order["pay_money"]), "refunded": int(order.get("refunded", 0)),
            "transaction_id": order.get("transaction_id"), "created_at": _iso(order["created_at"]),
            "refunds_open": int(order.get("refunds_open", 0))}


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(ts)))

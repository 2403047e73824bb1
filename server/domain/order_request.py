"""What a shopper may ask for: an order's lines, checked before anything is stored."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from server.domain.errors import InvalidRequest
from server.domain.stock import MAX_NUM

MAX_LINES = 20
# SKU ids become field names in ``holds``: no dots, no leading "$".
SKU_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class BadOrder(InvalidRequest):
    pass


@dataclass(frozen=True)
class Line:
    sku_id: str
    num: int


def parse_lines(payload: Any) -> list[Line]:
    """Validate ``{"items": [{"sku_id", "num"}]}``; repeated SKUs are merged."""
    items = payload.get("items") if isinstance(payload, dict) else None
    if not isinstance(items, list) or not items:
        raise BadOrder('expected {"items": [{"sku_id": "...", "num": 1}, ...]}')
    if len(items) > MAX_LINES:
        raise BadOrder(f"at most {MAX_LINES} lines per order")
    merged: dict[str, int] = {}
    for item in items:
        if not isinstance(item, dict):
            raise BadOrder("each item must be an object with sku_id and num")
        sku_id, num = item.get("sku_id"), item.get("num")
        if not isinstance(sku_id, str) or not SKU_ID.match(sku_id):
            raise BadOrder("sku_id must be a SKU id string")
        if isinstance(num, bool) or not isinstance(num, int) or not 1 <= num <= MAX_NUM:
            raise BadOrder(f"num must be a whole number from 1 to {MAX_NUM}")
        merged[sku_id] = merged.get(sku_id, 0) + num
        if merged[sku_id] > MAX_NUM:
            raise BadOrder(f"at most {MAX_NUM} of one SKU per order")
    # A fixed order of reservation keeps two orders for the same SKUs from
    # each holding what the other needs.
    return [Line(s, n) for s, n in sorted(merged.items())]

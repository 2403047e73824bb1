"""What an operator may ask back: an amount, a reason, an idempotency key.
Checked here, before any order is read; the refund's life is in refunds.py."""

from __future__ import annotations

import hashlib

from server.domain.errors import InvalidRequest

MAX_REASON = 80  # WeChat's refund_desc / reason: 80 characters
MAX_KEY = 200  # an Idempotency-Key header longer than this is not a key but a payload


class BadRefund(InvalidRequest):
    pass


def parse_amount(value: object) -> int:
    # bool is an int in Python; "1" and 1.0 are not amounts in fen.
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise BadRefund("amount must be a positive integer number of fen")
    return value


def parse_reason(value: object) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BadRefund("reason must be text")
    reason = value.strip()
    if len(reason) > MAX_REASON:
        raise BadRefund(f"reason: at most {MAX_REASON} characters")
    return reason


def parse_idempotency_key(value: str | None) -> str | None:
    if value is not None and not 0 < len(value) <= MAX_KEY:
        raise BadRefund(f"Idempotency-Key: 1 to {MAX_KEY} characters")
    return value


def key_slot(idempotency_key: str) -> str:
    """The key as a field name: any text the client sends, hashed to hex."""
    return hashlib.sha256(idempotency_key.encode("utf-8")).hexdigest()[:32]

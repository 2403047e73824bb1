"""Money as a person reads it: fen (what every amount is kept in) as yuan."""

from __future__ import annotations


def yuan(fen: int) -> str:
    """``1234`` -> ``"12.34"`` (exact: no float in between)."""
    sign = "-" if fen < 0 else ""
    return f"{sign}{abs(fen) // 100}.{abs(fen) % 100:02d}"

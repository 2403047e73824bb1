"""Reading paypush's /metrics page (Prometheus text format)."""

from __future__ import annotations

import re


def sample(text: str, name: str, labels: str = "") -> float:
    """The value of one sample; fails naming it when it is missing."""
    pattern = re.escape(name) + (re.escape("{" + labels + "}") if labels else "") + r" (\S+)"
    match = re.search("^" + pattern + "$", text, re.M)
    assert match, f"{name}{{{labels}}} missing from /metrics"
    return float(match.group(1))

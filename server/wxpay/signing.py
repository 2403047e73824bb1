"""WeChat Pay v2 signatures.

The string to sign is every non-empty parameter except ``sign`` itself, sorted
by name (ASCII), joined as ``k=v`` with ``&``, then ``&key=API_KEY``; MD5 or
HMAC-SHA256 (keyed with the API key) of that, upper-case hex.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping

MD5 = "MD5"
HMAC_SHA256 = "HMAC-SHA256"
SIGN_TYPES = (MD5, HMAC_SHA256)


def string_to_sign(params: Mapping[str, str], key: str) -> str:
    pairs = [f"{k}={v}" for k, v in sorted(params.items()) if k != "sign" and v not in ("", None)]
    pairs.append(f"key={key}")
    return "&".join(pairs)


def sign(params: Mapping[str, str], key: str, sign_type: str = MD5) -> str:
    payload = string_to_sign(params, key).encode("utf-8")
    if sign_type == MD5:
        return hashlib.md5(payload).hexdigest().upper()
    if sign_type == HMAC_SHA256:
        return hmac.new(key.encode("utf-8"), payload, hashlib.sha256).hexdigest().upper()
    raise ValueError(f"unsupported sign_type {sign_type!r}")


def verify(params: Mapping[str, str], key: str, default_sign_type: str = MD5) -> bool:
    """True when ``params['sign']`` matches, using the message's own ``sign_type``."""
    given = params.get("sign") or ""
    sign_type = params.get("sign_type") or default_sign_type
    if not given or sign_type not in SIGN_TYPES:
        return False
    return hmac.compare_digest(given.upper(), sign(params, key, sign_type))


def signed(params: Mapping[str, str], key: str, sign_type: str = MD5) -> dict[str, str]:
    """A copy of ``params`` with ``sign`` (and ``sign_type`` when not MD5) added."""
    out = {k: str(v) for k, v in params.items() if v not in ("", None)}
    if sign_type != MD5:
        out["sign_type"] = sign_type
    out["sign"] = sign(out, key, sign_type)
    return out


def nonce() -> str:
    return secrets.token_hex(16)

"""WeChat Pay v2 signatures.

The string to sign is every non-empty parameter except ``sign`` itself, sorted
by name (ASCII), joined as ``k=v`` with ``&``, then ``&key=API_KEY``; MD5 or
HMAC-SHA256 (keyed with the API key) of that, upper-case hex.

Which algorithm a received message used: its ``sign_type`` when it has one
(the field is itself signed), otherwise the length of its sign -- 32 hex
digits for MD5, 64 for HMAC-SHA256. WeChat leaves ``sign_type`` out of the
notify of an order placed with HMAC-SHA256, so the length is all there is.
The receiver then checks that algorithm is one it accepts: never one weaker
than the merchant's own (see :func:`accepted_sign_types`).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Collection, Mapping

MD5 = "MD5"
HMAC_SHA256 = "HMAC-SHA256"
SIGN_TYPES = (MD5, HMAC_SHA256)  # weakest first
SIGN_LENGTHS = {MD5: 32, HMAC_SHA256: 64}  # hex digits
_BY_LENGTH = {n: t for t, n in SIGN_LENGTHS.items()}
_HEX = frozenset("0123456789abcdefABCDEF")


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


def accepted_sign_types(configured: str) -> tuple[str, ...]:
    """The algorithms a merchant configured with ``configured`` accepts: it and any stronger one.

    WeChat signs answers and notifies with the sign type of the request that
    placed the order, and we place every order with the configured one. So an
    HMAC-SHA256 merchant never has a reason to take MD5, and taking it would
    make MD5 the bar a forger has to clear; an MD5 merchant loses nothing by
    also taking HMAC-SHA256 (orders placed before a switch back to MD5).
    """
    if configured not in SIGN_TYPES:
        raise ValueError(f"unsupported sign_type {configured!r}")
    return SIGN_TYPES[SIGN_TYPES.index(configured):]


def sign_type_of(params: Mapping[str, str], default: str | None = None) -> str | None:
    """The algorithm a message says it was signed with; None when unknown.

    A non-empty ``sign_type`` decides (an unknown one is None). Without it,
    ``default`` when given (WeChat's rule for requests: MD5), else the sign's length.
    """
    declared = params.get("sign_type") or ""
    if declared:  # empty fields take no part in the signature, so an empty one says nothing
        return declared if declared in SIGN_TYPES else None
    if default is not None:
        return default
    return _BY_LENGTH.get(len(params.get("sign") or ""))


def verify(params: Mapping[str, str], key: str, accepted: Collection[str] = SIGN_TYPES,
           default_sign_type: str | None = None) -> bool:
    """True when ``params['sign']`` is the signature, under the algorithm the message
    names (:func:`sign_type_of`), and that algorithm is one of ``accepted``."""
    sign_type = sign_type_of(params, default_sign_type)
    if sign_type is None or sign_type not in accepted:
        return False
    given = params.get("sign") or ""
    # Only ASCII hex of the right length is a sign: "\ufb00".upper() is "FF", and
    # compare_digest refuses non-ASCII str with an exception rather than False.
    if len(given) != SIGN_LENGTHS[sign_type] or not _HEX.issuperset(given):
        return False
    # Hex case carries nothing: the lower-case spelling is the same digest.
    return hmac.compare_digest(given.upper().encode("ascii"), sign(params, key, sign_type).encode("ascii"))


def signed(params: Mapping[str, str], key: str, sign_type: str = MD5) -> dict[str, str]:
    """A copy of ``params`` with ``sign`` (and ``sign_type`` when not MD5) added."""
    out = {k: str(v) for k, v in params.items() if v not in ("", None)}
    if sign_type != MD5:
        out["sign_type"] = sign_type
    out["sign"] = sign(out, key, sign_type)
    return out


def nonce() -> str:
    return secrets.token_hex(16)

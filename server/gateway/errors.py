"""Typed failures of WeChat Pay calls, so callers can decide what a retry can fix."""

from __future__ import annotations

# err_codes after which the same call can succeed later.
RETRYABLE = frozenset({"SYSTEMERROR", "UNREACHABLE", "BAD_RESPONSE", "RETURN_FAIL", "FREQUENCY_LIMITED"})


class WxPayError(Exception):
    """WeChat answered ``result_code=FAIL`` (or could not be asked)."""

    def __init__(self, err_code: str, message: str = "", response: dict[str, str] | None = None):
        super().__init__(f"{err_code}: {message}" if message else err_code)
        self.err_code = err_code
        self.message = message
        self.response = response or {}

    @property
    def retryable(self) -> bool:
        return self.err_code in RETRYABLE


class WxPayUnreachable(WxPayError):
    """Connection refused, timed out or answered with a non-200 status."""

    def __init__(self, message: str):
        super().__init__("UNREACHABLE", message)


class WxPayReturnFail(WxPayError):
    """``return_code=FAIL``: the request itself was refused (signature, appid, format)."""

    def __init__(self, message: str, response: dict[str, str]):
        super().__init__("RETURN_FAIL", message, response)


class WxPayBadResponse(WxPayError):
    """The answer was not valid XML or its signature did not verify."""

    def __init__(self, message: str):
        super().__init__("BAD_RESPONSE", message)

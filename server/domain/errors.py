"""What a business rule can say no with. The domain knows no HTTP: handlers/
map each kind to a status (handlers/base.py); the message is for the user."""

from __future__ import annotations


class DomainError(Exception):
    """A request the rules refuse; ``str(exc)`` says why, in the user's terms,
    and ``retry_after`` (seconds) when asking again later can succeed."""

    def __init__(self, message: str = "", retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class InvalidRequest(DomainError):
    """Malformed or out of range: asking again the same way cannot work."""


class NotFound(DomainError):
    """No such thing, or not the caller's to see (the two look the same)."""


class Forbidden(DomainError):
    """The caller is known but not allowed to do this (a shopper on an operator's page)."""


class Conflict(DomainError):
    """Not possible in the current state (out of stock, not payable any more)."""


class LimitReached(DomainError):
    """The caller has used up an allowance; it may try again later."""


class Busy(DomainError):
    """This process is at capacity right now; another one, or a moment later, will do."""


class UpstreamUnavailable(DomainError):
    """A service we depend on (WeChat Pay) failed; the details are in the log."""

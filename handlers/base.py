"""BaseHandler: the login cookie, the request count, and the one place where
the domain's refusals become HTTP statuses (the domain knows no HTTP)."""

from __future__ import annotations

import json
import logging
from typing import Any

import tornado.web
from pymongo.errors import PyMongoError
from tornado.http1connection import HTTP1Connection

from server.domain.errors import (
    Busy,
    Conflict,
    DomainError,
    Forbidden,
    InvalidRequest,
    LimitReached,
    NotFound,
    UpstreamUnavailable,
)
from server.lifecycle import InFlight

log = logging.getLogger(__name__)

USER_COOKIE = "user"
COOKIE_DAYS = 7
# API bodies are a few hundred bytes; Tornado's own default would buffer 100 MB.
MAX_JSON_BODY = 64 * 1024
# Up to this much is read and dropped, so the client is still reading when the
# 413 comes; a larger body is refused at once and the connection closed.
DISCARD_BODY = 1024 * 1024


def user_from_cookie(handler: tornado.web.RequestHandler) -> str | None:
    raw = handler.get_signed_cookie(USER_COOKIE, max_age_days=COOKIE_DAYS)
    return raw.decode("utf-8") if raw else None


def user_from_cookie_header(header: str, secret: str) -> str | None:
    """The signed login cookie read straight from the header.

    For long-lived sockets: ``request.cookies`` would parse and keep a
    SimpleCookie of Morsels (a few KiB) for as long as the socket is open.
    """
    for part in header.split(";"):
        name, _, value = part.strip().partition("=")
        if name == USER_COOKIE and value:
            raw = tornado.web.decode_signed_value(secret, USER_COOKIE, value.strip('"'),
                                                  max_age_days=COOKIE_DAYS)
            return raw.decode("utf-8") if raw else None
    return None


# Most specific first: a subclass of one kind is never caught by another's row.
HTTP_STATUS: tuple[tuple[type[DomainError], int], ...] = (
    (InvalidRequest, 400),
    (Forbidden, 403),
    (NotFound, 404),
    (Conflict, 409),
    (LimitReached, 429),
    (UpstreamUnavailable, 502),
    (Busy, 503),
)


def http_status(exc: DomainError) -> int:
    return next((status for kind, status in HTTP_STATUS if isinstance(exc, kind)), 400)


def retry_after(exc: DomainError) -> int | None:
    return None if exc.retry_after is None else max(1, round(exc.retry_after))


class BaseHandler(tornado.web.RequestHandler):
    def initialize(self, requests: InFlight) -> None:
        self.requests = requests
        requests.enter()  # shutdown waits for these to finish
        self._counted = True

    def on_finish(self) -> None:
        self._uncount()

    def on_connection_close(self) -> None:
        # A streamed body the client gave up on half-way (an aborted notify
        # upload) never reaches its method nor on_finish: without this it
        # would count as in flight for ever and every stop would wait out its
        # grace. A request whose handler is still running after its client
        # left is not waited for either: nobody is waiting for the answer.
        super().on_connection_close()
        self._uncount()

    def _uncount(self) -> None:
        if self._counted:
            self._counted = False
            self.requests.leave()

    def get_current_user(self) -> str | None:
        return user_from_cookie(self)

    @property
    def user(self) -> str:
        assert self.current_user is not None
        return str(self.current_user)

    def set_default_headers(self) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "same-origin")
        # Nothing here is meant to be framed (clickjacking) or, unless it is a
        # page (PageHandler), to run anything at all if opened as a document.
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'")

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        # Expected failures get one line; only the unexpected get a traceback.
        if isinstance(value, (DomainError, PyMongoError)):
            log.warning("%s %s: %s: %s", self.request.method, self.request.path,
                        type(value).__name__, value)
            return
        super().log_exception(typ, value, tb)


@tornado.web.stream_request_body
class JsonHandler(BaseHandler):
    """API handler: JSON bodies in and out, ``{"error": ...}`` with 4xx/5xx.

    The body is streamed so that its size is checked as it arrives: at most
    ``MAX_JSON_BODY`` bytes are ever kept, and a larger one is a 413.
    """

    def prepare(self) -> None:
        self._body = bytearray()
        self._too_large = False
        if self.current_user is None:
            raise tornado.web.HTTPError(401, reason="log in first")
        declared = self.request.headers.get("Content-Length", "")
        if declared.isascii() and declared.isdigit() and int(declared) > DISCARD_BODY:
            raise tornado.web.HTTPError(413, reason=f"body too large (at most {MAX_JSON_BODY} bytes)")
        connection = self.request.connection
        if isinstance(connection, HTTP1Connection):
            # A chunked body past this is cut off by Tornado itself.
            connection.set_max_body_size(DISCARD_BODY)

    def data_received(self, chunk: bytes) -> None:
        if len(self._body) + len(chunk) > MAX_JSON_BODY:
            self._too_large = True
            self._body.clear()
        elif not self._too_large:
            self._body += chunk

    def json_body(self) -> Any:
        if self._too_large:
            raise tornado.web.HTTPError(413, reason=f"body too large (at most {MAX_JSON_BODY} bytes)")
        try:
            return json.loads(bytes(self._body) or b"null")
        except (ValueError, UnicodeDecodeError, RecursionError):
            # RecursionError: a few thousand nested brackets, well inside the size limit.
            raise tornado.web.HTTPError(400, reason="body must be JSON") from None

    def send_json(self, payload: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(payload, ensure_ascii=False))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        message = self._reason
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, DomainError):
            status_code, message = http_status(exc), str(exc)
            wait = retry_after(exc)
            if wait is not None:
                self.set_header("Retry-After", str(wait))
        elif isinstance(exc, PyMongoError):
            status_code, message = 503, "storage unavailable, try again"
        elif isinstance(exc, tornado.web.HTTPError) and exc.reason:
            message = exc.reason
        elif status_code >= 500:
            message = "internal error"
        self.clear_header("Content-Type")
        self.send_json({"error": message}, status=status_code)

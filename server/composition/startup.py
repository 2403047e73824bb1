"""What every paypush command needs first: the MongoDB it is pointed at (or
the embedded one), checked with one ping, and refusals an operator can act on."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from urllib.parse import urlsplit

from pymongo.errors import ConfigurationError, OperationFailure, PyMongoError, ServerSelectionTimeoutError

import settings as settings_mod
from server.infra.embedded_mongo import EmbeddedMongo
from server.infra.store import connect


class StartupError(Exception):
    """What paypush was pointed at cannot be used (MongoDB, VAR_DIR); the message says what to fix."""


@contextlib.contextmanager
def mongo_url_for(settings: settings_mod.Settings) -> Iterator[tuple[str, EmbeddedMongo | None]]:
    """MONGO_URL, or the embedded server's URL (started here unless already running) and the server."""
    if settings.mongo_url:
        yield settings.mongo_url, None
        return
    try:
        embedded = EmbeddedMongo(settings.var_dir / "mongo").attach_or_start()
    except OSError as exc:
        raise StartupError(f"VAR_DIR {str(settings.var_dir)!r} is not a directory paypush can write to "
                           f"({exc.strerror}): set VAR_DIR to one, or MONGO_URL to a MongoDB") from None
    except RuntimeError as exc:
        raise StartupError(f"{exc}; or set MONGO_URL to a MongoDB") from None
    try:
        yield embedded.url, embedded
    finally:
        embedded.stop()  # only stops what this process started


def _mongo_reason(exc: BaseException, url: str) -> str:
    """The useful first part of a pymongo error, on one line, without the password."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    for tail in (" (configured timeouts", ", Timeout:", ", full error:"):
        text = text.split(tail)[0]
    with contextlib.suppress(ValueError):
        password = urlsplit(url).password
        if password and len(password) >= 4:  # shorter ones would garble every word they occur in
            text = text.replace(password, "***")
    return text[:300]


async def check_mongo(settings: settings_mod.Settings, url: str) -> None:
    """One ping before anything else, so that a malformed, unreachable or refusing
    MONGO_URL is one line saying so rather than a traceback from index creation."""
    try:
        store = connect(url, settings.mongo_db, settings.mongo_timeout_ms)
    except (PyMongoError, ValueError) as exc:  # pymongo's URI parser raises both
        raise StartupError(f"MONGO_URL is not a MongoDB URL ({_mongo_reason(exc, url)}): set it to "
                           "mongodb://[user:password@]host[:port]/ (user and password percent-encoded), "
                           "or leave it empty for the embedded server") from None
    try:
        await store.ping()
    except ServerSelectionTimeoutError as exc:
        raise StartupError(f"MongoDB did not answer within MONGO_TIMEOUT_MS={settings.mongo_timeout_ms} "
                           f"({_mongo_reason(exc, url)}): start it, or fix MONGO_URL") from None
    except ConfigurationError as exc:  # e.g. a mongodb+srv:// name with no SRV record
        raise StartupError(f"MONGO_URL cannot be used ({_mongo_reason(exc, url)}): fix it, or leave it "
                           "empty for the embedded server") from None
    except OperationFailure as exc:
        raise StartupError(f"MongoDB refused paypush ({_mongo_reason(exc, url)}): fix the user, "
                           "password or authSource in MONGO_URL, or that user's roles") from None
    except PyMongoError as exc:
        raise StartupError(f"MongoDB failed paypush's first ping ({_mongo_reason(exc, url)}): "
                           "check MONGO_URL and the server") from None
    finally:
        await store.close()

"""The only module that reads the environment.

Every setting is declared once, as a field of :class:`Settings` carrying a
:class:`Setting` (its variable, parser, default, documentation, and whether it
is a secret). That one declaration drives all four uses: :func:`from_environ`
parses each variable with it, the defaults are its text, the README's
configuration table is printed from it (``python -m settings --markdown``), and
``repr`` redacts the fields it marks secret.

Rules that tie settings together (sandbox mode and the merchant credentials,
https outside sandbox, generated secrets, the STOMP route) run after the
per-variable parse, as the explicit functions in :data:`RULES`.

A missing or malformed value fails at start-up with a message naming the
variable to set; secrets never appear in messages or ``repr``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import math
import os
import re
import secrets
from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# WeChat's published sandbox-style demo credentials: only ever used against the
# built-in simulator (start-up refuses them against the real API).
SANDBOX_APPID = "wxd930ea5d5a258f4f"
SANDBOX_MCH_ID = "10000100"
SANDBOX_KEY = "192006250b4c09247ec02edce69f6a2d"

REAL_WXPAY_API_BASE = "https://api.mch.weixin.qq.com"
SIGN_TYPES = ("MD5", "HMAC-SHA256")
DEPLOYMENT_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")

# Tornado signs cookies with HMAC-SHA256, and RFC 2104 discourages keys shorter
# than the hash's 32-byte output; 32 characters is also 128 bits as hex, and
# the secret paypush generates itself (token_urlsafe(32)) is 43.
MIN_COOKIE_SECRET_LENGTH = 32

REDACTED = "**********"


class ConfigError(Exception):
    """A configuration value is missing or malformed; the message says what to set."""


# --- parsers: (variable name, stripped text) -> value, or ConfigError naming the variable ----------------------
# The text is the given value, or the default when unset: empty only where the default is.

Parse = Callable[[str, str], Any]


def text(name: str, value: str) -> str:
    return value


def path(name: str, value: str) -> Path:
    return Path(value)


def one_of(*choices: str, fold: Callable[[str], str] = str.lower) -> Parse:
    def parse(name: str, value: str) -> str:
        value = fold(value)
        if value not in choices:
            raise ConfigError(f"{name} must be {' or '.join(choices)}, got {value!r}")
        return value
    return parse


def whole_number(minimum: int = 0, maximum: int | None = None) -> Parse:
    def parse(name: str, value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise ConfigError(f"{name} must be a whole number, got {value!r}") from None
        if number < minimum:
            raise ConfigError(f"{name} must be at least {minimum}, got {number}")
        if maximum is not None and number > maximum:
            raise ConfigError(f"{name} must be at most {maximum}, got {number}")
        return number
    return parse


def number(positive: bool = False) -> Parse:
    """A finite number, never negative; ``positive`` also refuses 0 (a rate, a speed, an interval)."""
    def parse(name: str, value: str) -> float:
        try:
            result = float(value)
        except ValueError:
            result = math.nan
        if not math.isfinite(result):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        if result < 0:
            raise ConfigError(f"{name} must not be negative, got {result}")
        if positive and result == 0:
            raise ConfigError(f"{name} must be more than 0, got {value!r}")
        return result
    return parse


def flag(name: str, value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be 1 or 0, got {value.lower()!r}")


def hide_password(url: str) -> str:
    """``url`` with the password of its user info (an AMQP or MongoDB URL's) replaced, for messages and repr."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return url if "@" not in url else REDACTED
    if not password:
        return url
    userinfo, _, hostinfo = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return parts._replace(netloc=f"{user}:{REDACTED}@{hostinfo}").geturl()


def url(*schemes: str) -> Parse:
    def parse(name: str, value: str) -> str:
        try:
            parts = urlsplit(value)
        except ValueError:
            parts = urlsplit("")
        if parts.scheme not in schemes or not parts.netloc:
            starts = " or ".join(f"{scheme}://" for scheme in schemes)
            raise ConfigError(f"{name} must be a URL starting {starts}, got {hide_password(value)!r}")
        return value.rstrip("/")
    return parse


def networks(name: str, value: str) -> tuple[Network, ...]:
    """Comma-separated IP addresses or CIDR blocks."""
    result = []
    for part in value.split(","):
        if part.strip():
            try:
                result.append(ipaddress.ip_network(part.strip(), strict=False))
            except ValueError:
                raise ConfigError(f"{name} must be IP addresses or CIDR blocks, comma-separated, "
                                  f"got {part.strip()!r}") from None
    return tuple(result)


def whole_seconds(name: str, value: str) -> tuple[int, ...]:
    """Comma-separated whole seconds, each at least 1."""
    try:
        delays = tuple(int(d) for d in value.split(","))
    except ValueError:
        delays = ()
    if not delays or min(delays) < 1:
        raise ConfigError(f"{name} must be whole seconds >= 1, comma-separated, got {value!r}")
    return delays


def clock_time_or_off(name: str, value: str) -> dt.time | None:
    """``HH:MM``, 24-hour, or ``off``."""
    if value.strip().lower() == "off":
        return None
    match = re.fullmatch(r"([01]?\d|2[0-3]):([0-5]\d)", value.strip())
    if not match:
        raise ConfigError(f"{name} must be a time of day as HH:MM (24-hour) or off, got {value!r}")
    return dt.time(int(match.group(1)), int(match.group(2)))


def name_like(pattern: re.Pattern[str], what: str) -> Parse:
    def parse(name: str, value: str) -> str:
        if value and not pattern.fullmatch(value):
            raise ConfigError(f"{name} must be {what}, got {value!r}")
        return value
    return parse


# Secret parsers never quote the value they refuse.

def merchant_key(name: str, value: str) -> str:
    if len(value) != 32:
        raise ConfigError(f"{name} must be the 32-character API key from the merchant platform")
    return value


def apiv3_key(name: str, value: str) -> str:
    # AES-256 takes the key's 32 bytes as they are: anything else is not the key.
    if len(value.encode("utf-8")) != 32:
        raise ConfigError(f"{name} must be the 32-byte APIv3 key from the merchant platform "
                          f"(got {len(value.encode('utf-8'))} bytes)")
    return value


def long_secret(minimum: int) -> Parse:
    def parse(name: str, value: str) -> str:
        if len(value) < minimum:
            raise ConfigError(
                f"{name} is too short ({len(value)} of at least {minimum} characters); "
                "it signs logins: set it to random text, as from "
                "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'")
        return value
    return parse


# --- the table ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Setting:
    """How one environment variable becomes one field of :class:`Settings`."""

    env: str
    parse: Parse
    # The default as it would be written in the environment, parsed like a given
    # value; None: a rule in RULES decides, as ``default_doc`` says.
    default: str | None
    doc: str
    default_doc: str = ""
    secret: bool = False

    @property
    def documented_default(self) -> str:
        if self.default is None:
            return self.default_doc
        return f"`{self.default}`" if self.default else "empty"


def setting(env: str, parse: Parse, default: str | None, doc: str, *,
            default_doc: str = "", secret: bool = False) -> dict[str, Setting]:
    """The metadata of a :class:`Settings` field: the one place the field's variable is declared."""
    return {"setting": Setting(env, parse, default, doc, default_doc, secret)}


@dataclass(frozen=True, repr=False)
class Settings:
    host: str = field(metadata=setting("HOST", text, "127.0.0.1", "listen address"))
    port: int = field(metadata=setting("PORT", whole_number(maximum=65535), "8888", "listen port"))
    reuse_port: bool = field(metadata=setting(
        "REUSE_PORT", flag, "0",
        "several paypush processes listen on the same HOST:PORT (SO_REUSEPORT; the kernel spreads "
        "connections among them); each process holds at most its open-file limit of sockets"))
    public_url: str = field(metadata=setting(
        "PUBLIC_URL", url("http", "https"), None,
        "base URL WeChat can reach; notify_url = `{PUBLIC_URL}/wxpay/notify`; https outside sandbox mode",
        default_doc="`http://HOST:PORT`"))
    mongo_url: str = field(metadata=setting(
        "MONGO_URL", text, "",
        "MongoDB URL; empty = start the embedded server, data under `VAR_DIR/mongo`"))
    mongo_db: str = field(metadata=setting("MONGO_DB", text, "paypush", "database name"))
    mongo_timeout_ms: int = field(metadata=setting(
        "MONGO_TIMEOUT_MS", whole_number(minimum=100), "3000",
        "how long a MongoDB call may wait for the server"))
    var_dir: Path = field(metadata=setting(
        "VAR_DIR", path, "var",
        "local state (embedded db, generated secrets), relative to the working directory"))
    amqp_url: str = field(metadata=setting(
        "AMQP_URL", url("amqp", "amqps"), "amqp://guest:guest@127.0.0.1:5672/",
        "RabbitMQ; its path names the vhost (none: `/`)"))
    stomp_url: str = field(metadata=setting(
        "STOMP_URL", url("ws", "wss"), "ws://127.0.0.1:15674/ws",
        "RabbitMQ Web STOMP as the pay page reaches it, for the STOMP route (the vhost is `AMQP_URL`'s)"))
    stomp_login: str = field(metadata=setting(
        "STOMP_LOGIN", text, "webguest",
        "the browser user the pay page logs in as on the STOMP route"))
    stomp_passcode: str = field(metadata=setting(
        "STOMP_PASSCODE", text, None,
        "that user's password; outside sandbox mode, unset means the STOMP route is not offered",
        default_doc="generated into `VAR_DIR` in sandbox mode; empty otherwise", secret=True))
    wxpay_appid: str = field(metadata=setting(
        "WXPAY_APPID", text, None,
        "merchant credentials: the app ID",
        default_doc="WeChat's published sandbox one, in sandbox mode"))
    wxpay_mch_id: str = field(metadata=setting(
        "WXPAY_MCH_ID", text, None,
        "merchant credentials: the merchant ID",
        default_doc="WeChat's published sandbox one, in sandbox mode"))
    wxpay_key: str = field(metadata=setting(
        "WXPAY_KEY", merchant_key, None,
        "merchant credentials: the 32-character API key; setting it leaves sandbox mode",
        default_doc="WeChat's published sandbox one, in sandbox mode", secret=True))
    wxpay_sign_type: str = field(metadata=setting(
        "WXPAY_SIGN_TYPE", one_of(*SIGN_TYPES, fold=str.upper), "MD5",
        "`MD5` or `HMAC-SHA256`; also the weakest algorithm accepted on notifies and answers"))
    wxpay_api: str = field(metadata=setting(
        "WXPAY_API", one_of("v2", "v3"), "v2",
        "WeChat Pay API: `v2` (XML, the API key) or `v3` (JSON, the merchant certificate and the APIv3 key)"))
    wxpay_apiv3_key: str = field(metadata=setting(
        "WXPAY_APIV3_KEY", apiv3_key, None,
        "v3: the 32-byte APIv3 key (decrypts notifies and platform certificates); setting it leaves sandbox mode",
        default_doc="generated into `VAR_DIR` in v3 sandbox mode", secret=True))
    wxpay_private_key_path: str = field(metadata=setting(
        "WXPAY_PRIVATE_KEY_PATH", text, None,
        "the merchant API private key (`apiclient_key.pem`): v3 request signing; v2 refunds' mutual TLS "
        "(with `WXPAY_CERT_PATH`) over https",
        default_doc="generated into `VAR_DIR` in v3 sandbox mode"))
    wxpay_cert_path: str = field(metadata=setting(
        "WXPAY_CERT_PATH", text, None,
        "the merchant API certificate (`apiclient_cert.pem`): v2 refunds' mutual TLS over https; v3: when "
        "given, its serial must be `WXPAY_CERT_SERIAL`",
        default_doc="generated into `VAR_DIR` in v3 sandbox mode"))
    wxpay_cert_serial: str = field(metadata=setting(
        "WXPAY_CERT_SERIAL", name_like(re.compile(r"^[0-9A-Fa-f]{1,64}$"), "the certificate's serial number in hex"),
        None, "v3: the merchant API certificate's serial number",
        default_doc="the generated certificate's in v3 sandbox mode"))
    wxpay_public_key_path: str = field(metadata=setting(
        "WXPAY_PUBLIC_KEY_PATH", text, None,
        "v3 public-key mode: WeChat Pay's public key (`pub_key.pem`); unset: platform certificates from "
        "`/v3/certificates`; with both, both are accepted (WeChat's migration)",
        default_doc="unset"))
    wxpay_public_key_id: str = field(metadata=setting(
        "WXPAY_PUBLIC_KEY_ID", name_like(re.compile(r"^PUB_KEY_ID_[0-9A-Za-z_]{1,64}$"), "PUB_KEY_ID_ and its id"),
        None, "v3 public-key mode: the key's id (`PUB_KEY_ID_...`), the `Wechatpay-Serial` it signs with",
        default_doc="unset"))
    wxpay_ca_path: str = field(metadata=setting(
        "WXPAY_CA_PATH", text, "",
        "CA bundle (PEM) the WeChat Pay API's https certificate is checked against (a simulator's CA); "
        "empty: the system's CAs"))
    wxpay_api_base: str = field(metadata=setting(
        "WXPAY_API_BASE", url("http", "https"), None,
        "WeChat Pay API base URL; https outside sandbox mode, never `*.weixin.qq.com` in it",
        default_doc=f"the built-in simulator (`PUBLIC_URL/sandbox/wxpay`) in sandbox mode, "
                    f"else `{REAL_WXPAY_API_BASE}`"))
    order_timeout_seconds: int = field(metadata=setting(
        "ORDER_TIMEOUT_SECONDS", whole_number(minimum=1), "3600",
        "unpaid orders are closed after this"))
    cookie_secret: str = field(metadata=setting(
        "COOKIE_SECRET", long_secret(MIN_COOKIE_SECRET_LENGTH), None,
        f"signs login cookies and push tokens; at least {MIN_COOKIE_SECRET_LENGTH} random characters, "
        "the same for every paypush process behind the load balancer",
        default_doc="generated into `VAR_DIR` in sandbox mode; required otherwise", secret=True))
    sandbox: bool = field(metadata=setting(
        "SANDBOX", flag, None,
        "simulator mounted, demo data, relaxed checks; takes only WeChat's published sandbox credentials",
        default_doc="`1` when `WXPAY_KEY` is unset, else `0`"))
    max_sockets_per_user: int = field(metadata=setting(
        "MAX_SOCKETS_PER_USER", whole_number(minimum=1), "8",
        "open pay-page sockets one user may hold"))
    max_unpaid_orders_per_user: int = field(metadata=setting(
        "MAX_UNPAID_ORDERS_PER_USER", whole_number(minimum=1), "5",
        "unpaid orders one user may hold; `POST /api/orders` answers `429` beyond"))
    login_checks_per_second: float = field(metadata=setting(
        "LOGIN_CHECKS_PER_SECOND", number(positive=True), "10",
        "password checks (scrypt) this process starts per second, burst of one second's worth; "
        "beyond, `POST /login` answers `503` with `Retry-After`"))
    sim_close_min_age_seconds: float = field(metadata=setting(
        "SIM_CLOSE_MIN_AGE_SECONDS", number(), "300",
        "the simulator refuses closeorder for younger trades, as WeChat does"))
    sim_notify_speed: float = field(metadata=setting(
        "SIM_NOTIFY_SPEED", number(positive=True), "1",
        "the simulator's notify retry schedule runs this many times faster"))
    log_format: str = field(metadata=setting(
        "LOG_FORMAT", one_of("text", "json"), "text",
        "`text` or `json` (one JSON object per line)"))
    push_route: str = field(metadata=setting(
        "PUSH_ROUTE", one_of("ws", "stomp"), "ws",
        "the pay page's default push route: `ws` (paypush's WebSocket) or `stomp` "
        "(RabbitMQ Web STOMP, needs `STOMP_PASSCODE` outside sandbox mode)"))
    timeout_retry_delays: tuple[int, ...] = field(metadata=setting(
        "TIMEOUT_RETRY_DELAYS", whole_seconds, "5,30,120,600",
        "seconds between looks at an order that is not final yet"))
    reconcile_at: dt.time | None = field(metadata=setting(
        "RECONCILE_AT", clock_time_or_off, "10:00",
        "daily reconciliation with WeChat's bill of the day before, Beijing time (bills come out in the "
        "morning); `off`: not in this deployment (`paypush reconcile` still works)"))
    refund_check_delays: tuple[int, ...] = field(metadata=setting(
        "REFUND_CHECK_DELAYS", whole_seconds, "60,300,1800,7200",
        "seconds before each look at a refund WeChat has not finished (the last repeats)"))
    sweep_interval_seconds: float = field(metadata=setting(
        "SWEEP_INTERVAL_SECONDS", number(positive=True), "60",
        "how often the backstop sweeper runs"))
    sweep_grace_seconds: float = field(metadata=setting(
        "SWEEP_GRACE_SECONDS", number(), "120",
        "how overdue an order must be before the backstop sweeper takes it"))
    active_query_after_seconds: float = field(metadata=setting(
        "ACTIVE_QUERY_AFTER_SECONDS", number(), "15",
        "an open pay page with no notify triggers orderquery after this"))
    trusted_proxies: tuple[Network, ...] = field(metadata=setting(
        "TRUSTED_PROXIES", networks, "",
        "IPs/CIDRs (comma-separated) whose `X-Forwarded-For`, `X-Real-IP`, `X-Forwarded-Proto` are believed; "
        "empty: never"))
    metrics_host: str = field(metadata=setting(
        "METRICS_HOST", text, "127.0.0.1",
        "address of the `/metrics` listener outside sandbox mode (in sandbox mode, `/metrics` is on the "
        "main port)"))
    metrics_port: int = field(metadata=setting(
        "METRICS_PORT", whole_number(minimum=1, maximum=65535), "9464",
        "port of the `/metrics` listener outside sandbox mode"))
    deployment: str = field(metadata=setting(
        "DEPLOYMENT", name_like(DEPLOYMENT_NAME, "1-32 lower-case letters, digits, '-' or '_'"), "",
        "names this deployment's deadline queues apart from another paypush's on the same vhost "
        "(`a-z0-9_-`, 1-32); empty: DESIGN's names"))

    @property
    def notify_url(self) -> str:
        """Where WeChat sends payment notifies: v2 XML and v3 JSON have an endpoint each."""
        return f"{self.public_url}/wxpay/v3/notify" if self.wxpay_api == "v3" else f"{self.public_url}/wxpay/notify"

    @property
    def refund_notify_url(self) -> str:
        """Where WeChat sends refund notifies: v2 has its own endpoint, v3 shares the payments' one."""
        return self.notify_url if self.wxpay_api == "v3" else f"{self.public_url}/wxpay/refund_notify"

    @property
    def simulator_base(self) -> str:
        return f"{self.public_url}/sandbox/wxpay"

    @property
    def amqp_vhost(self) -> str:
        """The RabbitMQ vhost AMQP_URL names, read as the AMQP client reads it: the
        path without its leading "/", percent-decoded (%2F is "/"); none is "/".
        Events are published there, so it is where a STOMP page must connect."""
        return unquote(urlsplit(self.amqp_url).path[1:]) or "/"

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={_shown(entry, getattr(self, name))}" for name, entry in table())
        return f"Settings({shown})"


def table() -> tuple[tuple[str, Setting], ...]:
    """(field name, Setting) for every field of Settings, in declaration order."""
    return tuple((f.name, f.metadata["setting"]) for f in fields(Settings))


def _shown(entry: Setting, value: object) -> str:
    if entry.secret:
        return repr(REDACTED if value else "")
    if isinstance(value, str):
        return repr(hide_password(value))
    return repr(value)


# --- cross-setting rules ------------------------------------------------------------------------------------
# Each takes the per-variable values (None where a Setting's default is left to
# a rule) and the names of the variables given, fills in what it decides, and
# raises ConfigError for combinations that must not start.

Values = dict[str, Any]


def _sandbox_mode(given: Set[str]) -> str:
    return "SANDBOX=1" if "SANDBOX" in given else "sandbox mode (no WXPAY_KEY given)"


def _is_loopback(host: str) -> bool:
    if host in ("localhost", "0.0.0.0", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host.endswith(".localhost")


def _is_wechat_host(url: str) -> bool:
    """api.mch.weixin.qq.com and its siblings (api2, apihk, apius, fraud...)."""
    host = (urlsplit(url).hostname or "").lower()
    return host == "weixin.qq.com" or host.endswith(".weixin.qq.com")


def _secret_file(var_dir: Path, name: str) -> str:
    """Read a generated secret from VAR_DIR, creating it (0600) on first use."""
    file = var_dir / name
    try:
        if file.exists():
            return file.read_text().strip()
        var_dir.mkdir(parents=True, exist_ok=True)
        value = secrets.token_urlsafe(32)
        fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(value)
    except OSError as exc:
        raise ConfigError(f"VAR_DIR {str(var_dir)!r} is not a directory paypush can write to "
                          f"({exc.strerror}): set VAR_DIR to one, or set {name.upper()}") from None
    return value


def _derive_public_url(v: Values, given: Set[str]) -> None:
    if v["public_url"] is None:
        v["public_url"] = f"http://{v['host']}:{v['port']}"


def _decide_sandbox(v: Values, given: Set[str]) -> None:
    """Sandbox mode unless a key is given; outside it, all three credentials; inside it, none but the published ones."""
    v3 = v["wxpay_api"] == "v3"
    if v["sandbox"] is None:
        v["sandbox"] = v["wxpay_apiv3_key" if v3 else "wxpay_key"] is None
    credentials = (("WXPAY_APPID", "wxpay_appid", SANDBOX_APPID), ("WXPAY_MCH_ID", "wxpay_mch_id", SANDBOX_MCH_ID),
                   ("WXPAY_APIV3_KEY", "wxpay_apiv3_key", None) if v3 else ("WXPAY_KEY", "wxpay_key", SANDBOX_KEY))
    if v3 and v["sandbox"]:
        # The simulator must not hold the merchant's v3 key material either.
        real_keys = [env for env, name in (("WXPAY_PRIVATE_KEY_PATH", "wxpay_private_key_path"),
                                          ("WXPAY_CERT_PATH", "wxpay_cert_path"),
                                          ("WXPAY_CERT_SERIAL", "wxpay_cert_serial"),
                                          ("WXPAY_PUBLIC_KEY_PATH", "wxpay_public_key_path"),
                                          ("WXPAY_PUBLIC_KEY_ID", "wxpay_public_key_id")) if v[name] is not None]
        if real_keys:
            raise ConfigError(f"{_sandbox_mode(given)} with merchant key material ({', '.join(real_keys)}): the "
                              "built-in simulator generates its own into VAR_DIR; unset them, or set SANDBOX=0")
    if not v["sandbox"]:
        missing = [env for env, name, _ in credentials if v[name] is None]
        if missing:
            raise ConfigError(
                f"{', '.join(missing)} must be set outside sandbox mode "
                "(or set SANDBOX=1 to use the built-in simulator)")
    # Sandbox mounts a simulator that signs whatever it is asked to with the
    # configured key: given the merchant's real key it would be a public
    # signing oracle, so sandbox mode takes only the published sandbox ones.
    real_given = [env for env, name, sandbox_value in credentials if v[name] not in (None, sandbox_value)]
    if v["sandbox"] and real_given:
        raise ConfigError(f"{_sandbox_mode(given)} with merchant credentials ({', '.join(real_given)}): the "
                          "built-in simulator must never hold them; unset them for sandbox mode, or set SANDBOX=0 "
                          "and all of WXPAY_APPID, WXPAY_MCH_ID and WXPAY_KEY")
    for _, name, sandbox_value in credentials:
        if v[name] is None:
            v[name] = sandbox_value
    if v["wxpay_key"] is None:
        v["wxpay_key"] = SANDBOX_KEY if v["sandbox"] else ""  # a v3 merchant needs no v2 key
    if v3:
        _v3_key_material(v)
    for name in ("wxpay_apiv3_key", "wxpay_cert_serial", "wxpay_public_key_id", "wxpay_private_key_path",
                 "wxpay_cert_path", "wxpay_public_key_path"):
        if v[name] is None:
            v[name] = ""


def _v3_key_material(v: Values) -> None:
    """v3: the merchant's signing key and serial, and one way to verify WeChat
    (public key, else platform certificates). In sandbox mode they are files the
    composition root generates under VAR_DIR (the simulator's and the merchant's)."""
    if v["sandbox"]:
        keys = v["var_dir"] / "wxpay_v3"
        v["wxpay_private_key_path"] = str(keys / "apiclient_key.pem")
        v["wxpay_cert_path"] = str(keys / "apiclient_cert.pem")
        v["wxpay_apiv3_key"] = _secret_file(v["var_dir"], "wxpay_apiv3_key")[:32]
        return
    missing = [env for env, name in (("WXPAY_PRIVATE_KEY_PATH", "wxpay_private_key_path"),
                                     ("WXPAY_CERT_SERIAL", "wxpay_cert_serial")) if v[name] is None]
    if missing:
        raise ConfigError(f"{', '.join(missing)} must be set for WXPAY_API=v3: the merchant API key "
                          "(apiclient_key.pem) and its certificate's serial number sign every request")
    if (v["wxpay_public_key_path"] is None) != (v["wxpay_public_key_id"] is None):
        raise ConfigError("WXPAY_PUBLIC_KEY_PATH and WXPAY_PUBLIC_KEY_ID go together (public-key mode): "
                          "set both, or neither to use platform certificates")


def _check_api_base(v: Values, given: Set[str]) -> None:
    """The simulator in sandbox mode, WeChat otherwise; sandbox never talks to WeChat, WeChat only over https."""
    if v["wxpay_api_base"] is None:
        v["wxpay_api_base"] = f"{v['public_url']}/sandbox/wxpay" if v["sandbox"] else REAL_WXPAY_API_BASE
    base = v["wxpay_api_base"]
    if v["sandbox"] and _is_wechat_host(base):
        raise ConfigError(f"{_sandbox_mode(given)} with WXPAY_API_BASE {hide_password(base)}, the real WeChat Pay "
                          "API: unset WXPAY_API_BASE for the built-in simulator (or point it at one), "
                          "or set SANDBOX=0")
    sandbox_credentials = v["wxpay_appid"] == SANDBOX_APPID or v["wxpay_key"] == SANDBOX_KEY
    if sandbox_credentials and _is_wechat_host(base):
        raise ConfigError("sandbox WeChat Pay credentials against the real API: set WXPAY_APPID, "
                          "WXPAY_MCH_ID and WXPAY_KEY to your merchant's, or point WXPAY_API_BASE at a simulator")
    if not v["sandbox"] and urlsplit(base).scheme != "https":
        raise ConfigError(f"WXPAY_API_BASE must be an https URL outside sandbox mode (the API key signs, but "
                          f"does not hide, every request), got {hide_password(base)}")


def _check_public_url(v: Values, given: Set[str]) -> None:
    """WeChat must reach PUBLIC_URL, and cookies and notifies travel to it: public and https."""
    if v["sandbox"]:
        return
    public_url = hide_password(v["public_url"])
    if _is_loopback(urlsplit(v["public_url"]).hostname or ""):
        raise ConfigError(f"PUBLIC_URL is {public_url}, which WeChat cannot reach: set it to the public "
                          "https address of this shop (the notify goes to PUBLIC_URL/wxpay/notify)")
    if urlsplit(v["public_url"]).scheme != "https":
        raise ConfigError(f"PUBLIC_URL must be https outside sandbox mode (login cookies and payment "
                          f"notifies travel to it), got {public_url}: terminate TLS at nginx or the load balancer")


def _cookie_secret(v: Values, given: Set[str]) -> None:
    """Required outside sandbox mode (every process must share it); generated once into VAR_DIR inside it."""
    if v["cookie_secret"] is not None:
        return
    if not v["sandbox"]:
        raise ConfigError(
            f"COOKIE_SECRET must be set outside sandbox mode: {MIN_COOKIE_SECRET_LENGTH}+ random characters, "
            "the same for every paypush process behind the load balancer")
    generated = _secret_file(v["var_dir"], "cookie_secret")
    if len(generated) < MIN_COOKIE_SECRET_LENGTH:
        raise ConfigError(f"{v['var_dir'] / 'cookie_secret'} holds no usable secret: delete it (paypush "
                          "generates a new one) or set COOKIE_SECRET")
    v["cookie_secret"] = generated


def _stomp_passcode(v: Values, given: Set[str]) -> None:
    """Generated in sandbox mode. Outside it an unset passcode means the STOMP route is not set up:
    createNative then offers no STOMP credentials, and PUSH_ROUTE=stomp, which
    would send every page to it, is refused."""
    if v["stomp_passcode"] is None:
        v["stomp_passcode"] = _secret_file(v["var_dir"], "stomp_passcode") if v["sandbox"] else ""
    if not v["stomp_passcode"] and v["push_route"] == "stomp":
        raise ConfigError("PUSH_ROUTE=stomp needs STOMP_PASSCODE outside sandbox mode: the password "
                          "deploy/rabbitmq-setup.sh gave the browser user (or set PUSH_ROUTE=ws)")


RULES: tuple[Callable[[Values, Set[str]], None], ...] = (
    _derive_public_url, _decide_sandbox, _check_api_base, _check_public_url, _cookie_secret, _stomp_passcode)


def _parse_each(env: Mapping[str, str]) -> Values:
    """Every variable through its Setting; all malformed ones reported together."""
    values: Values = {}
    errors = []
    for name, entry in table():
        raw = env.get(entry.env, "").strip()
        given_or_default = raw if raw else entry.default
        if given_or_default is None:
            values[name] = None
            continue
        try:
            values[name] = entry.parse(entry.env, given_or_default)
        except ConfigError as exc:
            errors.append(str(exc))
    if errors:
        raise ConfigError("; ".join(errors))
    return values


def from_environ(env: Mapping[str, str] | None = None) -> Settings:
    """Build the settings from ``env`` (``os.environ`` when not given)."""
    env = os.environ if env is None else env
    given = {entry.env for _, entry in table() if env.get(entry.env, "").strip()}
    values = _parse_each(env)
    for rule in RULES:
        rule(values, given)
    return Settings(**values)


# --- documentation ------------------------------------------------------------------------------------------

def markdown_table() -> str:
    """The README's configuration table."""
    rows = ["| variable | meaning | default |", "|---|---|---|"]
    for _, entry in table():
        meaning = entry.doc + (" (secret: never in logs, messages or repr)" if entry.secret else "")
        cells = (f"`{entry.env}`", meaning, entry.documented_default)
        rows.append("| " + " | ".join(cell.replace("|", "&#124;") for cell in cells) + " |")
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m settings", description="paypush's settings")
    parser.add_argument("--markdown", action="store_true",
                        help="print the configuration table for the README")
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown_table(), end="")
        return 0
    parser.print_help()
    return 2


if __name__ == "__main__":
    raise SystemExit(main())

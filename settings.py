"""The only module that reads the environment.

Everything configurable is read here once, validated, and handed to the rest of
the code as a frozen :class:`Settings`. A missing or malformed value fails at
start-up with a message naming the variable to set; secrets are kept out of
``repr`` so they never reach a log line.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
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


class ConfigError(Exception):
    """A configuration value is missing or malformed; the message says what to set."""


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8888
    public_url: str = "http://127.0.0.1:8888"
    mongo_url: str = ""
    mongo_db: str = "paypush"
    mongo_timeout_ms: int = 3000
    var_dir: Path = Path("var")
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    stomp_url: str = "ws://127.0.0.1:15674/ws"
    stomp_login: str = "webguest"
    stomp_passcode: str = field(default="", repr=False)
    wxpay_appid: str = SANDBOX_APPID
    wxpay_mch_id: str = SANDBOX_MCH_ID
    wxpay_key: str = field(default=SANDBOX_KEY, repr=False)
    wxpay_sign_type: str = "MD5"
    wxpay_api_base: str = ""
    order_timeout_seconds: int = 3600
    cookie_secret: str = field(default="", repr=False)
    sandbox: bool = True
    max_sockets_per_user: int = 8
    max_unpaid_orders_per_user: int = 5
    login_checks_per_second: float = 10.0
    sim_close_min_age_seconds: float = 300.0
    sim_notify_speed: float = 1.0
    log_format: str = "text"
    push_route: str = "ws"
    timeout_retry_delays: tuple[int, ...] = (5, 30, 120, 600)
    sweep_interval_seconds: float = 60.0
    sweep_grace_seconds: float = 120.0
    active_query_after_seconds: float = 15.0
    trusted_proxies: tuple[Network, ...] = ()
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9464
    deployment: str = ""

    @property
    def notify_url(self) -> str:
        return f"{self.public_url}/wxpay/notify"

    @property
    def simulator_base(self) -> str:
        return f"{self.public_url}/sandbox/wxpay"

    @property
    def amqp_vhost(self) -> str:
        """The RabbitMQ vhost AMQP_URL names, read as the AMQP client reads it: the
        path without its leading "/", percent-decoded (%2F is "/"); none is "/".
        Events are published there, so it is where a STOMP page must connect."""
        return unquote(urlsplit(self.amqp_url).path[1:]) or "/"


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if value < 0:
        raise ConfigError(f"{name} must not be negative, got {value}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be 1 or 0, got {raw!r}")


def _url(env: Mapping[str, str], name: str, default: str, schemes: tuple[str, ...]) -> str:
    value = env.get(name, "").strip() or default
    parts = urlsplit(value)
    if parts.scheme not in schemes or not parts.netloc:
        raise ConfigError(f"{name} must be a {'/'.join(schemes)} URL, got {value!r}")
    return value.rstrip("/")


def _networks(env: Mapping[str, str], name: str) -> tuple[Network, ...]:
    """Comma-separated IP addresses or CIDR blocks."""
    networks = []
    for part in env.get(name, "").split(","):
        if part.strip():
            try:
                networks.append(ipaddress.ip_network(part.strip(), strict=False))
            except ValueError:
                raise ConfigError(f"{name} must be IP addresses or CIDR blocks, comma-separated, "
                                  f"got {part.strip()!r}") from None
    return tuple(networks)


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
    path = var_dir / name
    try:
        if path.exists():
            return path.read_text().strip()
        var_dir.mkdir(parents=True, exist_ok=True)
        value = secrets.token_urlsafe(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(value)
    except OSError as exc:
        raise ConfigError(f"VAR_DIR {str(var_dir)!r} is not a directory paypush can write to "
                          f"({exc.strerror}): set VAR_DIR to one, or set {name.upper()}") from None
    return value


def from_environ(env: Mapping[str, str] | None = None) -> Settings:
    """Build the settings from ``env`` (``os.environ`` when not given)."""
    env = os.environ if env is None else env
    host = env.get("HOST", "").strip() or "127.0.0.1"
    port = _int(env, "PORT", 8888)
    if port > 65535:
        raise ConfigError(f"PORT must be at most 65535, got {port}")
    metrics_port = _int(env, "METRICS_PORT", 9464, minimum=1)
    if metrics_port > 65535:
        raise ConfigError(f"METRICS_PORT must be at most 65535, got {metrics_port}")
    public_url = _url(env, "PUBLIC_URL", f"http://{host}:{port}", ("http", "https"))
    var_dir = Path(env.get("VAR_DIR", "").strip() or "var")

    key = env.get("WXPAY_KEY", "").strip()
    sandbox = _bool(env, "SANDBOX", default=not key)
    appid = env.get("WXPAY_APPID", "").strip()
    mch_id = env.get("WXPAY_MCH_ID", "").strip()
    if not sandbox:
        missing = [n for n, v in (("WXPAY_APPID", appid), ("WXPAY_MCH_ID", mch_id),
                                  ("WXPAY_KEY", key)) if not v]
        if missing:
            raise ConfigError(
                f"{', '.join(missing)} must be set outside sandbox mode "
                "(or set SANDBOX=1 to use the built-in simulator)")
    if key and len(key) != 32:
        raise ConfigError("WXPAY_KEY must be the 32-character API key from the merchant platform")

    sign_type = env.get("WXPAY_SIGN_TYPE", "").strip().upper() or "MD5"
    if sign_type not in SIGN_TYPES:
        raise ConfigError(f"WXPAY_SIGN_TYPE must be MD5 or HMAC-SHA256, got {sign_type!r}")

    # Sandbox mounts a simulator that signs whatever it is asked to with the
    # configured key: given the merchant's real key it would be a public
    # signing oracle, so sandbox mode takes only the published sandbox ones.
    real_given = [n for n, v, sandbox_value in (("WXPAY_APPID", appid, SANDBOX_APPID),
                                                ("WXPAY_MCH_ID", mch_id, SANDBOX_MCH_ID),
                                                ("WXPAY_KEY", key, SANDBOX_KEY)) if v and v != sandbox_value]
    sandbox_mode = "SANDBOX=1" if env.get("SANDBOX", "").strip() else "sandbox mode (no WXPAY_KEY given)"
    if sandbox and real_given:
        raise ConfigError(f"{sandbox_mode} with merchant credentials ({', '.join(real_given)}): the built-in "
                          "simulator must never hold them; unset them for sandbox mode, or set SANDBOX=0 "
                          "and all of WXPAY_APPID, WXPAY_MCH_ID and WXPAY_KEY")

    default_api = f"{public_url}/sandbox/wxpay" if sandbox else REAL_WXPAY_API_BASE
    api_base = _url(env, "WXPAY_API_BASE", default_api, ("http", "https"))
    if sandbox and _is_wechat_host(api_base):
        raise ConfigError(f"{sandbox_mode} with WXPAY_API_BASE {api_base}, the real WeChat Pay API: unset "
                          "WXPAY_API_BASE for the built-in simulator (or point it at one), or set SANDBOX=0")
    sandbox_credentials = (appid or SANDBOX_APPID) == SANDBOX_APPID or (key or SANDBOX_KEY) == SANDBOX_KEY
    if sandbox_credentials and _is_wechat_host(api_base):
        raise ConfigError("sandbox WeChat Pay credentials against the real API: set WXPAY_APPID, "
                          "WXPAY_MCH_ID and WXPAY_KEY to your merchant's, or point WXPAY_API_BASE at a simulator")
    if not sandbox and urlsplit(api_base).scheme != "https":
        raise ConfigError(f"WXPAY_API_BASE must be an https URL outside sandbox mode (the API key signs, but "
                          f"does not hide, every request), got {api_base}")
    if not sandbox and _is_loopback(urlsplit(public_url).hostname or ""):
        raise ConfigError(f"PUBLIC_URL is {public_url}, which WeChat cannot reach: set it to the public "
                          "https address of this shop (the notify goes to PUBLIC_URL/wxpay/notify)")
    if not sandbox and urlsplit(public_url).scheme != "https":
        raise ConfigError(f"PUBLIC_URL must be https outside sandbox mode (login cookies and payment "
                          f"notifies travel to it), got {public_url}: terminate TLS at nginx or the load balancer")

    cookie_secret = env.get("COOKIE_SECRET", "").strip()
    if not cookie_secret:
        if not sandbox:
            raise ConfigError(
                f"COOKIE_SECRET must be set outside sandbox mode: {MIN_COOKIE_SECRET_LENGTH}+ random characters, "
                "the same for every paypush process behind the load balancer")
        cookie_secret = _secret_file(var_dir, "cookie_secret")
        if len(cookie_secret) < MIN_COOKIE_SECRET_LENGTH:
            raise ConfigError(f"{var_dir / 'cookie_secret'} holds no usable secret: delete it (paypush "
                              "generates a new one) or set COOKIE_SECRET")
    if len(cookie_secret) < MIN_COOKIE_SECRET_LENGTH:
        raise ConfigError(
            f"COOKIE_SECRET is too short ({len(cookie_secret)} of at least {MIN_COOKIE_SECRET_LENGTH} characters); "
            "it signs logins: set it to random text, as from "
            "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'")

    log_format = env.get("LOG_FORMAT", "").strip().lower() or "text"
    if log_format not in ("text", "json"):
        raise ConfigError(f"LOG_FORMAT must be text or json, got {log_format!r}")

    push_route = env.get("PUSH_ROUTE", "").strip().lower() or "ws"
    if push_route not in ("ws", "stomp"):
        raise ConfigError(f"PUSH_ROUTE must be ws or stomp, got {push_route!r}")

    # Outside sandbox an unset passcode means the STOMP route is not set up:
    # createNative then offers no STOMP credentials, and PUSH_ROUTE=stomp,
    # which would send every page to it, is refused.
    stomp_passcode = env.get("STOMP_PASSCODE", "").strip()
    if not stomp_passcode and sandbox:
        stomp_passcode = _secret_file(var_dir, "stomp_passcode")
    if not stomp_passcode and push_route == "stomp":
        raise ConfigError("PUSH_ROUTE=stomp needs STOMP_PASSCODE outside sandbox mode: the password "
                          "deploy/rabbitmq-setup.sh gave the browser user (or set PUSH_ROUTE=ws)")

    raw_delays = env.get("TIMEOUT_RETRY_DELAYS", "").strip() or "5,30,120,600"
    try:
        retry_delays = tuple(int(d) for d in raw_delays.split(","))
    except ValueError:
        retry_delays = ()
    if not retry_delays or min(retry_delays) < 1:
        raise ConfigError(f"TIMEOUT_RETRY_DELAYS must be whole seconds >= 1, comma-separated, got {raw_delays!r}")

    # Names this deployment's deadline queues apart from another's on the same vhost.
    deployment = env.get("DEPLOYMENT", "").strip()
    if deployment and not DEPLOYMENT_NAME.fullmatch(deployment):
        raise ConfigError(f"DEPLOYMENT must be 1-32 lower-case letters, digits, '-' or '_', got {deployment!r}")

    return Settings(
        host=host,
        port=port,
        public_url=public_url,
        mongo_url=env.get("MONGO_URL", "").strip(),
        mongo_db=env.get("MONGO_DB", "").strip() or "paypush",
        mongo_timeout_ms=_int(env, "MONGO_TIMEOUT_MS", 3000, minimum=100),
        var_dir=var_dir,
        amqp_url=_url(env, "AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/", ("amqp", "amqps")),
        stomp_url=_url(env, "STOMP_URL", "ws://127.0.0.1:15674/ws", ("ws", "wss")),
        stomp_login=env.get("STOMP_LOGIN", "").strip() or "webguest",
        stomp_passcode=stomp_passcode,
        wxpay_appid=appid or SANDBOX_APPID,
        wxpay_mch_id=mch_id or SANDBOX_MCH_ID,
        wxpay_key=key or SANDBOX_KEY,
        wxpay_sign_type=sign_type,
        wxpay_api_base=api_base,
        order_timeout_seconds=_int(env, "ORDER_TIMEOUT_SECONDS", 3600, minimum=1),
        cookie_secret=cookie_secret,
        sandbox=sandbox,
        max_sockets_per_user=_int(env, "MAX_SOCKETS_PER_USER", 8, minimum=1),
        max_unpaid_orders_per_user=_int(env, "MAX_UNPAID_ORDERS_PER_USER", 5, minimum=1),
        login_checks_per_second=_float(env, "LOGIN_CHECKS_PER_SECOND", 10.0) or 10.0,
        sim_close_min_age_seconds=_float(env, "SIM_CLOSE_MIN_AGE_SECONDS", 300.0),
        sim_notify_speed=_float(env, "SIM_NOTIFY_SPEED", 1.0) or 1.0,
        log_format=log_format,
        push_route=push_route,
        timeout_retry_delays=retry_delays,
        sweep_interval_seconds=_float(env, "SWEEP_INTERVAL_SECONDS", 60.0) or 60.0,
        sweep_grace_seconds=_float(env, "SWEEP_GRACE_SECONDS", 120.0),
        active_query_after_seconds=_float(env, "ACTIVE_QUERY_AFTER_SECONDS", 15.0),
        trusted_proxies=_networks(env, "TRUSTED_PROXIES"),
        metrics_host=env.get("METRICS_HOST", "").strip() or "127.0.0.1",
        metrics_port=metrics_port,
        deployment=deployment,
    )

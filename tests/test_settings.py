"""settings.py: defaults, sandbox mode, and loud, specific configuration errors."""

from __future__ import annotations

import dataclasses
import re
import stat
import types
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

import settings as settings_mod
from settings import ConfigError, from_environ

ROOT = Path(__file__).resolve().parents[1]
REAL = {"WXPAY_APPID": "wx1234567890abcdef", "WXPAY_MCH_ID": "1900000109",
        "WXPAY_KEY": "k" * 32, "COOKIE_SECRET": "c" * 40, "PUBLIC_URL": "https://shop.example.com"}
# A merchant with API v3 credentials only (no v2 key), as merchants signed up lately are.
REAL_V3 = {"WXPAY_API": "v3", "WXPAY_APPID": "wx1234567890abcdef", "WXPAY_MCH_ID": "1900000109",
           "WXPAY_APIV3_KEY": "a" * 32, "WXPAY_PRIVATE_KEY_PATH": "/etc/paypush/apiclient_key.pem",
           "WXPAY_CERT_SERIAL": "5157F09EFDC096DE15EBE81A47057A7232F1B8E1",
           "COOKIE_SECRET": "c" * 40, "PUBLIC_URL": "https://shop.example.com"}


def test_a_v3_merchant_needs_no_v2_key_and_gets_the_v3_notify_url(tmp_path: Path) -> None:
    cfg = from_environ({"VAR_DIR": str(tmp_path), **REAL_V3})
    assert not cfg.sandbox and cfg.wxpay_api == "v3" and cfg.wxpay_key == ""
    assert cfg.notify_url == "https://shop.example.com/wxpay/v3/notify"
    assert cfg.wxpay_api_base == "https://api.mch.weixin.qq.com"
    assert "a" * 32 not in repr(cfg)


def test_v3_sandbox_generates_its_apiv3_key_once_and_names_its_key_files(tmp_path: Path) -> None:
    first = from_environ({"VAR_DIR": str(tmp_path), "WXPAY_API": "v3"})
    again = from_environ({"VAR_DIR": str(tmp_path), "WXPAY_API": "v3"})
    assert first.sandbox and len(first.wxpay_apiv3_key.encode()) == 32
    assert again.wxpay_apiv3_key == first.wxpay_apiv3_key
    assert first.wxpay_private_key_path == str(tmp_path / "wxpay_v3" / "apiclient_key.pem")
    assert first.notify_url.endswith("/wxpay/v3/notify")


def test_defaults_are_sandbox_with_generated_private_secrets(tmp_path: Path) -> None:
    cfg = from_environ({"VAR_DIR": str(tmp_path)})
    assert cfg.sandbox
    assert (cfg.host, cfg.port, cfg.public_url) == ("127.0.0.1", 8888, "http://127.0.0.1:8888")
    assert cfg.wxpay_api_base == "http://127.0.0.1:8888/sandbox/wxpay"
    assert cfg.notify_url == "http://127.0.0.1:8888/wxpay/notify"
    assert cfg.wxpay_key == settings_mod.SANDBOX_KEY
    assert cfg.order_timeout_seconds == 3600 and cfg.max_sockets_per_user == 8
    assert cfg.max_unpaid_orders_per_user == 5 and cfg.login_checks_per_second == 10.0
    assert (cfg.metrics_host, cfg.metrics_port) == ("127.0.0.1", 9464) and cfg.trusted_proxies == ()
    secret_file = tmp_path / "cookie_secret"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert cfg.cookie_secret == secret_file.read_text()
    assert from_environ({"VAR_DIR": str(tmp_path)}).cookie_secret == cfg.cookie_secret


def test_real_credentials_leave_sandbox_and_point_at_wechat() -> None:
    cfg = from_environ(REAL)
    assert not cfg.sandbox
    assert cfg.wxpay_api_base == "https://api.mch.weixin.qq.com"
    assert cfg.notify_url == "https://shop.example.com/wxpay/notify"


def test_trusted_proxies_are_addresses_and_blocks() -> None:
    assert from_environ({}).trusted_proxies == ()
    cfg = from_environ({"TRUSTED_PROXIES": " 10.0.0.7, 172.28.0.0/16 ,::1"})
    assert [str(n) for n in cfg.trusted_proxies] == ["10.0.0.7/32", "172.28.0.0/16", "::1/128"]


def test_sandbox_may_point_at_a_standalone_simulator() -> None:
    cfg = from_environ({"WXPAY_API_BASE": "http://127.0.0.1:8899"})
    assert cfg.sandbox and cfg.wxpay_api_base == "http://127.0.0.1:8899"


def test_secrets_never_show_in_repr() -> None:
    text = repr(from_environ({**REAL, "STOMP_PASSCODE": "p" * 12}))
    for secret in ("k" * 32, "c" * 40, "p" * 12):
        assert secret not in text


@pytest.mark.parametrize("amqp_url, vhost", [
    ("amqp://guest:guest@127.0.0.1:5672/", "/"),
    ("amqp://guest:guest@127.0.0.1:5672", "/"),
    ("amqp://guest:guest@127.0.0.1:5672/%2F", "/"),
    ("amqp://guest:guest@127.0.0.1:5672/%2f", "/"),
    ("amqp://guest:guest@127.0.0.1:5672/shop", "shop"),
    ("amqps://u:p@rabbit.example.com/shop%2Fprod?heartbeat=30", "shop/prod"),
    ("amqp://u:p@rabbit/a%20b", "a b"),
])
def test_the_vhost_is_amqp_urls_path_decoded(amqp_url: str, vhost: str) -> None:
    # What the pay page names in its STOMP CONNECT: the vhost paypush publishes to.
    assert from_environ({"AMQP_URL": amqp_url}).amqp_vhost == vhost


@pytest.mark.parametrize("env, names", [
    ({**REAL, "COOKIE_SECRET": ""}, "COOKIE_SECRET"),
    ({**REAL, "WXPAY_APPID": ""}, "WXPAY_APPID"),
    ({k: v for k, v in REAL.items() if k != "WXPAY_KEY"} | {"SANDBOX": "0"}, "WXPAY_KEY"),
    ({**REAL, "WXPAY_KEY": "short"}, "WXPAY_KEY"),
    ({"PORT": "eighty"}, "PORT"),
    ({"PORT": "70000"}, "PORT"),
    ({"PUBLIC_URL": "shop.example.com"}, "PUBLIC_URL"),
    ({"AMQP_URL": "http://rabbit"}, "AMQP_URL must be a URL starting amqp:// or amqps://, got 'http://rabbit'"),
    ({"WXPAY_SIGN_TYPE": "SHA1"}, "WXPAY_SIGN_TYPE"),
    ({"ORDER_TIMEOUT_SECONDS": "0"}, "ORDER_TIMEOUT_SECONDS"),
    ({"SANDBOX": "maybe"}, "SANDBOX"),
    ({"LOG_FORMAT": "xml"}, "LOG_FORMAT"),
    ({**REAL, "WXPAY_KEY": settings_mod.SANDBOX_KEY}, "sandbox WeChat Pay credentials"),
    ({**REAL, "WXPAY_APPID": settings_mod.SANDBOX_APPID}, "sandbox WeChat Pay credentials"),
    ({"WXPAY_API_BASE": "https://api.mch.weixin.qq.com"}, "sandbox mode \\(no WXPAY_KEY given\\) with WXPAY_API_BASE"),
    ({**REAL, "PUBLIC_URL": "http://127.0.0.1:8888"}, "PUBLIC_URL"),
    ({**REAL, "PUBLIC_URL": "https://localhost"}, "PUBLIC_URL"),
    ({**REAL, "PUBLIC_URL": "http://[::1]:8080"}, "PUBLIC_URL"),
    ({"TIMEOUT_RETRY_DELAYS": "5,soon"}, "TIMEOUT_RETRY_DELAYS"),
    ({"PUSH_ROUTE": "carrier-pigeon"}, "PUSH_ROUTE"),
    # Sandbox mode never holds merchant credentials nor talks to WeChat itself.
    ({**REAL, "SANDBOX": "1", "WXPAY_API_BASE": "https://api.mch.weixin.qq.com"}, "SANDBOX=1 with merchant"),
    ({"SANDBOX": "1", "WXPAY_KEY": "k" * 32}, "SANDBOX=1 with merchant credentials \\(WXPAY_KEY\\)"),
    ({"WXPAY_APPID": "wx1234567890abcdef"}, "\\(no WXPAY_KEY given\\) with merchant credentials \\(WXPAY_APPID\\)"),
    ({"SANDBOX": "1", "WXPAY_MCH_ID": "1900000109"}, "SANDBOX=1 with merchant credentials \\(WXPAY_MCH_ID\\)"),
    ({"SANDBOX": "1", "WXPAY_API_BASE": "https://api2.mch.weixin.qq.com/"}, "SANDBOX=1 with WXPAY_API_BASE"),
    ({"WXPAY_API_BASE": "https://apihk.mch.weixin.qq.com"}, "\\(no WXPAY_KEY given\\) with WXPAY_API_BASE"),
    ({"COOKIE_SECRET": "x"}, "COOKIE_SECRET is too short \\(1 of at least 32 characters\\)"),
    ({**REAL, "COOKIE_SECRET": "c" * 31}, "COOKIE_SECRET is too short \\(31 of"),
    ({**REAL, "PUBLIC_URL": "http://shop.example.com"}, "PUBLIC_URL must be https"),
    ({**REAL, "WXPAY_API_BASE": "http://wxpay-proxy.example.com"}, "WXPAY_API_BASE must be an https URL"),
    ({**REAL, "WXPAY_API_BASE": "http://api.mch.weixin.qq.com"}, "WXPAY_API_BASE must be an https URL"),
    ({**REAL, "PUSH_ROUTE": "stomp"}, "PUSH_ROUTE=stomp needs STOMP_PASSCODE"),
    ({"TRUSTED_PROXIES": "10.0.0.1,nginx"}, "TRUSTED_PROXIES"),
    ({"METRICS_PORT": "99999"}, "METRICS_PORT"),
    ({"MAX_UNPAID_ORDERS_PER_USER": "0"}, "MAX_UNPAID_ORDERS_PER_USER"),
    ({"LOGIN_CHECKS_PER_SECOND": "-1"}, "LOGIN_CHECKS_PER_SECOND"),
    ({"TRUSTED_PROXIES": "10.0.0.0/33"}, "TRUSTED_PROXIES"),
    # A rate, a speed or an interval of 0 is a typo, not "the default" (it used to be read as that).
    ({"LOGIN_CHECKS_PER_SECOND": "0"}, "LOGIN_CHECKS_PER_SECOND must be more than 0"),
    ({"SIM_NOTIFY_SPEED": "0"}, "SIM_NOTIFY_SPEED must be more than 0"),
    ({"SWEEP_INTERVAL_SECONDS": "0"}, "SWEEP_INTERVAL_SECONDS must be more than 0"),
    ({"SWEEP_GRACE_SECONDS": "nan"}, "SWEEP_GRACE_SECONDS must be a number, got 'nan'"),
    ({"ACTIVE_QUERY_AFTER_SECONDS": "inf"}, "ACTIVE_QUERY_AFTER_SECONDS must be a number, got 'inf'"),
    ({"PUBLIC_URL": "http://[::1"}, "PUBLIC_URL must be a URL starting http:// or https://"),
    # WeChat Pay API v3.
    ({"WXPAY_API": "v4"}, "WXPAY_API must be v2 or v3"),
    ({**REAL_V3, "WXPAY_APIV3_KEY": "k" * 31}, "WXPAY_APIV3_KEY must be the 32-byte APIv3 key"),
    ({**REAL_V3, "WXPAY_APIV3_KEY": "é" * 32}, "WXPAY_APIV3_KEY must be the 32-byte APIv3 key"),
    ({k: v for k, v in REAL_V3.items() if k != "WXPAY_PRIVATE_KEY_PATH"}, "WXPAY_PRIVATE_KEY_PATH must be set"),
    ({k: v for k, v in REAL_V3.items() if k != "WXPAY_CERT_SERIAL"}, "WXPAY_CERT_SERIAL must be set"),
    ({k: v for k, v in REAL_V3.items() if k != "WXPAY_APPID"}, "WXPAY_APPID must be set"),
    ({**REAL_V3, "WXPAY_PUBLIC_KEY_PATH": "/etc/paypush/pub_key.pem"}, "go together"),
    ({**REAL_V3, "WXPAY_PUBLIC_KEY_ID": "PUB_KEY_ID_0114"}, "go together"),
    ({**REAL_V3, "WXPAY_PUBLIC_KEY_ID": "0114"}, "WXPAY_PUBLIC_KEY_ID must be PUB_KEY_ID_"),
    ({**REAL_V3, "WXPAY_CERT_SERIAL": "not hex"}, "WXPAY_CERT_SERIAL must be the certificate's serial"),
    ({"WXPAY_API": "v3", "SANDBOX": "1", "WXPAY_PRIVATE_KEY_PATH": "/k.pem"},
     "SANDBOX=1 with merchant key material \\(WXPAY_PRIVATE_KEY_PATH\\)"),
    ({"WXPAY_API": "v3", "SANDBOX": "1", "WXPAY_APIV3_KEY": "k" * 32},
     "SANDBOX=1 with merchant credentials \\(WXPAY_APIV3_KEY\\)"),
])
def test_bad_configuration_names_what_to_set(env: dict[str, str], names: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=names):
        from_environ({"VAR_DIR": str(tmp_path), **env})


def test_secrets_do_not_show_in_configuration_errors() -> None:
    with pytest.raises(ConfigError) as short:
        from_environ({**REAL, "COOKIE_SECRET": "s3cr3t-but-short"})
    with pytest.raises(ConfigError) as sandboxed:
        from_environ({**REAL, "SANDBOX": "1"})
    with pytest.raises(ConfigError) as bad_key:
        from_environ({**REAL, "WXPAY_KEY": "s3cr3t-but-not-32"})
    with pytest.raises(ConfigError) as bad_url:
        from_environ({"AMQP_URL": "http://paypush:s3cr3t-pw@rabbit/shop"})
    assert "s3cr3t-but-short" not in str(short.value)
    assert "k" * 32 not in str(sandboxed.value)
    assert "s3cr3t-but-not-32" not in str(bad_key.value)
    assert "s3cr3t-pw" not in str(bad_url.value) and "paypush:" in str(bad_url.value)


def test_sandbox_takes_the_published_sandbox_credentials(tmp_path: Path) -> None:
    cfg = from_environ({"VAR_DIR": str(tmp_path), "SANDBOX": "1", "WXPAY_APPID": settings_mod.SANDBOX_APPID,
                        "WXPAY_MCH_ID": settings_mod.SANDBOX_MCH_ID, "WXPAY_KEY": settings_mod.SANDBOX_KEY})
    assert cfg.sandbox and cfg.wxpay_key == settings_mod.SANDBOX_KEY


def test_stomp_is_optional_outside_sandbox_unless_it_is_the_route() -> None:
    assert from_environ(REAL).stomp_passcode == ""  # the STOMP route is simply not offered
    cfg = from_environ({**REAL, "PUSH_ROUTE": "stomp", "STOMP_PASSCODE": "p" * 24})
    assert (cfg.push_route, cfg.stomp_passcode) == ("stomp", "p" * 24)


def test_a_32_character_cookie_secret_is_enough() -> None:
    assert from_environ({**REAL, "COOKIE_SECRET": "c" * 32}).cookie_secret == "c" * 32


@pytest.mark.parametrize("layout", ["file", "under-a-file"])
def test_unusable_var_dir_names_var_dir(layout: str, tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("not a directory")
    var_dir = afile if layout == "file" else afile / "var"
    with pytest.raises(ConfigError, match=r"VAR_DIR .* is not a directory paypush can write to .*COOKIE_SECRET"):
        from_environ({"VAR_DIR": str(var_dir)})


def test_an_emptied_generated_cookie_secret_is_refused(tmp_path: Path) -> None:
    (tmp_path / "cookie_secret").write_text("")
    with pytest.raises(ConfigError, match="cookie_secret holds no usable secret: delete it"):
        from_environ({"VAR_DIR": str(tmp_path)})


def test_every_malformed_variable_is_named_at_once(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        from_environ({"VAR_DIR": str(tmp_path), "PORT": "eighty", "LOG_FORMAT": "xml", "DEPLOYMENT": "Shop"})
    assert str(error.value).count(" must be ") == 3
    for name in ("PORT", "LOG_FORMAT", "DEPLOYMENT"):
        assert f"{name} must be" in str(error.value)


def test_repr_shows_no_secret_not_even_a_urls_password(tmp_path: Path) -> None:
    cfg = from_environ({**REAL, "STOMP_PASSCODE": "p" * 12, "VAR_DIR": str(tmp_path),
                        "AMQP_URL": "amqp://paypush:amqp-pw-123@rabbit.example.com/shop",
                        "MONGO_URL": "mongodb://paypush:mongo-pw-456@db.example.com/"})
    text = repr(cfg)
    for secret in ("k" * 32, "c" * 40, "p" * 12, "amqp-pw-123", "mongo-pw-456"):
        assert secret not in text
    # What is not secret still shows, so the repr is worth logging.
    assert f"amqp_url='amqp://paypush:{settings_mod.REDACTED}@rabbit.example.com/shop'" in text
    assert f"cookie_secret='{settings_mod.REDACTED}'" in text and "public_url='https://shop.example.com'" in text
    assert cfg.amqp_url == "amqp://paypush:amqp-pw-123@rabbit.example.com/shop"  # only its repr is redacted


def test_the_table_declares_every_field_once() -> None:
    names = [name for name, _ in settings_mod.table()]
    variables = [entry.env for _, entry in settings_mod.table()]
    assert names == [f.name for f in dataclasses.fields(settings_mod.Settings)]
    assert len(set(variables)) == len(variables)
    assert all(entry.doc and (entry.default is not None or entry.default_doc) for _, entry in settings_mod.table())


@pytest.mark.parametrize("env", [{}, REAL], ids=["sandbox", "merchant"])
def test_every_value_has_its_fields_type(env: dict[str, str], tmp_path: Path) -> None:
    cfg = from_environ({"VAR_DIR": str(tmp_path), **env})
    hints = typing.get_type_hints(settings_mod.Settings)
    for name, _ in settings_mod.table():
        value, hint = getattr(cfg, name), hints[name]
        if isinstance(hint, types.UnionType):  # X | None: one of them
            assert isinstance(value, typing.get_args(hint)), (name, value)
            continue
        assert isinstance(value, typing.get_origin(hint) or hint), (name, value)
        for item in value if isinstance(value, tuple) else ():
            assert isinstance(item, typing.get_args(hint)[0]), (name, item)


class RecordingEnv(Mapping[str, str]):
    """An environment that remembers which variables were looked up."""

    def __init__(self, values: dict[str, str]) -> None:
        self.contents = values
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> str:
        self.read.add(key)
        return self.contents[key]

    def __iter__(self) -> Iterator[str]:
        raise AssertionError("from_environ must look up its variables by name, not walk the environment")

    def __len__(self) -> int:
        return len(self.contents)


@pytest.mark.parametrize("env", [{}, REAL, {**REAL, "PUSH_ROUTE": "stomp", "STOMP_PASSCODE": "p" * 24}],
                         ids=["sandbox", "merchant", "merchant-stomp"])
def test_every_variable_read_is_in_the_table(env: dict[str, str], tmp_path: Path) -> None:
    recording = RecordingEnv({"VAR_DIR": str(tmp_path), **env})
    from_environ(recording)
    assert recording.read == {entry.env for _, entry in settings_mod.table()}


def test_nothing_but_settings_reads_the_environment() -> None:
    # tests/ and bench/ drive processes and may read their own knobs; the shop itself reads only settings.py.
    reads = re.compile(r"\b(environ|environb|getenv)\b")
    found = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
             for path in sorted(ROOT.rglob("*.py"))
             if path.relative_to(ROOT).parts[0] not in ("tests", "bench", "node_modules", ".venv")
             and path.relative_to(ROOT) != Path("settings.py")
             for number, line in enumerate(path.read_text().splitlines(), 1) if reads.search(line)]
    assert found == []


def readme_configuration_table() -> str:
    section = (ROOT / "README.md").read_text().split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    return "".join(line + "\n" for line in section.splitlines() if line.startswith("|"))


def test_the_readme_table_is_generated_from_the_settings(capsys: pytest.CaptureFixture[str]) -> None:
    assert settings_mod.main(["--markdown"]) == 0
    printed = capsys.readouterr().out
    assert printed == settings_mod.markdown_table()
    assert readme_configuration_table() == printed, "run: python -m settings --markdown, and paste it in README.md"
    for _, entry in settings_mod.table():
        assert f"| `{entry.env}` |" in printed


def test_reconcile_at_takes_a_time_of_day_or_off(tmp_path: Path) -> None:
    import datetime as dt
    assert from_environ({"VAR_DIR": str(tmp_path)}).reconcile_at == dt.time(10, 0)
    assert from_environ({"VAR_DIR": str(tmp_path), "RECONCILE_AT": "7:05"}).reconcile_at == dt.time(7, 5)
    assert from_environ({"VAR_DIR": str(tmp_path), "RECONCILE_AT": "OFF"}).reconcile_at is None
    for bad in ("24:00", "10", "10:60", "ten"):  # (empty means the default, as for every setting)
        with pytest.raises(settings_mod.ConfigError, match="RECONCILE_AT"):
            from_environ({"VAR_DIR": str(tmp_path), "RECONCILE_AT": bad})

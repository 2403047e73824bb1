"""The ``paypush`` command as a shop developer runs it: real processes, real signals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from server.infra.embedded_mongo import free_port
from tests.support.processes import ROOT, ServerProcess, base_env, wait_http


def paypush(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "server", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return base_env(tmp_path / "var", PORT=str(free_port()))


def test_configuration_error_exits_2_with_a_message(env: dict[str, str]) -> None:
    result = paypush("serve", env={**env, "WXPAY_KEY": "k" * 32, "WXPAY_APPID": "wx1", "WXPAY_MCH_ID": "1",
                                   "PUBLIC_URL": "https://shop.example.com"})
    assert result.returncode == 2
    assert "COOKIE_SECRET must be set" in result.stderr
    assert "k" * 32 not in result.stderr


def test_create_user_then_serve_then_create_user_while_serving(env: dict[str, str]) -> None:
    made = paypush("create-user", "alice", "--password", "alice-pass-1", env=env)
    assert made.returncode == 0, made.stderr
    assert "user alice created" in made.stdout
    assert not (Path(env["VAR_DIR"]) / "mongo" / "server.json").exists()  # its own server, stopped

    again = paypush("create-user", "alice", "--password", "alice-pass-1", env=env)
    assert again.returncode == 1 and "already exists" in again.stderr
    weak = paypush("create-user", "bob", "--password", "short", env=env)
    assert weak.returncode == 1 and "password" in weak.stderr

    server = ServerProcess(env, port=int(env["PORT"])).start()
    try:
        base = server.base_url
        state = json.loads((Path(env["VAR_DIR"]) / "mongo" / "server.json").read_text())
        made = paypush("create-user", "carol", "--password", "carol-pass-1", env=env)
        assert made.returncode == 0, made.stderr
        # create-user attached to the running server rather than starting another.
        assert json.loads((Path(env["VAR_DIR"]) / "mongo" / "server.json").read_text()) == state
        assert wait_http(base + "/readyz") == 200
    finally:
        returncode = server.stop()
    output = server.output
    assert returncode == 0, output
    assert "SANDBOX MODE" in output and "demo login is demo" in output
    assert "SIGTERM received" in output and "paypush stopped" in output
    assert "Traceback" not in output
    assert not (Path(env["VAR_DIR"]) / "mongo" / "server.json").exists()

    # The users survive the restart: both alice and carol are in the embedded database.
    replaced = paypush("create-user", "carol", "--password", "carol-pass-2", "--replace", env=env)
    assert replaced.returncode == 0 and "password replaced" in replaced.stdout


@pytest.mark.gen_test(timeout=60)
async def test_json_logs_one_object_per_line_and_no_secrets(env: dict[str, str]) -> None:
    from tests.support.notify_client import post_notify
    from tests.support.shopper import Shopper

    # Sandbox mode takes no merchant key (the simulator would hold it): the
    # key's turn is test_merchant_secrets_stay_out_of_the_logs_outside_sandbox.
    secrets = {"COOKIE_SECRET": "c00kie-" + "z" * 30, "STOMP_PASSCODE": "st0mp-" + "p" * 20}
    password = "hunter2-is-my-password"
    made = paypush("create-user", "erin", "--password", password, env={**env, **secrets, "SANDBOX": "1"})
    assert made.returncode == 0, made.stderr
    server = ServerProcess({**env, **secrets, "SANDBOX": "1", "LOG_FORMAT": "json"},
                           port=int(env["PORT"])).start()
    try:
        shopper = await Shopper.logged_in(server.base_url, "erin", password)
        await shopper.login("erin", password + "-wrong")
        await shopper.close()
        await post_notify(server.base_url, b"<xml><sign>forged</sign></xml>")
    finally:
        assert server.stop() == 0
    lines = [line for line in server.output.splitlines() if line.strip()]
    assert len(lines) > 5
    for line in lines:
        entry = json.loads(line)  # every line is one JSON object
        assert {"ts", "level", "logger", "msg"} <= set(entry)
    for secret in [*secrets.values(), password]:
        assert secret not in server.output
    assert any("notify refused" in json.loads(line)["msg"] for line in lines)


MERCHANT = {"WXPAY_APPID": "wx1234567890abcdef", "WXPAY_MCH_ID": "1900000109", "WXPAY_KEY": "K3y" + "q" * 29}


@pytest.mark.gen_test(timeout=60)
async def test_merchant_secrets_stay_out_of_the_logs_outside_sandbox(env: dict[str, str], amqp_url: str) -> None:
    """A production-shaped configuration passes every start-up rule, and serves."""
    from server.gateway.wxpay_v2 import signing, xmlcodec
    from tests.support.notify_client import notify_fields, post_notify

    secrets = {**MERCHANT, "COOKIE_SECRET": "c00kie-" + "z" * 30, "STOMP_PASSCODE": "st0mp-" + "p" * 20}
    server = ServerProcess({**env, **secrets, "AMQP_URL": amqp_url, "PUBLIC_URL": "https://shop.example.com",
                            "LOG_FORMAT": "json"}, port=int(env["PORT"])).start()
    try:
        assert wait_http(server.base_url + "/readyz") == 200
        fields = notify_fields({"id": "no-such-order", "pay_money": 1}, appid=MERCHANT["WXPAY_APPID"],
                               mch_id=MERCHANT["WXPAY_MCH_ID"])
        _, reply = await post_notify(server.base_url, xmlcodec.render(signing.signed(fields, MERCHANT["WXPAY_KEY"])))
        assert reply["return_code"] == "FAIL" and "unknown order" in reply["return_msg"]
    finally:
        assert server.stop() == 0, server.output
    assert "SANDBOX MODE" not in server.output
    assert "https://api.mch.weixin.qq.com" in server.output
    for secret in ("K3y" + "q" * 29, secrets["COOKIE_SECRET"], secrets["STOMP_PASSCODE"]):
        assert secret not in server.output


def refusal(case: str, tmp_path: Path) -> tuple[dict[str, str], str]:
    """The environment for one unusable set-up, and the line that must say what to set."""
    afile = tmp_path / "afile"
    afile.write_text("not a directory")
    secrets = {"COOKIE_SECRET": "c00kie-" + "z" * 30, "STOMP_PASSCODE": "st0mp-" + "p" * 20}
    return {
        "sandbox-with-the-merchant-key-against-wechat": (
            {**MERCHANT, "SANDBOX": "1", "WXPAY_API_BASE": "https://api.mch.weixin.qq.com"},
            "configuration error: SANDBOX=1 with merchant credentials (WXPAY_APPID, WXPAY_MCH_ID, WXPAY_KEY)"),
        "malformed-mongo-url": (
            {"MONGO_URL": "mongodb://paypush:s3cret-pw@db:x/"},
            "MONGO_URL is not a MongoDB URL (Port contains non-digit characters"),
        "unreachable-mongo": (
            {"MONGO_URL": f"mongodb://paypush:s3cret-pw@127.0.0.1:{free_port()}/", "MONGO_TIMEOUT_MS": "300"},
            "MongoDB did not answer within MONGO_TIMEOUT_MS=300 (127.0.0.1:"),
        "var-dir-is-a-file": (
            {"VAR_DIR": str(afile)},
            f"configuration error: VAR_DIR '{afile}' is not a directory paypush can write to (File exists)"),
        "var-dir-under-a-file-embedded-mongo": (
            {"VAR_DIR": str(afile / "var"), **secrets},
            f"VAR_DIR '{afile / 'var'}' is not a directory paypush can write to (Not a directory): "
            "set VAR_DIR to one, or MONGO_URL"),
    }[case]


@pytest.mark.parametrize("case", ["sandbox-with-the-merchant-key-against-wechat", "malformed-mongo-url",
                                  "unreachable-mongo", "var-dir-is-a-file", "var-dir-under-a-file-embedded-mongo"])
@pytest.mark.parametrize("command", [["serve"], ["create-user", "zed", "--password", "zed-pass-123"]],
                         ids=["serve", "create-user"])
def test_unusable_setup_is_one_line_and_exit_2(case: str, command: list[str], env: dict[str, str],
                                               tmp_path: Path) -> None:
    bad, message = refusal(case, tmp_path)
    result = paypush(*command, env={**env, **bad})
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()], result.stderr  # one line
    assert message in result.stderr
    assert result.stderr.startswith("paypush: ")
    for secret in ("s3cret-pw", MERCHANT["WXPAY_KEY"]):
        assert secret not in result.stderr
    assert not (Path(env["VAR_DIR"]) / "mongo").exists()  # refused before any database was started


def v3_merchant(tmp_path: Path) -> dict[str, str]:
    """A v3 merchant's settings with key material of its own, made here."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "1900000109")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(0x5157F09EFDC096DE15EBE81A47057A7232F1B8E1)
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
            .sign(key, hashes.SHA256()))
    (tmp_path / "apiclient_key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (tmp_path / "apiclient_cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return {"WXPAY_API": "v3", "WXPAY_APPID": "wx1234567890abcdef", "WXPAY_MCH_ID": "1900000109",
            "WXPAY_APIV3_KEY": "v3-k3y-" + "w" * 25, "WXPAY_PRIVATE_KEY_PATH": str(tmp_path / "apiclient_key.pem"),
            "WXPAY_CERT_PATH": str(tmp_path / "apiclient_cert.pem"),
            "WXPAY_CERT_SERIAL": "5157F09EFDC096DE15EBE81A47057A7232F1B8E1",
            "COOKIE_SECRET": "c00kie-" + "z" * 30, "PUBLIC_URL": "https://shop.example.com"}


@pytest.mark.parametrize("case", ["key-file-missing", "key-not-a-key", "serial-not-the-certificates",
                                  "certificate-of-another-key"])
def test_v3_key_material_that_cannot_be_used_is_one_line_and_exit_2(
        case: str, env: dict[str, str], tmp_path: Path, mongo_url: str, amqp_url: str) -> None:
    merchant = v3_merchant(tmp_path)
    if case == "key-file-missing":
        merchant["WXPAY_PRIVATE_KEY_PATH"] = str(tmp_path / "nowhere.pem")
        message = "WXPAY_PRIVATE_KEY_PATH"
    elif case == "key-not-a-key":
        (tmp_path / "apiclient_key.pem").write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n")
        message = "WXPAY_PRIVATE_KEY_PATH"
    elif case == "serial-not-the-certificates":
        merchant["WXPAY_CERT_SERIAL"] = "0123456789ABCDEF"
        message = "WXPAY_CERT_SERIAL 0123456789ABCDEF is not the serial of WXPAY_CERT_PATH"
    else:
        (tmp_path / "other").mkdir()
        other = v3_merchant(tmp_path / "other")
        merchant["WXPAY_CERT_PATH"] = other["WXPAY_CERT_PATH"]
        message = "is not the merchant private key's"
    result = paypush("serve", env={**env, **merchant, "MONGO_URL": mongo_url, "AMQP_URL": amqp_url})
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()], result.stderr  # one line
    assert message in result.stderr and result.stderr.startswith("paypush: ")
    assert merchant["WXPAY_APIV3_KEY"] not in result.stderr


@pytest.mark.gen_test(timeout=60)
async def test_a_v3_merchant_configuration_starts_and_keeps_its_keys_out_of_the_logs(
        env: dict[str, str], tmp_path: Path, amqp_url: str) -> None:
    merchant = v3_merchant(tmp_path)
    server = ServerProcess({**env, **merchant, "AMQP_URL": amqp_url}, port=int(env["PORT"])).start()
    try:
        assert wait_http(server.base_url + "/readyz") == 200
    finally:
        assert server.stop() == 0, server.output
    assert "SANDBOX MODE" not in server.output and "/wxpay/v3/notify" in server.output
    assert merchant["WXPAY_APIV3_KEY"] not in server.output
    assert "PRIVATE KEY" not in server.output


@pytest.mark.gen_test(timeout=90)
async def test_create_user_operator_and_promotion_while_serving(env: dict[str, str]) -> None:
    from tests.support.shopper import Shopper

    made = paypush("create-user", "olive", "--password", "olive-pass-1", "--operator", env=env)
    assert made.returncode == 0 and "user olive (operator) created" in made.stdout, made.stderr
    made = paypush("create-user", "sam", "--password", "sam-pass-123", env=env)
    assert made.returncode == 0, made.stderr
    server = ServerProcess(env, port=int(env["PORT"])).start()
    try:
        olive = await Shopper.logged_in(server.base_url, "olive", "olive-pass-1")
        sam = await Shopper.logged_in(server.base_url, "sam", "sam-pass-123")
        assert (await olive.request("GET", "/api/admin/orders"))[0] == 200
        assert (await sam.request("GET", "/api/admin/orders"))[0] == 403
        promoted = paypush("create-user", "sam", "--password", "sam-pass-456", "--replace", "--operator", env=env)
        assert promoted.returncode == 0 and "password replaced" in promoted.stdout, promoted.stderr
        # At once, on the session sam already has: the role is read on each request.
        assert (await sam.request("GET", "/api/admin/orders"))[0] == 200
        # A password reset without --operator leaves an operator one.
        kept = paypush("create-user", "olive", "--password", "olive-pass-2", "--replace", env=env)
        assert kept.returncode == 0, kept.stderr
        assert (await olive.request("GET", "/api/admin/orders"))[0] == 200
        await olive.close()
        await sam.close()
    finally:
        assert server.stop() == 0, server.output


@pytest.mark.gen_test(timeout=120)
async def test_reconcile_exit_codes_and_json(env: dict[str, str], mongo_url: str) -> None:
    import datetime as dt
    import uuid

    from pymongo import AsyncMongoClient

    from server.gateway.abc import BEIJING
    from tests.support.shopper import Shopper

    db_name = f"rec{uuid.uuid4().hex[:10]}"
    env = {**env, "MONGO_URL": mongo_url, "MONGO_DB": db_name, "SIM_NOTIFY_SPEED": "1000"}
    today = dt.datetime.now(BEIJING).date().isoformat()
    bad = paypush("reconcile", "--date", "2026-13-45", env=env)
    assert bad.returncode == 2 and "YYYY-MM-DD" in bad.stderr
    server = ServerProcess(env, port=int(env["PORT"])).start()
    try:
        none_yet = paypush("reconcile", "--date", today, env=env)
        assert none_yet.returncode == 2, none_yet.stderr
        assert "next morning" in none_yet.stderr, "no trade today: WeChat has no bill for it"

        shopper = await Shopper.logged_in(server.base_url, "demo", "demo-pass-123")
        order = await shopper.order([("tea-longjing", 1)])
        native = await shopper.create_native(order["id"])
        assert (await shopper.request("POST", "/sandbox/wxpay/pay", {"code_url": native["code_url"]}))[0] == 200
        await shopper.close()

        agreed = paypush("reconcile", "--date", today, "--json", env=env)
        assert agreed.returncode == 0, agreed.stderr
        doc = json.loads(agreed.stdout)
        assert doc["date"] == today and doc["mismatches"] == []
        assert doc["wechat"]["paid"] == doc["ours"]["paid"] == order["pay_money"]

        client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(mongo_url)
        await client[db_name]["orders"].update_one({"_id": order["id"]}, {"$inc": {"pay_money": 1}})
        differs = paypush("reconcile", "--date", today, env=env)
        assert differs.returncode == 1, differs.stderr
        assert "amount_differs" in differs.stdout and "DIFFERENCES REMAIN" in differs.stdout
        await client.drop_database(db_name)
        await client.close()
    finally:
        assert server.stop() == 0, server.output


@pytest.mark.gen_test(timeout=120)
async def test_sku_set_and_list_against_a_running_server(env: dict[str, str]) -> None:
    from tests.support.shopper import Shopper

    bad_id = paypush("sku", "set", "tea.longjing", "--stock", "1", env=env)
    assert bad_id.returncode == 2 and bad_id.stderr.splitlines() == [
        "paypush: sku: SKU id: 1-64 letters, digits, '-' or '_'"], bad_id.stderr
    negative = paypush("sku", "set", "tea-longjing", "--stock", "-3", env=env)
    assert negative.returncode == 2 and negative.stderr.splitlines() == [
        "paypush: sku: stock: a whole number from 0 to 10000000"], negative.stderr
    not_a_number = paypush("sku", "set", "tea-longjing", "--stock", "many", env=env)
    assert not_a_number.returncode == 2 and "invalid int value: 'many'" in not_a_number.stderr
    assert not (Path(env["VAR_DIR"]) / "mongo").exists(), "bad input is refused before any database starts"

    server = ServerProcess(env, port=int(env["PORT"])).start()
    try:
        state = json.loads((Path(env["VAR_DIR"]) / "mongo" / "server.json").read_text())
        shopper = await Shopper.logged_in(server.base_url, "demo", "demo-pass-123")
        await shopper.order([("tea-longjing", 2)])  # the demo catalog's 50 become 48 on hand

        changed = paypush("sku", "set", "tea-longjing", "--stock", "7", "--price", "9000", env=env)
        assert changed.returncode == 0, changed.stderr
        assert changed.stdout.startswith("SKU tea-longjing: stock 48 -> 7, price 8800 -> 9000; now stock 7"), \
            changed.stdout
        nameless = paypush("sku", "set", "kite-paper", "--stock", "4", env=env)
        assert nameless.returncode == 2, nameless.stderr
        assert "paypush: sku: no SKU 'kite-paper' yet: creating one needs a stock, a name and a price" in \
            nameless.stderr
        created = paypush("sku", "set", "kite-paper", "--stock", "4", "--name", "Paper kite", "--price", "1500",
                          env=env)
        assert created.returncode == 0, created.stderr
        assert created.stdout.strip() == "SKU kite-paper created: stock 4, price 1500 fen, name 'Paper kite'"
        # Both attached to the server's embedded MongoDB rather than starting another.
        assert json.loads((Path(env["VAR_DIR"]) / "mongo" / "server.json").read_text()) == state

        status, skus = await shopper.request("GET", "/api/skus")
        assert status == 200
        by_id = {s["id"]: s for s in skus}
        assert (by_id["tea-longjing"]["stock"], by_id["tea-longjing"]["price"]) == (7, 9000)
        assert (by_id["kite-paper"]["name"], by_id["kite-paper"]["stock"]) == ("Paper kite", 4)
        assert (await shopper.order([("kite-paper", 1)]))["pay_money"] == 1500
        await shopper.close()

        listed = paypush("sku", "list", env=env)
        assert listed.returncode == 0, listed.stderr
        rows = {line.split()[0]: line.split() for line in listed.stdout.splitlines()[1:]}
        assert rows["kite-paper"][1:3] == ["3", "¥15.00"] and rows["tea-longjing"][1:3] == ["7", "¥90.00"]
    finally:
        assert server.stop() == 0, server.output
    assert "SKU tea-longjing stock 48 -> 7, price 8800 -> 9000 (by cli:" in changed.stderr  # the log line


def test_processes_share_a_port_with_reuse_port(tmp_path: Path, mongo_url: str, amqp_url: str) -> None:
    """REUSE_PORT=1: several processes on one HOST:PORT, the kernel spreading
    connections among them; one stopping leaves the port served by the others.
    Without it a second process is refused the port, saying so."""
    port = free_port()
    env = base_env(tmp_path / "var", MONGO_URL=mongo_url, MONGO_DB=f"t{tmp_path.name[-12:]}", AMQP_URL=amqp_url,
                   COOKIE_SECRET="shared-secret-" + "x" * 40, SANDBOX="1")
    first = ServerProcess({**env, "REUSE_PORT": "1"}, port=port).start()
    second = ServerProcess({**env, "REUSE_PORT": "1"}, port=port).start()
    try:
        assert first.stop() == 0, first.output
        wait_http(second.base_url + "/healthz")  # only the second one can answer now
        assert second.proc is not None and second.proc.poll() is None
    finally:
        assert second.stop() == 0, second.output
    for server in (first, second):
        assert "open-file limit" in server.output and "port shared with other processes" in server.output
        assert "Traceback" not in server.output

    alone = ServerProcess(env, port=port).start()
    refused = subprocess.run([sys.executable, "-m", "server", "serve"], cwd=ROOT, env={**env, "PORT": str(port)},
                             capture_output=True, text=True, timeout=60)
    try:
        assert refused.returncode != 0
        assert "cannot listen on" in refused.stderr and "REUSE_PORT=1" in refused.stderr, refused.stderr
    finally:
        assert alone.stop() == 0, alone.output


@pytest.mark.gen_test(timeout=60)
async def test_a_notify_is_one_log_line(tmp_path: Path, mongo_url: str, amqp_url: str) -> None:
    """One line per event: the payment where it is recorded, and a repeat
    says it was one; no acknowledgement line, no access line for either."""
    from tests.support.notify_client import post_notify, signed_notify
    from tests.support.shopper import Shopper

    env = base_env(tmp_path / "var", MONGO_URL=mongo_url, MONGO_DB=f"t{tmp_path.name[-12:]}", AMQP_URL=amqp_url,
                   SANDBOX="1")
    server = ServerProcess(env).start()
    try:
        shopper = await Shopper.logged_in(server.base_url, "demo", "demo-pass-123")
        try:
            order = await shopper.order([("tea-longjing", 1)])
            for _ in range(2):
                status, reply = await post_notify(server.base_url, signed_notify(order))
                assert (status, reply["return_code"]) == (200, "SUCCESS")
        finally:
            await shopper.close()
    finally:
        assert server.stop() == 0, server.output
    about = [line for line in server.output.splitlines() if order["id"] in line and " created by " not in line]
    assert len(about) == 2, about
    assert f"order {order['id']} paid" in about[0]
    assert "reported again" in about[1]
    assert "POST /wxpay/notify" not in server.output  # no access line either
    assert "POST /api/orders" in server.output  # other requests keep their access line

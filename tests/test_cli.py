"""The ``paypush`` command as a shop developer runs it: real processes, real signals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from server.embedded_mongo import free_port
from tests.processes import ROOT, ServerProcess, base_env, wait_http


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
    from tests.notify_client import post_notify
    from tests.shopper import Shopper

    secrets = {"WXPAY_KEY": "K3y" + "q" * 29, "COOKIE_SECRET": "c00kie-" + "z" * 30,
               "STOMP_PASSCODE": "st0mp-" + "p" * 20}
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

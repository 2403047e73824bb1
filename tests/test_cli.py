"""The ``paypush`` command as a shop developer runs it: real processes, real signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from server.embedded_mongo import free_port

ROOT = Path(__file__).resolve().parent.parent


def paypush(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "server", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("WXPAY_", "MONGO_", "SANDBOX"))}
    return {**clean, "VAR_DIR": str(tmp_path / "var"), "PORT": str(free_port())}


def wait_http(url: str, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return resp.status
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_configuration_error_exits_2_with_a_message(env: dict[str, str]) -> None:
    result = paypush("serve", env={**env, "WXPAY_KEY": "k" * 32, "WXPAY_APPID": "wx1", "WXPAY_MCH_ID": "1"})
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

    server = subprocess.Popen([sys.executable, "-m", "server", "serve"], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{env['PORT']}"
        assert wait_http(base + "/healthz") == 200
        state = json.loads((Path(env["VAR_DIR"]) / "mongo" / "server.json").read_text())
        made = paypush("create-user", "carol", "--password", "carol-pass-1", env=env)
        assert made.returncode == 0, made.stderr
        # create-user attached to the running server rather than starting another.
        assert json.loads((Path(env["VAR_DIR"]) / "mongo" / "server.json").read_text()) == state
        assert wait_http(base + "/readyz") == 200
    finally:
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=15)
    assert server.returncode == 0, output
    assert "SANDBOX MODE" in output and "demo login is demo" in output
    assert "SIGTERM received" in output and "paypush stopped" in output
    assert "Traceback" not in output
    assert not (Path(env["VAR_DIR"]) / "mongo" / "server.json").exists()

    # The users survive the restart: both alice and carol are in the embedded database.
    replaced = paypush("create-user", "carol", "--password", "carol-pass-2", "--replace", env=env)
    assert replaced.returncode == 0 and "password replaced" in replaced.stdout

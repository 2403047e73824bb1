"""The embedded MongoDB (nx-27017) as paypush runs it: a killed server fails
liveness, and what a dead server leaves behind blocks no later start."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from pymongo import MongoClient

from server.infra.embedded_mongo import EmbeddedMongo, _serving_port, _serving_port_ps, free_port
from tests.support.processes import ROOT, ServerProcess, base_env, wait_http
from tests.support.waiting import eventually_blocking


def paypush(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "server", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def healthz(base_url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(base_url + "/healthz", timeout=5) as resp:
            return int(resp.status), json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def state_pid(data_dir: Path) -> int:
    return int(json.loads((data_dir / "server.json").read_text())["pid"])


def client(url: str) -> MongoClient[dict[str, Any]]:
    return MongoClient(url, serverSelectionTimeoutMS=2000)


def unhealthy(base_url: str) -> tuple[int, dict[str, Any]] | None:
    health = healthz(base_url)
    return health if health[0] != 200 else None


def answers(url: str) -> bool:
    with client(url) as c:
        return bool(c.admin.command("ping")["ok"] == 1)


def test_killed_embedded_mongodb_fails_liveness_and_its_leftovers_block_nothing(
        tmp_path: Path, amqp_url: str) -> None:
    env = base_env(tmp_path / "var", AMQP_URL=amqp_url, PORT=str(free_port()))
    data_dir = tmp_path / "var" / "mongo"
    server = ServerProcess(env, port=int(env["PORT"])).start()
    try:
        assert healthz(server.base_url) == (200, {"status": "ok"})
        pid = state_pid(data_dir)
        os.kill(pid, signal.SIGKILL)
        # Not reaped yet, the dead server's pid still looks alive to nx-27017's own pid-file check.
        made = paypush("create-user", "zed", "--password", "zed-pass-123", env=env)
        assert made.returncode == 0, made.stderr
        health = eventually_blocking(lambda: unhealthy(server.base_url), within=15,
                                     message="/healthz no longer answering 200 after the kill")
        assert health == (503, {"status": "down", "reason": f"embedded MongoDB (pid {pid}) exited with -9"})
    finally:
        returncode = server.stop()
    assert returncode == 0, server.output
    assert "restart paypush" in server.output  # logged once, as an error

    again = ServerProcess(env, port=int(env["PORT"])).start()
    try:
        assert wait_http(again.base_url + "/readyz") == 200
        assert healthz(again.base_url) == (200, {"status": "ok"})
        # The same data: the user created while the first server was dead is there.
        dup = paypush("create-user", "zed", "--password", "zed-pass-123", env=env)
        assert dup.returncode == 1 and "already exists" in dup.stderr
    finally:
        assert again.stop() == 0, again.output


def test_a_pid_reused_by_an_unrelated_process_does_not_block_start(tmp_path: Path) -> None:
    data_dir = tmp_path / "mongo"
    data_dir.mkdir()
    # A killed server's files, its pid since taken by another process (this test's).
    (data_dir / "nx-27017.pid").write_text(str(os.getpid()))
    (data_dir / "server.json").write_text(json.dumps({"pid": os.getpid(), "port": free_port()}))
    server = EmbeddedMongo(data_dir).attach_or_start()
    try:
        assert server.owned
        assert answers(server.url)
        assert state_pid(data_dir) != os.getpid()
    finally:
        server.stop()


def test_the_server_of_another_data_directory_is_never_attached_to(tmp_path: Path) -> None:
    other = EmbeddedMongo(tmp_path / "other").start()
    try:
        with client(other.url) as c:
            c["t"]["marks"].insert_one({"_id": "other's"})
        data_dir = tmp_path / "mongo"
        data_dir.mkdir()
        # A copied VAR_DIR: its files name a live embedded server whose port answers, on other data.
        for name in ("server.json", "nx-27017.pid"):
            shutil.copy(tmp_path / "other" / name, data_dir / name)
        mine = EmbeddedMongo(data_dir).attach_or_start()
        try:
            assert mine.owned and mine.port != other.port
            with client(mine.url) as c:
                assert c["t"]["marks"].find_one({"_id": "other's"}) is None
        finally:
            mine.stop()
    finally:
        other.stop()


def test_a_process_that_attached_sees_the_server_go(tmp_path: Path) -> None:
    owner = EmbeddedMongo(tmp_path / "mongo").start()
    guest = EmbeddedMongo(tmp_path / "mongo").attach_or_start()
    try:
        assert not guest.owned and guest.port == owner.port
        assert owner.failure() is None and guest.failure() is None
        pid = state_pid(tmp_path / "mongo")
        owner.stop()
        assert guest.failure() == f"embedded MongoDB (pid {pid}) this process attached to is gone"
    finally:
        owner.stop()


def test_ps_finds_what_proc_finds(tmp_path: Path) -> None:
    """Where there is no /proc (macOS) ps is asked instead; both agree here."""
    server = EmbeddedMongo(tmp_path / "mongo").start()
    try:
        pid, db_dir = state_pid(tmp_path / "mongo"), tmp_path / "mongo" / "db"
        assert _serving_port_ps(pid, db_dir) == _serving_port(pid, db_dir) == server.port
        assert _serving_port_ps(pid, tmp_path / "elsewhere") is None
        assert _serving_port_ps(os.getpid(), db_dir) is None
    finally:
        server.stop()

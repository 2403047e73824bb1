"""Runs the ``nx-27017`` MongoDB-compatible server as a child process.

Used when ``MONGO_URL`` is empty: development and tests get a real server over
the wire with no MongoDB installed. A small state file under the data directory
lets a second paypush command (``create-user`` while ``serve`` runs) attach to
the running server instead of opening the same database file twice.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from pymongo import MongoClient
from pymongo.errors import PyMongoError

log = logging.getLogger(__name__)

LAUNCH = "from nx_27017.nx_27017 import main; main()"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(url: str, timeout_ms: int = 300) -> bool:
    client: MongoClient = MongoClient(url, serverSelectionTimeoutMS=timeout_ms,
                                      connectTimeoutMS=timeout_ms)
    try:
        client.admin.command("ping")
        return True
    except PyMongoError:
        return False
    finally:
        client.close()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class EmbeddedMongo:
    def __init__(self, data_dir: Path, port: int | None = None):
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self._state = self.data_dir / "server.json"

    @property
    def url(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/"

    @property
    def owned(self) -> bool:
        return self._proc is not None

    def attach_or_start(self, timeout: float = 20.0) -> EmbeddedMongo:
        """Use the server another paypush process started on this data, else start one."""
        try:
            state = json.loads(self._state.read_text())
            pid, port = int(state["pid"]), int(state["port"])
        except (OSError, ValueError, KeyError, TypeError):
            pid = port = 0
        if pid and _pid_alive(pid) and _answers(f"mongodb://127.0.0.1:{port}/"):
            self.port = port
            log.info("embedded MongoDB: attached to the running server on port %d", port)
            return self
        return self.start(timeout)

    def start(self, timeout: float = 20.0) -> EmbeddedMongo:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-c", LAUNCH,
               "--data-dir", str(self.data_dir / "db"),
               "--host", "127.0.0.1", "--port", str(self.port),
               "--log-file", str(self.data_dir / "nx-27017.log"),
               "--pid-file", str(self.data_dir / "nx-27017.pid")]
        # Its own process group: a Ctrl-C meant for paypush must not kill the
        # database before paypush has finished with it.
        with open(self.data_dir / "nx-27017.out", "ab") as out:
            self._proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"embedded MongoDB exited with {self._proc.returncode}; "
                                   f"see {self.data_dir / 'nx-27017.out'}")
            if _answers(self.url, 200):
                self._state.write_text(json.dumps({"pid": self._proc.pid, "port": self.port}))
                log.info("embedded MongoDB (nx-27017) listening on 127.0.0.1:%d, data in %s",
                         self.port, self.data_dir)
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"embedded MongoDB did not answer within {timeout:.0f}s")

    def stop(self, timeout: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        try:
            if json.loads(self._state.read_text()).get("pid") == proc.pid:
                self._state.unlink()
        except (OSError, ValueError):
            pass
        log.info("embedded MongoDB stopped")

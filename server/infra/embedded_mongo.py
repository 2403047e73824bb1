"""Runs the ``nx-27017`` MongoDB-compatible server as a child process.

Used when ``MONGO_URL`` is empty: development and tests get a real server over
the wire with no MongoDB installed. A small state file under the data directory
lets a second paypush command (``create-user`` while ``serve`` runs) attach to
the running server instead of opening the same database file twice.

Both that state file and nx-27017's own pid file outlive a killed server, and
pids are reused (in a container the restarted server gets the very same one):
a recorded pid counts only while its command line says it is nx-27017 on this
data directory, and a server is attached to only if its port answers too.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
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


def _read_pid(path: Path) -> int:
    """The pid a pid or state file names; 0 when it is missing or unreadable."""
    try:
        text = path.read_text().strip()
        return int(json.loads(text)["pid"]) if text.startswith("{") else int(text)
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _serving_port(pid: int, db_dir: Path) -> int | None:
    """The port of nx-27017 running as ``pid`` on ``db_dir``; None when ``pid``
    is gone, a zombie, or any other process."""
    if pid <= 0:
        return None
    if not Path("/proc/self/cmdline").exists():
        return _serving_port_ps(pid, db_dir)
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None
    if LAUNCH not in argv:
        return None
    opts = dict(itertools.pairwise(argv))
    try:
        if (cwd / opts["--data-dir"]).resolve() != db_dir.resolve():
            return None
        return int(opts["--port"])
    except (KeyError, ValueError):
        return None


def _serving_port_ps(pid: int, db_dir: Path) -> int | None:
    """:func:`_serving_port` where there is no /proc (macOS): ps joins the
    arguments with spaces, so this relies on the order :meth:`EmbeddedMongo.start` uses."""
    try:
        line = subprocess.run(["ps", "-ww", "-o", "command=", "-p", str(pid)], capture_output=True,
                              text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r" --data-dir (.+) --host \S+ --port (\d+) ", line)
    if LAUNCH not in line or not found or Path(found[1]) != db_dir.resolve():
        return None
    return int(found[2])


class EmbeddedMongo:
    def __init__(self, data_dir: Path, port: int | None = None):
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self._attached_pid = 0
        self._state = self.data_dir / "server.json"
        self._pid_file = self.data_dir / "nx-27017.pid"
        self._db_dir = self.data_dir / "db"
        self._failure_logged = False

    @property
    def url(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/"

    @property
    def owned(self) -> bool:
        return self._proc is not None

    def failure(self) -> str | None:
        """Why the server this process started or attached to is gone; None while it runs.

        Nothing brings it back on the same port (a new one gets a new port), so
        for this process the database is gone for good: a liveness probe
        should fail and have the process restarted.
        """
        if self._proc is not None:
            code = self._proc.poll()
            reason = None if code is None else f"embedded MongoDB (pid {self._proc.pid}) exited with {code}"
        elif self._attached_pid:
            gone = _serving_port(self._attached_pid, self._db_dir) != self.port
            reason = f"embedded MongoDB (pid {self._attached_pid}) this process attached to is gone" if gone else None
        else:
            reason = None
        if reason and not self._failure_logged:
            self._failure_logged = True
            log.error("%s: this process cannot work without it; restart paypush", reason)
        return reason

    def attach_or_start(self, timeout: float = 20.0) -> EmbeddedMongo:
        """Use the server another paypush process started on this data, else start one."""
        deadline = time.monotonic() + timeout
        for path in (self._state, self._pid_file):
            pid = _read_pid(path)
            # Waits out a server another process is starting right now.
            while (port := _serving_port(pid, self._db_dir)) is not None:
                if _answers(f"mongodb://127.0.0.1:{port}/"):
                    self.port, self._attached_pid = port, pid
                    log.info("embedded MongoDB: attached to the running server on port %d (pid %d)", port, pid)
                    return self
                if time.monotonic() > deadline:
                    raise RuntimeError(f"embedded MongoDB pid {pid} has {self.data_dir} open but does not answer "
                                       f"on port {port}: stop it (kill {pid}) and start again")
                time.sleep(0.1)
        return self.start(timeout)

    def _clear_stale_pid_file(self) -> None:
        """nx-27017 refuses to start while its pid file names any live process,
        and the pid it will get may well be the one a killed server left there."""
        pid = _read_pid(self._pid_file)
        if not pid:
            return
        if _serving_port(pid, self._db_dir) is not None:
            raise RuntimeError(f"embedded MongoDB pid {pid} already has {self.data_dir} open: stop it first")
        self._pid_file.unlink(missing_ok=True)
        log.info("embedded MongoDB: removed the stale pid file naming pid %d", pid)

    def start(self, timeout: float = 20.0) -> EmbeddedMongo:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._clear_stale_pid_file()
        self._attached_pid = 0
        self._failure_logged = False
        cmd = [sys.executable, "-c", LAUNCH,
               "--data-dir", str(self._db_dir.resolve()),
               "--host", "127.0.0.1", "--port", str(self.port),
               "--log-file", str(self.data_dir / "nx-27017.log"),
               "--pid-file", str(self._pid_file)]
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

"""paypush server processes for tests that need more than one, or a real signal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from server.infra.embedded_mongo import free_port
from tests.support.waiting import eventually_blocking

ROOT = Path(__file__).resolve().parents[2]


def base_env(var_dir: Path, **extra: str) -> dict[str, str]:
    """This test run's environment minus anything that would leave sandbox mode;
    no daily reconciliation (a test that wants one runs it)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("WXPAY_", "MONGO_", "SANDBOX"))}
    return {**clean, "VAR_DIR": str(var_dir), "RECONCILE_AT": "off", **extra}


def http_status(url: str) -> int | None:
    """The status ``url`` answers with when it is a success; None otherwise
    (nothing listening yet, or an error status such as readiness's 503)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return int(resp.status)
    except OSError:
        return None


def wait_http(url: str, within: float = 30) -> int:
    return eventually_blocking(lambda: http_status(url), message=f"{url} answers with a success", within=within)


class ServerProcess:
    def __init__(self, env: dict[str, str], port: int | None = None):
        self.port = port or free_port()
        self.env = {**env, "PORT": str(self.port)}
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[str] | None = None
        self.output = ""
        self.signalled = False

    def start(self) -> ServerProcess:
        self.proc = subprocess.Popen([sys.executable, "-m", "server", "serve"], cwd=ROOT, env=self.env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            wait_http(self.base_url + "/healthz")
        except AssertionError:
            self.stop()
            raise RuntimeError(f"paypush did not start:\n{self.output}") from None
        return self

    def send(self, sig: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.signalled = True
        self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        """Signal (unless already signalled) and wait for the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None and not self.signalled:
            self.send(sig)
        out, _ = self.proc.communicate(timeout=timeout)
        self.output += out or ""
        return int(self.proc.returncode)

"""The standalone simulator (``paypush simulator``) serving HTTPS that demands
a client certificate, as WeChat's secapi does: a real subprocess on an unused port."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests
from wechatpy.pay import WeChatPay

import settings as settings_mod
from server.infra.embedded_mongo import free_port
from tests.support.processes import ROOT, base_env
from tests.support.tls_certs import TlsFiles, make_tls_files
from tests.support.waiting import eventually_blocking


class TlsSimulator:
    def __init__(self, tls: TlsFiles, var_dir: Path, **env: str):
        self.tls = tls
        self.port = free_port()
        self.base = f"https://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server", "simulator", "--port", str(self.port),
             "--tls-cert", str(tls.server_cert), "--tls-key", str(tls.server_key),
             "--client-ca", str(tls.ca_cert)],
            cwd=ROOT, env=base_env(var_dir, **{"SIM_NOTIFY_SPEED": "1000", **env}), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True)
        self.output: str | None = None

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.get(self.base + path, verify=str(self.tls.ca_cert), timeout=5, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.post(self.base + path, verify=str(self.tls.ca_cert), timeout=5,
                             cert=(str(self.tls.client_cert), str(self.tls.client_key)), **kwargs)

    def answers(self) -> int | None:
        """The status a merchant with the right certificate gets (None while it is starting)."""
        assert self.proc.poll() is None, "the simulator exited"
        try:
            return self.get("/trades/NONE", cert=(str(self.tls.client_cert), str(self.tls.client_key))).status_code
        except requests.ConnectionError:
            return None

    def merchant(self, cert: tuple[Path, Path] | None) -> WeChatPay:
        """wechatpy as the sandbox merchant, presenting ``cert`` (certificate, key) if any."""
        client = WeChatPay(appid=settings_mod.SANDBOX_APPID, api_key=settings_mod.SANDBOX_KEY,
                           mch_id=settings_mod.SANDBOX_MCH_ID, timeout=5,
                           mch_cert=str(cert[0]) if cert else None, mch_key=str(cert[1]) if cert else None)
        client.API_BASE_URL = self.base + "/"
        client._http.verify = str(self.tls.ca_cert)  # trust the test CA, as WXPAY_CA_PATH would
        client._http.trust_env = False  # else REQUESTS_CA_BUNDLE in the environment overrides verify
        return client

    def stop(self) -> str:
        """Stop it (once) and answer everything it logged."""
        if self.output is None:
            self.proc.terminate()
            self.output, _ = self.proc.communicate(timeout=15)
        return self.output


@contextmanager
def running_tls_simulator(directory: Path, **env: str) -> Iterator[TlsSimulator]:
    sim = TlsSimulator(make_tls_files(directory / "tls"), directory / "var", **env)
    try:
        eventually_blocking(sim.answers, message="the TLS simulator answers", within=30)
        yield sim
    finally:
        sim.stop()

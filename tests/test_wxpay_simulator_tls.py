"""``paypush simulator --tls-cert --tls-key --client-ca``: WeChat's refund API
demands the merchant's certificate, and so does the standalone simulator.

A real subprocess on an unused port; ``wechatpy`` (a third party) talks to it
over HTTPS with ``mch_cert``/``mch_key``, as it would to WeChat. Without a
certificate, or with one from another CA, the handshake is refused.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from server.infra.embedded_mongo import free_port
from tests.support.processes import ROOT, base_env
from tests.support.tls_certs import make_tls_files
from tests.support.tls_simulator import TlsSimulator, running_tls_simulator
from tests.support.waiting import eventually_blocking


@pytest.fixture
def tls_simulator(tmp_path: Path) -> Iterator[TlsSimulator]:
    with running_tls_simulator(tmp_path) as sim:
        yield sim


def test_the_standalone_simulator_demands_a_client_certificate_and_refunds_over_it(
        tls_simulator: TlsSimulator) -> None:
    sim, tls = tls_simulator, tls_simulator.tls
    # The merchant trusts the simulator; the simulator refuses the merchant: with
    # TLS 1.3 the client reads either the server's alert or, when the server has
    # already closed, an EOF, never a failure to verify the server.
    for cert, alert in ((None, "CERTIFICATE_REQUIRED"), ((tls.stranger_cert, tls.stranger_key), "UNKNOWN_CA")):
        with pytest.raises(requests.exceptions.SSLError) as refused:
            sim.merchant(cert).refund.query(out_refund_no="R" + uuid.uuid4().hex[:12])
        assert alert in str(refused.value) or "EOF occurred" in str(refused.value), refused.value

    merchant = sim.merchant((tls.client_cert, tls.client_key))
    out_trade_no = "T" + uuid.uuid4().hex[:20]
    placed = merchant.order.create(trade_type="NATIVE", body="silk fan", total_fee=180,
                                   notify_url="http://127.0.0.1:9/notify", client_ip="127.0.0.1",
                                   product_id="p1", out_trade_no=out_trade_no)
    paid = sim.post("/pay", json={"code_url": placed["code_url"], "notify": {"drop": True}})
    assert paid.status_code == 200, paid.text
    refund_no = "R" + uuid.uuid4().hex[:20]
    refund = merchant.refund.apply(total_fee=180, refund_fee=180, out_refund_no=refund_no,
                                   out_trade_no=out_trade_no)
    assert merchant.check_signature(refund)
    assert (refund["out_refund_no"], refund["transaction_id"]) == (refund_no, paid.json()["transaction_id"])

    def settled() -> dict[str, Any] | None:
        found = merchant.refund.query(out_refund_no=refund_no)
        return found if found["refund_status_0"] == "SUCCESS" else None

    found = eventually_blocking(settled, message="the refund settled", within=10)
    assert found["refund_id_0"] == refund["refund_id"]
    assert time.strptime(found["refund_success_time_0"], "%Y-%m-%d %H:%M:%S")
    assert merchant.order.query(out_trade_no=out_trade_no)["trade_state"] == "REFUND"
    assert "client certificate required" in sim.stop()


def test_tls_options_come_together(tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path / "tls")
    half = subprocess.run([sys.executable, "-m", "server", "simulator", "--port", str(free_port()),
                           "--tls-cert", str(tls.server_cert), "--tls-key", str(tls.server_key)],
                          cwd=ROOT, env=base_env(tmp_path / "var"), capture_output=True, text=True, timeout=30)
    assert half.returncode == 2 and "--client-ca" in half.stderr
    wrong = subprocess.run([sys.executable, "-m", "server", "simulator", "--port", str(free_port()),
                            "--tls-cert", str(tls.server_cert), "--tls-key", str(tls.client_key),
                            "--client-ca", str(tls.ca_cert)],
                           cwd=ROOT, env=base_env(tmp_path / "var"), capture_output=True, text=True, timeout=30)
    assert wrong.returncode == 2 and "simulator TLS files cannot be used" in wrong.stderr

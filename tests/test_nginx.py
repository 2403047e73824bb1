"""deploy/nginx.conf for real: nginx from Debian in front of two paypush
processes. A page's socket gets its "paid" whichever process took the notify,
and a SIGTERM to its process sends it to the other without a missed event."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.infra.embedded_mongo import free_port
from tests.support.metrics import sample
from tests.support.notify_client import post_notify, signed_notify
from tests.support.processes import ROOT, ServerProcess, base_env, wait_http
from tests.support.shopper import Shopper
from tests.support.sockets import PageSocket
from tests.support.waiting import eventually_blocking


def open_sockets(server: ServerProcess) -> int:
    with urllib.request.urlopen(server.base_url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return int(sample(text, "paypush_open_sockets"))


def nginx_conf(tmp_path: Path, port: int, a_port: int, b_port: int) -> Path:
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    conf = conf.replace("server paypush1:8888", f"server 127.0.0.1:{a_port}")
    conf = conf.replace("server paypush2:8888", f"server 127.0.0.1:{b_port}")
    conf = conf.replace("listen 80;", f"listen 127.0.0.1:{port};")
    conf = conf.replace("worker_processes auto;", "worker_processes 1;")
    conf = (f"daemon off;\npid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/nginx-error.log;\n" + conf).replace(
        "http {", f"http {{\n    access_log off;\n    client_body_temp_path {tmp_path}/body;\n"
                  f"    proxy_temp_path {tmp_path}/proxy;", 1)
    path = tmp_path / "nginx.conf"
    path.write_text(conf)
    return path


def start_nginx(nginx: str, tmp_path: Path, a_port: int, b_port: int) -> tuple[subprocess.Popen[bytes], int]:
    """nginx listening on a port of its own. Other test runs share this machine:
    a free port can be taken before nginx binds it, and then nginx exits and
    whoever took it answers instead; so nginx is known to listen only once it
    wrote its pid file (after the bind), and another port is tried otherwise."""
    pid_file = tmp_path / "nginx.pid"
    for _ in range(3):
        port = free_port()
        conf = nginx_conf(tmp_path, port, a_port, b_port)
        proc = subprocess.Popen([nginx, "-c", str(conf), "-p", str(tmp_path)])
        eventually_blocking(lambda: proc.poll() is not None or pid_file.exists(), within=20,  # noqa: B023
                            message="nginx bound its port (pid file written) or exited")
        if proc.poll() is None:
            return proc, port
    raise AssertionError(f"nginx could not listen: {(tmp_path / 'nginx-error.log').read_text()}")


@pytest.fixture
def cluster(tmp_path: Path, mongo_url: str, amqp_url: str) -> Iterator[tuple[str, ServerProcess, ServerProcess]]:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    assert Path(nginx).exists(), "nginx is not installed: run .ci/setup"
    a_port, b_port = free_port(), free_port()
    # nginx first: the processes behind it must be told its address (PUBLIC_URL).
    proc, port = start_nginx(nginx, tmp_path, a_port, b_port)
    public = f"http://127.0.0.1:{port}"
    env = base_env(tmp_path / "var", MONGO_URL=mongo_url, MONGO_DB=f"t{uuid.uuid4().hex[:12]}", AMQP_URL=amqp_url,
                   COOKIE_SECRET="nginx-" + uuid.uuid4().hex, SANDBOX="1", PUBLIC_URL=public,
                   TRUSTED_PROXIES="127.0.0.1")
    a, b = ServerProcess(env, port=a_port), ServerProcess(env, port=b_port)
    try:
        a.start()
        b.start()
        wait_http(public + "/healthz", within=20)  # through nginx
        yield public, a, b
    finally:
        proc.send_signal(signal.SIGQUIT)
        proc.wait(15)
        for server in (a, b):
            if server.proc is not None and server.proc.poll() is None:
                server.stop()


@pytest.mark.gen_test(timeout=90)
async def test_paid_reaches_the_page_through_nginx_whoever_took_the_notify(
        cluster: tuple[str, ServerProcess, ServerProcess]) -> None:
    public, a, b = cluster
    shopper = await Shopper.logged_in(public, "demo", "demo-pass-123")
    try:
        for direct in (a, b, a, b):  # the notify lands on each process in turn
            order = await shopper.order([("fan-silk", 1)])
            sock = await PageSocket.open(public, order["id"], shopper)
            assert (await sock.next_event())["status"] == "unpaid"
            _, reply = await post_notify(direct.base_url, signed_notify(order))
            assert reply["return_code"] == "SUCCESS"
            assert (await sock.next_event())["type"] == "paid"
            sock.close()
    finally:
        await shopper.close()


@pytest.mark.gen_test(timeout=90)
async def test_sigterm_moves_the_page_to_the_other_process_without_a_missed_event(
        cluster: tuple[str, ServerProcess, ServerProcess]) -> None:
    public, a, b = cluster
    loop = asyncio.get_running_loop()
    shopper = await Shopper.logged_in(public, "demo", "demo-pass-123")
    try:
        order = await shopper.order([("mug-celadon", 1)])
        sock = await PageSocket.open(public, order["id"], shopper)
        assert (await sock.next_event())["status"] == "unpaid"
        holder = a if await loop.run_in_executor(None, open_sockets, a) == 1 else b
        other = b if holder is a else a
        assert await loop.run_in_executor(None, open_sockets, other) == 0

        holder.send(signal.SIGTERM)
        assert await sock.next() is None and sock.close_code == 1001
        # The payment lands while the page is between sockets, through nginx.
        _, reply = await post_notify(public, signed_notify(order))
        assert reply["return_code"] == "SUCCESS"
        # The page reconnects through nginx; only the other process answers.
        again = await PageSocket.open(public, order["id"], shopper)
        assert await again.next() == {"type": "status", "order_id": order["id"], "status": "paid",
                                      "total_fee": 3900}
        assert await loop.run_in_executor(None, holder.stop) == 0
        assert "Traceback" not in holder.output
    finally:
        await shopper.close()

"""deploy/nginx.conf for real: nginx from Debian in front of paypush processes,
one upstream server per process as the file lists them. A page's socket gets
its "paid" whichever process took the notify, and a SIGTERM to its process
sends it to the others without a missed event."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import signal
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from server.composition.serving import STOP_SECONDS
from server.infra.embedded_mongo import free_port
from tests.support.metrics import sample
from tests.support.notify_client import post_notify, signed_notify
from tests.support.processes import ROOT, ServerProcess, base_env, wait_http
from tests.support.shopper import Shopper
from tests.support.sockets import PageSocket
from tests.support.waiting import eventually, eventually_blocking

# A run of `server paypushN:8888 ...;` lines: one upstream's processes.
SERVER_RUN = re.compile(r"(?:^[ \t]*server paypush\d+:8888\b[^;\n]*;\n)+", re.M)
SERVER_LINE = re.compile(r"([ \t]*)server paypush\d+:8888\b([^;\n]*);")


def open_sockets(server: ServerProcess) -> int:
    with urllib.request.urlopen(server.base_url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return int(sample(text, "paypush_open_sockets"))


def replaced(conf: str, old: str, new: str) -> str:
    """``conf`` with ``old`` replaced, which must be there: a change to
    deploy/nginx.conf that this test no longer matches fails here, not later."""
    assert old in conf, f"deploy/nginx.conf has no {old!r} to substitute"
    return conf.replace(old, new)


def with_servers(conf: str, ports: list[int]) -> str:
    """Each upstream's server lines replaced by one per test process, with the
    parameters deploy/nginx.conf gives its processes (the same for each)."""
    def one_per_port(run: re.Match[str]) -> str:
        lines = run.group(0).splitlines()
        found = [match.groups() for line in lines if (match := SERVER_LINE.match(line))]
        assert len(found) == len(lines) and len({params for _, params in found}) == 1, \
            f"an upstream's servers differ in parameters: {run.group(0)}"
        indent, params = found[0]
        return "".join(f"{indent}server 127.0.0.1:{port}{params};\n" for port in ports)

    conf, upstreams = SERVER_RUN.subn(one_per_port, conf)
    assert upstreams == 2, f"expected the sockets' and the requests' upstreams, found {upstreams}"
    return conf


def nginx_conf(tmp_path: Path, port: int, ports: list[int]) -> Path:
    conf = with_servers((ROOT / "deploy" / "nginx.conf").read_text(), ports)
    conf = replaced(conf, "listen 80 ", f"listen 127.0.0.1:{port} ")
    # Two workers (this machine has two cores): reuseport's queue per worker is in play.
    conf, found = re.subn(r"^worker_processes \d+;", "worker_processes 2;", conf, count=1, flags=re.M)
    assert found, "deploy/nginx.conf has no worker_processes to substitute"
    conf = (f"daemon off;\npid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/nginx-error.log;\n" + conf)
    conf = replaced(conf, "http {", f"http {{\n    access_log off;\n    client_body_temp_path {tmp_path}/body;\n"
                                    f"    proxy_temp_path {tmp_path}/proxy;")
    path = tmp_path / "nginx.conf"
    path.write_text(conf)
    return path


def start_nginx(nginx: str, tmp_path: Path, ports: list[int]) -> tuple[subprocess.Popen[bytes], int]:
    """nginx listening on a port of its own. Other test runs share this machine:
    a free port can be taken before nginx binds it, and then nginx exits and
    whoever took it answers instead; so nginx is known to listen only once it
    wrote its pid file (after the bind), and another port is tried otherwise."""
    pid_file = tmp_path / "nginx.pid"
    for _ in range(3):
        port = free_port()
        conf = nginx_conf(tmp_path, port, ports)
        proc = subprocess.Popen([nginx, "-c", str(conf), "-p", str(tmp_path)])
        eventually_blocking(lambda: proc.poll() is not None or pid_file.exists(), within=20,  # noqa: B023
                            message="nginx bound its port (pid file written) or exited")
        if proc.poll() is None:
            return proc, port
    raise AssertionError(f"nginx could not listen: {(tmp_path / 'nginx-error.log').read_text()}")


@contextlib.contextmanager
def nginx_cluster(tmp_path: Path, mongo_url: str, amqp_url: str, count: int,
                  **env: str) -> Iterator[tuple[str, list[ServerProcess]]]:
    """nginx with deploy/nginx.conf in front of ``count`` paypush processes, each on its own port."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    assert Path(nginx).exists(), "nginx is not installed: run .ci/setup"
    ports = [free_port() for _ in range(count)]
    # nginx first: the processes behind it must be told its address (PUBLIC_URL).
    proc, port = start_nginx(nginx, tmp_path, ports)
    public = f"http://127.0.0.1:{port}"
    environ = base_env(tmp_path / "var", MONGO_URL=mongo_url, MONGO_DB=f"t{uuid.uuid4().hex[:12]}",
                       AMQP_URL=amqp_url, COOKIE_SECRET="nginx-" + uuid.uuid4().hex, SANDBOX="1",
                       PUBLIC_URL=public, TRUSTED_PROXIES="127.0.0.1", **env)
    servers = [ServerProcess(environ, port=p) for p in ports]
    try:
        for server in servers:
            server.start()
        wait_http(public + "/healthz", within=20)  # through nginx
        yield public, servers
    finally:
        proc.send_signal(signal.SIGQUIT)
        proc.wait(15)
        for server in servers:
            if server.proc is not None and server.proc.poll() is None:
                server.stop()


@pytest.fixture
def cluster(tmp_path: Path, mongo_url: str, amqp_url: str) -> Iterator[tuple[str, ServerProcess, ServerProcess]]:
    with nginx_cluster(tmp_path, mongo_url, amqp_url, 2) as (public, (a, b)):
        yield public, a, b


def number(text: str, pattern: str) -> int:
    match = re.search(pattern, text, re.M)
    assert match, f"no {pattern!r}"
    return int(match.group(1))


def test_the_deploy_files_hold_100k_pages_under_20000_files_a_process() -> None:
    """The sizing the deploy files explain, added up: nginx's workers, the
    processes behind it, and the limits each is given, agree with each other."""
    pages, files = 100_000, 20_000
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    workers = number(conf, r"^worker_processes (\d+);")
    rlimit = number(conf, r"^worker_rlimit_nofile (\d+);")
    connections = number(conf, r"^\s*worker_connections (\d+);")
    assert rlimit <= files and connections < rlimit  # a worker's logs and listeners need files too
    assert workers * connections >= 2 * pages  # a page is two connections (browser, paypush) in one worker
    assert re.search(r"^\s*listen 80 reuseport\b", conf, re.M), "pages spread evenly over the workers"
    sockets, requests = (re.findall(r"server (paypush\d+):8888", run) for run in SERVER_RUN.findall(conf))
    assert sockets == requests
    max_conns = number(conf, r"server paypush1:8888 .*max_conns=(\d+)")
    assert max_conns < files and (len(sockets) - 1) * max_conns >= pages  # one process may be restarting

    compose = (ROOT / "deploy" / "docker-compose.yml").read_text()
    assert re.findall(r"^  (paypush\d+): \*paypush$", compose, re.M) == sockets
    assert compose.count(f"nofile: {{soft: {files}, hard: {files}}}") == 3  # paypush, RabbitMQ, nginx
    unit = (ROOT / "deploy" / "paypush@.service").read_text()
    assert number(unit, r"^LimitNOFILE=(\d+)$") == files
    assert number(unit, r"^TimeoutStopSec=(\d+)$") > STOP_SECONDS
    assert number(compose, r"stop_grace_period: (\d+)s") > STOP_SECONDS
    assert len(sockets) <= 9, "paypush@.service numbers ports 888N"


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


PAGES = 30


@dataclass
class Page:
    """A waiting pay page that, like the real one, opens a new socket (through
    nginx) whenever its socket closes, and waits until it reads "paid"."""

    order: dict[str, Any]
    sock: PageSocket
    closes: list[int | None] = field(default_factory=list)

    async def wait_until_paid(self, public: str, shopper: Shopper) -> None:
        while True:
            event = await self.sock.next(within=60)
            if event is None:
                self.closes.append(self.sock.close_code)
                self.sock = await PageSocket.open(public, self.order["id"], shopper)  # first try: nginx picks
            elif event["status"] == "paid":
                return


@pytest.fixture
def trio(tmp_path: Path, mongo_url: str, amqp_url: str) -> Iterator[tuple[str, list[ServerProcess]]]:
    # One shopper stands in for many: its pages and unpaid orders are not what is limited here.
    with nginx_cluster(tmp_path, mongo_url, amqp_url, 3, MAX_SOCKETS_PER_USER=str(2 * PAGES),
                       MAX_UNPAID_ORDERS_PER_USER=str(2 * PAGES)) as cluster:
        yield cluster


@pytest.mark.gen_test(timeout=120)
async def test_sigterm_to_one_of_three_moves_its_pages_and_none_misses_its_payment(
        trio: tuple[str, list[ServerProcess]]) -> None:
    public, servers = trio
    loop = asyncio.get_running_loop()
    shopper = await Shopper.logged_in(public, "demo", "demo-pass-123")
    pages: list[Page] = []
    followers: list[asyncio.Task[None]] = []
    try:
        for _ in range(PAGES):
            order = await shopper.order([("tea-longjing", 1)])
            sock = await PageSocket.open(public, order["id"], shopper)
            assert (await sock.next_event())["status"] == "unpaid"
            pages.append(Page(order, sock))
        # A page is subscribed before it hears its first status, so these are exact.
        held = [await loop.run_in_executor(None, open_sockets, s) for s in servers]
        assert sum(held) == PAGES
        assert max(held) - min(held) <= 1, f"nginx spreads the pages evenly over the processes: {held}"
        victim, survivors = servers[0], servers[1:]

        followers = [asyncio.create_task(page.wait_until_paid(public, shopper)) for page in pages]

        def progress() -> tuple[int, int]:
            """(pages whose socket closed, pages that read paid); a follower that
            failed fails the test here, with its error."""
            for task in followers:
                if task.done():
                    task.result()
            return sum(1 for page in pages if page.closes), sum(task.done() for task in followers)

        victim.send(signal.SIGTERM)
        await eventually(lambda: progress()[0] == held[0], within=30,
                         message=f"the stopping process's {held[0]} pages saw their sockets close")
        # Every payment lands now, through nginx, while the victim's pages are
        # reconnecting and the victim may still be finishing its stop.
        replies = await asyncio.gather(*(post_notify(public, signed_notify(page.order)) for page in pages))
        assert [reply["return_code"] for _, reply in replies] == ["SUCCESS"] * PAGES
        await eventually(lambda: progress()[1] == PAGES, within=60, message=f"all {PAGES} pages read paid")
        # Exactly the victim's pages moved, each once and with 1001: a page's
        # new socket never landed on the process that was stopping.
        assert sorted(tuple(page.closes) for page in pages) == [()] * (PAGES - held[0]) + [(1001,)] * held[0]
        assert sum([await loop.run_in_executor(None, open_sockets, s) for s in survivors]) == PAGES
        assert await loop.run_in_executor(None, victim.stop) == 0
        assert "Traceback" not in victim.output
    finally:
        for task in followers:
            task.cancel()
        for page in pages:
            page.sock.close()
        await shopper.close()

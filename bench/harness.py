"""What every benchmark needs: the stack running as separate processes, seeded
orders, signed cookies and notifies, and a place for results.

The stack is the real thing: nx-27017 (embedded MongoDB), RabbitMQ on
localhost, the WeChat Pay simulator as its own process, and ``paypush serve``
as its own process, so client load never shares a Python interpreter with it.
"""

from __future__ import annotations

import json
import os
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pymongo import MongoClient
from tornado.web import create_signed_value

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import settings as settings_mod  # noqa: E402
from server.gateway.wxpay_v2 import signing, xmlcodec  # noqa: E402
from server.infra.embedded_mongo import EmbeddedMongo, free_port  # noqa: E402
from server.simulator import trades as sim_trades  # noqa: E402
from server.simulator import v3_messages as sim_v3  # noqa: E402
from server.simulator.v3_keys import PUB_KEY_ID_FILE, PUBLIC_KEY_MODE, V3Keys, generate_sandbox_keys  # noqa: E402

# run_all.py --quick points this elsewhere, so a smoke run never overwrites the
# full-size results that BENCHMARKS.md quotes.
RESULTS = Path(os.environ.get("PAYPUSH_BENCH_RESULTS") or ROOT / "bench" / "results")
COOKIE_SECRET = "bench-cookie-secret-" + "x" * 24
BENCH_USER = "bench"
FD_LIMIT = 20000


def raise_fd_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_sample(groups: dict[str, list[int]]) -> tuple[float, dict[str, float]]:
    """When, each group's CPU seconds so far, and the whole machine's (``machine``)."""
    per = {name: sum(cpu_seconds(pid) for pid in pids) for name, pids in groups.items()}
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    per["machine"] = (sum(int(f) for f in fields) - int(fields[3]) - int(fields[4])) / os.sysconf("SC_CLK_TCK")
    return time.monotonic(), per


def cores_since(start: tuple[float, dict[str, float]], groups: dict[str, list[int]]) -> dict[str, float]:
    """Cores each group used since ``start`` (a ``cpu_sample``)."""
    at, before = start
    now, after = cpu_sample(groups)
    return {name: round((after[name] - before[name]) / (now - at), 3) for name in before}


def rabbitmq_pid() -> int:
    out = subprocess.run(["pgrep", "-f", "beam.smp"], capture_output=True, text=True, timeout=10).stdout
    return int(out.split()[0])


def rabbitmq_memory_kib() -> int:
    """Total memory RabbitMQ reports (``rabbitmqctl status``), in KiB."""
    out = subprocess.run(["rabbitmqctl", "status", "--formatter", "json"], capture_output=True,
                         text=True, check=True, timeout=60).stdout
    return int(json.loads(out)["memory"]["total"]["erlang"]) // 1024


def rabbitmq_socket_limit() -> int:
    out = subprocess.run(["rabbitmqctl", "status", "--formatter", "json"], capture_output=True,
                         text=True, check=True, timeout=60).stdout
    return int(json.loads(out)["file_descriptors"]["sockets_limit"])


def ensure_rabbitmq_sockets(needed: int) -> None:
    """RabbitMQ started the usual way (``su rabbitmq`` applies PAM's 1024 open
    files) gets ~830 sockets; 10k STOMP subscribers need more. Restart it once,
    as the rabbitmq user without PAM, keeping this process's hard fd limit."""
    if rabbitmq_socket_limit() >= needed:
        return
    print(f"RabbitMQ allows {rabbitmq_socket_limit()} sockets, {needed} needed: restarting it with "
          f"ulimit -n {FD_LIMIT}", flush=True)
    subprocess.run(["rabbitmqctl", "stop"], capture_output=True, timeout=120)
    subprocess.run(["bash", "-c", f"ulimit -n {FD_LIMIT} && exec setpriv --reuid=rabbitmq --regid=rabbitmq "
                    "--init-groups env HOME=/var/lib/rabbitmq /usr/lib/rabbitmq/bin/rabbitmq-server -detached"],
                   check=True, timeout=60, cwd="/var/lib/rabbitmq")
    deadline = time.monotonic() + 120
    while subprocess.run(["rabbitmqctl", "-q", "await_startup"], capture_output=True, timeout=120).returncode:
        if time.monotonic() > deadline:
            raise RuntimeError("RabbitMQ did not come back")
        time.sleep(1)
    if rabbitmq_socket_limit() < needed:
        raise RuntimeError(f"RabbitMQ still allows only {rabbitmq_socket_limit()} sockets")


def prepare_broker() -> str:
    # The bench opens 10k STOMP pages at once: above the script's default cap.
    env = {**os.environ, "STOMP_MAX_CONNECTIONS": "50000"}
    subprocess.run([str(ROOT / "deploy" / "rabbitmq-setup.sh")], check=True, cwd=ROOT, env=env,
                   capture_output=True, timeout=120)
    return (ROOT / "var" / "stomp_passcode").read_text().strip()


def cookie(user: str = BENCH_USER) -> str:
    return "user=" + create_signed_value(COOKIE_SECRET, "user", user).decode()


def notify_body(order_id: str, total_fee: int) -> bytes:
    fields = {"return_code": "SUCCESS", "appid": settings_mod.SANDBOX_APPID,
              "mch_id": settings_mod.SANDBOX_MCH_ID, "nonce_str": signing.nonce(), "result_code": "SUCCESS",
              "openid": "oBench", "trade_type": "NATIVE", "bank_type": "CMC", "total_fee": str(total_fee),
              "cash_fee": str(total_fee), "fee_type": "CNY", "transaction_id": "42" + secrets.token_hex(14),
              "out_trade_no": order_id, "time_end": time.strftime("%Y%m%d%H%M%S")}
    return xmlcodec.render(signing.signed(fields, settings_mod.SANDBOX_KEY))


def v3_notify(keys: V3Keys, order_id: str, total_fee: int) -> tuple[bytes, dict[str, str]]:
    """A TRANSACTION.SUCCESS v3 notify for ``order_id`` as WeChat POSTs it (body and
    headers: signed, resource AES-GCM encrypted), built by the simulator's code."""
    trade = sim_trades.Trade(out_trade_no=order_id, request={"appid": keys.appid, "total_fee": str(total_fee)},
                             created_at=time.time(), code_url="", prepay_id="", api=sim_trades.V3,
                             state=sim_trades.SUCCESS,
                             transaction_id=time.strftime("4200%Y%m%d") + str(secrets.randbelow(10**18)).zfill(18),
                             time_end=time.strftime("%Y%m%d%H%M%S", time.gmtime(time.time() + 8 * 3600)))
    return sim_v3.notify_message(keys, trade)


def sandbox_v3_keys(server_env: Mapping[str, str], mode: str = PUBLIC_KEY_MODE) -> V3Keys:
    """WeChat's side of the v3 keys a sandbox server started with ``server_env``
    generated under its VAR_DIR, found as that server found them: its settings.
    Public-key mode by default: the server holds that key from start-up, while a
    platform certificate it would first fetch (and refuse the notifies until then)."""
    settings = settings_mod.from_environ(server_env)
    directory = settings.var_dir / "wxpay_v3"
    if not (directory / PUB_KEY_ID_FILE).exists():  # else the call below would make keys of its own
        raise RuntimeError(f"the server made no v3 keys under {directory}")
    files = generate_sandbox_keys(directory, apiv3_key=settings.wxpay_apiv3_key)
    return files.v3_keys(settings.wxpay_mch_id, settings.wxpay_appid, mode)


def gc_pauses(base_url: str) -> dict[str, dict[str, float]]:
    """The server's garbage-collector pauses so far, per generation, from /metrics:
    how many, their total, and how many took over 10 ms."""
    with urllib.request.urlopen(base_url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        if not line.startswith("paypush_gc_pause_seconds"):
            continue
        name_labels, value = line.rsplit(" ", 1)
        gen = name_labels.split('generation="')[1].split('"')[0]
        entry = out.setdefault(gen, {})
        if name_labels.startswith("paypush_gc_pause_seconds_count"):
            entry["count"] = float(value)
        elif name_labels.startswith("paypush_gc_pause_seconds_sum"):
            entry["total_ms"] = float(value) * 1000
        elif 'le="0.01"' in name_labels:
            entry["within_10ms"] = float(value)
    for entry in out.values():
        entry["over_10ms"] = entry.get("count", 0) - entry.pop("within_10ms", 0)
    return out


def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


class Stack:
    """MongoDB, simulator and server, each a process of its own.

    ``api="v3"`` runs the server with ``WXPAY_API=v3`` in sandbox mode: it
    generates the v3 keys under its VAR_DIR and mounts the v3 simulator, which
    it then talks to (the standalone ``paypush simulator`` speaks v2 only, so
    it is not started). ``sandbox_v3_keys(stack.started_env)`` reads the same
    key files, to play WeChat's side of notifies.
    """

    def __init__(self, *, profile: str | None = None, api: str = "v2", code: Path = ROOT, **env: str):
        if api not in ("v2", "v3"):
            raise ValueError(f"api must be v2 or v3, got {api!r}")
        raise_fd_limit()
        self.tmp = Path(tempfile.mkdtemp(prefix="paypush-bench-"))
        self.mongo = EmbeddedMongo(self.tmp / "mongo")
        self.port = free_port()
        self.sim_port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.profile = profile
        self.api = api
        self.extra_env = env
        self.code = code  # the checkout the paypush processes run (another commit's, to compare)
        self.started_env: dict[str, str] = {}
        self.procs: list[subprocess.Popen[bytes]] = []
        self.server: subprocess.Popen[bytes] | None = None
        self.db: Any = None

    def env(self) -> dict[str, str]:
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("WXPAY_", "MONGO_", "SANDBOX"))}
        return {**clean, "VAR_DIR": str(self.tmp / "var"), "COOKIE_SECRET": COOKIE_SECRET,
                "MONGO_URL": self.mongo.url, "MONGO_DB": "bench", "PORT": str(self.port),
                "WXPAY_API_BASE": f"http://127.0.0.1:{self.sim_port}", "SIM_CLOSE_MIN_AGE_SECONDS": "0",
                "MAX_SOCKETS_PER_USER": "100000", "MAX_UNPAID_ORDERS_PER_USER": "1000000", "RECONCILE_AT": "off",
                "STOMP_PASSCODE": prepare_broker(),
                **({"WXPAY_API": "v3", "WXPAY_API_BASE": f"{self.base_url}/sandbox/wxpay"} if self.api == "v3"
                   else {}),
                **self.extra_env}

    def start(self) -> Stack:
        self.mongo.start()
        env = self.started_env = self.env()
        log = open(self.tmp / "server.log", "wb")  # noqa: SIM115 - lives as long as the stack
        if self.api == "v2":
            sim = subprocess.Popen([sys.executable, "-m", "server", "simulator", "--port", str(self.sim_port)],
                                   cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            self.procs.append(sim)
        cmd = [sys.executable, "-m", "server", "serve"]
        if self.profile:
            cmd = [sys.executable, "-m", "cProfile", "-o", self.profile, "-m", "server", "serve"]
        self.server = subprocess.Popen(cmd, cwd=self.code, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(self.server)
        wait_http(self.base_url + "/healthz")
        self.db = MongoClient(self.mongo.url)["bench"]
        self.db.users.update_one({"_id": BENCH_USER}, {"$set": {"password": "x"}}, upsert=True)
        return self

    def add_server(self, port: int | None = None) -> str:
        """One more paypush process on the same MongoDB and RabbitMQ (as behind a
        load balancer); returns its base URL. ``port``: share that one (the
        stack's env then has REUSE_PORT=1)."""
        return self.spawn_server(port)[1]

    def spawn_server(self, port: int | None = None) -> tuple[subprocess.Popen[bytes], str]:
        """``add_server``, also returning the process; it is up once it answers /healthz
        (on a shared port: once its start-up line is in its log)."""
        port = port or free_port()
        log_path = self.tmp / f"server-{port}-{len(self.procs)}.log"
        log = open(log_path, "wb")  # noqa: SIM115 - lives as long as the stack
        proc = subprocess.Popen([sys.executable, "-m", "server", "serve"], cwd=self.code,
                                env={**self.env(), "PORT": str(port)}, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        base_url = f"http://127.0.0.1:{port}"
        if port == self.port:
            deadline = time.monotonic() + 60
            while b"paypush listening" not in log_path.read_bytes():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"paypush did not start: {log_path.read_text()[-2000:]}")
                time.sleep(0.1)
        else:
            wait_http(base_url + "/healthz")
        return proc, base_url

    @property
    def mongo_pid(self) -> int:
        assert self.mongo._proc is not None
        return self.mongo._proc.pid

    @property
    def server_pid(self) -> int:
        assert self.server is not None
        return self.server.pid

    def seed_orders(self, n: int, *, expires_in: float = 3600.0, price: int = 100,
                    skus: int = 0) -> list[tuple[str, int]]:
        """``n`` unpaid orders of the bench user, written straight to MongoDB.

        With ``skus``, each order also holds one item of one of that many SKUs,
        recorded as an order placed through the API records it (``stock_held``
        on the order, the SKU's count taken; server/domain/stock.py), so paying
        it takes the same path as any payment."""
        now = time.time()
        docs: list[dict[str, Any]] = [
            {"_id": time.strftime("%Y%m%d") + secrets.token_hex(12), "user": BENCH_USER,
             "items": [{"sku_id": f"bench-sku-{i % skus}" if skus else "bench-sku", "name": "Bench item",
                        "price": price, "num": 1}],
             "pay_money": price, "status": "unpaid", "created_at": now, "expires_at": now + expires_in,
             **({"stock_v": 2, "stock_held": {f"bench-sku-{i % skus}": 1}} if skus else {})}
            for i in range(n)]
        for i in range(0, n, 1000):
            self.db.orders.insert_many(docs[i:i + 1000])
        for k in range(skus):
            held = len(docs[k::skus])
            self.db.skus.replace_one({"_id": f"bench-sku-{k}"},
                                     {"_id": f"bench-sku-{k}", "name": "Bench item", "price": price,
                                      "stock": 1_000_000 - held}, upsert=True)
        return [(str(d["_id"]), price) for d in docs]

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.mongo.stop()
        if os.environ.get("BENCH_KEEP"):
            print(f"kept {self.tmp} (BENCH_KEEP): server logs and store", file=sys.stderr)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


@contextmanager
def running_stack(**kwargs: Any):  # type: ignore[no-untyped-def]
    stack = Stack(**kwargs)
    try:
        yield stack.start()
    finally:
        stack.stop()


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    ordered = sorted(values)

    def pick(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]

    return {"n": len(ordered), "p50": pick(50), "p95": pick(95), "p99": pick(99), "max": ordered[-1]}


def save(name: str, result: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2))
    return path


def table(rows: list[list[Any]], header: list[str]) -> str:
    cells = [header, *[[f"{c:.2f}" if isinstance(c, float) else str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [" | ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def new_plot(ncols: int = 1):  # type: ignore[no-untyped-def]
    """A figure and axes for a result plot (headless); ``ncols`` side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(1, ncols, figsize=(7 * ncols, 4))


def save_plot(fig, name: str) -> Path:  # type: ignore[no-untyped-def]
    fig.tight_layout()
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.png"
    fig.savefig(path, dpi=110)
    return path

"""Just enough STOMP 1.2 over WebSocket to act as a browser on RabbitMQ's Web STOMP,
and the browser user the project's broker script makes for it."""

from __future__ import annotations

import asyncio
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import tornado.websocket

ROOT = Path(__file__).resolve().parents[2]
SETUP_SCRIPT = ROOT / "deploy" / "rabbitmq-setup.sh"
WEB_STOMP_URL = "ws://127.0.0.1:15674/ws"


@dataclass(frozen=True)
class BrowserUser:
    """A STOMP browser user as deploy/rabbitmq-setup.sh left it, with the limits it was given."""

    login: str
    passcode: str
    vhost: str
    max_connections: int
    max_channels: int
    queue_expires_ms: int
    queue_max_length: int

    @property
    def amqp_url(self) -> str:
        """The same credentials over AMQP on 5672, as an attacker would use them."""
        return (f"amqp://{quote(self.login, safe='')}:{quote(self.passcode, safe='')}"
                f"@127.0.0.1:5672/{quote(self.vhost, safe='')}")

    def setup_env(self, amqp_url: str) -> dict[str, str]:
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(("STOMP_", "RABBITMQ_VHOST"))}
        return {**inherited, "AMQP_URL": amqp_url, "STOMP_LOGIN": self.login, "STOMP_PASSCODE": self.passcode,
                "STOMP_MAX_CONNECTIONS": str(self.max_connections), "STOMP_MAX_CHANNELS": str(self.max_channels),
                "STOMP_QUEUE_EXPIRES_MS": str(self.queue_expires_ms),
                "STOMP_QUEUE_MAX_LENGTH": str(self.queue_max_length)}


def run_setup(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run the project's broker script (idempotent) as an operator would."""
    return subprocess.run([str(SETUP_SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def prepare_broker(user: BrowserUser, amqp_url: str) -> BrowserUser:
    """Make ``user`` on ``amqp_url``'s vhost (the script derives the vhost from AMQP_URL)."""
    done = run_setup(user.setup_env(amqp_url))
    assert done.returncode == 0, done.stderr
    return user


def frame(command: str, headers: dict[str, str], body: str = "") -> str:
    lines = [command, *(f"{k}:{v}" for k, v in headers.items()), "", body]
    return "\n".join(lines) + "\x00"


def parse(raw: str) -> tuple[str, dict[str, str], str]:
    head, _, body = raw.partition("\n\n")
    lines = head.lstrip("\n").split("\n")
    headers = dict(line.split(":", 1) for line in lines[1:] if ":" in line)
    return lines[0], headers, body.split("\x00", 1)[0]


class StompSession:
    def __init__(self, conn: tornado.websocket.WebSocketClientConnection):
        self.conn = conn

    @classmethod
    async def connect(cls, login: str, passcode: str, host: str, url: str = WEB_STOMP_URL) -> StompSession:
        """CONNECT as a page does; ConnectionError if the broker refuses."""
        conn = await tornado.websocket.websocket_connect(url, subprotocols=["v12.stomp"])
        session = cls(conn)
        await conn.write_message(frame("CONNECT", {"accept-version": "1.2", "host": host,
                                                   "login": login, "passcode": passcode,
                                                   "heart-beat": "0,0"}))
        command, headers, body = await session.receive()
        if command != "CONNECTED":
            session.close()
            raise ConnectionError(f"{command}: {headers.get('message', '')} {body}")
        return session

    @classmethod
    async def as_user(cls, user: BrowserUser) -> StompSession:
        return await cls.connect(user.login, user.passcode, user.vhost)

    async def send(self, command: str, headers: dict[str, str], body: str = "") -> None:
        await self.conn.write_message(frame(command, headers, body))

    async def subscribe(self, destination: str) -> tuple[str, dict[str, str], str]:
        """SUBSCRIBE with a receipt; the broker's answer (RECEIPT, ERROR, or CLOSED)."""
        await self.send("SUBSCRIBE", {"id": "sub-0", "destination": destination, "receipt": "subscribed"})
        return await self.receive()

    async def receive(self, within: float = 5.0) -> tuple[str, dict[str, str], str]:
        while True:
            raw = await asyncio.wait_for(self.conn.read_message(), within)
            if raw is None:
                return "CLOSED", {}, ""
            if isinstance(raw, bytes):
                raw = raw.decode("utf-8")
            if raw.strip("\n"):  # skip heart-beats
                return parse(raw)

    def close(self) -> None:
        self.conn.close()

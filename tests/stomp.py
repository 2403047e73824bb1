"""Just enough STOMP 1.2 over WebSocket to act as a browser on RabbitMQ's Web STOMP."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import tornado.websocket

ROOT = Path(__file__).resolve().parent.parent
WEB_STOMP_URL = "ws://127.0.0.1:15674/ws"


def prepare_broker() -> str:
    """Run the project's broker setup (idempotent) and return webguest's passcode."""
    subprocess.run([str(ROOT / "deploy" / "rabbitmq-setup.sh")], check=True, cwd=ROOT,
                   capture_output=True, timeout=120)
    return (ROOT / "var" / "stomp_passcode").read_text().strip()


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
    async def connect(cls, login: str, passcode: str) -> StompSession:
        conn = await tornado.websocket.websocket_connect(WEB_STOMP_URL, subprotocols=["v12.stomp"])
        session = cls(conn)
        await conn.write_message(frame("CONNECT", {"accept-version": "1.2", "host": "/",
                                                   "login": login, "passcode": passcode,
                                                   "heart-beat": "0,0"}))
        command, headers, body = await session.receive()
        if command != "CONNECTED":
            raise ConnectionError(f"{command}: {headers.get('message', '')} {body}")
        return session

    async def send(self, command: str, headers: dict[str, str], body: str = "") -> None:
        await self.conn.write_message(frame(command, headers, body))

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

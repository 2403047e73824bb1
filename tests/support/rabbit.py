"""Cutting RabbitMQ connections the way an outage would, on a shared broker:
only this test run's own (those on its vhost), never ``--global``."""

from __future__ import annotations

import subprocess
from urllib.parse import unquote, urlsplit


def vhost_of(amqp_url: str) -> str:
    return unquote(urlsplit(amqp_url).path[1:]) or "/"


def close_connections_on(vhost: str, reason: str = "paypush test: connection dropped") -> int:
    """Close every client connection to ``vhost``; returns how many were closed."""
    listed = subprocess.run(["rabbitmqctl", "-q", "list_connections", "pid", "vhost"],
                            check=True, capture_output=True, text=True, timeout=60).stdout
    pids = [pid for pid, _, name in (line.partition("\t") for line in listed.splitlines()) if name == vhost]
    closed = 0
    for pid in pids:
        # A connection may have gone by itself since it was listed: not counted.
        done = subprocess.run(["rabbitmqctl", "-q", "close_connection", pid, reason],
                              capture_output=True, timeout=60)
        closed += done.returncode == 0
    return closed

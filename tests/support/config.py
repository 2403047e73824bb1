"""The settings a test's in-process paypush runs with: this run's broker
vhost, a database and VAR_DIR of the test's own, a fast simulator, and no
daily reconciliation (a test that wants one runs it)."""

from __future__ import annotations

import uuid
from pathlib import Path

import settings as settings_mod


def sandbox_settings(http_port: int, tmp_path: Path, amqp_url: str, api: str = "v2",
                      **env: str) -> settings_mod.Settings:
    return settings_mod.from_environ({
        "WXPAY_API": api,
        "AMQP_URL": amqp_url,
        "PORT": str(http_port),
        "VAR_DIR": str(tmp_path / "var"),
        "MONGO_DB": f"t{uuid.uuid4().hex[:12]}",
        "SIM_NOTIFY_SPEED": "1000",
        "RECONCILE_AT": "off",
        **env,
    })

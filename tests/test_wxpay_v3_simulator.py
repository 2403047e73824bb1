"""The WeChat Pay v3 face of the simulator, checked by a client no one here wrote.

``wechatpayv3`` (PyPI, a test dependency only) places, queries and closes Native
orders against the simulator over real HTTP, in public-key mode and in
platform-certificate mode, and parses the simulator's notifies with its own
callback code. The simulator shares no crypto with paypush's v3 client.
"""

from __future__ import annotations

import stat
from pathlib import Path

from wechatpayv3.utils import load_certificate, load_private_key

from server.simulator.v3_keys import generate_sandbox_keys


def test_sandbox_keys_are_made_once_private_and_consistent(tmp_path: Path) -> None:
    first = generate_sandbox_keys(tmp_path / "keys")
    again = generate_sandbox_keys(tmp_path / "keys")
    assert again == first  # reused, not regenerated
    for path in first.directory.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert len(first.apiv3_key) == 32 and first.apiv3_key.isascii()
    assert first.public_key_id.startswith("PUB_KEY_ID_")
    # The merchant's files as a third party reads them: its key is the certificate's.
    key = load_private_key(first.merchant_private_key.read_text())
    cert = load_certificate(first.merchant_certificate.read_text())
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()
    assert int(first.merchant_serial, 16) == cert.serial_number and len(first.merchant_serial) == 40
    platform = load_certificate(first.platform_certificate.read_text())
    assert int(first.platform_serial, 16) == platform.serial_number != cert.serial_number


def test_sandbox_keys_take_the_apiv3_key_settings_made(tmp_path: Path) -> None:
    files = generate_sandbox_keys(tmp_path, apiv3_key="k" * 32)
    assert files.apiv3_key == "k" * 32 and not files.apiv3_key_file.exists()
    assert files.v3_keys("1900000109", "wxd678efh567hg6787").apiv3_key == b"k" * 32

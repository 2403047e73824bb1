"""The TLS side of WeChat Pay v2 calls: WeChat demands the merchant API
certificate (apiclient_cert.pem + apiclient_key.pem) on ``secapi/`` calls such
as refunds -- mutual TLS -- and the server is checked against the system's CAs
or a CA bundle of our choosing (a simulator's, in tests and staging)."""

from __future__ import annotations

import ssl
from dataclasses import dataclass


class TLSSetupError(ValueError):
    """A certificate, key or CA bundle that cannot be used, and why (never its content)."""


@dataclass(frozen=True)
class ClientTLS:
    context: ssl.SSLContext
    presents_certificate: bool  # whether the merchant certificate is loaded (secapi/ calls need it)


def client_tls(cert_path: str = "", key_path: str = "", ca_path: str = "") -> ClientTLS:
    """A client context verifying the server (against ``ca_path``, else the
    system's CAs) and presenting the merchant certificate when both paths are given."""
    if bool(cert_path) != bool(key_path):
        raise TLSSetupError("WXPAY_CERT_PATH and WXPAY_PRIVATE_KEY_PATH go together: "
                            "the certificate is presented with its private key")
    try:
        context = ssl.create_default_context(cafile=ca_path or None)
    except (OSError, ssl.SSLError) as exc:
        raise TLSSetupError(f"WXPAY_CA_PATH {ca_path!r} does not load as a PEM CA bundle ({exc})") from None
    if cert_path:
        try:
            context.load_cert_chain(cert_path, key_path)
        except (OSError, ssl.SSLError) as exc:
            raise TLSSetupError(f"WXPAY_CERT_PATH {cert_path!r} with WXPAY_PRIVATE_KEY_PATH {key_path!r} does not "
                                f"load as a PEM certificate and its unencrypted key ({exc})") from None
    return ClientTLS(context, bool(cert_path))

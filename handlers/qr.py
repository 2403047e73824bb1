"""Server-rendered QR codes as inline SVG (no image requests, no JS library)."""

from __future__ import annotations

import qrcode
import qrcode.image.svg


def svg(data: str) -> str:
    qr = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M, border=2,
                       image_factory=qrcode.image.svg.SvgPathImage)
    qr.add_data(data)
    qr.make(fit=True)
    return qr.make_image().to_string(encoding="unicode")

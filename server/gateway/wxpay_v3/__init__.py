"""WeChat Pay API v3 (JSON over HTTPS, RSA signatures, AES-GCM resources)
behind the payment-gateway seam: crypto.py (the primitives' strings),
verifier.py (which platform key a ``Wechatpay-Serial`` names), client.py (the
calls), gateway.py (the seam)."""

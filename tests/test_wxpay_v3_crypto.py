"""WeChat Pay v3 crypto against published golden vectors (WeChat Pay's own
SDK test suites, cited in tests/support/wxpay_v3_vectors.py) and against
``wechatpayv3`` (PyPI, minibear2021/wechatpayv3), a client no one here wrote.

The vectors vouch for the primitives and the exact bytes signed; wechatpayv3
vouches for the header format and that what we sign it verifies (and back).
"""

from __future__ import annotations

import json
import re

import pytest
from wechatpayv3 import utils as peer  # type: ignore[import-untyped]

from server.gateway.wxpay_v3 import crypto
from tests.support import wxpay_v3_vectors as v


def test_sha256withrsa_signs_the_go_sdk_vector() -> None:
    key = crypto.load_private_key(v.GO_PRIVATE_KEY)
    assert crypto.sign(key, v.GO_SIGN_MESSAGE) == v.GO_SIGNATURE


def test_sha256withrsa_signs_the_java_sdk_vector() -> None:
    key = crypto.load_private_key(v.JAVA_MERCHANT_PRIVATE_KEY)
    assert crypto.sign(key, v.JAVA_SIGN_MESSAGE) == v.JAVA_SIGNATURE


def test_the_request_string_is_the_java_sdks() -> None:
    assert crypto.request_message(v.JAVA_REQUEST_METHOD, v.JAVA_REQUEST_URL, v.JAVA_REQUEST_TIMESTAMP,
                                  v.JAVA_REQUEST_NONCE, "") == v.JAVA_REQUEST_MESSAGE


def test_the_notify_string_is_the_go_sdks_byte_for_byte() -> None:
    """The Go notify's platform certificate holds the Go test key's public key
    and PKCS#1 v1.5 is deterministic: signing our ``timestamp\\nnonce\\nbody\\n``
    with that key must give the very signature WeChat's SDK test received."""
    h = v.GO_NOTIFY_HEADERS
    key = crypto.load_private_key(v.GO_PRIVATE_KEY)
    message = crypto.response_message(h["Wechatpay-Timestamp"], h["Wechatpay-Nonce"], v.GO_NOTIFY_BODY)
    assert crypto.sign(key, message) == h["Wechatpay-Signature"]


def test_verify_accepts_the_go_sdk_notify_over_its_raw_body() -> None:
    h = v.GO_NOTIFY_HEADERS
    cert = crypto.load_certificate(v.GO_NOTIFY_CERTIFICATE)
    assert crypto.certificate_serial(cert) == h["Wechatpay-Serial"]
    key = crypto.certificate_public_key(cert)
    assert crypto.verify(key, h["Wechatpay-Timestamp"], h["Wechatpay-Nonce"], v.GO_NOTIFY_BODY,
                         h["Wechatpay-Signature"])
    assert crypto.verify(key, h["Wechatpay-Timestamp"], h["Wechatpay-Nonce"], v.GO_NOTIFY_BODY.decode(),
                         h["Wechatpay-Signature"])


@pytest.mark.parametrize("change", ["reserialised", "one byte", "timestamp", "nonce", "signtest", "garbage"])
def test_verify_refuses_anything_but_the_signed_bytes(change: str) -> None:
    h = dict(v.GO_NOTIFY_HEADERS)
    body = v.GO_NOTIFY_BODY
    if change == "reserialised":  # same JSON, other bytes (ensure_ascii escapes the Chinese summary)
        body = json.dumps(json.loads(body), separators=(",", ":")).encode()
        assert json.loads(body) == json.loads(v.GO_NOTIFY_BODY) and body != v.GO_NOTIFY_BODY
    elif change == "one byte":
        body = body.replace(b"3119dfba", b"3119dfbb")
    elif change == "timestamp":
        h["Wechatpay-Timestamp"] = str(int(h["Wechatpay-Timestamp"]) + 1)
    elif change == "nonce":
        h["Wechatpay-Nonce"] = h["Wechatpay-Nonce"].lower()
    elif change == "signtest":
        h["Wechatpay-Signature"] = crypto.SIGNTEST_PREFIX + h["Wechatpay-Signature"]
    else:
        h["Wechatpay-Signature"] = "not base64 at all!"
    key = crypto.certificate_public_key(crypto.load_certificate(v.GO_NOTIFY_CERTIFICATE))
    assert not crypto.verify(key, h["Wechatpay-Timestamp"], h["Wechatpay-Nonce"], body, h["Wechatpay-Signature"])


def test_the_go_notify_resource_decrypts() -> None:
    resource = json.loads(v.GO_NOTIFY_BODY)["resource"]
    plain = crypto.decrypt_resource(v.GO_NOTIFY_APIV3_KEY, resource["nonce"], resource["associated_data"],
                                    resource["ciphertext"])
    assert plain == v.GO_NOTIFY_PLAINTEXT


def test_aes_gcm_decrypts_the_go_sdk_vector_and_refuses_its_bad_cases() -> None:
    assert crypto.decrypt_resource(v.GO_AES_KEY, v.GO_AES_NONCE, v.GO_AES_ASSOCIATED_DATA,
                                   v.GO_AES_CIPHERTEXT) == v.GO_AES_PLAINTEXT
    # The Go test's failing cases: wrong key, not base64, not a ciphertext of this key, not an AES key.
    for key, ct in ((b"testAPIv3Key1111", v.GO_AES_CIPHERTEXT), (v.GO_AES_KEY, "invalid cipher"),
                    (v.GO_AES_KEY, "SGVsbG8gV29ybGQK"), (b"not a aes key", v.GO_AES_CIPHERTEXT)):
        with pytest.raises(crypto.DecryptError):
            crypto.decrypt_resource(key, v.GO_AES_NONCE, v.GO_AES_ASSOCIATED_DATA, ct)
    with pytest.raises(crypto.DecryptError):  # the associated data is authenticated too
        crypto.decrypt_resource(v.GO_AES_KEY, v.GO_AES_NONCE, "other", v.GO_AES_CIPHERTEXT)


def test_aes_256_gcm_decrypts_the_java_sdk_vector() -> None:
    assert crypto.decrypt_resource(crypto.apiv3_key(v.JAVA_APIV3_KEY), v.JAVA_AES_NONCE,
                                   v.JAVA_AES_ASSOCIATED_DATA, v.JAVA_AES_CIPHERTEXT) == v.JAVA_AES_PLAINTEXT


def test_a_downloaded_platform_certificate_decrypts_to_its_listed_serial() -> None:
    pem = crypto.decrypt_resource(crypto.apiv3_key(v.JAVA_APIV3_KEY), v.JAVA_DOWNLOADED_NONCE,
                                  v.JAVA_DOWNLOADED_ASSOCIATED_DATA, v.JAVA_DOWNLOADED_CIPHERTEXT)
    assert crypto.certificate_serial(crypto.load_certificate(pem)) == v.JAVA_DOWNLOADED_SERIAL


def test_serials_are_read_from_certificates_as_wechat_writes_them() -> None:
    assert crypto.certificate_serial(crypto.load_certificate(v.GO_PLATFORM_CERTIFICATE)) == v.GO_PLATFORM_SERIAL
    assert crypto.certificate_serial(crypto.load_certificate(v.JAVA_MERCHANT_CERTIFICATE)) == v.JAVA_MERCHANT_SERIAL


def test_a_certificate_is_checked_against_the_private_key() -> None:
    java_key = crypto.load_private_key(v.JAVA_MERCHANT_PRIVATE_KEY)
    crypto.check_serial_matches(java_key, crypto.load_certificate(v.JAVA_MERCHANT_CERTIFICATE))
    with pytest.raises(crypto.CredentialError, match="not the merchant private key's"):
        crypto.check_serial_matches(java_key, crypto.load_certificate(v.GO_PLATFORM_CERTIFICATE))


def test_loading_errors_are_clear_and_never_echo_the_key() -> None:
    secret = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC"
    with pytest.raises(crypto.CredentialError) as err:
        crypto.load_private_key(f"-----BEGIN PRIVATE KEY-----\n{secret}\n-----END PRIVATE KEY-----\n")
    assert "merchant private key" in str(err.value) and secret not in str(err.value)
    with pytest.raises(crypto.CredentialError, match="public key"):
        crypto.load_public_key(v.GO_PLATFORM_CERTIFICATE)
    with pytest.raises(crypto.CredentialError, match="certificate"):
        crypto.load_certificate(v.GO_PUBLIC_KEY)
    with pytest.raises(crypto.CredentialError, match="32 bytes, got 16"):
        crypto.apiv3_key(v.GO_AES_KEY)
    assert crypto.apiv3_key(v.JAVA_APIV3_KEY.decode()) == v.JAVA_APIV3_KEY


def test_the_public_key_pem_is_the_platform_certificates_key() -> None:
    from_pem = crypto.load_public_key(v.GO_PUBLIC_KEY)
    from_cert = crypto.certificate_public_key(crypto.load_certificate(v.GO_PLATFORM_CERTIFICATE))
    assert from_pem.public_numbers() == from_cert.public_numbers()


# -- wechatpayv3 as a peer ---------------------------------------------------------

_AUTH = re.compile(r'^WECHATPAY2-SHA256-RSA2048 mchid="([^"]*)",nonce_str="([^"]*)",signature="([^"]*)",'
                   r'timestamp="([^"]*)",serial_no="([^"]*)"$')


def test_our_authorization_header_is_wechatpayv3s_exactly() -> None:
    key = crypto.load_private_key(v.JAVA_MERCHANT_PRIVATE_KEY)
    body = json.dumps({"mchid": "1230000109", "description": "商品"}, ensure_ascii=False)
    url = "/v3/pay/transactions/native"
    theirs = peer.build_authorization(url, "POST", "1230000109", v.JAVA_MERCHANT_SERIAL, key, data=body)
    match = _AUTH.match(theirs)
    assert match, theirs
    ours = crypto.authorization("1230000109", v.JAVA_MERCHANT_SERIAL, key, "POST", url, body,
                                timestamp=int(match.group(4)), nonce=match.group(2))
    assert ours == theirs


def test_wechatpayv3_verifies_what_we_sign_and_we_verify_what_it_signs() -> None:
    key = crypto.load_private_key(v.GO_PRIVATE_KEY)
    public = crypto.load_public_key(v.GO_PUBLIC_KEY)
    body = '{"code_url":"weixin://wxpay/bizpayurl/up?pr=NwY5Mz9&groupid=00","说明":"中文"}'
    ours = crypto.sign(key, crypto.response_message("1700000000", "NONCE123", body))
    assert peer.rsa_verify("1700000000", "NONCE123", body, ours, public)
    theirs = peer.rsa_sign(key, "1700000000\nNONCE123\n" + body + "\n")
    assert theirs == ours
    assert crypto.verify(public, "1700000000", "NONCE123", body.encode(), theirs)
    assert not peer.rsa_verify("1700000000", "NONCE124", body, ours, public)


def test_wechatpayv3_decrypts_the_vectors_as_we_do() -> None:
    assert peer.aes_decrypt(v.JAVA_AES_NONCE, v.JAVA_AES_CIPHERTEXT, v.JAVA_AES_ASSOCIATED_DATA,
                            v.JAVA_APIV3_KEY.decode()) == v.JAVA_AES_PLAINTEXT.decode()
    pem = peer.aes_decrypt(v.JAVA_DOWNLOADED_NONCE, v.JAVA_DOWNLOADED_CIPHERTEXT, v.JAVA_DOWNLOADED_ASSOCIATED_DATA,
                           v.JAVA_APIV3_KEY.decode())
    assert pem.encode() == crypto.decrypt_resource(v.JAVA_APIV3_KEY, v.JAVA_DOWNLOADED_NONCE,
                                                   v.JAVA_DOWNLOADED_ASSOCIATED_DATA, v.JAVA_DOWNLOADED_CIPHERTEXT)


def test_nonces_are_32_fresh_characters() -> None:
    nonces = {crypto.nonce_str() for _ in range(50)}
    assert len(nonces) == 50 and all(re.fullmatch(r"[A-Z0-9]{32}", n) for n in nonces)

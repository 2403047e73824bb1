"""WeChat Pay v2 signatures against WeChat's published example, and the XML codec."""

from __future__ import annotations

import pytest

from server.wxpay import signing, xmlcodec

# From WeChat Pay's signature documentation (安全规范).
EXAMPLE = {"appid": "wxd930ea5d5a258f4f", "mch_id": "10000100", "device_info": "1000",
           "body": "test", "nonce_str": "ibuaiVcKdpRxkhJA"}
EXAMPLE_KEY = "192006250b4c09247ec02edce69f6a2d"


def test_string_to_sign_matches_the_documentation() -> None:
    assert signing.string_to_sign(EXAMPLE, EXAMPLE_KEY) == (
        "appid=wxd930ea5d5a258f4f&body=test&device_info=1000&mch_id=10000100"
        "&nonce_str=ibuaiVcKdpRxkhJA&key=192006250b4c09247ec02edce69f6a2d")


def test_md5_example_vector() -> None:
    assert signing.sign(EXAMPLE, EXAMPLE_KEY, "MD5") == "9A0A8659F005D6984697E2CA0A9CF3B7"


def test_hmac_sha256_example_vector() -> None:
    assert signing.sign(EXAMPLE, EXAMPLE_KEY, "HMAC-SHA256") == (
        "6A9AE1657590FD6257D693A078E1C3E4BB6BA4DC30B23E0EE2496E54170DACD6")


def test_empty_values_and_sign_are_left_out() -> None:
    with_noise = {**EXAMPLE, "attach": "", "sign": "WHATEVER"}
    assert signing.sign(with_noise, EXAMPLE_KEY) == "9A0A8659F005D6984697E2CA0A9CF3B7"


@pytest.mark.parametrize("sign_type", ["MD5", "HMAC-SHA256"])
def test_verify_uses_the_messages_own_sign_type(sign_type: str) -> None:
    message = signing.signed(EXAMPLE, EXAMPLE_KEY, sign_type)
    assert signing.verify(message, EXAMPLE_KEY)
    assert not signing.verify(message, "0" * 32)
    assert not signing.verify({**message, "body": "tampered"}, EXAMPLE_KEY)


def test_verify_refuses_a_sign_type_mismatch_and_unknown_types() -> None:
    md5_signed = signing.signed(EXAMPLE, EXAMPLE_KEY, "MD5")
    assert not signing.verify({**md5_signed, "sign_type": "HMAC-SHA256"}, EXAMPLE_KEY)
    assert not signing.verify({**md5_signed, "sign_type": "SHA1"}, EXAMPLE_KEY)
    assert not signing.verify({k: v for k, v in md5_signed.items() if k != "sign"}, EXAMPLE_KEY)


def test_xml_round_trip_with_cdata_breakout_attempt() -> None:
    fields = {"return_code": "SUCCESS", "body": "a]]><evil>1</evil>", "total_fee": "1"}
    assert xmlcodec.parse(xmlcodec.render(fields)) == fields


@pytest.mark.parametrize("body, reason", [
    (b"", "empty"),
    (b"   ", "empty"),
    (b"not xml", "not XML"),
    (b"<xml><a>1</a><a>2</a></xml>", "more than once"),
    (b"<xml><a><b>1</b></a></xml>", "plain text"),
    (b"<root><a>1</a></root>", "root element"),
    (b'<xml><a x="1">1</a></xml>', "plain text"),
    (b'<!DOCTYPE xml [<!ENTITY e "x">]><xml><a>&e;</a></xml>', "DTD"),
    (b'<?xml version="1.0"?><!doctype xml SYSTEM "file:///etc/passwd"><xml/>', "DTD"),
])
def test_parse_refuses(body: bytes, reason: str) -> None:
    with pytest.raises(xmlcodec.MalformedXML, match=reason):
        xmlcodec.parse(body)

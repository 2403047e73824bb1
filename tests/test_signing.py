"""WeChat Pay v2 signatures checked against the world: WeChat's published
example, vectors from public SDK test suites (each cited with repository, path
and commit), and wechatpy as a peer implementation; then which algorithm a
message may use, every forgery we refuse, and the XML codec."""

from __future__ import annotations

import itertools

import pytest

from server.gateway.wxpay_v2 import signing, xmlcodec

# WeChat Pay v2 安全规范 / 签名算法 (pay.weixin.qq.com/wiki/doc/api/native.php?chapter=4_3):
# stringSignTemp = stringA + "&key=192006250b4c09247ec02edce69f6a2d",
# MD5 -> 9A0A8659F005D6984697E2CA0A9CF3B7,
# hash_hmac("sha256", stringSignTemp, key) -> 6A9AE1657590FD6257D693A078E1C3E4BB6BA4DC30B23E0EE2496E54170DACD6.
# The same two values are asserted by binarywang/WxJava
# weixin-java-pay/src/test/java/com/github/binarywang/wxpay/util/SignUtilsTest.java
# @ b4af9efc79564b60623e557ce66cb53aeba7286a.
EXAMPLE = {"appid": "wxd930ea5d5a258f4f", "mch_id": "10000100", "device_info": "1000",
           "body": "test", "nonce_str": "ibuaiVcKdpRxkhJA"}
EXAMPLE_KEY = "192006250b4c09247ec02edce69f6a2d"
EXAMPLE_MD5 = "9A0A8659F005D6984697E2CA0A9CF3B7"
EXAMPLE_HMAC = "6A9AE1657590FD6257D693A078E1C3E4BB6BA4DC30B23E0EE2496E54170DACD6"

MD5, HMAC = signing.MD5, signing.HMAC_SHA256
ANY = signing.SIGN_TYPES


def test_string_to_sign_matches_the_documentation() -> None:
    assert signing.string_to_sign(EXAMPLE, EXAMPLE_KEY) == (
        "appid=wxd930ea5d5a258f4f&body=test&device_info=1000&mch_id=10000100"
        "&nonce_str=ibuaiVcKdpRxkhJA&key=192006250b4c09247ec02edce69f6a2d")


def test_md5_example_vector() -> None:
    assert signing.sign(EXAMPLE, EXAMPLE_KEY, "MD5") == EXAMPLE_MD5


def test_hmac_sha256_example_vector() -> None:
    assert signing.sign(EXAMPLE, EXAMPLE_KEY, "HMAC-SHA256") == EXAMPLE_HMAC


def test_empty_values_and_sign_are_left_out() -> None:
    with_noise = {**EXAMPLE, "attach": "", "sign": "WHATEVER"}
    assert signing.sign(with_noise, EXAMPLE_KEY) == EXAMPLE_MD5


# Vectors from public SDK test suites, all under WeChat's documentation key.
SDK_VECTORS = [
    # wechatpy/wechatpy tests/test_pay.py @ 775aa152e22e879a5b6bbcc2145270b8fca3dcbe
    ({"test1": "test1", "test2": "test2"}, MD5, "1E3A8D73B5A4AEE787C0F68B5DAB8520"),
    # shenghui0779/sdk-go mch/mch_test.go @ 09d160d60147c61c69efda2f1b159228be59df58
    # (TestSignWithMD5 / TestSignWithHMacSHA256: "签名校验来自：微信支付接口签名校验工具",
    # i.e. checked with WeChat's own signature tool)
    ({"appid": "wx2421b1c4370ec43b", "partnerid": "10000100", "prepayid": "WX1217752501201407033233368018",
      "package": "Sign=WXPay", "noncestr": "5K8264ILTKCH16CQ2502SI8ZNMTM67VS", "timestamp": "1514363815"},
     MD5, "66724B3332E124BFC3D62A31A68F7887"),
    ({"appid": "wx2421b1c4370ec43b", "partnerid": "10000100", "prepayid": "WX1217752501201407033233368018",
      "package": "Sign=WXPay", "noncestr": "5K8264ILTKCH16CQ2502SI8ZNMTM67VS", "timestamp": "1514363815"},
     HMAC, "3B12F569A5714858F8251366BC3CBCDDBD249905CCA01D8F56D365EF1FC2CA5C"),
]


@pytest.mark.parametrize("params, sign_type, expected", SDK_VECTORS)
def test_sdk_vectors(params: dict[str, str], sign_type: str, expected: str) -> None:
    assert signing.sign(params, EXAMPLE_KEY, sign_type) == expected


# Whole signed messages as WeChat shapes them -- no sign_type field, the
# algorithm implied by the signature -- from shenghui0779/sdk-go
# @ 09d160d60147c61c69efda2f1b159228be59df58 (mch/order_test.go, mch/mch_test.go).
SIGNED_MESSAGES = {
    # the orderquery answer for a paid trade: a payment result, signed MD5
    "orderquery answer (MD5)": {
        "return_code": "SUCCESS", "return_msg": "OK", "appid": "wx2421b1c4370ec43b", "mch_id": "10000100",
        "device_info": "1000", "nonce_str": "TN55wO9Pba5yENl8", "result_code": "SUCCESS",
        "openid": "oUpF8uN95-Ptaags6E_roPHg7AG0", "is_subscribe": "Y", "trade_type": "APP",
        "bank_type": "CCB_DEBIT", "total_fee": "1", "fee_type": "CNY",
        "transaction_id": "1008450740201411110005820873", "out_trade_no": "1415757673",
        "attach": "订单额外描述", "time_end": "20141111170043", "trade_state": "SUCCESS",
        "sign": "07EACC03ED8DD7F1BAB6BBE1853EF998"},
    "unifiedorder answer (MD5)": {
        "return_code": "SUCCESS", "return_msg": "OK", "appid": "wx2421b1c4370ec43b", "mch_id": "10000100",
        "nonce_str": "IITRi8Iabbblz1Jc", "result_code": "SUCCESS",
        "prepay_id": "wx201411101639507cbf6ffd8b0779950874", "trade_type": "APP",
        "sign": "E515C9BE3D3129764915407267CA0243"},
    # TestDownloadFundFlow: HMAC-SHA256 and no sign_type field
    "downloadfundflow request (HMAC-SHA256)": {
        "appid": "wx2421b1c4370ec43b", "mch_id": "10000100", "bill_date": "20141110",
        "account_type": "Basic", "nonce_str": "21df7dc9cd8616b56919f20d9f679233",
        "sign": "0CFBED32BC688027EDB0A8D817FCF20D6B2DAAC26384A75E6F9A12FD6739CAED"},
    # WeChat's own example, as a message carrying its HMAC-SHA256 sign and no sign_type
    "documentation example (HMAC-SHA256)": {**EXAMPLE, "sign": EXAMPLE_HMAC},
    "documentation example (MD5)": {**EXAMPLE, "sign": EXAMPLE_MD5},
}


@pytest.mark.parametrize("name", list(SIGNED_MESSAGES))
def test_published_messages_verify_without_sign_type(name: str) -> None:
    message = SIGNED_MESSAGES[name]
    assert signing.verify(message, EXAMPLE_KEY, ANY)
    assert not signing.verify(message, "0" * 32, ANY)
    first = next(k for k in message if k != "sign")
    assert not signing.verify({**message, first: message[first] + "x"}, EXAMPLE_KEY, ANY)


# -- which algorithm a message may use ---------------------------------------

def test_accepted_sign_types_never_go_below_the_configured_one() -> None:
    # MD5 merchants also take HMAC-SHA256 (no weaker); HMAC-SHA256 merchants take nothing weaker.
    assert signing.accepted_sign_types(MD5) == (MD5, HMAC)
    assert signing.accepted_sign_types(HMAC) == (HMAC,)
    with pytest.raises(ValueError):
        signing.accepted_sign_types("SHA1")


def _hmac_without_sign_type(params: dict[str, str]) -> dict[str, str]:
    """As WeChat sends the notify of an order placed with HMAC-SHA256 (see
    binarywang/WxJava#1585): a 64-hex sign and no sign_type field."""
    return {**params, "sign": signing.sign(params, EXAMPLE_KEY, HMAC)}


@pytest.mark.parametrize("configured", [MD5, HMAC])
def test_hmac_notify_without_sign_type_is_accepted(configured: str) -> None:
    message = _hmac_without_sign_type(EXAMPLE)
    assert "sign_type" not in message
    assert signing.verify(message, EXAMPLE_KEY, signing.accepted_sign_types(configured))


def test_md5_merchant_accepts_md5_with_or_without_sign_type_and_declared_hmac() -> None:
    accepted = signing.accepted_sign_types(MD5)
    assert signing.verify(signing.signed(EXAMPLE, EXAMPLE_KEY, MD5), EXAMPLE_KEY, accepted)
    declared_md5 = {**EXAMPLE, "sign_type": MD5}
    assert signing.verify({**declared_md5, "sign": signing.sign(declared_md5, EXAMPLE_KEY, MD5)},
                          EXAMPLE_KEY, accepted)
    assert signing.verify(signing.signed(EXAMPLE, EXAMPLE_KEY, HMAC), EXAMPLE_KEY, accepted)


def test_hmac_merchant_refuses_genuine_md5_messages() -> None:
    """No downgrade: a merchant that chose HMAC-SHA256 places every order with it,
    so WeChat signs its notifies with it; an MD5 one is not what WeChat sends it."""
    accepted = signing.accepted_sign_types(HMAC)
    assert not signing.verify(signing.signed(EXAMPLE, EXAMPLE_KEY, MD5), EXAMPLE_KEY, accepted)
    declared_md5 = {**EXAMPLE, "sign_type": MD5}
    assert not signing.verify({**declared_md5, "sign": signing.sign(declared_md5, EXAMPLE_KEY, MD5)},
                              EXAMPLE_KEY, accepted)
    assert signing.verify(signing.signed(EXAMPLE, EXAMPLE_KEY, HMAC), EXAMPLE_KEY, accepted)


def test_the_signature_itself_names_the_algorithm_when_sign_type_is_absent() -> None:
    assert signing.sign_type_of({"sign": "A" * 32}) == MD5
    assert signing.sign_type_of({"sign": "A" * 64}) == HMAC
    assert signing.sign_type_of({"sign": "A" * 33}) is None
    assert signing.sign_type_of({"sign": "A" * 64, "sign_type": MD5}) == MD5
    assert signing.sign_type_of({"sign": "A" * 32, "sign_type": "SHA1"}) is None
    # WeChat's own rule: an empty field takes no part in the signature, so it says nothing
    assert signing.sign_type_of({"sign": "A" * 64, "sign_type": ""}) == HMAC
    # the simulator reads requests as WeChat does: no sign_type means MD5
    assert signing.sign_type_of({"sign": "A" * 64}, default=MD5) == MD5


# -- forgeries ----------------------------------------------------------------

COUPON_NOTIFY = {
    # The shape of a production notify with a coupon (borball/weixin-sdk#38,
    # binarywang/WxJava#250: coupon_fee_0 and coupon_id_0 but no coupon_type_0),
    # re-signed here under the documentation key since the real key is secret.
    "appid": "wxd930ea5d5a258f4f", "attach": "58ec7f141497af0a3d38", "bank_type": "HRBB_DEBIT",
    "cash_fee": "26842", "coupon_count": "1", "coupon_fee": "58", "coupon_fee_0": "58",
    "coupon_id_0": "2000000000276621044", "fee_type": "CNY", "is_subscribe": "Y", "mch_id": "10000100",
    "nonce_str": "CrB7044SHiP3DXgV", "openid": "opa33wOoUVMnrYOOIO2rUDYV2x8I",
    "out_trade_no": "59341bac1497af61be6eb40e947479", "result_code": "SUCCESS", "return_code": "SUCCESS",
    "time_end": "20170604224238", "total_fee": "26900", "trade_type": "JSAPI",
    "transaction_id": "4001952001201706044309990415",
}


def _genuine(sign_type: str, declare: bool) -> dict[str, str]:
    if declare:
        return signing.signed(COUPON_NOTIFY, EXAMPLE_KEY, sign_type) if sign_type == HMAC else \
            signing.signed({**COUPON_NOTIFY, "sign_type": MD5}, EXAMPLE_KEY, MD5)
    return {**COUPON_NOTIFY, "sign": signing.sign(COUPON_NOTIFY, EXAMPLE_KEY, sign_type)}


def _forge(message: dict[str, str], how: str) -> dict[str, str]:
    sign = message["sign"]
    return {
        "wrong key": {**message, "sign": signing.sign(message, "f" * 32, signing.sign_type_of(message) or MD5)},
        "tampered amount": {**message, "total_fee": "1"},
        "tampered coupon fee": {**message, "coupon_fee_0": "5800"},
        "tampered coupon id": {**message, "coupon_id_0": "2000000000276621045"},
        "coupon field removed": {k: v for k, v in message.items() if k != "coupon_id_0"},
        "unsigned field injected": {**message, "coupon_fee_1": "1"},
        "unsigned attach injected": {**message, "device_info": "1000"},
        "sign truncated": {**message, "sign": sign[:-1]},
        "sign extended": {**message, "sign": sign + "0"},
        # an HMAC-SHA256 sign cut to MD5's length, an MD5 one doubled to HMAC-SHA256's
        "sign resized to the other length": {**message, "sign": sign[:32] if len(sign) == 64 else sign * 2},
        "sign empty": {**message, "sign": ""},
        "sign missing": {k: v for k, v in message.items() if k != "sign"},
        "sign not hex": {**message, "sign": "Z" * len(sign)},
        "sign not ASCII": {**message, "sign": "é" * len(sign)},
        "sign_type unknown": {**message, "sign_type": "SHA1"},
        "sign_type lower case": {**message, "sign_type": (message.get("sign_type") or MD5).lower()},
        "sign_type swapped": {**message, "sign_type": HMAC if message.get("sign_type") == MD5 else MD5},
        "sign_type removed": {k: v for k, v in message.items() if k != "sign_type"},
    }[how]


FORGERIES = ["wrong key", "tampered amount", "tampered coupon fee", "tampered coupon id",
             "coupon field removed", "unsigned field injected", "unsigned attach injected",
             "sign truncated", "sign extended", "sign resized to the other length",
             "sign empty", "sign missing", "sign not hex", "sign not ASCII",
             "sign_type unknown", "sign_type lower case", "sign_type swapped"]


@pytest.mark.parametrize("how", FORGERIES)
@pytest.mark.parametrize("sign_type, declare", [(MD5, False), (MD5, True), (HMAC, False), (HMAC, True)])
def test_forgeries_are_refused(sign_type: str, declare: bool, how: str) -> None:
    genuine = _genuine(sign_type, declare)
    assert signing.verify(genuine, EXAMPLE_KEY, ANY)  # the control: the untouched message passes
    assert not signing.verify(_forge(genuine, how), EXAMPLE_KEY, ANY)


@pytest.mark.parametrize("sign_type", [MD5, HMAC])
def test_removing_a_declared_sign_type_breaks_the_signature(sign_type: str) -> None:
    """sign_type is one of the signed fields: stripping it to let the length pick
    the algorithm changes the string WeChat signed."""
    genuine = _genuine(sign_type, declare=True)
    assert not signing.verify(_forge(genuine, "sign_type removed"), EXAMPLE_KEY, ANY)


@pytest.mark.parametrize("sign_type", [MD5, HMAC])
def test_a_ligature_that_upper_cases_to_hex_is_refused(sign_type: str) -> None:
    """U+FB00 (the "ff" ligature) upper-cases to "FF": a sign must be ASCII hex
    before its case is folded, or a non-hex string passes for a genuine sign."""
    for n in itertools.count():
        message = {**COUPON_NOTIFY, "nonce_str": f"ligature{n}"}
        genuine = signing.sign(message, EXAMPLE_KEY, sign_type)
        if "FF" in genuine:
            break
    assert signing.verify({**message, "sign": genuine}, EXAMPLE_KEY, ANY)
    assert not signing.verify({**message, "sign": genuine.replace("FF", "\ufb00", 1)}, EXAMPLE_KEY, ANY)


@pytest.mark.parametrize("sign_type", [MD5, HMAC])
def test_hex_case_of_the_sign_does_not_matter(sign_type: str) -> None:
    """WeChat sends upper-case hex; the lower-case spelling is the same digest,
    which only the key could have produced, so it is not a forgery."""
    genuine = _genuine(sign_type, declare=False)
    assert signing.verify({**genuine, "sign": genuine["sign"].lower()}, EXAMPLE_KEY, ANY)


def test_an_empty_field_takes_no_part_in_the_signature() -> None:
    genuine = _genuine(HMAC, declare=False)
    assert signing.verify({**genuine, "device_info": "", "sign_type": ""}, EXAMPLE_KEY, ANY)


# -- wechatpy as a peer ----------------------------------------------------------

def test_wechatpy_computes_the_same_signatures() -> None:
    from wechatpy.pay import utils
    for params in (EXAMPLE, COUPON_NOTIFY, {**COUPON_NOTIFY, "attach": "支付测试 & =", "device_info": ""}):
        assert signing.sign(params, EXAMPLE_KEY, MD5) == utils.calculate_signature(params, EXAMPLE_KEY)
        assert signing.sign(params, EXAMPLE_KEY, HMAC) == utils.calculate_signature_hmac(params, EXAMPLE_KEY)


def test_notify_signed_by_wechatpy_verifies() -> None:
    from wechatpy.pay import utils
    md5 = {**COUPON_NOTIFY, "sign": utils.calculate_signature(COUPON_NOTIFY, EXAMPLE_KEY)}
    hmac_ = {**COUPON_NOTIFY, "sign": utils.calculate_signature_hmac(COUPON_NOTIFY, EXAMPLE_KEY)}
    assert signing.verify(md5, EXAMPLE_KEY, signing.accepted_sign_types(MD5))
    assert signing.verify(hmac_, EXAMPLE_KEY, signing.accepted_sign_types(HMAC))
    assert not signing.verify(md5, EXAMPLE_KEY, signing.accepted_sign_types(HMAC))


# -- the XML codec ------------------------------------------------------------------

def test_xml_round_trip_with_cdata_breakout_attempt() -> None:
    fields = {"return_code": "SUCCESS", "body": "a]]><evil>1</evil>", "total_fee": "1"}
    assert xmlcodec.parse(xmlcodec.render(fields)) == fields


def test_coupon_fields_pass_the_parser() -> None:
    """Numbered coupon fields are distinct names, not repeats; bare and CDATA values alike."""
    body = (b"<xml><coupon_count>2</coupon_count><coupon_fee>300</coupon_fee>"
            b"<coupon_type_0><![CDATA[CASH]]></coupon_type_0><coupon_id_0>10000</coupon_id_0>"
            b"<coupon_fee_0>100</coupon_fee_0><coupon_type_1><![CDATA[NO_CASH]]></coupon_type_1>"
            b"<coupon_id_1>10001</coupon_id_1><coupon_fee_1>200</coupon_fee_1>"
            b"<settlement_total_fee>800</settlement_total_fee><cash_fee_type><![CDATA[CNY]]></cash_fee_type>"
            b"<attach><![CDATA[]]></attach></xml>")
    assert xmlcodec.parse(body) == {
        "coupon_count": "2", "coupon_fee": "300", "coupon_type_0": "CASH", "coupon_id_0": "10000",
        "coupon_fee_0": "100", "coupon_type_1": "NO_CASH", "coupon_id_1": "10001", "coupon_fee_1": "200",
        "settlement_total_fee": "800", "cash_fee_type": "CNY", "attach": ""}


def test_a_notify_with_many_coupons_parses() -> None:
    """WeChat documents no cap on coupon_count and a notify carries three fields
    per coupon, besides some thirty others for service-provider merchants."""
    fields = dict.fromkeys([
        "appid", "mch_id", "sub_appid", "sub_mch_id", "device_info", "nonce_str", "sign", "sign_type",
        "result_code", "err_code", "err_code_des", "openid", "is_subscribe", "sub_openid",
        "sub_is_subscribe", "trade_type", "bank_type", "total_fee", "settlement_total_fee", "fee_type",
        "cash_fee", "cash_fee_type", "coupon_fee", "coupon_count", "transaction_id", "out_trade_no",
        "attach", "time_end", "return_code", "return_msg"], "x")
    for n in range(20):
        fields.update({f"coupon_type_{n}": "CASH", f"coupon_id_{n}": str(10000 + n), f"coupon_fee_{n}": "1"})
    assert len(fields) == 90
    assert xmlcodec.parse(xmlcodec.render(fields)) == fields


def test_the_field_count_stays_bounded() -> None:
    body = xmlcodec.render({f"f{n}": "1" for n in range(xmlcodec.MAX_FIELDS + 1)})
    with pytest.raises(xmlcodec.MalformedXML, match="too many fields"):
        xmlcodec.parse(body)


@pytest.mark.parametrize("body, reason", [
    (b"", "empty"),
    (b"   ", "empty"),
    (b"not xml", "not XML"),
    (b"<xml><a>1</a><a>2</a></xml>", "more than once"),
    (b"<xml><coupon_id_0>1</coupon_id_0><coupon_id_0>2</coupon_id_0></xml>", "more than once"),
    (b"<xml><a><b>1</b></a></xml>", "plain text"),
    (b"<xml><coupon_fee_0><coupon_fee_1>1</coupon_fee_1></coupon_fee_0></xml>", "plain text"),
    (b"<root><a>1</a></root>", "root element"),
    (b'<xml><a x="1">1</a></xml>', "plain text"),
    (b'<!DOCTYPE xml [<!ENTITY e "x">]><xml><a>&e;</a></xml>', "DTD"),
    (b'<?xml version="1.0"?><!doctype xml SYSTEM "file:///etc/passwd"><xml/>', "DTD"),
])
def test_parse_refuses(body: bytes, reason: str) -> None:
    with pytest.raises(xmlcodec.MalformedXML, match=reason):
        xmlcodec.parse(body)


@pytest.mark.parametrize("text", ["2026112912345", "202611291234567", "2026112912345x", "20261329123456",
                                  "２０２６１１２９１２３４５６", "2026-11-29 12:34"])
def test_wechat_times_are_read_strictly(text: str) -> None:
    from server.gateway.wxpay_v2.client import parse_wx_time

    with pytest.raises(ValueError):
        parse_wx_time(text)


def test_a_wechat_time_is_beijing_time() -> None:
    from server.gateway.wxpay_v2.client import parse_wx_time

    assert parse_wx_time("20261129123456").isoformat() == "2026-11-29T12:34:56+08:00"

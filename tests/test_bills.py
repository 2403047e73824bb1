"""The daily trade bill's reader (server/gateway/bills.py), on its own: a bill
published by others read to its printed totals, the same bytes in any chunking
and gzipped, and hostile files refused with a clear BAD_BILL, never a crash or
a wrong number."""

from __future__ import annotations

import datetime as dt
import gzip
from collections.abc import AsyncIterator

import pytest

from server.gateway import bills
from server.gateway.abc import BILL_PAYMENT, BILL_REFUND, BillLine, BillSummary
from server.gateway.errors import GatewayError

# gunsluo/wechatpay-go, client_test.go (TestDownloadForClient) @ 9459cb4479d97db1a1622c90d956be2e5c5064ed:
# a v3 trade bill as downloaded from WeChat for merchant 1601959334 (three NATIVE payments of 0.01).
GOLDEN = (
    "交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,货币种类,"
    "应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,充值券退款金额,退款类型,退款状态,商品名称,商户数据包,"
    "手续费,费率,订单金额,申请退款金额,费率备注\n"
    "`2021-01-28 17:07:11,`wx81be3101902f7cb2,`1601959334,`0,`,`4200000925202101284997714292,`S20210128170702357723,"
    "`ofyak5qR_1wYsC99CsWA6R9MJazA,`NATIVE,`SUCCESS,`OTHERS,`CNY,`0.01,`0.00,`0,`0,`0.00,`0.00,`,`,`for testing,"
    "`cipher code,`0.00000,`1.00%,`0.01,`0.00,`\n"
    "`2021-01-28 15:35:18,`wx81be3101902f7cb2,`1601959334,`0,`,`4200000910202101282955148400,`S20210128153505214586,"
    "`ofyak5qR_1wYsC99CsWA6R9MJazA,`NATIVE,`SUCCESS,`OTHERS,`CNY,`0.01,`0.00,`0,`0,`0.00,`0.00,`,`,`for testing,"
    "`cipher code,`0.00000,`1.00%,`0.01,`0.00,`\n"
    "`2021-01-28 16:59:46,`wx81be3101902f7cb2,`1601959334,`0,`,`4200000926202101281412639609,`S20210128165824499930,"
    "`ofyak5qR_1wYsC99CsWA6R9MJazA,`NATIVE,`SUCCESS,`OTHERS,`CNY,`0.01,`0.00,`0,`0,`0.00,`0.00,`,`,`for testing,"
    "`cipher code,`0.00000,`1.00%,`0.01,`0.00,`\n"
    "总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额\n"
    "`3,`0.03,`0.00,`0.00,`0.00000,`0.03,`0.00\n"
)
GOLDEN_MCH = "1601959334"
BEIJING = dt.timezone(dt.timedelta(hours=8))
DAY = dt.date(2021, 1, 28)

HEADER, *ROWS, SUMMARY_HEADER, SUMMARY = GOLDEN.splitlines()
PAYMENT_ROW = ROWS[0]


async def read(data: bytes, *, chunk: int = 4096, mch_id: str = GOLDEN_MCH) -> tuple[list[BillLine], BillSummary]:
    """The bill as the gateways read it: spooled from chunks, then iterated."""
    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(data), chunk):
            yield data[i:i + chunk]

    raw = await bills.spool(chunks(), where="test bill")
    bill = bills.bill_from_spool(DAY, raw, mch_id=mch_id, where="test bill")
    lines = [line async for line in bill.lines]
    return lines, bill.summary


def bill_text(rows: list[str], summary: str, *, header: str = HEADER, newline: str = "\n") -> bytes:
    return newline.join([header, *rows, SUMMARY_HEADER, summary, ""]).encode()


def row(**changes: str) -> str:
    """PAYMENT_ROW with some columns (by header name) replaced, backtick added."""
    names = HEADER.split(",")
    cells = PAYMENT_ROW.split(",")
    for name, value in changes.items():
        cells[names.index(name)] = "`" + value
    return ",".join(cells)


# -- a bill published by others ---------------------------------------------------------

@pytest.mark.gen_test
async def test_the_published_bill_reads_to_its_printed_totals() -> None:
    lines, summary = await read(GOLDEN.encode())
    assert summary == BillSummary(trades=3, paid=3, refunded=0, fees=0)
    assert [(b.kind, b.out_trade_no, b.transaction_id, b.amount, b.trade_state, b.fee) for b in lines] == [
        (BILL_PAYMENT, "S20210128170702357723", "4200000925202101284997714292", 1, "SUCCESS", 0),
        (BILL_PAYMENT, "S20210128153505214586", "4200000910202101282955148400", 1, "SUCCESS", 0),
        (BILL_PAYMENT, "S20210128165824499930", "4200000926202101281412639609", 1, "SUCCESS", 0),
    ]
    assert lines[0].trade_time == dt.datetime(2021, 1, 28, 17, 7, 11, tzinfo=BEIJING)
    assert (lines[0].out_refund_no, lines[0].refund_id, lines[0].refund_status) == ("", "", "")


@pytest.mark.gen_test
@pytest.mark.parametrize("chunk", [1, 7, 64, 1 << 20])
async def test_any_chunking_crlf_a_bom_or_gzip_read_the_same(chunk: int) -> None:
    expected = await read(GOLDEN.encode())
    variants = [GOLDEN.encode(), GOLDEN.replace("\n", "\r\n").encode(), b"\xef\xbb\xbf" + GOLDEN.encode(),
                gzip.compress(GOLDEN.encode()), GOLDEN.rstrip("\n").encode()]
    for data in variants:
        assert await read(data, chunk=chunk) == expected


@pytest.mark.gen_test
async def test_columns_are_found_by_name_not_position() -> None:
    # A column WeChat might add, and the order shuffled: the same reading.
    names = HEADER.split(",")
    order = list(reversed(range(len(names))))

    def shuffled(line: str, extra: str) -> str:
        cells = line.split(",")
        return ",".join([extra, *(cells[i] for i in order)])

    data = bill_text([shuffled(r, "`x") for r in ROWS], SUMMARY, header=shuffled(HEADER, "新列"))
    assert await read(data) == await read(GOLDEN.encode())


@pytest.mark.gen_test
async def test_a_refund_row_is_a_refund_line_and_a_refunded_trade_still_a_payment() -> None:
    # As WeChat prints a refund (a real one, pay.weixin.qq.com's ALL bill layout): state REFUND,
    # refund ids filled, the refund in 退款金额, 应结订单金额 0, part of the fee given back.
    refund = row(**{"交易状态": "REFUND", "应结订单金额": "0.00", "微信退款单号": "50302709992024070991956632208",
                    "商户退款单号": "RF5622435300878286848", "退款金额": "50.00", "退款类型": "ORIGINAL",
                    "退款状态": "SUCCESS", "手续费": "-0.27000", "订单金额": "0.00", "申请退款金额": "50.00"})
    refunded_payment = row(**{"交易状态": "REFUND", "应结订单金额": "60.00", "手续费": "0.36000"})
    data = bill_text([refunded_payment, refund], "`2,`60.00,`50.00,`0.00,`0.09000,`60.00,`50.00")
    lines, summary = await read(data)
    assert summary == BillSummary(trades=2, paid=6000, refunded=5000, fees=9)
    payment, refunded = lines
    assert (payment.kind, payment.amount, payment.trade_state, payment.fee) == (BILL_PAYMENT, 6000, "REFUND", 36)
    assert (refunded.kind, refunded.amount, refunded.out_refund_no, refunded.refund_id, refunded.refund_status,
            refunded.fee) == (BILL_REFUND, 5000, "RF5622435300878286848", "50302709992024070991956632208",
                              "SUCCESS", -27)


@pytest.mark.parametrize("text, fen", [("0.01", 1), ("12.30", 1230), ("7.79000", 779), ("100", 10000),
                                       ("0.1", 10), ("19999999.99", 1999999999)])
def test_yuan_to_fen_is_exact(text: str, fen: int) -> None:
    assert bills.fen(text, "amount") == fen


@pytest.mark.parametrize("text", ["", "abc", "1.234", "0.00001", "-1.00", "1e3", "NaN", "Infinity", "１.００",
                                  "1,00", " 1.00", "0x10", "1.", ".5", "12345678901234.00"])
def test_what_is_not_an_amount_in_fen_is_refused(text: str) -> None:
    with pytest.raises(bills.BadBill):
        bills.fen(text, "amount")


# -- hostile files ---------------------------------------------------------------------------

SUM1 = "`1,`0.01,`0.00,`0.00,`0.00000,`0.01,`0.00"
HOSTILE: list[tuple[str, bytes, str]] = [
    ("empty", b"", "no header"),
    ("only blank lines", b"\n\r\n  \n", "no header"),
    ("no header row", bill_text([PAYMENT_ROW], SUM1, header=PAYMENT_ROW), "not the bill's header"),
    ("a header without refund columns", bill_text([PAYMENT_ROW], SUM1, header=HEADER.replace("退款金额", "x")),
     "退款金额"),
    ("a column named twice", bill_text([PAYMENT_ROW], SUM1, header=HEADER.replace("费率备注", "费率")),
     "twice"),
    ("a short row", bill_text([PAYMENT_ROW.rsplit(",", 1)[0]], SUM1), "26 fields, the header 27"),
    ("a long row", bill_text([PAYMENT_ROW + ",`x"], SUM1), "28 fields, the header 27"),
    ("a bad amount", bill_text([row(**{"应结订单金额": "0.0x"})], SUM1), "应结订单金额"),
    ("sub-fen amount", bill_text([row(**{"应结订单金额": "0.015"})], SUM1), "whole number of fen"),
    ("negative payment", bill_text([row(**{"应结订单金额": "-0.01"})], SUM1), "not an amount"),
    ("a bad time", bill_text([row(**{"交易时间": "2021-13-28 17:07:11"})], SUM1), "交易时间"),
    ("no out_trade_no", bill_text([row(**{"商户订单号": ""})], SUM1), "商户订单号"),
    ("another merchant", bill_text([row(**{"商户号": "1900000109"})], SUM1), "not ours"),
    ("truncated: no summary", "\n".join([HEADER, PAYMENT_ROW]).encode(), "without its summary"),
    ("truncated: summary header only", "\n".join([HEADER, PAYMENT_ROW, SUMMARY_HEADER]).encode(),
     "without its summary"),
    ("summary count lies", bill_text([PAYMENT_ROW], "`2,`0.01,`0.00,`0.00,`0.00000,`0.01,`0.00"), "says 2 rows"),
    ("summary sum lies", bill_text([PAYMENT_ROW], "`1,`0.02,`0.00,`0.00,`0.00000,`0.01,`0.00"), "paid 2"),
    ("summary short", bill_text([PAYMENT_ROW], "`1,`0.01"), "2 values for 7 names"),
    ("summary count not a number", bill_text([PAYMENT_ROW], SUM1.replace("`1,", "`1.5,", 1)), "not a count"),
    ("rows after the summary", bill_text([PAYMENT_ROW], SUM1 + "\n" + PAYMENT_ROW), "after the summary"),
    ("a NUL byte", bill_text([PAYMENT_ROW.replace("for testing", "for\0testing")], SUM1), "NUL"),
    ("an open quote", bill_text([PAYMENT_ROW.replace("`for testing", '"tea, green')], SUM1), "not CSV"),
    ("a field split by a comma", bill_text([row(**{"商品名称": "tea, green"})], SUM1), "28 fields"),
    ("not UTF-8", GOLDEN.encode("gb18030"), "not UTF-8"),
    ("a huge line", bill_text(["`" + "9" * (bills.MAX_LINE + 10)], SUM1), "longer than"),
    ("an endless first line", b"x" * (bills.MAX_LINE * 3), "longer than"),
    ("truncated gzip", gzip.compress(GOLDEN.encode())[:-12], "truncated"),
    ("corrupt gzip", gzip.compress(GOLDEN.encode())[:20] + b"\xff" * 40, "gzip"),
    ("gzip then junk", gzip.compress(GOLDEN.encode()) + b"junk", "after the end of the gzip"),
]


@pytest.mark.gen_test
@pytest.mark.parametrize("name, data, reason", HOSTILE, ids=[h[0] for h in HOSTILE])
async def test_hostile_bills_are_refused_with_a_reason(name: str, data: bytes, reason: str) -> None:
    with pytest.raises(GatewayError) as caught:
        await read(data, chunk=1000)
    assert caught.value.code == "BAD_BILL" and reason in str(caught.value), str(caught.value)


@pytest.mark.gen_test
async def test_a_gzip_bomb_is_read_in_bounded_pieces_and_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    # A few KiB of gzip that expands to 64 MiB of one "line": refused long before it is all in memory.
    bomb = gzip.compress(b"`" * (64 << 20))
    assert len(bomb) < 200_000
    with pytest.raises(GatewayError, match="longer than"):
        await read(bomb)
    # And a bill that expands beyond the cap is refused as such.
    monkeypatch.setattr(bills, "MAX_TEXT_BYTES", len(GOLDEN.encode()) - 1)
    with pytest.raises(GatewayError, match="expands beyond"):
        await read(gzip.compress(GOLDEN.encode()))


@pytest.mark.gen_test
async def test_an_oversized_download_is_refused_while_it_spools(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bills, "MAX_RAW_BYTES", 100)
    with pytest.raises(GatewayError, match="larger than 100 bytes"):
        await read(GOLDEN.encode(), chunk=64)


@pytest.mark.gen_test
async def test_the_summary_is_only_filled_once_the_file_checked_out() -> None:
    raw = await bills.spool(_one(bill_text([PAYMENT_ROW], "`1,`0.02,`0.00,`0.00,`0.00000,`0.01,`0.00")), where="t")
    bill = bills.bill_from_spool(DAY, raw, mch_id=GOLDEN_MCH)
    seen = []
    with pytest.raises(GatewayError):
        async for line in bill.lines:
            seen.append(line)
    assert len(seen) == 1 and bill.summary == BillSummary()  # nothing to believe: the line must be dropped too


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


@pytest.mark.gen_test
async def test_a_coupon_trade_keeps_what_it_asked_beside_what_settled() -> None:
    """A merchant coupon (免充值券) lowers 应结订单金额 below 订单金额: the
    order's amount in our books is what the trade asked, so the line keeps both."""
    coupon = row(**{"应结订单金额": "0.90", "代金券金额": "0.10", "订单金额": "1.00"})
    data = bill_text([coupon], "`1,`0.90,`0.00,`0.00,`0.00000,`1.00,`0.00")
    [line], summary = await read(data)
    assert (line.amount, line.asked, summary.paid) == (90, 100, 90)
    [golden, *_], _ = await read(GOLDEN.encode())
    assert (golden.amount, golden.asked) == (1, 1)

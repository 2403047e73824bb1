"""WeChat Pay's daily trade bill (bill_type ALL), the same file in API v2 and v3:
read as it streams, checked against its own summary.

The format (pay.weixin.qq.com/doc/v2/merchant/4011987833, "下载交易账单"; v3
serves the same file): a header row naming the columns, one row per payment or
refund whose every field starts with a backtick (so spreadsheets keep the long
ids as text), then a summary header (总交易单数,应结订单总金额,退款总金额,...)
and its backticked values. Amounts are yuan with two decimals (fees with five);
columns are found by name, never by position, since WeChat adds columns.

Nothing here believes the file on its face: every row must have the header's
width, every amount must be a whole number of fen, and at the end the rows must
add up to the summary (count, paid, refunded, fees). Those end checks can only
fail once every row was read, so a consumer acts on the lines only after the
iteration finished without an error.

The raw file is first spooled (memory up to SPOOL_IN_MEMORY, then a temporary
file) while it downloads: the network part is over, and a v3 file's SHA1 is
checked, before a single line is handed out. Parsing then reads it in chunks,
decompressing gzip and decoding UTF-8 incrementally: memory stays bounded
whatever the size of the day.
"""

from __future__ import annotations

import asyncio
import codecs
import csv
import datetime as dt
import logging
import re
import tempfile
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from decimal import Decimal
from typing import IO

from server.gateway.abc import BEIJING, BILL_PAYMENT, BILL_REFUND, REFUND, Bill, BillLine, BillSummary
from server.gateway.errors import GatewayError

log = logging.getLogger(__name__)

GZIP_MAGIC = b"\x1f\x8b"

CHUNK = 64 * 1024
SPOOL_IN_MEMORY = 1 << 20
MAX_RAW_BYTES = 1 << 30  # a file (gzip or plain) larger than this is refused
MAX_TEXT_BYTES = 4 << 30  # what a gzip may expand to (a bomb stops here)
MAX_LINE = 64 * 1024  # a real row is well under 2 KiB

# Detail columns the reading needs (the rest are kept by WeChat, not by us).
TRADE_TIME, MCH_ID, TRANSACTION_ID, OUT_TRADE_NO = "交易时间", "商户号", "微信订单号", "商户订单号"
TRADE_STATE, SETTLED_AMOUNT, REFUND_ID, OUT_REFUND_NO = "交易状态", "应结订单金额", "微信退款单号", "商户退款单号"
REFUND_AMOUNT, REFUND_STATUS, FEE = "退款金额", "退款状态", "手续费"
ORDER_AMOUNT, REFUND_ASKED = "订单金额", "申请退款金额"  # before coupons: what our books hold
REQUIRED_COLUMNS = (TRADE_TIME, MCH_ID, TRANSACTION_ID, OUT_TRADE_NO, TRADE_STATE, SETTLED_AMOUNT, REFUND_ID,
                    OUT_REFUND_NO, REFUND_AMOUNT, REFUND_STATUS, FEE)
# Summary columns.
TOTAL_COUNT, TOTAL_SETTLED, TOTAL_REFUNDED, TOTAL_FEES = "总交易单数", "应结订单总金额", "退款总金额", "手续费总金额"
REQUIRED_SUMMARY = (TOTAL_COUNT, TOTAL_SETTLED, TOTAL_REFUNDED, TOTAL_FEES)

# Yuan: ASCII digits only (Decimal() would take "１", "NaN", "1e3"), at most
# five decimals (fees are printed with five, and are whole fen all the same).
YUAN = re.compile(r"(-?)([0-9]{1,13})(?:\.([0-9]{1,5}))?")
COUNT = re.compile(r"[0-9]{1,9}")
NO_VALUE = ("", "0")  # what WeChat prints in the refund columns of a payment row


class BadBill(GatewayError):
    """The file is not a bill we can believe: malformed, truncated, or it
    contradicts its own summary. Asking again may bring a good copy."""

    def __init__(self, message: str):
        super().__init__("BAD_BILL", message)


def fen(text: str, what: str, *, signed: bool = False) -> int:
    """Yuan as printed (``12.30``, ``0.27000``) -> fen, exactly (Decimal, never float)."""
    match = YUAN.fullmatch(text)
    if match is None or (match.group(1) and not signed):
        raise BadBill(f"{what} {text[:24]!r} is not an amount in yuan")
    value = Decimal(text) * 100
    if value != value.to_integral_value():
        raise BadBill(f"{what} {text[:24]!r} is not a whole number of fen")
    return int(value)


def _field(text: str) -> str:
    # Every value of a row (and of the summary values) starts with a backtick.
    return text[1:] if text.startswith("`") else text


class BillReader:
    """The bill's text, fed in chunks of bytes as they come: ``feed`` answers the
    lines completed so far, ``finish`` checks the end and fills the summary."""

    def __init__(self, *, mch_id: str = "", where: str = "bill"):
        self._mch_id = mch_id
        self._where = where
        self._decoder = codecs.getincrementaldecoder("utf-8")("strict")
        self._pending = ""
        self._row_number = 0
        self._columns: dict[str, int] = {}
        self._width = 0
        self._summary_names: list[str] | None = None
        self.summary: BillSummary | None = None
        # What the rows add up to, checked against the summary at the end.
        self._count = self._settled = self._refunded = self._fees = 0

    # -- input ---------------------------------------------------------------------

    def feed(self, data: bytes) -> list[BillLine]:
        try:
            text = self._decoder.decode(data)
        except UnicodeDecodeError as exc:
            raise BadBill(f"{self._where}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
        return list(self._lines(text))

    def finish(self) -> BillSummary:
        try:
            tail = self._decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise BadBill(f"{self._where}: ends inside a UTF-8 character") from None
        list(self._lines(tail + "\n"))  # the last row, when the file does not end with a newline
        if not self._columns:
            raise BadBill(f"{self._where}: empty, no header row")
        if self.summary is None:
            raise BadBill(f"{self._where}: ends after row {self._row_number} without its summary")
        s = self.summary
        found = (self._count, self._settled, self._refunded, self._fees)
        if (s.trades, s.paid, s.refunded, s.fees) != found:
            raise BadBill(f"{self._where}: the summary says {s.trades} rows, paid {s.paid}, refunded "
                          f"{s.refunded}, fees {s.fees} (fen), the rows add up to {found[0]} rows, paid "
                          f"{found[1]}, refunded {found[2]}, fees {found[3]}")
        return s

    # -- rows ------------------------------------------------------------------------

    def _lines(self, text: str) -> Iterator[BillLine]:
        self._pending += text
        *complete, self._pending = self._pending.split("\n")
        if len(self._pending) > MAX_LINE:
            raise BadBill(f"{self._where}: a line longer than {MAX_LINE} characters after row {self._row_number}")
        for raw in complete:
            line = self._row(raw)
            if line is not None:
                yield line

    def _row(self, raw: str) -> BillLine | None:
        if len(raw) > MAX_LINE:
            raise BadBill(f"{self._where}: a line longer than {MAX_LINE} characters after row {self._row_number}")
        raw = raw.removesuffix("\r")
        if not self._columns:
            raw = raw.removeprefix("\ufeff")
        if not raw.strip():
            return None
        self._row_number += 1
        if "\0" in raw:  # a text file has none; csv would take it
            raise BadBill(f"{self._where}: row {self._row_number} contains a NUL byte")
        try:
            cells = next(csv.reader((raw,), strict=True))
        except (csv.Error, StopIteration) as exc:
            raise BadBill(f"{self._where}: row {self._row_number} is not CSV: {exc}") from None
        if self.summary is not None:
            raise BadBill(f"{self._where}: row {self._row_number} after the summary")
        if self._summary_names is not None:
            self.summary = self._summary(cells)
            return None
        if not self._columns:
            self._header(cells)
            return None
        if _field(cells[0]).strip() == TOTAL_COUNT:
            self._summary_header(cells)
            return None
        return self._detail(cells)

    def _header(self, cells: list[str]) -> None:
        names = [c.strip() for c in cells]
        missing = [c for c in REQUIRED_COLUMNS if c not in names]
        if missing:
            raise BadBill(f"{self._where}: the first row is not the bill's header (no {', '.join(missing)})")
        if len(set(names)) != len(names):
            raise BadBill(f"{self._where}: the header names a column twice")
        self._columns = {name: i for i, name in enumerate(names)}
        self._width = len(names)

    def _summary_header(self, cells: list[str]) -> None:
        names = [c.strip() for c in cells]
        missing = [c for c in REQUIRED_SUMMARY if c not in names]
        if missing or len(set(names)) != len(names):
            raise BadBill(f"{self._where}: summary header without {', '.join(missing) or 'distinct names'}")
        self._summary_names = names

    def _summary(self, cells: list[str]) -> BillSummary:
        names = self._summary_names or []
        if len(cells) != len(names):
            raise BadBill(f"{self._where}: summary has {len(cells)} values for {len(names)} names")
        values = {name: _field(cell).strip() for name, cell in zip(names, cells, strict=True)}
        if not COUNT.fullmatch(values[TOTAL_COUNT]):
            raise BadBill(f"{self._where}: {TOTAL_COUNT} {values[TOTAL_COUNT][:24]!r} is not a count")
        return BillSummary(trades=int(values[TOTAL_COUNT]),
                           paid=fen(values[TOTAL_SETTLED], TOTAL_SETTLED),
                           refunded=fen(values[TOTAL_REFUNDED], TOTAL_REFUNDED),
                           fees=fen(values[TOTAL_FEES], TOTAL_FEES, signed=True))

    def _detail(self, cells: list[str]) -> BillLine:
        where = f"{self._where}: row {self._row_number}"
        if len(cells) != self._width:
            raise BadBill(f"{where} has {len(cells)} fields, the header {self._width}")
        col = self._columns

        def get(name: str) -> str:
            return _field(cells[col[name]]).strip()

        if self._mch_id and get(MCH_ID) != self._mch_id:
            raise BadBill(f"{where} is for merchant {get(MCH_ID)[:32]!r}, not ours")
        try:
            when = dt.datetime.strptime(get(TRADE_TIME), "%Y-%m-%d %H:%M:%S").replace(tzinfo=BEIJING)
        except ValueError:
            raise BadBill(f"{where}: {TRADE_TIME} {get(TRADE_TIME)[:24]!r} is not yyyy-MM-dd HH:mm:ss") from None
        settled = fen(get(SETTLED_AMOUNT), f"{where} {SETTLED_AMOUNT}")
        refunded = fen(get(REFUND_AMOUNT), f"{where} {REFUND_AMOUNT}")
        fee = fen(get(FEE), f"{where} {FEE}", signed=True)  # a refund gives part of the fee back
        self._count += 1
        self._settled += settled
        self._refunded += refunded
        self._fees += fee
        state, out_trade_no, transaction_id = get(TRADE_STATE), get(OUT_TRADE_NO), get(TRANSACTION_ID)
        if not out_trade_no or not transaction_id or len(out_trade_no) > 64 or len(transaction_id) > 64:
            raise BadBill(f"{where}: no {OUT_TRADE_NO} or {TRANSACTION_ID}")
        def asked(name: str) -> int | None:
            """The optional before-coupons column, when the bill has it filled."""
            if name not in col or get(name) in ("", *NO_VALUE):
                return None
            return fen(get(name), f"{where} {name}")

        refund_id, out_refund_no = get(REFUND_ID), get(OUT_REFUND_NO)
        if state == REFUND and refund_id not in NO_VALUE and out_refund_no not in NO_VALUE:
            return BillLine(kind=BILL_REFUND, trade_time=when, out_trade_no=out_trade_no,
                            transaction_id=transaction_id, amount=refunded, trade_state=state, fee=fee,
                            out_refund_no=out_refund_no, refund_id=refund_id, refund_status=get(REFUND_STATUS),
                            asked=asked(REFUND_ASKED))
        return BillLine(kind=BILL_PAYMENT, trade_time=when, out_trade_no=out_trade_no,
                        transaction_id=transaction_id, amount=settled, trade_state=state, fee=fee,
                        asked=asked(ORDER_AMOUNT))


# -- the raw file: spooled while it downloads, then read back -------------------------

Spool = IO[bytes]


async def spool(chunks: AsyncIterator[bytes], *, where: str,
                observe: Callable[[bytes], None] | None = None, first: bytes = b"") -> Spool:
    """The whole download in a spooled temporary file (memory up to
    SPOOL_IN_MEMORY), ``observe`` shown every byte in order (a hash)."""
    out: Spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)  # noqa: SIM115 - handed to the caller
    size = 0
    try:
        for_first = [first] if first else []
        async for chunk in _chain(for_first, chunks):
            size += len(chunk)
            if size > MAX_RAW_BYTES:
                raise BadBill(f"{where}: larger than {MAX_RAW_BYTES} bytes")
            if observe is not None:
                observe(chunk)
            out.write(chunk)
    except BaseException:
        out.close()
        raise
    out.seek(0)
    return out


async def _chain(first: list[bytes], rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    for chunk in first:
        yield chunk
    async for chunk in rest:
        yield chunk


def bill_from_spool(date: dt.date, raw: Spool, *, mch_id: str = "", where: str = "bill") -> Bill:
    """The Bill read from a spooled file (gzip or plain, told by its first bytes);
    the file is closed when the iteration ends, however it ends."""
    summary = BillSummary()
    return Bill(date=date, lines=_read(raw, summary, mch_id=mch_id, where=where), summary=summary)


async def _read(raw: Spool, summary: BillSummary, *, mch_id: str, where: str) -> AsyncIterator[BillLine]:
    reader = BillReader(mch_id=mch_id, where=where)
    try:
        head = raw.read(2)
        raw.seek(0)
        inflate = zlib.decompressobj(16 + zlib.MAX_WBITS) if head == GZIP_MAGIC else None
        text_size = 0
        while chunk := raw.read(CHUNK):
            for piece in _inflated(inflate, chunk, where) if inflate else (chunk,):
                text_size += len(piece)
                if text_size > MAX_TEXT_BYTES:
                    raise BadBill(f"{where}: expands beyond {MAX_TEXT_BYTES} bytes")
                for line in reader.feed(piece):
                    yield line
            await asyncio.sleep(0)  # a big day must not hold the event loop
        if inflate is not None and not inflate.eof:
            raise BadBill(f"{where}: the gzip stream is truncated")
        done = reader.finish()
        summary.trades, summary.paid, summary.refunded, summary.fees = done.trades, done.paid, done.refunded, \
            done.fees
        log.info("%s read: %d rows, paid %d, refunded %d, fees %d (fen)", where, done.trades, done.paid,
                 done.refunded, done.fees)
    finally:
        raw.close()


def _inflated(inflate: zlib._Decompress, chunk: bytes, where: str) -> Iterator[bytes]:
    """A gzip chunk's output in pieces of at most CHUNK bytes (a bomb never lands in memory at once)."""
    data = chunk
    try:
        while data:
            piece = inflate.decompress(data, CHUNK)
            if piece:
                yield piece
            data = inflate.unconsumed_tail
            if inflate.eof and inflate.unused_data.strip(b"\0"):
                raise BadBill(f"{where}: data after the end of the gzip stream")
    except zlib.error as exc:
        raise BadBill(f"{where}: not a valid gzip stream: {exc}") from None

"""A loopback TWS / IB Gateway emulator that the real ib_async client connects to.

There is no TWS on these machines, so this is how the IB adapter and its tests reach
"IBKR". It speaks the TWS API socket protocol in the dialect of ib_async 2.1.0 (the
version the project pins), serves bars from a :class:`~sovereign.data.loaders.LoadedData`
up to a market clock that the test moves, and runs a small order book: market, limit and
stop orders fill at the next bar, with IBKR-style fixed commissions, executions that can be
fetched again after a reconnect, and faults that tests can inject (dropped sockets, a gateway
that is down, slow replies, rejects, the nightly order-id rollback).

The server runs on its own asyncio loop in a background thread, so a synchronous test and a
synchronous ``ib_async.IB().connect(...)`` in the test thread both work. Every public method
is thread-safe: it runs on the emulator's loop and waits for the result.

Wire protocol (see ``ib_async/client.py`` and ``ib_async/decoder.py``): each message is a
4-byte big-endian length followed by fields that each end in NUL. The client opens with
``API\\0`` and a framed version range; the server answers with the version it chose and its
connection time; the client then sends ``startApi`` and waits for ``nextValidId`` and
``managedAccounts``.
"""

# IB's own names (orderId, permId, ...) are kept on the records below so that tests can
# compare them field by field with ib_async's Order and Execution objects.
# ruff: noqa: N815

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import math
import struct
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeVar
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from sovereign.data.loaders import LoadedData
from sovereign.data.validation import DAILY_INTERVAL_S

__all__ = [
    "MIN_SERVER_VERSION",
    "SERVER_VERSION",
    "EmulatedExecution",
    "EmulatedOrder",
    "TwsEmulator",
]

log = logging.getLogger("sovereign.testing.tws")

SERVER_VERSION = 178
"""The highest API version the emulator speaks: ib_async 2.1.0's maximum, which is also
what any current TWS negotiates with that client."""

MIN_SERVER_VERSION = 157
"""The lowest version it accepts (ib_async 2.1.0's minimum)."""

# Versions at which the layout of a message changes (names as in IB's server_versions).
_V_DURATION = 159  # openOrder carries duration
_V_POST_TO_ATS = 160  # openOrder carries postToAts
_V_AUTO_CANCEL_PARENT = 162  # openOrder carries autoCancelParent
_V_SIZE_RULES = 164  # contractDetails loses its version field and mdSizeMultiplier
_V_SUGGESTED_SIZE = 163  # contractDetails at exactly 163 carries suggestedSizeIncrement
_V_ADVANCED_REJECT = 166  # error carries advancedOrderRejectJson
_V_MANUAL_ORDER_TIME = 169  # cancelOrder carries manualOrderCancelTime
_V_PEGBEST = 170  # openOrder / completedOrder carry the PEG BEST / PEG MID fields
_V_NO_FA_PROFILE = 177  # faProfile leaves placeOrder, openOrder and completedOrder
_V_PENDING_PRICE_REVISION = 178  # execDetails carries pendingPriceRevision

_UNSET_DOUBLE = "1.7976931348623157E308"  # what TWS sends for "no value" in a double
_NS = 1_000_000_000
_NY = ZoneInfo("America/New_York")
_TWS_TZ = "US/Eastern"  # the emulated TWS is logged in on New York time
_EXCHANGE = "SMART"
_VENUE = "ISLAND"  # executions name a venue, never SMART
_PRIMARY = "NASDAQ"
_CURRENCY = "USD"
_WORKING = frozenset({"PreSubmitted", "Submitted"})
_DONE = frozenset({"Filled", "Cancelled", "Inactive"})
_MAX_MESSAGE = 16 * 1024 * 1024
_CALL_TIMEOUT_S = 10.0
_PERM_ID_START = 1_740_000_001
_FARM_STATUS = (
    (2104, "Market data farm connection is OK:usfarm"),
    (2106, "HMDS data farm connection is OK:ushmds"),
    (2158, "Sec-def data farm connection is OK:secdefnj"),
)
_HMDS = "Historical Market Data Service error message:"
_NO_SECURITY = "No security definition has been found for the request"

_T = TypeVar("_T")


# -- RECORDS --------------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class EmulatedOrder:
    """One order as the emulated TWS holds it.

    Parameters
    ----------
    orderId
        The client's id for it (unique only per ``clientId`` and session, as in IB).
    clientId
        The API client that placed it.
    permId
        Unique across the whole emulator, like IB's account-wide permanent id.
    orderRef
        Echoed from the order.
    symbol, action, totalQuantity, orderType, lmtPrice, auxPrice, tif, account
        As sent (``lmtPrice`` / ``auxPrice`` are None when not given).
    status
        ``PreSubmitted`` / ``Submitted`` while working; ``Filled``, ``Cancelled`` (by the
        client, or a DAY / IOC order that expired) or ``Inactive`` (rejected) when done.
    filled, avgFillPrice
        Shares filled so far and their average price.
    placed_ts, done_ts
        Market-clock bar start (ns UTC) when the order arrived and when it ended (0 while
        it works).
    reason
        Why a done order that did not fill ended (empty otherwise).
    """

    orderId: int
    clientId: int
    permId: int
    orderRef: str
    symbol: str
    action: str
    totalQuantity: float
    orderType: str
    lmtPrice: float | None
    auxPrice: float | None
    tif: str
    account: str
    status: str = "PreSubmitted"
    filled: float = 0.0
    avgFillPrice: float = 0.0
    placed_ts: int = 0
    done_ts: int = 0
    reason: str = ""
    # The New York date of the first bar the order could fill on (DAY / IOC expiry).
    first_day: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class EmulatedExecution:
    """One fill, as ``reqExecutions`` reports it.

    Parameters
    ----------
    execId
        Unique, in IB's shape (``0001f4e8.65a1b2c3.01.01``).
    permId, orderId, clientId, orderRef
        Of the order that filled.
    symbol
        The stock.
    side
        ``BOT`` or ``SLD`` (IB's execution sides, not BUY / SELL).
    shares, price
        This fill.
    time
        Market-clock time of the fill (ns UTC): the start of the bar it filled on.
    commission
        IBKR fixed: per share, with the minimum and the 1 % cap.
    realizedPNL
        For a fill that reduces a position (net of commissions); None when it opens one.
    cumQty, avgPrice
        Of the order after this fill.
    """

    execId: str
    permId: int
    orderId: int
    clientId: int
    orderRef: str
    symbol: str
    side: str
    shares: float
    price: float
    time: int
    commission: float
    realizedPNL: float | None
    cumQty: float
    avgPrice: float
    account: str
    lastLiquidity: int


@dataclasses.dataclass(slots=True)
class _Holding:
    qty: int = 0
    avg_cost: float = 0.0  # per share, commissions included (as IB reports it)
    realized: float = 0.0


@dataclasses.dataclass(frozen=True, slots=True)
class _Series:
    ts: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    day: np.ndarray  # New York date as YYYYmmdd
    second_of_day: np.ndarray  # New York wall-clock seconds since midnight


@dataclasses.dataclass(frozen=True, slots=True)
class _Bar:
    ts: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    day: int


@dataclasses.dataclass(frozen=True, slots=True)
class _PlaceOrder:
    order_id: int
    contract: tuple[str, ...]
    action: str
    quantity: float
    order_type: str
    lmt_price: float | None
    aux_price: float | None
    tif: str
    account: str
    order_ref: str
    what_if: bool


@dataclasses.dataclass(frozen=True, slots=True)
class _HistoryRequest:
    symbol: str
    end_ns: int | None
    duration: str
    bar_size: str
    what_to_show: str
    use_rth: bool
    format_date: int


class _RequestError(Exception):
    """A request the emulated TWS answers with an error message."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"{code}: {text}")
        self.code = code
        self.text = text


class _ProtocolError(Exception):
    """The peer does not speak the TWS API."""


# -- MARKET DATA ----------------------------------------------------------------------


class _Market:
    """The data file, indexed per symbol, with a stable conId per symbol."""

    def __init__(self, data: LoadedData) -> None:
        self.daily = data.interval_s == DAILY_INTERVAL_S
        self.interval_s = int(data.interval_s) or 60
        self.timestamps = np.asarray(data.timestamps, dtype=np.int64)
        if self.timestamps.size == 0:
            raise ValueError("the emulator needs data with at least one bar")
        self.series: dict[str, _Series] = {}
        for symbol, group in data.frame.groupby("symbol", sort=True):
            ts = group["ts"].to_numpy(dtype=np.int64)
            local = pd.DatetimeIndex(ts, tz="UTC").tz_convert(_NY)
            self.series[str(symbol)] = _Series(
                ts=ts,
                open=group["open"].to_numpy(dtype=np.float64),
                high=group["high"].to_numpy(dtype=np.float64),
                low=group["low"].to_numpy(dtype=np.float64),
                close=group["close"].to_numpy(dtype=np.float64),
                volume=group["volume"].to_numpy(dtype=np.float64),
                day=(local.year * 10_000 + local.month * 100 + local.day).to_numpy(np.int64),
                second_of_day=(local.hour * 3600 + local.minute * 60 + local.second).to_numpy(
                    np.int64
                ),
            )
        self.con_ids = _con_ids(self.series)
        self.symbol_of = {con_id: symbol for symbol, con_id in self.con_ids.items()}

    def resolve(self, contract: Sequence[str]) -> str | None:
        """The symbol a wire contract (conId, symbol, secType, ..., 12 fields) names."""
        con_id = _int(contract[0])
        sec_type, currency = contract[2].upper(), contract[9].upper()
        if sec_type not in ("", "STK") or currency not in ("", _CURRENCY):
            return None
        if con_id:
            return self.symbol_of.get(con_id)
        symbol = (contract[1] or contract[10]).strip().upper()
        return symbol if symbol in self.series else None

    def bar(self, symbol: str, ts: int) -> _Bar | None:
        s = self.series.get(symbol)
        if s is None:
            return None
        i = int(np.searchsorted(s.ts, ts))
        if i >= s.ts.size or s.ts[i] != ts:
            return None
        return _bar(s, i)

    def last_close(self, symbol: str, ts: int) -> float | None:
        s = self.series.get(symbol)
        if s is None:
            return None
        i = int(np.searchsorted(s.ts, ts, side="right")) - 1
        return float(s.close[i]) if i >= 0 else None

    def day_of(self, ts: int) -> int:
        local = datetime.fromtimestamp(ts / _NS, _NY)
        return local.year * 10_000 + local.month * 100 + local.day


def _con_ids(series: dict[str, _Series]) -> dict[str, int]:
    # A hash of the symbol, so a conId survives emulator restarts (adapters may persist it).
    out: dict[str, int] = {}
    taken: set[int] = set()
    for symbol in sorted(series):
        con_id = 10_000_000 + zlib.crc32(symbol.encode()) % 890_000_000
        while con_id in taken:
            con_id += 1
        taken.add(con_id)
        out[symbol] = con_id
    return out


def _bar(s: _Series, i: int) -> _Bar:
    return _Bar(
        ts=int(s.ts[i]),
        open=float(s.open[i]),
        high=float(s.high[i]),
        low=float(s.low[i]),
        close=float(s.close[i]),
        volume=float(s.volume[i]),
        day=int(s.day[i]),
    )


# -- WIRE FORMAT ----------------------------------------------------------------------


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return repr(value)
    return str(value)


def _encode(fields: Iterable[object]) -> bytes:
    payload = "".join(_text(f) + "\0" for f in fields).encode()
    return struct.pack(">I", len(payload)) + payload


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    (size,) = struct.unpack(">I", await reader.readexactly(4))
    if size > _MAX_MESSAGE:
        raise _ProtocolError(f"message of {size} bytes")
    return await reader.readexactly(size)


def _fields(payload: bytes) -> list[str]:
    fields = payload.decode("utf-8", errors="replace").split("\0")
    if fields and fields[-1] == "":
        fields.pop()
    return fields


def _int(text: str, default: int = 0) -> int:
    try:
        return int(float(text)) if text else default
    except ValueError:
        return default


def _float(text: str) -> float | None:
    """A wire double; None for empty, unset (DBL_MAX) or unparsable."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and abs(value) < 1e300 else None


def _money(x: float) -> str:
    return f"{x:.2f}"


def _tws_time(ns: int) -> str:
    """``YYYYmmdd HH:MM:SS US/Eastern``: how TWS stamps executions and history."""
    return datetime.fromtimestamp(ns / _NS, _NY).strftime("%Y%m%d %H:%M:%S ") + _TWS_TZ


def _parse_tws_time(text: str) -> int | None:
    """Parse an API time argument to ns UTC (None for empty).

    ``yyyymmdd-hh:mm:ss`` is UTC; ``yyyymmdd hh:mm:ss`` is TWS local time (New York)
    unless a time-zone name follows; a bare ``yyyymmdd`` is the end of that New York day;
    an all-digit string longer than 8 is epoch seconds.
    """
    text = text.strip()
    if not text:
        return None
    if text.isdigit():
        if len(text) == 8:
            day = datetime.strptime(text, "%Y%m%d").replace(tzinfo=_NY)
            return int((day + timedelta(days=1)).timestamp()) * _NS - 1
        return int(text) * _NS
    if "-" in text[:9] and " " not in text:
        moment = datetime.strptime(text, "%Y%m%d-%H:%M:%S").replace(tzinfo=UTC)
        return int(moment.timestamp()) * _NS
    parts = text.split()
    zone = ZoneInfo(parts[2]) if len(parts) > 2 else _NY
    moment = datetime.strptime(parts[0] + parts[1], "%Y%m%d%H:%M:%S").replace(tzinfo=zone)
    return int(moment.timestamp()) * _NS


def _bar_size_s(text: str) -> int | Literal["day"]:
    count, _, unit = text.strip().partition(" ")
    n = _int(count, -1)
    unit = unit.strip().lower().rstrip("s")
    if n <= 0:
        raise _RequestError(162, f"{_HMDS}bad bar size {text!r}")
    if unit == "day" and n == 1:
        return "day"
    seconds = {"sec": 1, "min": 60, "hour": 3600}.get(unit)
    if seconds is None:
        raise _RequestError(162, f"{_HMDS}unsupported bar size {text!r}")
    return n * seconds


class _Cursor:
    """Walks the fields of a request whose layout has optional parts."""

    def __init__(self, fields: Sequence[str], pos: int = 0) -> None:
        self._fields = fields
        self.pos = pos

    def take(self) -> str:
        value = self._fields[self.pos] if self.pos < len(self._fields) else ""
        self.pos += 1
        return value

    def take_n(self, n: int) -> tuple[str, ...]:
        return tuple(self.take() for _ in range(n))

    def skip(self, n: int) -> None:
        self.pos += n


def _parse_place_order(fields: Sequence[str], version: int) -> _PlaceOrder:
    # The layout is ib_async's Client.placeOrder; only what the emulator uses is kept.
    c = _Cursor(fields, 1)
    order_id = _int(c.take())
    contract = c.take_n(12)
    c.skip(2)  # secIdType, secId
    action, quantity, order_type = c.take().upper(), _float(c.take()), c.take().upper()
    lmt_price, aux_price, tif = _float(c.take()), _float(c.take()), c.take().upper()
    c.skip(1)  # ocaGroup
    account = c.take()
    c.skip(2)  # openClose, origin
    order_ref = c.take()
    c.skip(8)  # transmit .. hidden
    what_if = False
    if contract[2].upper() != "BAG":
        what_if = _what_if(c, version)
    return _PlaceOrder(
        order_id=order_id,
        contract=contract,
        action=action,
        quantity=quantity or 0.0,
        order_type=order_type,
        lmt_price=lmt_price,
        aux_price=aux_price,
        tif=tif,
        account=account,
        order_ref=order_ref,
        what_if=what_if,
    )


def _what_if(c: _Cursor, version: int) -> bool:
    c.skip(7)  # deprecated sharesAllocation, discretionaryAmt .. faPercentage
    if version < _V_NO_FA_PROFILE:
        c.skip(1)
    c.skip(22)  # modelCode .. volatilityType
    delta_neutral_type = c.take()
    c.skip(1)
    if delta_neutral_type:
        c.skip(8)
    c.skip(6)  # continuousUpdate .. scaleSubsLevelSize
    increment = _float(c.take())
    if increment is not None and increment > 0:
        c.skip(7)
    c.skip(3)  # scaleTable, activeStartTime, activeStopTime
    if c.take():  # hedgeType
        c.skip(1)
    c.skip(4)  # optOutSmartRouting, clearingAccount, clearingIntent, notHeld
    if c.take() == "1":  # a delta-neutral contract follows
        c.skip(3)
    if c.take():  # algoStrategy
        c.skip(2 * _int(c.take()))
    c.skip(1)  # algoId
    return c.take() == "1"


# -- CONNECTIONS ----------------------------------------------------------------------


class _Connection:
    """One API client socket and what it subscribed to."""

    def __init__(self, writer: asyncio.StreamWriter, loop: asyncio.AbstractEventLoop) -> None:
        self.transport = writer.transport
        self.loop = loop
        self.peer = writer.get_extra_info("peername")
        self.version = 0
        self.client_id: int | None = None
        self.ready = False
        self.closed = False
        self.positions = False
        self.account_updates = False
        self.keep_up: dict[int, _HistoryRequest] = {}
        self._queue: deque[tuple[float, bytes]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._close_when_flushed = False

    def send(self, fields: Sequence[object], delay: float) -> None:
        if self.closed:
            return
        if log.isEnabledFor(logging.DEBUG):
            log.debug("client %s <<< %s", self.client_id, ",".join(map(_text, fields)))
        data = _encode(fields)
        if delay <= 0 and not self._queue:
            self.transport.write(data)
            return
        # Replies queue behind each other, so a delay never reorders them.
        self._queue.append((self.loop.time() + max(delay, 0.0), data))
        if self._timer is None:
            self._timer = self.loop.call_at(self._queue[0][0], self._flush)

    def _flush(self) -> None:
        self._timer = None
        now = self.loop.time()
        while self._queue and self._queue[0][0] <= now and not self.closed:
            self.transport.write(self._queue.popleft()[1])
        if self._queue and not self.closed:
            self._timer = self.loop.call_at(self._queue[0][0], self._flush)
        elif self._close_when_flushed:
            self.transport.close()

    def close_after_flush(self) -> None:
        if self._queue:
            self._close_when_flushed = True
        else:
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        self.ready = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._queue.clear()
        self.transport.abort()


# -- THE EMULATOR ---------------------------------------------------------------------


class TwsEmulator:
    """A TWS / IB Gateway on 127.0.0.1 that serves one data set and one paper account.

    Parameters
    ----------
    data
        The bars it serves and fills orders against.
    port
        TCP port; 0 picks a free one (read it from :attr:`port` after :meth:`start`).
    account
        The one managed account.
    clock
        ``"manual"``: the market moves only on :meth:`advance`. ``"wall"``: it moves one
        bar every ``interval_s / speed`` wall-clock seconds.
    speed
        Market seconds per wall-clock second for the wall clock.
    start_index
        The bar the clock starts on (clamped to the data).
    commission_per_share, commission_min
        IBKR fixed pricing: per share, with a minimum per order...
    next_order_id
        The ``nextValidId`` a client gets when it has placed nothing yet.
    initial_cash
        The account's starting cash (a paper account starts with 1,000,000 USD).
    commission_max_pct
        ...and a cap of this fraction of the trade value (IB's 1 %; 0 turns it off).

    Notes
    -----
    The market clock is a bar index into ``data.timestamps``. At index *i*, bar *i* is the
    latest complete bar: history ends with it, and "now" (``reqCurrentTime``, account
    times) is its end. Orders placed at *i* can fill from bar *i + 1* on, when the clock
    gets there: a market order at that bar's open, a buy limit when the bar trades at or
    below the limit (at ``min(open, limit)``), a sell limit at ``max(open, limit)``, stops
    symmetrically. DAY orders (the default ``tif``) that have not filled expire when the
    New York date moves past the day of their first eligible bar; IOC orders expire after
    it; GTC orders never do. Executions are stamped with market-clock time, not wall time.
    """

    def __init__(
        self,
        data: LoadedData,
        *,
        port: int = 0,
        account: str = "DU1234567",
        clock: Literal["manual", "wall"] = "manual",
        speed: float = 60.0,
        start_index: int = 50,
        commission_per_share: float = 0.005,
        commission_min: float = 1.0,
        next_order_id: int = 1,
        initial_cash: float = 1_000_000.0,
        commission_max_pct: float = 0.01,
    ) -> None:
        if clock not in ("manual", "wall"):
            raise ValueError(f"clock must be 'manual' or 'wall', got {clock!r}")
        if speed <= 0:
            raise ValueError(f"speed must be positive, got {speed}")
        self._market = _Market(data)
        self._host = "127.0.0.1"
        self._port = int(port)
        self._account = account
        self._clock_mode = clock
        self._speed = float(speed)
        self._index = min(max(int(start_index), 0), self._market.timestamps.size - 1)
        self._per_share = float(commission_per_share)
        self._min_commission = float(commission_min)
        self._max_pct = float(commission_max_pct)
        self._cash = float(initial_cash)
        self._holdings: dict[str, _Holding] = {}
        self._orders: list[EmulatedOrder] = []
        self._by_key: dict[tuple[int, int], EmulatedOrder] = {}
        self._used_keys: set[tuple[int, int]] = set()
        self._executions: list[EmulatedExecution] = []
        self._next_id_base = int(next_order_id)
        self._max_order_id: dict[int, int] = {}
        self._next_perm_id = _PERM_ID_START
        # The middle part of every execId: fixed per emulator, like IB's per-session stamp.
        self._exec_stamp = int(time.time()) & 0xFFFFFFFF
        self._reject_reason: str | None = None
        self._delay = 0.0
        self._fill_disconnected = True
        self._conns: set[_Connection] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._wall_task: asyncio.Task[None] | None = None
        self._handlers: dict[int, Callable[[_Connection, list[str]], None]] = {
            1: self._on_req_mkt_data,
            3: self._on_place_order,
            4: self._on_cancel_order,
            5: self._on_req_open_orders,
            6: self._on_req_account_updates,
            7: self._on_req_executions,
            8: self._on_req_ids,
            9: self._on_req_contract_details,
            16: self._on_req_all_open_orders,
            17: self._on_req_managed_accounts,
            20: self._on_req_historical_data,
            25: self._on_cancel_historical_data,
            49: self._on_req_current_time,
            58: self._on_req_global_cancel,
            61: self._on_req_positions,
            62: self._on_req_account_summary,
            64: self._on_cancel_positions,
            71: self._on_start_api,
            74: self._on_req_positions_multi,
            76: self._on_req_account_updates_multi,
            87: self._on_req_head_timestamp,
            99: self._on_req_completed_orders,
        }
        # Requests that need no answer (cancels of things the emulator does not stream).
        self._silent = {2, 15, 59, 63, 75, 77, 90}

    def __repr__(self) -> str:
        return (
            f"TwsEmulator({self._host}:{self._port}, account={self._account}, "
            f"bar {self._index}/{self._market.timestamps.size - 1})"
        )

    def __enter__(self) -> TwsEmulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- LIFECYCLE --------------------------------------------------------------------

    @property
    def host(self) -> str:
        """The address it listens on (always loopback)."""
        return self._host

    @property
    def port(self) -> int:
        """The port it listens on (0 until :meth:`start` when a free port was asked for)."""
        return self._port

    @property
    def account(self) -> str:
        """The account it manages (``managedAccounts``)."""
        return self._account

    def start(self) -> int:
        """Start listening (idempotent).

        Returns
        -------
        int
            The port.
        """
        if self._thread is not None:
            return self._port
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=self._run_loop, args=(loop,), name="tws-emulator")
        thread.daemon = True
        thread.start()
        self._loop, self._thread = loop, thread
        try:
            self._port = asyncio.run_coroutine_threadsafe(self._listen(), loop).result(
                _CALL_TIMEOUT_S
            )
        except BaseException:
            self.stop()
            raise
        if self._clock_mode == "wall":
            self._call(self._start_wall_clock)
        log.info("TWS emulator listening on %s:%s", self._host, self._port)
        return self._port

    def stop(self) -> None:
        """Stop listening, close every client connection and end the emulator's thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(_CALL_TIMEOUT_S)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(_CALL_TIMEOUT_S)
        if not thread.is_alive():
            loop.close()
        self._loop = self._thread = None
        self._server = None

    @staticmethod
    def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        loop.run_forever()

    async def _listen(self) -> int:
        self._server = await asyncio.start_server(self._serve, self._host, self._port)
        return int(self._server.sockets[0].getsockname()[1])

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._wall_task is not None:
            self._wall_task.cancel()
        self._drop_all()
        # Aborted sockets end their handlers; cancelling those instead would make asyncio's
        # stream machinery log a spurious CancelledError.
        current = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not current]
        if tasks:
            await asyncio.wait(tasks, timeout=_CALL_TIMEOUT_S / 2)

    def _call(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run ``fn`` on the emulator's loop (state lives there) and return its result."""
        loop = self._loop
        if loop is None or threading.current_thread() is self._thread or not loop.is_running():
            return fn(*args)
        future: concurrent.futures.Future[_T] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(fn(*args))
            except BaseException as exc:
                future.set_exception(exc)

        loop.call_soon_threadsafe(run)
        return future.result(_CALL_TIMEOUT_S)

    # -- MARKET CLOCK -----------------------------------------------------------------

    @property
    def index(self) -> int:
        """The current bar's index into ``data.timestamps``."""
        return self._index

    def now_ts(self) -> int:
        """Return the current bar's start (ns UTC)."""
        return int(self._market.timestamps[self._index])

    def advance(self, bars: int = 1) -> None:
        """Move the market clock forward; working orders fill at the new bars.

        Parameters
        ----------
        bars
            How many bars; each one is processed in turn (fills, expiries, streamed
            updates), so a multi-bar advance is the same as that many single ones.

        Raises
        ------
        ValueError
            If ``bars`` is less than 1.
        IndexError
            If the data has fewer than ``bars`` bars left (the clock does not move).
        """
        self._call(self._advance, int(bars))

    def _advance(self, bars: int) -> None:
        if bars < 1:
            raise ValueError(f"bars must be at least 1, got {bars}")
        last = self._market.timestamps.size - 1
        if self._index + bars > last:
            raise IndexError(f"only {last - self._index} bar(s) left in the data")
        for _ in range(bars):
            self._index += 1
            self._on_new_bar()

    def _start_wall_clock(self) -> None:
        self._wall_task = asyncio.get_running_loop().create_task(self._wall_clock())

    async def _wall_clock(self) -> None:
        period = self._market.interval_s / self._speed
        last = self._market.timestamps.size - 1
        while True:
            await asyncio.sleep(period)
            # A manual advance() may have reached the end while this slept.
            if self._index >= last:
                break
            self._advance(1)
        log.info("wall clock reached the end of the data")

    def _clock_ns(self) -> int:
        # "Now" is the end of the current bar: bar i is complete in history.
        return self.now_ts() + self._market.interval_s * _NS

    # -- STATE ------------------------------------------------------------------------

    def positions(self) -> dict[str, int]:
        """Return the non-zero positions, by symbol."""
        return self._call(lambda: {s: h.qty for s, h in self._holdings.items() if h.qty})

    def cash(self) -> float:
        """Return the account's cash (after commissions)."""
        return self._call(lambda: self._cash)

    def orders(self) -> list[EmulatedOrder]:
        """Return a copy of every order received, in arrival order."""
        return self._call(lambda: [dataclasses.replace(o) for o in self._orders])

    def executions(self) -> list[EmulatedExecution]:
        """Return every execution, in time order."""
        return self._call(lambda: list(self._executions))

    def connected_clients(self) -> list[int]:
        """Return the client ids of the API connections that are up."""
        return self._call(
            lambda: sorted(c.client_id for c in self._conns if c.ready and c.client_id is not None)
        )

    # -- FAULTS -----------------------------------------------------------------------

    def drop_connections(self) -> None:
        """Close every client socket abruptly; the server keeps listening."""
        self._call(self._drop_all)

    def go_down(self) -> None:
        """Stop accepting connections and drop the existing ones (TWS is gone)."""
        self._call(self._go_down)

    def come_up(self) -> None:
        """Accept connections again, on the same port."""
        if self._loop is None:
            self.start()
            return
        if self._server is None:
            asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(_CALL_TIMEOUT_S)

    def set_delay(self, seconds: float) -> None:
        """Delay every reply (the handshake included) by ``seconds`` from now on."""
        if seconds < 0:
            raise ValueError(f"delay must be >= 0, got {seconds}")
        self._call(setattr, self, "_delay", float(seconds))

    def reject_next_order(self, reason: str = "Insufficient margin (emulated reject)") -> None:
        """Reject the next new order: error 201 with ``reason``, then status Inactive."""
        self._call(setattr, self, "_reject_reason", reason)

    def reset_order_ids(self, next_id: int) -> None:
        """The nightly reset: ``nextValidId`` rolls back to ``next_id`` for every client.

        Ids of finished orders may be reused afterwards (a new order, with a new permId).
        An id that still belongs to a working order (GTC) is, as at IB, a modification of
        that order: ib_async avoids it because it skips past the ids of the open orders it
        is sent on connect.
        """
        self._call(self._reset_order_ids, int(next_id))

    def fill_while_disconnected(self, enabled: bool = True) -> None:
        """Choose whether orders fill while the client that placed them is away.

        On (the default, as at IB) they keep working and filling; the client recovers
        the fills with ``reqExecutions`` when it is back. Off, they are frozen until it
        reconnects: a later bar fills them then.
        """
        self._call(setattr, self, "_fill_disconnected", bool(enabled))

    def _drop_all(self) -> None:
        for conn in list(self._conns):
            conn.abort()
        self._conns.clear()

    def _go_down(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        self._drop_all()

    def _reset_order_ids(self, next_id: int) -> None:
        self._next_id_base = next_id
        self._max_order_id.clear()
        self._used_keys.clear()

    # -- SOCKETS ----------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        conn = _Connection(writer, loop)
        self._conns.add(conn)
        try:
            await self._handshake(conn, reader)
            while not conn.closed:
                self._dispatch(conn, _fields(await _read_frame(reader)))
        except (asyncio.IncompleteReadError, ConnectionError):
            log.debug("client %s at %s went away", conn.client_id, conn.peer)
        except _ProtocolError as exc:
            log.warning("dropping %s: %s", conn.peer, exc)
        finally:
            self._conns.discard(conn)
            if not conn.closed:
                conn.abort()

    async def _handshake(self, conn: _Connection, reader: asyncio.StreamReader) -> None:
        if await reader.readexactly(4) != b"API\0":
            raise _ProtocolError("no API prefix")
        text = (await _read_frame(reader)).decode(errors="replace")
        if not text.startswith("v"):
            raise _ProtocolError(f"bad version range {text!r}")
        low_text, _, high_text = text[1:].split(" ")[0].partition("..")
        low = _int(low_text)
        high = _int(high_text) if high_text else low
        version = min(high, SERVER_VERSION)
        if version < max(low, MIN_SERVER_VERSION):
            raise _ProtocolError(f"no common version with {text!r}")
        conn.version = version
        now = datetime.fromtimestamp(self._clock_ns() / _NS, _NY)
        self._send(conn, version, now.strftime("%Y%m%d %H:%M:%S %Z"))

    def _dispatch(self, conn: _Connection, fields: list[str]) -> None:
        if not fields:
            return
        msg_id = _int(fields[0], -1)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("client %s >>> %s", conn.client_id, ",".join(fields))
        if msg_id != 71 and not conn.ready:
            log.warning("request %s before startApi ignored", msg_id)
            return
        handler = self._handlers.get(msg_id)
        if handler is None:
            if msg_id not in self._silent:
                log.info("unhandled request %s from client %s: %s", msg_id, conn.client_id, fields)
            return
        try:
            handler(conn, fields)
        except Exception:
            log.exception("request %s from client %s failed: %s", msg_id, conn.client_id, fields)

    def _send(self, conn: _Connection, *fields: object) -> None:
        conn.send(fields, self._delay)

    def _error(self, conn: _Connection, req_id: int, code: int, text: str) -> None:
        fields: list[object] = [4, 2, req_id, code, text]
        if conn.version >= _V_ADVANCED_REJECT:
            fields.append("")
        self._send(conn, *fields)

    def _clients(self, client_id: int) -> list[_Connection]:
        return [c for c in self._conns if c.ready and c.client_id == client_id]

    # -- SESSION ----------------------------------------------------------------------

    def _on_start_api(self, conn: _Connection, fields: list[str]) -> None:
        client_id = _int(fields[2])
        if conn.ready:
            return
        if self._clients(client_id):
            # TWS refuses a second connection with a client id that is in use.
            self._error(
                conn,
                -1,
                326,
                "Unable to connect as the client id is already in use. "
                "Retry with a unique client id.",
            )
            conn.close_after_flush()
            return
        conn.client_id = client_id
        conn.ready = True
        self._send(conn, 15, 1, self._account)
        self._send(conn, 9, 1, self._next_valid_id(client_id))
        for code, text in _FARM_STATUS:
            self._error(conn, -1, code, text)
        log.info("client %s connected from %s (version %s)", client_id, conn.peer, conn.version)

    def _next_valid_id(self, client_id: int) -> int:
        return max(self._next_id_base, self._max_order_id.get(client_id, 0) + 1)

    def _on_req_ids(self, conn: _Connection, fields: list[str]) -> None:
        self._send(conn, 9, 1, self._next_valid_id(conn.client_id or 0))

    def _on_req_managed_accounts(self, conn: _Connection, fields: list[str]) -> None:
        self._send(conn, 15, 1, self._account)

    def _on_req_current_time(self, conn: _Connection, fields: list[str]) -> None:
        self._send(conn, 49, 1, self._clock_ns() // _NS)

    def _on_req_mkt_data(self, conn: _Connection, fields: list[str]) -> None:
        # No streaming quotes here: answer like a paper account without a subscription.
        self._error(conn, _int(fields[2]), 354, "Requested market data is not subscribed.")

    # -- CONTRACTS --------------------------------------------------------------------

    def _contract_tail(self, symbol: str, exchange: str) -> list[object]:
        """conId .. tradingClass without primaryExchange (positions, orders, executions)."""
        # An order for a symbol the data lacks was rejected, but is still reported.
        con_id = self._market.con_ids.get(symbol, 0)
        return [con_id, symbol, "STK", "", 0, "", "", exchange, _CURRENCY, symbol, "NMS"]

    def _on_req_contract_details(self, conn: _Connection, fields: list[str]) -> None:
        req_id = _int(fields[2])
        symbol = self._market.resolve(fields[3:15])
        if symbol is None:
            self._error(conn, req_id, 200, _NO_SECURITY)
            return
        v = conn.version
        out: list[object] = [10]
        if v < _V_SIZE_RULES:
            out.append(8)
        out += [req_id, symbol, "STK", "", 0, "", _EXCHANGE, _CURRENCY, symbol, "NMS", "NMS"]
        out += [self._market.con_ids[symbol], 0.01]
        if v < _V_SIZE_RULES:
            out.append(100)  # mdSizeMultiplier
        hours = self._trading_hours()
        out += [
            "",  # multiplier
            "ACTIVETIM,AD,ADJUST,ALERT,ALLOC,LMT,MKT,MOC,MOO,STP,STPLMT,TRAIL,DAY,GTC,IOC",
            "SMART,ISLAND,NYSE,ARCA,BATS,IEX",
            1,  # priceMagnifier
            0,  # underConId
            symbol,  # longName
            _PRIMARY,
            "",  # contractMonth
            "",  # industry
            "",  # category
            "",  # subcategory
            _TWS_TZ,
            hours,
            hours,
            "",  # evRule
            "",  # evMultiplier
            0,  # secIdList
            1,  # aggGroup
            "",  # underSymbol
            "",  # underSecType
            "26",  # marketRuleIds
            "",  # realExpirationDate
            "COMMON",
        ]
        if v == _V_SUGGESTED_SIZE:
            out.append(100)
        elif v >= _V_SIZE_RULES:
            out += [1, 1, 100]  # minSize, sizeIncrement, suggestedSizeIncrement
        self._send(conn, *out)
        self._send(conn, 52, 1, req_id)

    def _trading_hours(self) -> str:
        ts = self._market.timestamps
        days = sorted({self._market.day_of(int(t)) for t in ts[self._index : self._index + 400]})
        return ";".join(f"{d}:0930-{d}:1600" for d in days[:7])

    # -- ORDERS -----------------------------------------------------------------------

    def _on_place_order(self, conn: _Connection, fields: list[str]) -> None:
        request = _parse_place_order(fields, conn.version)
        client_id = conn.client_id or 0
        key = (client_id, request.order_id)
        symbol = self._market.resolve(request.contract)
        if request.what_if:
            self._answer_what_if(conn, request, symbol)
            return
        existing = self._by_key.get(key)
        if existing is not None and existing.status in _WORKING:
            self._modify(conn, existing, request)
            return
        if key in self._used_keys:
            self._error(conn, request.order_id, 103, "Duplicate order id")
            return
        self._used_keys.add(key)
        self._max_order_id[client_id] = max(self._max_order_id.get(client_id, 0), request.order_id)
        order = EmulatedOrder(
            orderId=request.order_id,
            clientId=client_id,
            permId=self._next_perm_id,
            orderRef=request.order_ref,
            symbol=symbol or request.contract[1].upper(),
            action=request.action,
            totalQuantity=request.quantity,
            orderType=request.order_type,
            lmtPrice=request.lmt_price,
            auxPrice=request.aux_price,
            tif=request.tif,
            account=request.account or self._account,
            placed_ts=self.now_ts(),
        )
        self._next_perm_id += 1
        self._orders.append(order)
        self._by_key[key] = order
        problem = self._validate(order, symbol)
        if problem is not None:
            self._reject(order, *problem)
            return
        if self._reject_reason is not None:
            reason, self._reject_reason = self._reject_reason, None
            self._reject(order, 201, f"Order rejected - reason:{reason}")
            return
        self._send(conn, *self._open_order(order, conn.version))
        self._send(conn, *self._order_status(order))
        order.status = "Submitted"
        self._send(conn, *self._order_status(order))

    def _validate(self, order: EmulatedOrder, symbol: str | None) -> tuple[int, str] | None:
        if symbol is None:
            return 200, _NO_SECURITY
        if order.action not in ("BUY", "SELL"):
            return 201, f"Order rejected - reason:unknown action {order.action!r}"
        qty = order.totalQuantity
        if qty <= 0 or not float(qty).is_integer():
            return 201, f"Order rejected - reason:quantity must be a whole number > 0, not {qty}"
        if order.orderType not in ("MKT", "LMT", "STP"):
            return 387, "Unsupported order type for this exchange and security type."
        if order.orderType == "LMT" and (order.lmtPrice is None or order.lmtPrice <= 0):
            return 201, "Order rejected - reason:a limit order needs a positive limit price"
        if order.orderType == "STP" and (order.auxPrice is None or order.auxPrice <= 0):
            return 201, "Order rejected - reason:a stop order needs a positive stop price"
        if order.tif not in ("", "DAY", "GTC", "IOC"):
            return 201, f"Order rejected - reason:unsupported time in force {order.tif!r}"
        return None

    def _reject(self, order: EmulatedOrder, code: int, text: str) -> None:
        order.status = "Inactive"
        order.reason = text
        order.done_ts = self.now_ts()
        for conn in self._clients(order.clientId):
            self._error(conn, order.orderId, code, text)
            self._send(conn, *self._order_status(order))

    def _modify(self, conn: _Connection, order: EmulatedOrder, request: _PlaceOrder) -> None:
        order.totalQuantity = request.quantity or order.totalQuantity
        order.orderType = request.order_type or order.orderType
        order.lmtPrice = request.lmt_price
        order.auxPrice = request.aux_price
        order.tif = request.tif
        order.orderRef = request.order_ref
        self._send(conn, *self._open_order(order, conn.version))
        self._send(conn, *self._order_status(order))

    def _answer_what_if(self, conn: _Connection, request: _PlaceOrder, symbol: str | None) -> None:
        if symbol is None:
            self._error(conn, request.order_id, 200, _NO_SECURITY)
            return
        price = self._market.last_close(symbol, self.now_ts()) or 0.0
        value = abs(request.quantity) * price
        equity = self._net_liquidation()
        preview = EmulatedOrder(
            orderId=request.order_id,
            clientId=conn.client_id or 0,
            permId=0,
            orderRef=request.order_ref,
            symbol=symbol,
            action=request.action,
            totalQuantity=request.quantity,
            orderType=request.order_type,
            lmtPrice=request.lmt_price,
            auxPrice=request.aux_price,
            tif=request.tif,
            account=request.account or self._account,
        )
        # Reg T: 50 % initial and 25 % maintenance margin on a stock position.
        state = {
            "init": _money(0.5 * value),
            "maint": _money(0.25 * value),
            "equity": _money(equity),
            "commission": self._commission(abs(request.quantity), price),
        }
        self._send(conn, *self._open_order(preview, conn.version, what_if=state))

    def _on_cancel_order(self, conn: _Connection, fields: list[str]) -> None:
        order_id = _int(fields[2])
        order = self._by_key.get((conn.client_id or 0, order_id))
        if order is None:
            text = f"OrderId {order_id} that needs to be cancelled is not found."
            self._error(conn, order_id, 10147, text)
            return
        if order.status not in _WORKING:
            self._error(
                conn,
                order_id,
                161,
                "Cancel attempted when order is not in a cancellable state.  "
                f"Order permId ={order.permId}",
            )
            return
        self._cancel(order, "Cancelled by the API client")

    def _on_req_global_cancel(self, conn: _Connection, fields: list[str]) -> None:
        for order in self._orders:
            if order.status in _WORKING:
                self._cancel(order, "Global cancel")

    def _cancel(self, order: EmulatedOrder, reason: str, *, notify_error: bool = True) -> None:
        order.status = "Cancelled"
        order.reason = reason
        order.done_ts = self.now_ts()
        for conn in self._clients(order.clientId):
            self._send(conn, *self._order_status(order))
            if notify_error:
                self._error(conn, order.orderId, 202, "Order Canceled - reason:")

    def _on_req_open_orders(self, conn: _Connection, fields: list[str]) -> None:
        self._send_open_orders(conn, only_client=conn.client_id)

    def _on_req_all_open_orders(self, conn: _Connection, fields: list[str]) -> None:
        self._send_open_orders(conn, only_client=None)

    def _send_open_orders(self, conn: _Connection, only_client: int | None) -> None:
        for order in self._orders:
            if order.status in _WORKING and only_client in (None, order.clientId):
                self._send(conn, *self._open_order(order, conn.version))
                self._send(conn, *self._order_status(order))
        self._send(conn, 53, 1)

    def _on_req_completed_orders(self, conn: _Connection, fields: list[str]) -> None:
        for order in self._orders:
            if order.status in _DONE:
                self._send(conn, *self._completed_order(order, conn.version))
        self._send(conn, 102)

    # -- FILLS ------------------------------------------------------------------------

    def _on_new_bar(self) -> None:
        ts = self.now_ts()
        day = self._market.day_of(ts)
        for order in [o for o in self._orders if o.status in _WORKING]:
            if not self._fill_disconnected and not self._clients(order.clientId):
                continue
            if order.first_day is None:
                order.first_day = day
            elif order.tif in ("", "DAY") and day > order.first_day:
                self._cancel(order, "DAY order expired", notify_error=False)
                continue
            bar = self._market.bar(order.symbol, ts)
            price = _fill_price(order, bar) if bar is not None else None
            if price is not None:
                self._fill(order, price, ts)
            elif order.tif == "IOC":
                self._cancel(order, "IOC order expired", notify_error=False)
        self._stream_bar()
        # TWS re-marks the portfolio as prices move; here that is once per bar.
        held = [s for s, h in self._holdings.items() if h.qty]
        for conn in [c for c in self._conns if c.ready and c.account_updates and held]:
            self._send_account(conn, held)

    def _fill(self, order: EmulatedOrder, price: float, ts: int) -> None:
        shares = int(order.totalQuantity - order.filled)
        sign = 1 if order.action == "BUY" else -1
        commission = self._commission(shares, price)
        realized = self._book(order.symbol, sign * shares, price, commission)
        self._cash -= sign * shares * price + commission
        total = order.filled + shares
        order.avgFillPrice = (order.avgFillPrice * order.filled + price * shares) / total
        order.filled = float(total)
        order.status = "Filled"
        order.done_ts = ts
        execution = EmulatedExecution(
            execId=f"{0x0001F4E8 + len(self._executions):08x}.{self._exec_stamp:08x}.01.01",
            permId=order.permId,
            orderId=order.orderId,
            clientId=order.clientId,
            orderRef=order.orderRef,
            symbol=order.symbol,
            side="BOT" if sign > 0 else "SLD",
            shares=float(shares),
            price=price,
            time=ts,
            commission=commission,
            realizedPNL=realized,
            cumQty=order.filled,
            avgPrice=order.avgFillPrice,
            account=order.account,
            lastLiquidity=2 if order.orderType == "MKT" else 1,
        )
        self._executions.append(execution)
        for conn in self._clients(order.clientId):
            self._send(conn, *self._exec_details(-1, execution, conn.version))
            self._send(conn, *self._commission_report(execution))
            self._send(conn, *self._order_status(order, last_fill=price))
        self._push_account(order.symbol)

    def _commission(self, shares: float, price: float) -> float:
        fee = max(shares * self._per_share, self._min_commission)
        if self._max_pct > 0:
            fee = min(fee, shares * price * self._max_pct)
        return round(fee, 6)

    def _book(self, symbol: str, signed: int, price: float, commission: float) -> float | None:
        """Apply a fill to the holding; return the realized P&L when it reduced one."""
        h = self._holdings.setdefault(symbol, _Holding())
        if h.qty == 0 or (h.qty > 0) == (signed > 0):
            cost = h.avg_cost * abs(h.qty) + abs(signed) * price + commission
            h.qty += signed
            h.avg_cost = cost / abs(h.qty)
            return None
        closing = min(abs(signed), abs(h.qty))
        opening = abs(signed) - closing
        fee_closing = commission * closing / abs(signed)
        realized = (price - h.avg_cost) * closing * (1 if h.qty > 0 else -1) - fee_closing
        h.realized += realized
        h.qty += signed
        if opening:
            h.avg_cost = price + (commission - fee_closing) / opening
        elif h.qty == 0:
            h.avg_cost = 0.0
        return realized

    # -- EXECUTIONS -------------------------------------------------------------------

    def _on_req_executions(self, conn: _Connection, fields: list[str]) -> None:
        req_id = _int(fields[2])
        c = _Cursor(fields, 3)
        client_id, account, since = _int(c.take()), c.take(), c.take()
        symbol, sec_type, _exchange, side = c.take().upper(), c.take().upper(), c.take(), c.take()
        try:
            since_ns = _parse_tws_time(since)
        except (ValueError, KeyError):
            log.warning("reqExecutions: unparsable time %r ignored", since)
            since_ns = None
        wanted_side = {"BUY": "BOT", "SELL": "SLD"}.get(side.upper(), side.upper())
        for ex in self._executions:
            if (
                (client_id and ex.clientId != client_id)
                or (account and ex.account != account)
                or (since_ns is not None and ex.time < since_ns)
                or (symbol and ex.symbol != symbol)
                or (sec_type and sec_type != "STK")
                or (wanted_side and ex.side != wanted_side)
            ):
                continue
            self._send(conn, *self._exec_details(req_id, ex, conn.version))
            self._send(conn, *self._commission_report(ex))
        self._send(conn, 55, 1, req_id)

    # -- ACCOUNT ----------------------------------------------------------------------

    def _mark(self, symbol: str) -> float:
        price = self._market.last_close(symbol, self.now_ts())
        return price if price is not None else self._holdings[symbol].avg_cost

    def _net_liquidation(self) -> float:
        return self._cash + sum(h.qty * self._mark(s) for s, h in self._holdings.items())

    def _account_values(self) -> list[tuple[str, str, str]]:
        market_value = sum(h.qty * self._mark(s) for s, h in self._holdings.items())
        gross = sum(abs(h.qty * self._mark(s)) for s, h in self._holdings.items())
        unrealized = sum((self._mark(s) - h.avg_cost) * h.qty for s, h in self._holdings.items())
        realized = sum(h.realized for h in self._holdings.values())
        net = self._cash + market_value
        init, maint = 0.5 * gross, 0.25 * gross
        usd = {
            "NetLiquidation": net,
            "TotalCashValue": self._cash,
            "SettledCash": self._cash,
            "CashBalance": self._cash,
            "GrossPositionValue": gross,
            "StockMarketValue": market_value,
            "EquityWithLoanValue": net,
            "InitMarginReq": init,
            "MaintMarginReq": maint,
            "AvailableFunds": net - init,
            "ExcessLiquidity": net - maint,
            "BuyingPower": 4 * (net - init),
            "UnrealizedPnL": unrealized,
            "RealizedPnL": realized,
        }
        out = [("AccountCode", self._account, ""), ("AccountType", "INDIVIDUAL", "")]
        out.append(("Currency", _CURRENCY, _CURRENCY))
        out += [(tag, _money(v), _CURRENCY) for tag, v in usd.items()]
        out += [("Cushion", f"{(net - maint) / net if net else 0:.6f}", "")]
        out += [("Leverage-S", f"{gross / net if net else 0:.4f}", "")]
        out += [("TotalCashBalance", _money(self._cash), "BASE")]
        out += [("DayTradesRemaining", "-1", "")]
        return out

    def _on_req_account_updates(self, conn: _Connection, fields: list[str]) -> None:
        conn.account_updates = fields[2] == "1"
        if not conn.account_updates:
            return
        self._send_account(conn, list(self._holdings))
        self._send(conn, 54, 1, self._account)

    def _send_account(self, conn: _Connection, symbols: Iterable[str]) -> None:
        for tag, value, currency in self._account_values():
            self._send(conn, 6, 2, tag, value, currency, self._account)
        for symbol in symbols:
            h = self._holdings[symbol]
            mark = self._mark(symbol)
            self._send(
                conn,
                7,
                8,
                *self._contract_tail(symbol, _PRIMARY),
                h.qty,
                mark,
                _money(h.qty * mark),
                h.avg_cost,
                _money((mark - h.avg_cost) * h.qty),
                _money(h.realized),
                self._account,
            )
        now = datetime.fromtimestamp(self._clock_ns() / _NS, _NY)
        self._send(conn, 8, 1, now.strftime("%H:%M"))

    def _push_account(self, symbol: str) -> None:
        for conn in [c for c in self._conns if c.ready]:
            if conn.positions:
                self._send(conn, *self._position(symbol))
            if conn.account_updates:
                self._send_account(conn, [symbol])

    def _position(self, symbol: str) -> list[object]:
        h = self._holdings[symbol]
        return [61, 3, self._account, *self._contract_tail(symbol, _PRIMARY), h.qty, h.avg_cost]

    def _on_req_positions(self, conn: _Connection, fields: list[str]) -> None:
        conn.positions = True
        # Symbols traded this session are reported even when flat, as TWS does.
        for symbol in self._holdings:
            self._send(conn, *self._position(symbol))
        self._send(conn, 62, 1)

    def _on_cancel_positions(self, conn: _Connection, fields: list[str]) -> None:
        conn.positions = False

    def _on_req_positions_multi(self, conn: _Connection, fields: list[str]) -> None:
        req_id, model = _int(fields[2]), fields[4] if len(fields) > 4 else ""
        for symbol, h in self._holdings.items():
            tail = self._contract_tail(symbol, _PRIMARY)
            self._send(conn, 71, 1, req_id, self._account, *tail, h.qty, h.avg_cost, model)
        self._send(conn, 72, 1, req_id)

    def _on_req_account_updates_multi(self, conn: _Connection, fields: list[str]) -> None:
        req_id, model = _int(fields[2]), fields[4] if len(fields) > 4 else ""
        for tag, value, currency in self._account_values():
            self._send(conn, 73, 1, req_id, self._account, model, tag, value, currency)
        self._send(conn, 74, 1, req_id)

    def _on_req_account_summary(self, conn: _Connection, fields: list[str]) -> None:
        req_id, tags = _int(fields[2]), set(fields[4].split(",")) if len(fields) > 4 else set()
        values = {tag: (value, currency) for tag, value, currency in self._account_values()}
        values["Leverage"] = values.pop("Leverage-S")
        for tag in sorted(tags & values.keys()):
            value, currency = values[tag]
            self._send(conn, 63, 1, req_id, self._account, tag, value, currency)
        self._send(conn, 64, 1, req_id)

    # -- HISTORICAL DATA --------------------------------------------------------------

    def _on_req_historical_data(self, conn: _Connection, fields: list[str]) -> None:
        req_id = _int(fields[1])
        c = _Cursor(fields, 2)
        contract = c.take_n(12)
        c.skip(1)  # includeExpired
        end, bar_size, duration = c.take(), c.take(), c.take()
        use_rth, what, format_date = c.take() == "1", c.take().upper(), _int(c.take(), 1)
        if contract[2].upper() == "BAG":
            self._error(conn, req_id, 200, _NO_SECURITY)
            return
        keep_up = c.take() == "1"
        symbol = self._market.resolve(contract)
        if symbol is None:
            self._error(conn, req_id, 200, _NO_SECURITY)
            return
        try:
            request = _HistoryRequest(
                symbol=symbol,
                end_ns=_parse_tws_time(end),
                duration=duration,
                bar_size=bar_size,
                what_to_show=what,
                use_rth=use_rth,
                format_date=format_date,
            )
            rows, daily = self._history(request)
        except _RequestError as exc:
            self._error(conn, req_id, exc.code, exc.text)
            return
        except (ValueError, KeyError) as exc:
            self._error(conn, req_id, 162, f"{_HMDS}{exc}")
            return
        if not rows and not keep_up:
            self._error(conn, req_id, 162, f"{_HMDS}HMDS query returned no data")
            return
        end_ns = min(request.end_ns or self._clock_ns(), self._clock_ns())
        start_text = _tws_time(rows[0].ts) if rows else _tws_time(end_ns)
        out: list[object] = [17, req_id, start_text, _tws_time(end_ns), len(rows)]
        for bar in rows:
            out += self._bar_fields(bar, request, daily)
        self._send(conn, *out)
        if keep_up:
            conn.keep_up[req_id] = request

    def _on_cancel_historical_data(self, conn: _Connection, fields: list[str]) -> None:
        conn.keep_up.pop(_int(fields[2]), None)

    def _bar_fields(self, bar: _Bar, request: _HistoryRequest, daily: bool) -> list[object]:
        if daily:
            date: object = bar.day
        elif request.format_date == 2:
            date = bar.ts // _NS
        else:
            date = _tws_time(bar.ts)
        if request.what_to_show == "MIDPOINT":
            volume: object = -1
            wap: object = -1
        else:
            volume = int(bar.volume) if math.isfinite(bar.volume) else -1
            wap = round((bar.high + bar.low + bar.close) / 3, 4)
        return [date, bar.open, bar.high, bar.low, bar.close, volume, wap, -1]

    def _history(self, request: _HistoryRequest) -> tuple[list[_Bar], bool]:
        """The bars a request asks for, ending at the current bar at the latest."""
        if request.what_to_show not in ("MIDPOINT", "TRADES", "ADJUSTED_LAST"):
            raise _RequestError(
                162,
                f"{_HMDS}whatToShow {request.what_to_show!r} is not served here",
            )
        size = _bar_size_s(request.bar_size)
        daily = size == "day"
        if self._market.daily and not daily:
            raise _RequestError(162, _HMDS + "only '1 day' bars for daily data")
        step = self._market.interval_s
        if not daily and not self._market.daily and (size < step or size % step):
            raise _RequestError(
                162,
                f"{_HMDS}bar size {request.bar_size!r} is not a multiple of the data's {step} s",
            )
        s = self._market.series[request.symbol]
        now = self._clock_ns()
        end = now if request.end_ns is None else min(request.end_ns, now)
        hi = min(
            int(np.searchsorted(s.ts, self.now_ts(), side="right")),
            int(np.searchsorted(s.ts, end, side="left")),
        )
        lo = self._duration_start(s, hi, end, request.duration)
        idx = np.arange(lo, hi)
        if request.use_rth and not self._market.daily:
            sod = s.second_of_day[idx]
            idx = idx[(sod >= 9 * 3600 + 1800) & (sod < 16 * 3600)]
        if daily and not self._market.daily:
            return _aggregate(s, idx, s.day[idx]), True
        if not daily and size != step:
            keys = s.day[idx] * 100_000 + s.second_of_day[idx] // int(size)
            return _aggregate(s, idx, keys), False
        return [_bar(s, int(i)) for i in idx], daily

    def _duration_start(self, s: _Series, hi: int, end: int, duration: str) -> int:
        count_text, _, unit = duration.strip().partition(" ")
        n, unit = _int(count_text, -1), unit.strip().upper()
        if n <= 0 or unit not in ("S", "D", "W", "M", "Y"):
            raise _RequestError(162, f"{_HMDS}bad duration {duration!r}")
        if unit == "D":
            days = np.unique(s.day[:hi])
            if days.size == 0:
                return hi
            first = days[max(days.size - n, 0)]
            return int(np.searchsorted(s.day[:hi], first, side="left"))
        end_ts = pd.Timestamp(end, unit="ns", tz="UTC")
        span = {
            "S": pd.Timedelta(seconds=n),
            "W": pd.Timedelta(days=7 * n),
            "M": pd.DateOffset(months=n),
            "Y": pd.DateOffset(years=n),
        }[unit]
        start = (end_ts - span).value
        return int(np.searchsorted(s.ts[:hi], start, side="left"))

    def _stream_bar(self) -> None:
        for conn in [c for c in self._conns if c.ready and c.keep_up]:
            for req_id, request in list(conn.keep_up.items()):
                bar_s = _bar_size_s(request.bar_size)
                window = f"{max(int(bar_s) if bar_s != 'day' else 86_400, 1)} S"
                live = dataclasses.replace(request, duration=window, end_ns=None)
                try:
                    rows, daily = self._history(live)
                except _RequestError:
                    continue
                if not rows:
                    continue
                date, o, h, lo, c, volume, wap, count = self._bar_fields(rows[-1], request, daily)
                self._send(conn, 90, req_id, count, date, o, c, h, lo, wap, volume)

    def _on_req_head_timestamp(self, conn: _Connection, fields: list[str]) -> None:
        req_id = _int(fields[1])
        symbol = self._market.resolve(fields[2:14])
        if symbol is None:
            self._error(conn, req_id, 200, _NO_SECURITY)
            return
        first = int(self._market.series[symbol].ts[0])
        format_date = _int(fields[17] if len(fields) > 17 else "1", 1)
        self._send(conn, 88, req_id, first // _NS if format_date == 2 else _tws_time(first))

    # -- MESSAGE BUILDERS -------------------------------------------------------------

    def _order_status(self, order: EmulatedOrder, last_fill: float = 0.0) -> list[object]:
        remaining = 0.0 if order.status in _DONE else order.totalQuantity - order.filled
        return [
            3,
            order.orderId,
            order.status,
            order.filled,
            remaining,
            order.avgFillPrice,
            order.permId,
            0,  # parentId
            last_fill,
            order.clientId,
            "",  # whyHeld
            0,  # mktCapPrice
        ]

    def _order_prices(self, order: EmulatedOrder) -> tuple[object, object]:
        # TWS reports 0 (not "unset") for the prices an order type does not use.
        return (order.lmtPrice or 0.0, order.auxPrice or 0.0)

    def _open_order(
        self, order: EmulatedOrder, version: int, *, what_if: dict[str, object] | None = None
    ) -> list[object]:
        lmt, aux = self._order_prices(order)
        out: list[object] = [5, order.orderId, *self._contract_tail(order.symbol, _EXCHANGE)]
        out += [order.action, order.totalQuantity, order.orderType, lmt, aux, order.tif or "DAY"]
        out += ["", order.account, "O", 0, order.orderRef, order.clientId, order.permId]
        out += [0, 0, 0, "", "", "", "", ""]  # outsideRth .. faPercentage
        if version < _V_NO_FA_PROFILE:
            out.append("")
        out += ["", "", "", "", "", 0, "", -1, 0, "", "", "", "", "", 0, 0, 0, 0, "", 0]
        out += [0, 0, "", 0, 0, "", "", "", ""]  # eTradeOnly .. deltaNeutralAuxPrice
        out += [0, "", "", "", "", "", ""]  # continuousUpdate .. comboLegsDescrip
        out += [0, 0, 0]  # combo legs, order combo legs, smart combo routing params
        out += ["", "", ""]  # scaleInitLevelSize, scaleSubsLevelSize, scalePriceIncrement
        out += [""]  # hedgeType
        out += [0, "", "", 0, 0]  # optOutSmartRouting .. deltaNeutralContract present
        out += [""]  # algoStrategy
        status = "PreSubmitted" if what_if else order.status
        if what_if is None:
            margins = [""] * 9
            commission: object = self._order_commission(order)
        else:
            init, maint, equity = what_if["init"], what_if["maint"], what_if["equity"]
            margins = ["0", "0", equity, init, maint, "0", init, maint, equity]
            commission = what_if["commission"]
        out += [0, what_if is not None, status, *margins]
        out += [commission, "", "", _CURRENCY if commission != "" else "", ""]
        out += [0, 0]  # randomizeSize, randomizePrice
        out += [0]  # conditions
        out += ["None", "", "", "", "", "", "", 0, "", "", "", "", 0, 0, 0, 0]
        if version >= _V_DURATION:
            out.append("")
        if version >= _V_POST_TO_ATS:
            out.append("")
        if version >= _V_AUTO_CANCEL_PARENT:
            out.append(0)
        if version >= _V_PEGBEST:
            out += ["", "", "", "", ""]
        return out

    def _order_commission(self, order: EmulatedOrder) -> object:
        paid = sum(e.commission for e in self._executions if e.permId == order.permId)
        return paid if order.filled else ""

    def _completed_order(self, order: EmulatedOrder, version: int) -> list[object]:
        lmt, aux = self._order_prices(order)
        out: list[object] = [101, *self._contract_tail(order.symbol, _EXCHANGE)]
        out += [order.action, order.totalQuantity, order.orderType, lmt, aux, order.tif or "DAY"]
        out += ["", order.account, "O", 0, order.orderRef, order.permId]
        out += [0, 0, 0, "", "", "", ""]  # outsideRth .. faPercentage
        if version < _V_NO_FA_PROFILE:
            out.append("")
        out += ["", "", "", "", "", 0, "", -1, "", "", "", "", "", 0, 0, 0, "", 0, 0, "", ""]
        out += ["", ""]  # deltaNeutralOrderType, deltaNeutralAuxPrice
        out += [0, "", "", "", ""]  # continuousUpdate .. comboLegsDescrip
        out += [0, 0, 0]  # combo legs, order combo legs, smart combo routing params
        out += ["", "", ""]  # scale sizes and increment
        out += [""]  # hedgeType
        out += ["", "", 0, 0]  # clearingAccount, clearingIntent, notHeld, dnc present
        out += [""]  # algoStrategy
        out += [0, order.status, 0, 0]  # solicited, status, randomizeSize, randomizePrice
        out += [0]  # conditions
        out += ["", "", "", 0, 0, "", order.filled, 0, 0, "", 0, 0, 0]
        completed = order.reason or f"{order.status} Size: {_text(order.filled)}"
        out += [_tws_time(order.done_ts), completed]
        if version >= _V_PEGBEST:
            out += ["", "", "", "", ""]
        return out

    def _exec_details(self, req_id: int, ex: EmulatedExecution, version: int) -> list[object]:
        out: list[object] = [11, req_id, ex.orderId, *self._contract_tail(ex.symbol, _VENUE)]
        out += [ex.execId, _tws_time(ex.time), ex.account, _VENUE, ex.side, ex.shares, ex.price]
        out += [ex.permId, ex.clientId, 0, ex.cumQty, ex.avgPrice, ex.orderRef]
        out += ["", "", "", ex.lastLiquidity]  # evRule, evMultiplier, modelCode
        if version >= _V_PENDING_PRICE_REVISION:
            out.append(0)
        return out

    def _commission_report(self, ex: EmulatedExecution) -> list[object]:
        realized = _UNSET_DOUBLE if ex.realizedPNL is None else round(ex.realizedPNL, 6)
        return [59, 1, ex.execId, ex.commission, _CURRENCY, realized, _UNSET_DOUBLE, 0]


def _fill_price(order: EmulatedOrder, bar: _Bar) -> float | None:
    """Where an order fills on a bar, or None when the bar does not reach it."""
    buy = order.action == "BUY"
    if order.orderType == "MKT":
        return bar.open
    if order.orderType == "LMT" and order.lmtPrice is not None:
        limit = order.lmtPrice
        if buy:
            return min(bar.open, limit) if bar.low <= limit else None
        return max(bar.open, limit) if bar.high >= limit else None
    if order.orderType == "STP" and order.auxPrice is not None:
        stop = order.auxPrice
        if buy:
            return max(bar.open, stop) if bar.high >= stop else None
        return min(bar.open, stop) if bar.low <= stop else None
    return None


def _aggregate(s: _Series, idx: np.ndarray, keys: np.ndarray) -> list[_Bar]:
    """Merge consecutive bars with the same key; each is labelled by its first bar."""
    if idx.size == 0:
        return []
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    ends = np.r_[starts[1:], idx.size]
    out = []
    for a, b in zip(starts, ends, strict=True):
        rows = idx[a:b]
        volume = s.volume[rows]
        out.append(
            _Bar(
                ts=int(s.ts[rows[0]]),
                open=float(s.open[rows[0]]),
                high=float(s.high[rows].max()),
                low=float(s.low[rows].min()),
                close=float(s.close[rows[-1]]),
                volume=float(np.nansum(volume)) if np.isfinite(volume).any() else math.nan,
                day=int(s.day[rows[0]]),
            )
        )
    return out

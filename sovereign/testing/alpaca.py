"""A loopback Alpaca emulator for the adapter and its tests: trading REST, data REST, data stream.

It serves, on one ``http://127.0.0.1:P`` host, what alpaca-py's ``TradingClient``,
``StockHistoricalDataClient`` and ``StockDataStream`` talk to, with JSON and msgpack shaped
like Alpaca's so that the real clients parse them. The market is replayed from a
:class:`~sovereign.data.loaders.LoadedData`: bar ``index`` is the latest *completed* bar, the
REST and stream APIs never show a later one, and :meth:`AlpacaEmulator.advance` moves the
clock one bar on.

Fill model (the same as :mod:`sovereign.brokers.sim`, minus slippage and commission, since
Alpaca charges none):

* An order works from the first bar of its symbol that starts after it arrived.
* A market order fills at that bar's open. A buy limit fills when the bar trades at or
  below the limit, at min(open, limit); a sell limit when it trades at or above, at
  max(open, limit).
* With ``max_volume_share`` a bar fills at most that share of its volume (shared by the
  orders on that symbol); the rest carries over and the order is ``partially_filled``.
* ``day`` orders expire at the close of the session they were live for; ``gtc`` never.

Conventions an adapter must handle, because real Alpaca does the same:

* Daily bars are stamped at midnight America/New_York of their session date (the project
  stamps them at the 09:30 open); intraday bars at their start. Stream bars use the
  same stamps.
* ``accepted`` means received while the market is closed, ``new`` means live; an order
  goes accepted → new → partially_filled/filled, or to canceled/expired/rejected.
* Every number in trading JSON is a decimal string. Fills carry no execution id in the
  order JSON; ``GET /v2/account/activities/FILL`` lists each fill once with a unique,
  time-sortable ``id``.
* The data stream allows one connection per key (a second gets error 406 and is closed).
  It speaks msgpack when the client sends ``Content-Type: application/msgpack`` (alpaca-py
  does), JSON otherwise. Every completed bar goes out as a ``b`` message, daily data too.

Stand-ins where the data has nothing to offer: bars carry ``n`` = 0 and ``vw`` = the typical
price (h + l + c) / 3; every asset is on "NASDAQ", tradable, not shortable, not
fractionable. In ``"wall"`` mode the clock still moves in whole bars.

What it does not do: fractional, notional, stop, trailing and bracket orders, extended
hours, order replacement (PATCH), shorting (it is a cash account, multiplier 1),
regulatory fees, the trading stream, quotes and trades. Exact error messages are close to
Alpaca's but not guaranteed; match on the HTTP status.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import itertools
import json
import logging
import math
import re
import threading
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal, TypeVar
from zoneinfo import ZoneInfo

import msgpack
import numpy as np
import pandas as pd
from aiohttp import WSCloseCode, WSMsgType, web

from sovereign.data.loaders import LoadedData
from sovereign.data.validation import DAILY_INTERVAL_S

__all__ = ["AlpacaEmulator"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_NY = ZoneInfo("America/New_York")
_NS = 1_000_000_000
_DAY_NS = 86_400 * _NS
_SESSION_OPEN = time(9, 30)
_SESSION_CLOSE = time(16, 0)
_OPEN_STATUSES = frozenset({"new", "accepted", "partially_filled", "pending_new", "held"})
_STREAM_CHANNELS = (
    "trades",
    "quotes",
    "bars",
    "updatedBars",
    "dailyBars",
    "statuses",
    "lulds",
    "corrections",
    "cancelErrors",
)
# Alpaca's error codes are the HTTP status followed by a sub-code.
_ERROR_CODES = {
    400: 40010000,
    403: 40310000,
    404: 40410000,
    422: 40010001,
    429: 42910000,
    500: 50010000,
}
_TIMEFRAME = re.compile(r"^(\d+)(Min|T|Hour|H|Day|D|Week|W|Month|M)$")
_UNITS = {"T": "Min", "H": "Hour", "D": "Day", "W": "Week", "M": "Month"}
_MAX_AMOUNT = {"Min": 59, "Hour": 23, "Day": 1, "Week": 1}
_MONTH_AMOUNTS = frozenset({1, 2, 3, 4, 6, 12})


# -- WIRE HELPERS --


class _ApiError(Exception):
    """An error answer, raised anywhere below a handler and rendered by the middleware."""

    def __init__(self, status: int, message: str, *, code: int | None = None, **extra: str) -> None:
        super().__init__(message)
        self.status = status
        self.body: dict[str, Any] = {}
        if code is not None or status in _ERROR_CODES:
            self.body["code"] = code if code is not None else _ERROR_CODES[status]
        self.body["message"] = message
        self.body.update(extra)


def _num(x: float) -> str:
    # Alpaca sends quantities and money as decimal strings, integers without a point.
    if math.isfinite(x) and x == int(x):
        return str(int(x))
    return format(round(x, 8), "f").rstrip("0").rstrip(".")


def _iso(ns: int) -> str:
    dt = datetime.fromtimestamp(ns // _NS, tz=UTC) + timedelta(microseconds=(ns % _NS) // 1000)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _iso_or_none(ns: int | None) -> str | None:
    return None if ns is None else _iso(ns)


def _bar_time(ns: int) -> str:
    # Bar stamps are whole seconds on the wire (RFC 3339 without a fraction).
    if ns % _NS:
        return _iso(ns)
    return datetime.fromtimestamp(ns // _NS, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ny_iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / _NS, tz=_NY).isoformat()


def _ny_ns(day: date, at: time) -> int:
    return int(datetime.combine(day, at, tzinfo=_NY).timestamp()) * _NS


def _ny_midnights(days: np.ndarray) -> np.ndarray:
    """Return midnight America/New_York, as int64 ns UTC, of each datetime64[D] day."""
    if len(days) == 0:
        return np.empty(0, dtype=np.int64)
    uniq, inverse = np.unique(days, return_inverse=True)
    ns = pd.DatetimeIndex(uniq.astype("datetime64[ns]")).tz_localize(_NY).asi8
    return ns[inverse]


def _parse_time(text: str, name: str) -> int:
    # An unencoded "+" in a query string arrives as a space.
    text = text.strip().replace(" ", "+")
    try:
        if len(text) == 10:
            return _ny_ns(date.fromisoformat(text), time(0, 0))
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise _ApiError(400, f"invalid {name}: {text!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return (dt - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1) * 1000


def _int_param(query: Any, name: str, default: int, low: int, high: int) -> int:
    text = query.get(name)
    if text in (None, ""):
        return default
    try:
        value = int(float(text))
    except ValueError:
        raise _ApiError(422, f"invalid {name}: {text!r}") from None
    if value < low:
        raise _ApiError(422, f"{name} must be at least {low}")
    return min(value, high)


def _truthy(text: str | None) -> bool:
    return (text or "").strip().lower() in {"true", "1", "yes"}


def _symbols_param(query: Any) -> list[str]:
    return [s for s in (query.get("symbols") or "").split(",") if s]


def _asset_id(symbol: str) -> str:
    # Stable across runs, so a restarted adapter sees the same asset ids.
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"alpaca-emulator/asset/{symbol}"))


# -- MARKET DATA --


@dataclass(slots=True)
class _Series:
    """One symbol's bars as arrays, sorted by bar start."""

    ts: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    day: np.ndarray  # datetime64[D]: the New York date of the bar
    day_ns: np.ndarray  # midnight New York of that date, ns UTC


@dataclass(frozen=True, slots=True)
class _TimeFrame:
    amount: int
    unit: Literal["Min", "Hour", "Day", "Week", "Month"]

    @property
    def seconds(self) -> int:
        return self.amount * (60 if self.unit == "Min" else 3600)


def _parse_timeframe(text: str | None) -> _TimeFrame:
    match = _TIMEFRAME.match(text or "")
    if match is None:
        raise _ApiError(400, f"invalid timeframe: {text!r}")
    amount, unit = int(match.group(1)), match.group(2)
    unit = _UNITS.get(unit, unit)
    valid = amount in _MONTH_AMOUNTS if unit == "Month" else 1 <= amount <= _MAX_AMOUNT[unit]
    if not valid:
        raise _ApiError(400, f"invalid timeframe: {text!r}")
    return _TimeFrame(amount, unit)  # type: ignore[arg-type]


class _Calendar:
    """Regular sessions (09:30–16:00 New York) on the dates the data has bars for.

    Early closes are ignored; past the data's last date, weekdays are assumed.
    """

    def __init__(self, days: np.ndarray) -> None:
        self._days = [pd.Timestamp(d).date() for d in np.unique(days)]
        self.opens = np.array([_ny_ns(d, _SESSION_OPEN) for d in self._days], dtype=np.int64)
        self.closes = np.array([_ny_ns(d, _SESSION_CLOSE) for d in self._days], dtype=np.int64)

    def _extrapolate(self, now_ns: int, at: time) -> int:
        day = self._days[-1] if self._days else datetime.fromtimestamp(now_ns / _NS, _NY).date()
        while True:
            day += timedelta(days=1)
            if day.weekday() < 5 and _ny_ns(day, at) > now_ns:
                return _ny_ns(day, at)

    def is_open(self, now_ns: int) -> bool:
        i = int(np.searchsorted(self.opens, now_ns, side="right")) - 1
        return i >= 0 and now_ns < int(self.closes[i])

    def next_open(self, now_ns: int) -> int:
        i = int(np.searchsorted(self.opens, now_ns, side="right"))
        return (
            int(self.opens[i]) if i < len(self.opens) else self._extrapolate(now_ns, _SESSION_OPEN)
        )

    def next_close(self, now_ns: int) -> int:
        i = int(np.searchsorted(self.closes, now_ns, side="right"))
        if i < len(self.closes):
            return int(self.closes[i])
        return self._extrapolate(now_ns, _SESSION_CLOSE)


class _Market:
    """The replayed bars: per-timestamp rows for the clock, per-symbol series for queries."""

    def __init__(self, data: LoadedData) -> None:
        frame = data.frame.sort_values(["ts", "symbol"], kind="stable").reset_index(drop=True)
        self.daily = data.interval_s == DAILY_INTERVAL_S
        self.interval_s = int(data.interval_s)
        self.timestamps = data.timestamps.astype(np.int64)
        if len(self.timestamps) == 0:
            raise ValueError("the emulator needs at least one bar")
        ts = frame["ts"].to_numpy(dtype=np.int64)
        local = pd.DatetimeIndex(ts).tz_localize("UTC").tz_convert(_NY).tz_localize(None)
        day = local.normalize().to_numpy().astype("datetime64[D]")
        day_ns = _ny_midnights(day)
        self.calendar = _Calendar(day)
        self._row_start = np.searchsorted(ts, self.timestamps, side="left")
        self._row_end = np.searchsorted(ts, self.timestamps, side="right")
        self._symbol = frame["symbol"].to_numpy(dtype=object)
        cols = {c: frame[c].to_numpy(dtype=np.float64) for c in ("open", "high", "low", "close")}
        self._cols = cols
        self._volume = np.nan_to_num(frame["volume"].to_numpy(dtype=np.float64), nan=0.0)
        self._volume_known = frame["volume"].notna().to_numpy()
        self._day_ns = day_ns
        self.series: dict[str, _Series] = {}
        for symbol, rows in frame.groupby("symbol", sort=True).indices.items():
            self.series[str(symbol)] = _Series(
                ts=ts[rows],
                open=cols["open"][rows],
                high=cols["high"][rows],
                low=cols["low"][rows],
                close=cols["close"][rows],
                volume=self._volume[rows],
                day=day[rows],
                day_ns=day_ns[rows],
            )
        self.asset_ids = {_asset_id(s): s for s in self.series}

    def stamp(self, ts: int, day_ns: int) -> int:
        """Alpaca's stamp for a raw bar: midnight New York for daily bars, else the start."""
        return day_ns if self.daily else ts

    def rows_at(self, index: int) -> Iterator[tuple[str, float, float, float, float, float, int]]:
        """Yield (symbol, open, high, low, close, volume, stamp) of every bar at ``index``."""
        c = self._cols
        for r in range(int(self._row_start[index]), int(self._row_end[index])):
            yield (
                str(self._symbol[r]),
                float(c["open"][r]),
                float(c["high"][r]),
                float(c["low"][r]),
                float(c["close"][r]),
                float(self._volume[r]) if self._volume_known[r] else math.nan,
                self.stamp(int(self.timestamps[index]), int(self._day_ns[r])),
            )

    def visible(self, symbol: str, cutoff_ns: int) -> int:
        """How many of ``symbol``'s bars start at or before ``cutoff_ns``."""
        s = self.series.get(symbol)
        return 0 if s is None else int(np.searchsorted(s.ts, cutoff_ns, side="right"))

    def last_close(self, symbol: str, cutoff_ns: int) -> float | None:
        """The latest visible close: the mark for positions and buying power."""
        e = self.visible(symbol, cutoff_ns)
        return float(self.series[symbol].close[e - 1]) if e else None

    def lastday_close(self, symbol: str, cutoff_ns: int) -> float | None:
        """The close of the last bar of the session before the latest visible one."""
        e = self.visible(symbol, cutoff_ns)
        if not e:
            return None
        s = self.series[symbol]
        i = int(np.searchsorted(s.day[:e], s.day[e - 1], side="left")) - 1
        return float(s.close[i]) if i >= 0 else None

    # -- BAR QUERIES --

    def check_timeframe(self, tf: _TimeFrame) -> None:
        """Refuse a timeframe finer than the data (real Alpaca would serve it)."""
        intraday = tf.unit in ("Min", "Hour")
        if intraday and self.daily:
            raise _ApiError(
                422, f"the emulator's data is daily; it cannot serve {tf.amount}{tf.unit} bars"
            )
        if intraday and self.interval_s and tf.seconds % self.interval_s:
            raise _ApiError(
                422,
                f"the emulator's bars are {self.interval_s} s; it cannot serve "
                f"{tf.amount}{tf.unit} bars",
            )

    def _bucket_keys(self, s: _Series, e: int, tf: _TimeFrame) -> np.ndarray:
        if tf.unit in ("Min", "Hour"):
            step = tf.seconds * _NS
            return (s.ts[:e] // step) * step
        if tf.unit == "Day":
            return s.day_ns[:e]
        days = s.day[:e]
        if tf.unit == "Week":
            # 1970-01-01 was a Thursday: (days + 3) % 7 is 0 on Mondays.
            weekday = (days.astype(np.int64) + 3) % 7
            return _ny_midnights(days - weekday.astype("timedelta64[D]"))
        months = days.astype("datetime64[M]").astype(np.int64)
        months -= months % tf.amount
        return _ny_midnights(months.astype("datetime64[M]").astype("datetime64[D]"))

    def aggregate(self, symbol: str, cutoff_ns: int, tf: _TimeFrame) -> dict[str, np.ndarray]:
        """Aggregate a symbol's visible bars into ``tf`` buckets (the last may be partial)."""
        s = self.series.get(symbol)
        e = self.visible(symbol, cutoff_ns)
        if s is None or e == 0:
            empty = np.empty(0)
            return {"t": np.empty(0, dtype=np.int64), **dict.fromkeys("ohlcvw", empty)}
        keys = self._bucket_keys(s, e, tf)
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
        ends = np.r_[starts[1:], e] - 1
        volume = np.add.reduceat(s.volume[:e], starts)
        # The data has no VWAP: the bar's typical price stands in for it.
        typical = (s.high[:e] + s.low[:e] + s.close[:e]) / 3.0
        weighted = np.add.reduceat(typical * s.volume[:e], starts)
        close = s.close[ends]
        return {
            "t": keys[starts],
            "o": s.open[starts],
            "h": np.maximum.reduceat(s.high[:e], starts),
            "l": np.minimum.reduceat(s.low[:e], starts),
            "c": close,
            "v": volume,
            "w": np.divide(weighted, volume, out=close.copy(), where=volume > 0),
        }


def _bar_json(agg: dict[str, np.ndarray], i: int) -> dict[str, Any]:
    # Alpaca always sends n and vw; the data has neither, so n is 0 and vw the typical price.
    return {
        "t": _bar_time(int(agg["t"][i])),
        "o": float(agg["o"][i]),
        "h": float(agg["h"][i]),
        "l": float(agg["l"][i]),
        "c": float(agg["c"][i]),
        "v": round(float(agg["v"][i])),
        "n": 0,
        "vw": round(float(agg["w"][i]), 6),
    }


def _encode_token(symbol: str, key: int) -> str:
    return base64.urlsafe_b64encode(f"{symbol}\n{key}".encode()).decode()


def _decode_token(token: str) -> tuple[str, int]:
    try:
        symbol, _, key = base64.urlsafe_b64decode(token.encode()).decode().partition("\n")
        return symbol, int(key)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise _ApiError(400, "invalid page_token") from None


@dataclass(frozen=True, slots=True)
class _BarQuery:
    symbols: list[str]
    timeframe: _TimeFrame
    start_ns: int
    end_ns: int
    limit: int
    page_token: str | None
    descending: bool


def _query_bars(
    market: _Market, q: _BarQuery, cutoff_ns: int
) -> tuple[dict[str, list[dict[str, Any]]], str | None]:
    """Page through bars ordered by symbol, then time, as Alpaca's multi-symbol endpoint does."""
    after = _decode_token(q.page_token) if q.page_token else None
    out: dict[str, list[dict[str, Any]]] = {}
    last: tuple[str, int] | None = None
    taken = 0
    for symbol in sorted(set(q.symbols)):
        if after is not None and symbol < after[0]:
            continue
        agg = market.aggregate(symbol, cutoff_ns, q.timeframe)
        keys = agg["t"]
        lo = int(np.searchsorted(keys, q.start_ns, side="left"))
        hi = int(np.searchsorted(keys, q.end_ns, side="right"))
        if after is not None and symbol == after[0]:
            if q.descending:
                hi = min(hi, int(np.searchsorted(keys, after[1], side="left")))
            else:
                lo = max(lo, int(np.searchsorted(keys, after[1], side="right")))
        order = range(hi - 1, lo - 1, -1) if q.descending else range(lo, hi)
        for i in order:
            # A token only when another bar exists, as Alpaca's last page has none.
            if last is not None and taken == q.limit:
                return out, _encode_token(*last)
            out.setdefault(symbol, []).append(_bar_json(agg, i))
            last = (symbol, int(keys[i]))
            taken += 1
    return out, None


# -- ACCOUNT, ORDERS AND POSITIONS --


@dataclass(slots=True)
class _OrderSpec:
    """A validated order request."""

    symbol: str
    qty: int
    side: Literal["buy", "sell"]
    type: Literal["market", "limit"]
    time_in_force: Literal["day", "gtc"]
    limit_price: float | None
    client_order_id: str | None


def _parse_qty(payload: dict[str, Any]) -> int:
    if payload.get("notional") not in (None, ""):
        raise _ApiError(422, "notional orders are not supported by the emulator")
    raw = payload.get("qty")
    if raw in (None, ""):
        raise _ApiError(422, "qty is required")
    try:
        qty = float(raw)
    except (TypeError, ValueError):
        raise _ApiError(422, f"invalid qty: {raw!r}") from None
    if not math.isfinite(qty) or qty <= 0:
        raise _ApiError(422, "qty must be > 0")
    if qty != int(qty):
        raise _ApiError(422, "fractional orders are not supported by the emulator")
    return int(qty)


def _parse_limit_price(payload: dict[str, Any], order_type: str) -> float | None:
    raw = payload.get("limit_price")
    if order_type == "market":
        if raw not in (None, ""):
            raise _ApiError(422, "limit_price is not allowed for market orders")
        return None
    if raw in (None, ""):
        raise _ApiError(422, "limit_price is required for limit orders")
    try:
        price = float(raw)
    except (TypeError, ValueError):
        raise _ApiError(422, f"invalid limit_price: {raw!r}") from None
    if not math.isfinite(price) or price <= 0:
        raise _ApiError(422, "limit_price must be > 0")
    # Alpaca enforces the sub-penny rule: cents at $1 and above, 1/100 cent below.
    places = 2 if price >= 1.0 else 4
    if abs(price * 10**places - round(price * 10**places)) > 1e-6:
        raise _ApiError(
            422,
            f"invalid limit_price {raw}. sub-penny increment does not fulfill minimum "
            "pricing criteria",
            code=42210000,
        )
    return price


def _parse_order(payload: dict[str, Any], known: Callable[[str], bool]) -> _OrderSpec:
    """Validate a POST /v2/orders body, raising what Alpaca would answer."""
    symbol = payload.get("symbol")
    if not isinstance(symbol, str) or not symbol:
        raise _ApiError(422, "symbol is required")
    if not known(symbol):
        raise _ApiError(422, f'asset "{symbol}" not found')
    side = payload.get("side")
    if side not in ("buy", "sell"):
        raise _ApiError(422, f"invalid side: {side!r}")
    order_type = payload.get("type") or payload.get("order_type")
    if order_type not in ("market", "limit"):
        raise _ApiError(422, f"order type {order_type!r} is not supported by the emulator")
    tif = payload.get("time_in_force")
    if tif not in ("day", "gtc"):
        raise _ApiError(422, f"time_in_force {tif!r} is not supported by the emulator")
    if payload.get("order_class") not in (None, "", "simple"):
        raise _ApiError(422, "only simple orders are supported by the emulator")
    if _truthy(str(payload.get("extended_hours", ""))):
        raise _ApiError(422, "extended hours orders are not supported by the emulator")
    coid = payload.get("client_order_id")
    if coid is not None and (not isinstance(coid, str) or len(coid) > 128):
        raise _ApiError(422, "client_order_id must be no more than 128 characters")
    return _OrderSpec(
        symbol=symbol,
        qty=_parse_qty(payload),
        side=side,
        type=order_type,
        time_in_force=tif,
        limit_price=_parse_limit_price(payload, order_type),
        client_order_id=coid or None,
    )


@dataclass(slots=True)
class _Order:
    id: str
    client_order_id: str
    seq: int
    symbol: str
    side: str
    type: str
    time_in_force: str
    qty: int
    limit_price: float | None
    position_intent: str
    status: str
    submitted_ns: int
    updated_ns: int
    expires_ns: int | None
    reject_reason: str | None = None
    filled_qty: int = 0
    filled_value: float = 0.0
    filled_ns: int | None = None
    canceled_ns: int | None = None
    expired_ns: int | None = None
    failed_ns: int | None = None

    @property
    def remaining(self) -> int:
        return self.qty - self.filled_qty

    @property
    def is_open(self) -> bool:
        return self.status in _OPEN_STATUSES

    def to_json(self) -> dict[str, Any]:
        avg = self.filled_value / self.filled_qty if self.filled_qty else None
        return {
            "id": self.id,
            "client_order_id": self.client_order_id,
            "created_at": _iso(self.submitted_ns),
            "updated_at": _iso(self.updated_ns),
            "submitted_at": _iso(self.submitted_ns),
            "filled_at": _iso_or_none(self.filled_ns),
            "expired_at": _iso_or_none(self.expired_ns),
            "expires_at": _iso_or_none(self.expires_ns),
            "canceled_at": _iso_or_none(self.canceled_ns),
            "failed_at": _iso_or_none(self.failed_ns),
            "replaced_at": None,
            "replaced_by": None,
            "replaces": None,
            "asset_id": _asset_id(self.symbol),
            "symbol": self.symbol,
            "asset_class": "us_equity",
            "notional": None,
            "qty": str(self.qty),
            "filled_qty": str(self.filled_qty),
            "filled_avg_price": None if avg is None else _num(avg),
            # Alpaca sends an empty order_class for simple orders.
            "order_class": "",
            "order_type": self.type,
            "type": self.type,
            "side": self.side,
            "position_intent": self.position_intent,
            "time_in_force": self.time_in_force,
            "limit_price": None if self.limit_price is None else _num(self.limit_price),
            "stop_price": None,
            "status": self.status,
            "extended_hours": False,
            "legs": None,
            "trail_percent": None,
            "trail_price": None,
            "hwm": None,
            "subtag": None,
            "source": None,
        }


@dataclass(slots=True)
class _Position:
    qty: int = 0
    cost: float = 0.0


@dataclass(slots=True)
class _Bar:
    open: float
    high: float
    low: float
    close: float
    volume: float


class _Book:
    """The account: cash, positions, orders and fill activities. Pure; no I/O, no clock.

    Parameters
    ----------
    initial_cash
        Starting cash.
    mark
        The latest visible close of a symbol (None before its first bar), for buying
        power and position values.
    """

    def __init__(self, initial_cash: float, mark: Callable[[str], float | None]) -> None:
        self.cash = float(initial_cash)
        self.mark = mark
        self.account_id = str(uuid.uuid4())
        self.orders: dict[str, _Order] = {}
        self.by_client_id: dict[str, str] = {}
        self.positions: dict[str, _Position] = {}
        self.activities: list[dict[str, Any]] = []
        self._seq = itertools.count()

    # -- QUERIES --

    def open_orders(self) -> list[_Order]:
        return [o for o in self.orders.values() if o.is_open]

    def held_for_sells(self, symbol: str) -> int:
        return sum(
            o.remaining for o in self.open_orders() if o.symbol == symbol and o.side == "sell"
        )

    def buying_power(self) -> float:
        # Open buys reserve cash at their limit, or at the mark for market orders.
        reserved = 0.0
        for o in self.open_orders():
            if o.side == "buy":
                price = o.limit_price if o.limit_price is not None else self.mark(o.symbol)
                reserved += o.remaining * (price or 0.0)
        return max(self.cash - reserved, 0.0)

    def long_market_value(self) -> float:
        return sum(p.qty * (self.mark(s) or p.cost / p.qty) for s, p in self.positions.items())

    def get(self, order_id: str) -> _Order:
        order = self.orders.get(order_id)
        if order is None:
            raise _ApiError(404, "order not found")
        return order

    # -- COMMANDS --

    def submit(
        self,
        spec: _OrderSpec,
        *,
        now_ns: int,
        market_open: bool,
        expires_ns: int | None,
        reject_reason: str | None = None,
    ) -> _Order:
        """Accept an order or raise the refusal Alpaca would send."""
        coid = spec.client_order_id or str(uuid.uuid4())
        if coid in self.by_client_id:
            raise _ApiError(422, "client_order_id must be unique")
        held = self.positions.get(spec.symbol, _Position()).qty
        if spec.side == "sell":
            available = held - self.held_for_sells(spec.symbol)
            if spec.qty > available:
                raise _ApiError(
                    403,
                    f"insufficient qty available for order (requested: {spec.qty}, "
                    f"available: {available})",
                    available=str(available),
                    existing_qty=str(held),
                    held_for_orders=str(held - available),
                    symbol=spec.symbol,
                )
        else:
            price = spec.limit_price if spec.limit_price is not None else self.mark(spec.symbol)
            power = self.buying_power()
            if price is not None and spec.qty * price > power + 1e-9:
                raise _ApiError(
                    403,
                    "insufficient buying power",
                    buying_power=_num(power),
                    cost_basis=_num(spec.qty * price),
                )
        intent = "buy_to_open" if spec.side == "buy" else "sell_to_close"
        order = _Order(
            id=str(uuid.uuid4()),
            client_order_id=coid,
            seq=next(self._seq),
            symbol=spec.symbol,
            side=spec.side,
            type=spec.type,
            time_in_force=spec.time_in_force,
            qty=spec.qty,
            limit_price=spec.limit_price,
            position_intent=intent,
            status="new" if market_open else "accepted",
            submitted_ns=now_ns,
            updated_ns=now_ns,
            expires_ns=expires_ns if spec.time_in_force == "day" else None,
            reject_reason=reject_reason,
        )
        self.orders[order.id] = order
        self.by_client_id[coid] = order.id
        return order

    def cancel(self, order_id: str, now_ns: int) -> _Order:
        order = self.get(order_id)
        if not order.is_open:
            raise _ApiError(422, f'order is already in "{order.status}" state', code=42210000)
        order.status = "canceled"
        order.canceled_ns = order.updated_ns = now_ns
        return order

    def on_bar(
        self, ts: int, bars: dict[str, _Bar], max_volume_share: float | None
    ) -> list[dict[str, Any]]:
        """Work every open order against the bars starting at ``ts``; return new fills."""
        used: dict[str, float] = {}
        fills = []
        for order in sorted(self.open_orders(), key=lambda o: o.seq):
            if order.reject_reason is not None:
                order.status = "rejected"
                order.failed_ns = order.updated_ns = ts
                continue
            if order.expires_ns is not None and ts >= order.expires_ns:
                order.status = "expired"
                order.expired_ns = order.updated_ns = order.expires_ns
                continue
            if order.status == "accepted":
                order.status = "new"
                order.updated_ns = ts
            bar = bars.get(order.symbol)
            price = None if bar is None else _fill_price(order, bar)
            if bar is None or price is None:
                continue
            qty = order.remaining
            if max_volume_share is not None and math.isfinite(bar.volume):
                cap = math.floor(bar.volume * max_volume_share - used.get(order.symbol, 0.0))
                qty = min(qty, max(cap, 0))
            if qty > 0:
                used[order.symbol] = used.get(order.symbol, 0.0) + qty
                fills.append(self._fill(order, qty, price, ts))
        return fills

    def _fill(self, order: _Order, qty: int, price: float, ts: int) -> dict[str, Any]:
        pos = self.positions.setdefault(order.symbol, _Position())
        if order.side == "buy":
            pos.qty += qty
            pos.cost += qty * price
            self.cash -= qty * price
        else:
            if qty > pos.qty:  # submit() reserves the shares, so this is a bug
                raise RuntimeError(f"sell fill of {qty} exceeds the {pos.qty} held")
            pos.cost -= pos.cost * qty / pos.qty
            pos.qty -= qty
            self.cash += qty * price
        if pos.qty == 0:
            del self.positions[order.symbol]
        order.filled_qty += qty
        order.filled_value += qty * price
        order.updated_ns = ts
        complete = order.remaining == 0
        order.status = "filled" if complete else "partially_filled"
        if complete:
            order.filled_ns = ts
        stamp = datetime.fromtimestamp(ts / _NS, tz=UTC).strftime("%Y%m%d%H%M%S%f")[:17]
        activity = {
            # Alpaca's activity ids are "<yyyymmddhhmmssmmm>::<uuid>": unique, time-sortable.
            "id": f"{stamp}::{uuid.uuid4()}",
            "account_id": self.account_id,
            "activity_type": "FILL",
            "transaction_time": _iso(ts),
            "type": "fill" if complete else "partial_fill",
            "price": _num(price),
            "qty": str(qty),
            "side": order.side,
            "symbol": order.symbol,
            "leaves_qty": str(order.remaining),
            "order_id": order.id,
            "cum_qty": str(order.filled_qty),
            "order_status": order.status,
        }
        self.activities.append(activity)
        return activity


def _fill_price(order: _Order, bar: _Bar) -> float | None:
    if order.type == "market":
        return bar.open
    limit = order.limit_price
    assert limit is not None
    if order.side == "buy":
        return min(bar.open, limit) if bar.low <= limit else None
    return max(bar.open, limit) if bar.high >= limit else None


# -- STREAM CLIENTS --


@dataclass(eq=False, slots=True)
class _StreamClient:
    ws: web.WebSocketResponse
    use_msgpack: bool
    authenticated: bool = False
    key: str = ""
    subs: dict[str, set[str]] = field(default_factory=lambda: {c: set() for c in _STREAM_CHANNELS})

    async def send(self, messages: list[dict[str, Any]]) -> None:
        if self.ws.closed:
            return
        if self.use_msgpack:
            # alpaca-py calls .to_datetime() on "t": it must be a msgpack Timestamp.
            for m in messages:
                if isinstance(m.get("t"), int):
                    m["t"] = msgpack.Timestamp.from_unix_nano(m["t"])
            await self.ws.send_bytes(msgpack.packb(messages))
        else:
            for m in messages:
                if isinstance(m.get("t"), int):
                    m["t"] = _bar_time(m["t"])
            await self.ws.send_str(json.dumps(messages))

    def wants(self, channel: str, symbol: str) -> bool:
        subs = self.subs[channel]
        return symbol in subs or "*" in subs

    def subscription(self) -> dict[str, Any]:
        msg: dict[str, Any] = {"T": "subscription"}
        msg.update({c: sorted(self.subs[c]) for c in _STREAM_CHANNELS})
        return msg


# -- THE EMULATOR --


class AlpacaEmulator:
    """An Alpaca trading + market-data server on loopback, in its own thread and event loop.

    Parameters
    ----------
    data
        The bars to replay (``load_ohlcv("sample")`` or ``load_ohlcv("sample:minute")`` in
        tests).
    port
        TCP port on 127.0.0.1; 0 picks a free one.
    key_id, secret
        The only credentials accepted (``APCA-API-KEY-ID`` / ``APCA-API-SECRET-KEY``).
    clock
        ``"manual"``: the market moves only on :meth:`advance`. ``"wall"``: it also moves one
        bar every ``interval_s / speed`` wall seconds.
    speed
        Market seconds per wall second in ``"wall"`` mode.
    start_index
        Index of the bar that is the latest completed one at start (clipped to the data).
    initial_cash
        Cash at start; the account is a cash account (multiplier 1, no shorting).
    max_volume_share
        If set, a bar fills at most this share of its volume per symbol (partial fills);
        None fills any size.
    bars_page_limit
        Most bars in one page of ``/v2/stocks/bars`` (Alpaca: 10,000); lower it to make
        clients paginate on small data.
    """

    def __init__(
        self,
        data: LoadedData,
        *,
        port: int = 0,
        key_id: str = "test-key",
        secret: str = "test-secret",
        clock: Literal["manual", "wall"] = "manual",
        speed: float = 60.0,
        start_index: int = 50,
        initial_cash: float = 100_000.0,
        max_volume_share: float | None = None,
        bars_page_limit: int = 10_000,
    ) -> None:
        if clock not in ("manual", "wall"):
            raise ValueError(f"clock must be 'manual' or 'wall', not {clock!r}")
        if speed <= 0:
            raise ValueError("speed must be positive")
        if max_volume_share is not None and not 0 < max_volume_share <= 1:
            raise ValueError("max_volume_share must be in (0, 1]")
        self._market = _Market(data)
        self._key_id = key_id
        self._secret = secret
        self._clock_mode = clock
        self._speed = float(speed)
        self._index = min(max(int(start_index), 0), len(self._market.timestamps) - 1)
        self._max_volume_share = max_volume_share
        self._bars_page_limit = max(int(bars_page_limit), 1)
        self._book = _Book(initial_cash, lambda s: self._market.last_close(s, self.bar_ts))
        self._account_number = "PA" + uuid.uuid4().hex[:10].upper()
        self._created_ns = int(self._market.timestamps[0])
        self._last_equity = float(initial_cash)
        self._requested_port = int(port)
        self._port: int | None = None
        # Fault injection, read on the loop thread.
        self._down: Literal["refuse", "503"] | None = None
        self._delay = 0.0
        self._reject: tuple[str, int, bool] | None = None
        self._fail: list[tuple[int, str]] = []
        # Set by start().
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._clients: set[_StreamClient] = set()

    # -- LIFECYCLE --

    def start(self) -> int:
        """Start serving in a background thread; return the port."""
        if self._thread is not None:
            raise RuntimeError("the emulator is already started")
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(
            target=self._run_loop, args=(loop,), name="alpaca-emulator", daemon=True
        )
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), loop).result(timeout=10)
        assert self._port is not None
        log.info("alpaca emulator listening on %s", self.base_url)
        return self._port

    def stop(self) -> None:
        """Close the stream clients and the server, then end the thread. Idempotent."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        self._loop = self._thread = None

    def __enter__(self) -> AlpacaEmulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def host(self) -> str:
        """The loopback address served."""
        return "127.0.0.1"

    @property
    def port(self) -> int:
        """The bound port (after :meth:`start`)."""
        if self._port is None:
            raise RuntimeError("the emulator is not started")
        return self._port

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:P``: the ``url_override`` for both REST clients."""
        return f"http://{self.host}:{self.port}"

    @property
    def stream_url(self) -> str:
        """``ws://127.0.0.1:P/v2/iex``: the ``url_override`` for ``StockDataStream``."""
        return f"ws://{self.host}:{self.port}/v2/iex"

    # -- CLOCK --

    @property
    def index(self) -> int:
        """Index (into ``data.timestamps``) of the latest completed bar."""
        return self._index

    @property
    def bar_ts(self) -> int:
        """Start (int64 ns UTC) of the latest completed bar."""
        return int(self._market.timestamps[self._index])

    def now_ts(self) -> int:
        """The market clock (int64 ns UTC): the end of the latest completed bar."""
        return self.bar_ts + self._market.interval_s * _NS

    def advance(self, bars: int = 1) -> None:
        """Complete ``bars`` more bars: fill working orders at each one and stream it.

        Returns once the bars have been written to every subscribed stream client.

        Raises
        ------
        IndexError
            If the data has fewer than ``bars`` bars left (nothing is advanced).
        """
        if bars < 1:
            raise ValueError("bars must be at least 1")
        left = len(self._market.timestamps) - 1 - self._index
        if bars > left:
            raise IndexError(f"cannot advance {bars} bars: only {left} left in the data")
        self._run(self._advance(bars))

    # -- INSPECTION (for tests) --

    def positions(self) -> dict[str, int]:
        """Shares held per symbol (no zero entries)."""
        return self._call(lambda: {s: p.qty for s, p in self._book.positions.items()})

    def cash(self) -> float:
        """Cash balance."""
        return self._call(lambda: self._book.cash)

    def orders(self) -> list[dict[str, Any]]:
        """Every order, as the JSON Alpaca would send, in submission order."""
        return self._call(
            lambda: [o.to_json() for o in sorted(self._book.orders.values(), key=lambda o: o.seq)]
        )

    def fills(self) -> list[dict[str, Any]]:
        """Every fill activity, as served by ``GET /v2/account/activities/FILL``, oldest first."""
        return self._call(lambda: [dict(a) for a in self._book.activities])

    def stream_subscriptions(self) -> list[dict[str, list[str]]]:
        """The channel → symbols subscriptions of each authenticated stream client."""
        return self._call(
            lambda: [
                {c: sorted(s) for c, s in client.subs.items() if s}
                for client in self._clients
                if client.authenticated
            ]
        )

    # -- FAULT INJECTION --

    def go_down(self, *, refuse: bool = True) -> None:
        """Take the API down until :meth:`come_up`.

        Parameters
        ----------
        refuse
            True: close the listening socket and every open connection, so clients get
            a connection refusal (``requests.ConnectionError`` at once; alpaca-py does not
            retry it). False: answer every request with 503 (an ``APIError`` at once; 503
            is not among alpaca-py's retried codes, 429 and 504 are). Either way the
            stream clients are disconnected and orders keep filling as the clock moves.
        """
        self._run(self._go_down("refuse" if refuse else "503"))

    def come_up(self) -> None:
        """Serve again, on the same port."""
        self._run(self._come_up())

    def reject_next_order(
        self, reason: str, *, status: int = 403, after_accept: bool = False
    ) -> None:
        """Refuse the next valid order submission.

        Parameters
        ----------
        reason
            The error message (``APIError.message``).
        status
            HTTP status of the refusal: 403 (Alpaca's answer for buying power, account
            restrictions) or 422 (validation).
        after_accept
            If True the submission succeeds and the order turns ``rejected`` at the next
            bar instead (``failed_at`` set), as a venue rejection does.
        """
        self._call(lambda: setattr(self, "_reject", (reason, int(status), after_accept)))

    def set_delay(self, seconds: float) -> None:
        """Delay every HTTP answer by ``seconds`` (alpaca-py sets no request timeout)."""
        if seconds < 0:
            raise ValueError("delay must be >= 0")
        self._call(lambda: setattr(self, "_delay", float(seconds)))

    def fail_next_requests(
        self, count: int = 1, *, status: int = 500, message: str = "internal server error"
    ) -> None:
        """Answer the next ``count`` HTTP requests with ``status``.

        429 and 504 make alpaca-py retry up to 3 times, 3 s apart.
        """
        self._call(lambda: self._fail.extend([(int(status), message)] * count))

    def drop_streams(self) -> None:
        """Disconnect every stream client (they may reconnect)."""
        self._run(self._close_streams())

    # -- THREAD PLUMBING --

    @staticmethod
    def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def _on_loop(self) -> bool:
        return self._loop is None or threading.current_thread() is self._thread

    def _call(self, fn: Callable[[], _T]) -> _T:
        # The book lives on the loop thread; callers on other threads queue onto it.
        if self._on_loop():
            return fn()

        async def run() -> _T:
            return fn()

        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=30)

    def _run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        if self._loop is None:
            return asyncio.run(coro)
        if threading.current_thread() is self._thread:
            raise RuntimeError("call the async variant from the emulator's own loop")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    async def _serve(self) -> None:
        app = web.Application(middlewares=[self._middleware])
        self._routes(app)
        # A short shutdown timeout: stop() closes the streams first, nothing else lingers.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await self._listen(self._requested_port)
        if self._clock_mode == "wall":
            self._ticker = asyncio.get_running_loop().create_task(self._tick())

    async def _listen(self, port: int) -> None:
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, self.host, port)
        await self._site.start()
        self._port = self._site.port

    async def _shutdown(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        await self._close_streams()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _tick(self) -> None:
        period = max(self._market.interval_s, 1) / self._speed
        while self._index < len(self._market.timestamps) - 1:
            await asyncio.sleep(period)
            await self._advance(1)

    # -- MARKET STEPS --

    async def _advance(self, bars: int) -> None:
        for _ in range(bars):
            if self._index >= len(self._market.timestamps) - 1:
                return
            if self._new_session(self._index + 1):
                self._last_equity = self._book.cash + self._book.long_market_value()
            self._index += 1
            ts = self.bar_ts
            rows = list(self._market.rows_at(self._index))
            bars_now = {r[0]: _Bar(*r[1:6]) for r in rows}
            self._book.on_bar(ts, bars_now, self._max_volume_share)
            await self._publish(rows)

    def _new_session(self, index: int) -> bool:
        prev = int(self._market.timestamps[index - 1]) if index else 0
        cal = self._market.calendar
        return cal.next_open(prev) <= int(self._market.timestamps[index])

    async def _publish(
        self, rows: list[tuple[str, float, float, float, float, float, int]]
    ) -> None:
        for client in list(self._clients):
            if not client.authenticated:
                continue
            messages = []
            for symbol, o, h, low, c, v, stamp in rows:
                bar = {"S": symbol, "o": o, "h": h, "l": low, "c": c}
                bar.update({"v": 0 if math.isnan(v) else round(v), "t": stamp, "n": 0})
                bar["vw"] = round((h + low + c) / 3.0, 6)
                if client.wants("bars", symbol):
                    messages.append({"T": "b", **bar})
                if self._market.daily and client.wants("dailyBars", symbol):
                    messages.append({"T": "d", **bar})
            if messages:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await client.send(messages)

    # -- FAULTS ON THE LOOP --

    async def _go_down(self, mode: Literal["refuse", "503"]) -> None:
        self._down = mode
        await self._close_streams()
        if mode == "refuse" and self._site is not None:
            await self._site.stop()
            self._site = None
            # Kept-alive connections would otherwise still be served.
            assert self._runner is not None and self._runner.server is not None
            for conn in self._runner.server.connections:
                conn.force_close()

    async def _come_up(self) -> None:
        if self._site is None:
            assert self._port is not None
            await self._listen(self._port)
        self._down = None

    async def _close_streams(self) -> None:
        clients, self._clients = list(self._clients), set()
        for client in clients:
            with contextlib.suppress(Exception):
                await client.ws.close(code=WSCloseCode.GOING_AWAY, message=b"server going away")

    # -- HTTP --

    def _routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/v2/account", self._get_account)
        r.add_get("/v2/clock", self._get_clock)
        r.add_get("/v2/assets", self._get_assets)
        r.add_get("/v2/assets/{symbol}", self._get_asset)
        r.add_post("/v2/orders", self._post_order)
        r.add_get("/v2/orders", self._get_orders)
        r.add_delete("/v2/orders", self._delete_orders)
        r.add_get("/v2/orders:by_client_order_id", self._get_order_by_client_id)
        r.add_get("/v2/orders/{order_id}", self._get_order)
        r.add_delete("/v2/orders/{order_id}", self._delete_order)
        r.add_get("/v2/positions", self._get_positions)
        r.add_delete("/v2/positions", self._delete_positions)
        r.add_get("/v2/positions/{symbol}", self._get_position)
        r.add_delete("/v2/positions/{symbol}", self._delete_position)
        r.add_get("/v2/account/activities", self._get_activities)
        r.add_get("/v2/account/activities/{activity_type}", self._get_activities)
        r.add_get("/v2/stocks/bars", self._get_bars)
        r.add_get("/v2/stocks/bars/latest", self._get_latest_bars)
        r.add_get("/v2/stocks/{symbol}/bars", self._get_symbol_bars)
        r.add_get("/v2/stocks/{symbol}/bars/latest", self._get_symbol_latest_bar)
        r.add_get("/v2/iex", self._stream)
        r.add_get("/v2/sip", self._stream)

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        if self._down == "refuse":
            # A request that slipped in on a connection opened before go_down.
            if request.protocol is not None:
                request.protocol.force_close()
            raise web.HTTPServiceUnavailable()
        if self._down == "503":
            return _error_response(_ApiError(503, "service unavailable"))
        if self._delay:
            await asyncio.sleep(self._delay)
        if request.path in ("/v2/iex", "/v2/sip"):
            return await handler(request)  # the stream authenticates in-band
        if self._fail:
            status, message = self._fail.pop(0)
            return _error_response(_ApiError(status, message))
        denied = self._check_auth(request)
        if denied is not None:
            return denied
        try:
            return await handler(request)
        except _ApiError as err:
            return _error_response(err)

    def _check_auth(self, request: web.Request) -> web.Response | None:
        key = request.headers.get("APCA-API-KEY-ID")
        secret = request.headers.get("APCA-API-SECRET-KEY")
        if key == self._key_id and secret == self._secret:
            return None
        # What the two real APIs answer to bad keys; neither body has a "code".
        if request.path.startswith("/v2/stocks"):
            return web.json_response({"message": "forbidden."}, status=403)
        return web.json_response({"message": "unauthorized."}, status=401)

    @property
    def _cutoff(self) -> int:
        return self.bar_ts

    # -- trading handlers --

    async def _get_account(self, request: web.Request) -> web.Response:
        book = self._book
        long_value = book.long_market_value()
        power = _num(book.buying_power())
        body = {
            "id": book.account_id,
            "account_number": self._account_number,
            "status": "ACTIVE",
            "crypto_status": "INACTIVE",
            "currency": "USD",
            "cash": _num(book.cash),
            "buying_power": power,
            "regt_buying_power": power,
            "non_marginable_buying_power": power,
            "options_buying_power": power,
            "accrued_fees": "0",
            "pending_transfer_in": "0",
            "pending_transfer_out": "0",
            "portfolio_value": _num(book.cash + long_value),
            "equity": _num(book.cash + long_value),
            "last_equity": _num(self._last_equity),
            "long_market_value": _num(long_value),
            "short_market_value": "0",
            "initial_margin": _num(long_value),
            "maintenance_margin": _num(long_value),
            "last_maintenance_margin": "0",
            "sma": "0",
            "multiplier": "1",
            "shorting_enabled": False,
            "trading_blocked": False,
            "transfers_blocked": False,
            "account_blocked": False,
            "trade_suspended_by_user": False,
            "created_at": _iso(self._created_ns),
            "options_approved_level": 0,
            "options_trading_level": 0,
        }
        return web.json_response(body)

    async def _get_clock(self, request: web.Request) -> web.Response:
        now = self.now_ts()
        cal = self._market.calendar
        body = {
            "timestamp": _ny_iso(now),
            "is_open": cal.is_open(now),
            "next_open": _ny_iso(cal.next_open(now)),
            "next_close": _ny_iso(cal.next_close(now)),
        }
        return web.json_response(body)

    def _asset_json(self, symbol: str) -> dict[str, Any]:
        return {
            "id": _asset_id(symbol),
            "class": "us_equity",
            "exchange": "NASDAQ",
            "symbol": symbol,
            "name": symbol,
            "status": "active",
            "tradable": True,
            "marginable": True,
            "shortable": False,
            "easy_to_borrow": False,
            "fractionable": False,
            "maintenance_margin_requirement": 100,
            "attributes": [],
        }

    def _resolve_symbol(self, text: str) -> str | None:
        if text in self._market.series:
            return text
        return self._market.asset_ids.get(text)

    async def _get_assets(self, request: web.Request) -> web.Response:
        return web.json_response([self._asset_json(s) for s in self._market.series])

    async def _get_asset(self, request: web.Request) -> web.Response:
        symbol = self._resolve_symbol(request.match_info["symbol"])
        if symbol is None:
            raise _ApiError(404, "asset not found")
        return web.json_response(self._asset_json(symbol))

    async def _post_order(self, request: web.Request) -> web.Response:
        try:
            payload = await request.json()
        except ValueError:
            raise _ApiError(400, "request body format is invalid") from None
        if not isinstance(payload, dict):
            raise _ApiError(400, "request body format is invalid")
        spec = _parse_order(payload, lambda s: s in self._market.series)
        reject, self._reject = self._reject, None
        if reject is not None and not reject[2]:
            raise _ApiError(reject[1], reject[0])
        order = self._submit(spec, reject[0] if reject is not None else None)
        return web.json_response(order.to_json())

    def _submit(self, spec: _OrderSpec, reject_reason: str | None = None) -> _Order:
        now = self.now_ts()
        cal = self._market.calendar
        return self._book.submit(
            spec,
            now_ns=now,
            market_open=cal.is_open(now),
            expires_ns=cal.next_close(now),
            reject_reason=reject_reason,
        )

    async def _get_orders(self, request: web.Request) -> web.Response:
        q = request.query
        status = q.get("status", "open")
        if status not in ("open", "closed", "all"):
            raise _ApiError(422, f"invalid status: {status!r}")
        limit = _int_param(q, "limit", 50, 1, 500)
        after = _parse_time(q["after"], "after") if q.get("after") else None
        until = _parse_time(q["until"], "until") if q.get("until") else None
        symbols = set(_symbols_param(q))
        side = q.get("side")
        selected = []
        for o in self._book.orders.values():
            if (status == "open") != o.is_open and status != "all":
                continue
            if after is not None and o.submitted_ns <= after:
                continue
            if until is not None and o.submitted_ns > until:
                continue
            if (symbols and o.symbol not in symbols) or (side and o.side != side):
                continue
            selected.append(o)
        selected.sort(key=lambda o: o.seq, reverse=q.get("direction", "desc") != "asc")
        return web.json_response([o.to_json() for o in selected[:limit]])

    async def _get_order(self, request: web.Request) -> web.Response:
        return web.json_response(self._book.get(self._order_id(request)).to_json())

    async def _get_order_by_client_id(self, request: web.Request) -> web.Response:
        coid = request.query.get("client_order_id")
        if not coid:
            raise _ApiError(422, "client_order_id is missing")
        order_id = self._book.by_client_id.get(coid)
        if order_id is None:
            raise _ApiError(404, "order not found")
        return web.json_response(self._book.orders[order_id].to_json())

    def _order_id(self, request: web.Request) -> str:
        text = request.match_info["order_id"]
        try:
            return str(uuid.UUID(text))
        except ValueError:
            raise _ApiError(422, "order_id is missing") from None

    async def _delete_order(self, request: web.Request) -> web.Response:
        self._book.cancel(self._order_id(request), self.now_ts())
        return web.Response(status=204)

    async def _delete_orders(self, request: web.Request) -> web.Response:
        now = self.now_ts()
        canceled = [self._book.cancel(o.id, now) for o in self._book.open_orders()]
        return web.json_response([{"id": o.id, "status": 200} for o in canceled], status=207)

    def _position_json(self, symbol: str, pos: _Position) -> dict[str, Any]:
        mark = self._market.last_close(symbol, self._cutoff) or pos.cost / pos.qty
        lastday = self._market.lastday_close(symbol, self._cutoff) or mark
        value = pos.qty * mark
        pl = value - pos.cost
        intraday = pos.qty * (mark - lastday)
        return {
            "asset_id": _asset_id(symbol),
            "symbol": symbol,
            "exchange": "NASDAQ",
            "asset_class": "us_equity",
            "asset_marginable": True,
            "qty": str(pos.qty),
            "qty_available": str(pos.qty - self._book.held_for_sells(symbol)),
            "avg_entry_price": _num(pos.cost / pos.qty),
            "side": "long",
            "market_value": _num(value),
            "cost_basis": _num(pos.cost),
            "unrealized_pl": _num(pl),
            "unrealized_plpc": _num(pl / pos.cost if pos.cost else 0.0),
            "unrealized_intraday_pl": _num(intraday),
            "unrealized_intraday_plpc": _num(intraday / (pos.qty * lastday) if lastday else 0.0),
            "current_price": _num(mark),
            "lastday_price": _num(lastday),
            "change_today": _num(mark / lastday - 1.0 if lastday else 0.0),
        }

    def _held_position(self, request: web.Request) -> tuple[str, _Position]:
        symbol = self._resolve_symbol(request.match_info["symbol"])
        pos = self._book.positions.get(symbol) if symbol is not None else None
        if symbol is None or pos is None:
            raise _ApiError(404, "position does not exist")
        return symbol, pos

    async def _get_positions(self, request: web.Request) -> web.Response:
        book = self._book
        return web.json_response(
            [self._position_json(s, p) for s, p in sorted(book.positions.items())]
        )

    async def _get_position(self, request: web.Request) -> web.Response:
        return web.json_response(self._position_json(*self._held_position(request)))

    def _close_order(self, symbol: str, qty: int) -> _Order:
        spec = _OrderSpec(symbol, qty, "sell", "market", "day", None, None)
        return self._submit(spec)

    async def _delete_position(self, request: web.Request) -> web.Response:
        symbol, pos = self._held_position(request)
        qty = pos.qty
        if request.query.get("qty"):
            qty = _parse_qty({"qty": request.query["qty"]})
        elif request.query.get("percentage"):
            try:
                pct = float(request.query["percentage"])
            except ValueError:
                raise _ApiError(422, "invalid percentage") from None
            if not 0 < pct <= 100:
                raise _ApiError(422, "percentage must be in (0, 100]")
            qty = math.floor(pos.qty * pct / 100.0)
            if qty == 0:
                raise _ApiError(422, "qty must be > 0")
        return web.json_response(self._close_order(symbol, qty).to_json())

    async def _delete_positions(self, request: web.Request) -> web.Response:
        now = self.now_ts()
        if _truthy(request.query.get("cancel_orders")):
            for o in self._book.open_orders():
                self._book.cancel(o.id, now)
        results = []
        for symbol, pos in sorted(self._book.positions.items()):
            try:
                order = self._close_order(symbol, pos.qty)
                body = order.to_json()
                results.append(
                    {"symbol": symbol, "status": 200, "order_id": order.id, "body": body}
                )
            except _ApiError as err:
                results.append({"symbol": symbol, "status": err.status, "body": err.body})
        return web.json_response(results, status=207)

    async def _get_activities(self, request: web.Request) -> web.Response:
        q = request.query
        kind = request.match_info.get("activity_type") or q.get("activity_types") or "FILL"
        if "FILL" not in kind.split(","):
            return web.json_response([])
        items = list(self._book.activities)
        if q.get("after"):
            after = _parse_time(q["after"], "after")
            items = [a for a in items if _parse_time(a["transaction_time"], "t") > after]
        if q.get("until"):
            until = _parse_time(q["until"], "until")
            items = [a for a in items if _parse_time(a["transaction_time"], "t") <= until]
        if q.get("date"):
            day = date.fromisoformat(q["date"])
            items = [a for a in items if _activity_day(a) == day]
        if q.get("direction", "desc") != "asc":
            items.reverse()
        if q.get("page_token"):
            ids = [a["id"] for a in items]
            if q["page_token"] not in ids:
                raise _ApiError(422, "invalid page_token")
            items = items[ids.index(q["page_token"]) + 1 :]
        page_size = _int_param(q, "page_size", 100, 1, 100)
        return web.json_response(items[:page_size])

    # -- market data handlers --

    def _bar_query(self, request: web.Request, symbols: list[str]) -> _BarQuery:
        q = request.query
        feed = q.get("feed", "iex")
        if feed not in ("iex", "sip", "delayed_sip", "otc", "boats", "overnight"):
            raise _ApiError(400, f"invalid feed: {feed!r}")
        if not symbols:
            raise _ApiError(400, "symbols is required")
        tf = _parse_timeframe(q.get("timeframe"))
        self._market.check_timeframe(tf)
        now = self.now_ts()
        # As Alpaca: start defaults to the beginning of the current (New York) day.
        today = datetime.fromtimestamp(now / _NS, tz=_NY).date()
        start = _parse_time(q["start"], "start") if q.get("start") else _ny_ns(today, time(0))
        end = _parse_time(q["end"], "end") if q.get("end") else now
        return _BarQuery(
            symbols=symbols,
            timeframe=tf,
            start_ns=start,
            end_ns=end,
            limit=_int_param(q, "limit", 1000, 1, self._bars_page_limit),
            page_token=q.get("page_token") or None,
            descending=q.get("sort", "asc") == "desc",
        )

    async def _get_bars(self, request: web.Request) -> web.Response:
        query = self._bar_query(request, _symbols_param(request.query))
        bars, token = _query_bars(self._market, query, self._cutoff)
        return web.json_response({"bars": bars, "next_page_token": token, "currency": "USD"})

    async def _get_symbol_bars(self, request: web.Request) -> web.Response:
        symbol = request.match_info["symbol"]
        query = self._bar_query(request, [symbol])
        bars, token = _query_bars(self._market, query, self._cutoff)
        return web.json_response(
            {"bars": bars.get(symbol, []), "symbol": symbol, "next_page_token": token}
        )

    def _latest(self, symbol: str) -> dict[str, Any] | None:
        # The emulator's data interval stands in for Alpaca's latest minute bar.
        raw = _TimeFrame(1, "Day") if self._market.daily else None
        tf = raw or _TimeFrame(max(self._market.interval_s // 60, 1), "Min")
        agg = self._market.aggregate(symbol, self._cutoff, tf)
        return _bar_json(agg, len(agg["t"]) - 1) if len(agg["t"]) else None

    async def _get_latest_bars(self, request: web.Request) -> web.Response:
        symbols = _symbols_param(request.query)
        if not symbols:
            raise _ApiError(400, "symbols is required")
        bars = {s: bar for s in symbols if (bar := self._latest(s)) is not None}
        return web.json_response({"bars": bars})

    async def _get_symbol_latest_bar(self, request: web.Request) -> web.Response:
        symbol = request.match_info["symbol"]
        bar = self._latest(symbol)
        if bar is None:
            raise _ApiError(404, f"no bar found for {symbol}")
        return web.json_response({"symbol": symbol, "bar": bar})

    # -- the market-data stream --

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(timeout=2.0)
        await ws.prepare(request)
        # alpaca-py asks for msgpack with this header; without it Alpaca speaks JSON.
        use_msgpack = "msgpack" in request.headers.get("Content-Type", "")
        client = _StreamClient(ws, use_msgpack)
        self._clients.add(client)
        try:
            await client.send([{"T": "success", "msg": "connected"}])
            async for msg in ws:
                if msg.type not in (WSMsgType.BINARY, WSMsgType.TEXT):
                    break
                if not await self._on_stream_message(client, msg.data):
                    await ws.close()
                    break
        finally:
            self._clients.discard(client)
        return ws

    async def _on_stream_message(self, client: _StreamClient, data: bytes | str) -> bool:
        """Handle one client frame; return False to close the connection."""
        try:
            decoded = json.loads(data) if isinstance(data, str) else msgpack.unpackb(data)
        except (ValueError, msgpack.UnpackException):
            decoded = None
        if not isinstance(decoded, dict):
            await client.send([{"T": "error", "code": 400, "msg": "invalid syntax"}])
            return True
        action = decoded.get("action")
        if action == "auth":
            return await self._stream_auth(client, decoded)
        if not client.authenticated:
            await client.send([{"T": "error", "code": 401, "msg": "not authenticated"}])
            return True
        if action not in ("subscribe", "unsubscribe"):
            await client.send([{"T": "error", "code": 400, "msg": "invalid syntax"}])
            return True
        for channel in _STREAM_CHANNELS:
            symbols = decoded.get(channel) or []
            if action == "subscribe":
                client.subs[channel].update(symbols)
            else:
                client.subs[channel].difference_update(symbols)
        # Alpaca subscribes corrections and cancel errors along with trades.
        client.subs["corrections"] = set(client.subs["trades"])
        client.subs["cancelErrors"] = set(client.subs["trades"])
        await client.send([client.subscription()])
        return True

    async def _stream_auth(self, client: _StreamClient, msg: dict[str, Any]) -> bool:
        if client.authenticated:
            await client.send([{"T": "error", "code": 403, "msg": "already authenticated"}])
            return True
        if msg.get("key") != self._key_id or msg.get("secret") != self._secret:
            await client.send([{"T": "error", "code": 402, "msg": "auth failed"}])
            return False
        # Alpaca allows one data stream per key.
        if any(c.authenticated and c.key == self._key_id for c in self._clients):
            await client.send([{"T": "error", "code": 406, "msg": "connection limit exceeded"}])
            return False
        client.authenticated = True
        client.key = self._key_id
        await client.send([{"T": "success", "msg": "authenticated"}])
        return True


def _activity_day(activity: dict[str, Any]) -> date:
    ns = _parse_time(activity["transaction_time"], "transaction_time")
    return datetime.fromtimestamp(ns / _NS, tz=_NY).date()


def _error_response(err: _ApiError) -> web.Response:
    return web.json_response(err.body, status=err.status)

"""Alpaca through alpaca-py: the order adapter and the bar source (the IB fallback).

Identity and de-duplication. Every order carries our order id as Alpaca's
``client_order_id`` (Alpaca refuses a duplicate), so a submit whose answer was lost is
found again with ``get_order_by_client_id`` instead of being sent twice. Fills are read
from the account's FILL activities, each with a unique id, so none is counted twice.
Alpaca charges no commission on US equities.

Keys come from the environment (``APCA_API_KEY_ID`` / ``APCA_API_SECRET_KEY``, Alpaca's own
names, or ``SOVEREIGN_ALPACA_KEY_ID`` / ``SOVEREIGN_ALPACA_SECRET_KEY``) and are never
logged. ``SOVEREIGN_ALPACA_BASE_URL``, ``SOVEREIGN_ALPACA_DATA_URL`` and
``SOVEREIGN_ALPACA_STREAM_URL`` point the clients somewhere else (an emulator).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sovereign.brokers.base import accepted, book_from, canceled, rejected, snapshots_from
from sovereign.brokers.pacing import Backoff
from sovereign.messages import (
    AccountSnapshot,
    BarBatch,
    BookOrder,
    BookPosition,
    IdSource,
    Message,
    OrderCanceled,
    OrderFilled,
    OrderRejected,
    PositionSnapshot,
    SubmitOrder,
)

log = logging.getLogger("sovereign.brokers.alpaca")


class MissingCredentialsError(RuntimeError):
    """No Alpaca keys in the environment."""


@dataclass(frozen=True, slots=True)
class AlpacaSettings:
    """How to reach Alpaca. Keys are read from the environment, never from files."""

    paper: bool = True
    base_url: str = ""
    data_url: str = ""
    stream_url: str = ""
    feed: str = "iex"
    timeout_s: float = 10.0

    @staticmethod
    def from_env(paper: bool = True) -> AlpacaSettings:
        return AlpacaSettings(
            paper=paper,
            base_url=os.environ.get("SOVEREIGN_ALPACA_BASE_URL", ""),
            data_url=os.environ.get("SOVEREIGN_ALPACA_DATA_URL", ""),
            stream_url=os.environ.get("SOVEREIGN_ALPACA_STREAM_URL", ""),
        )

    def keys(self) -> tuple[str, str]:
        key = os.environ.get("SOVEREIGN_ALPACA_KEY_ID") or os.environ.get("APCA_API_KEY_ID")
        secret = os.environ.get("SOVEREIGN_ALPACA_SECRET_KEY") or os.environ.get(
            "APCA_API_SECRET_KEY"
        )
        if not key or not secret:
            raise MissingCredentialsError(
                "Alpaca keys are not set: export APCA_API_KEY_ID and APCA_API_SECRET_KEY"
            )
        return key, secret


@dataclass(slots=True)
class _Tracked:
    order: SubmitOrder
    alpaca_id: str = ""
    acked: bool = False
    done: bool = False
    filled: int = 0
    in_doubt: bool = False


@dataclass(slots=True)
class AlpacaCounters:
    errors: int = 0
    adopted_after_doubt: int = 0
    lost_in_flight: int = 0
    duplicate_fills: int = 0
    by_status: dict[str, int] = field(default_factory=dict)


class AlpacaBroker:
    """The BrokerAdapter for Alpaca's trading API."""

    name = "alpaca"

    def __init__(self, settings: AlpacaSettings, *, clock: Callable[[], float] = time.time) -> None:
        from alpaca.trading.client import TradingClient

        key, secret = settings.keys()
        self.settings = settings
        self.clock = clock
        self.client = TradingClient(
            key, secret, paper=settings.paper, url_override=settings.base_url or None
        )
        _with_timeout(self.client, settings.timeout_s)
        self._ids = IdSource("alpaca")
        self._orders: dict[str, _Tracked] = {}
        self._by_alpaca: dict[str, str] = {}
        self._seen_fills: set[str] = set()
        self._last_activity = ""
        self._positions: dict[str, tuple[int, float, float]] = {}
        self._account: dict[str, float] = {}
        self.backoff = Backoff(1.0, 2.0, 30.0)
        self.up = False
        self.down_since: float | None = None
        self.counters = AlpacaCounters()
        self._refresh()

    @property
    def connected(self) -> bool:
        return self.up

    def outage_s(self) -> float:
        return 0.0 if self.up or self.down_since is None else self.clock() - self.down_since

    # -- COMMANDS -----------------------------------------------------------------------

    def submit(self, order: SubmitOrder, now_ns: int) -> list[Message]:
        from alpaca.common.exceptions import APIError
        from alpaca.trading.enums import OrderSide, TimeInForce
        from alpaca.trading.requests import LimitOrderRequest, MarketOrderRequest

        common = {
            "symbol": order.symbol,
            "qty": order.quantity,
            "side": OrderSide.BUY if order.side == "BUY" else OrderSide.SELL,
            "time_in_force": TimeInForce.GTC if order.time_in_force == "GTC" else TimeInForce.DAY,
            "client_order_id": order.order_id,
        }
        request = (
            LimitOrderRequest(limit_price=order.limit_price, **common)
            if order.order_type == "LIMIT"
            else MarketOrderRequest(**common)
        )
        tracked = _Tracked(order)
        self._orders[order.order_id] = tracked
        try:
            placed = self.client.submit_order(request)
        except APIError as exc:
            tracked.done = True
            return [self._reject(order, "BROKER_REJECTED", _api_message(exc))]
        except Exception as exc:  # no answer: it may or may not be at Alpaca
            self._went_down(exc)
            tracked.in_doubt = True
            return []
        self._bind(tracked, placed)
        return self._ack(tracked, now_ns)

    def cancel(self, order_id: str, now_ns: int) -> list[Message]:
        t = self._orders.get(order_id)
        if t is None or t.done or not t.alpaca_id:
            return []
        try:
            self.client.cancel_order_by_id(t.alpaca_id)
        except Exception as exc:
            log.warning("cancel %s: %s", order_id, _api_message(exc))
        return []

    def on_bars(self, batch: BarBatch) -> list[Message]:
        return []

    def adopt(self, orders: list[tuple[SubmitOrder, int]], executions: set[str]) -> None:
        """Take over the working orders of a gateway that crashed (see ``IBBroker.adopt``):
        each is looked up by its client order id at the next poll, as an order in doubt
        is (unknown to Alpaca: LOST_IN_FLIGHT), and the fills already booked are not
        reported again."""
        for order, filled in orders:
            self._orders[order.order_id] = _Tracked(order, filled=filled, in_doubt=True)
        self._seen_fills |= {e.removeprefix("alpaca:") for e in executions}

    def knows(self, order_id: str) -> bool:
        """Whether Alpaca has an order with this client order id."""
        from alpaca.common.exceptions import APIError

        try:
            self.client.get_order_by_client_id(order_id)
        except APIError:
            return False
        return True

    def poll(self, now_ns: int) -> list[Message]:
        """Order states and fills since the last poll (and settle orders in doubt)."""
        if not self.up and not self.backoff.due(self.clock()):
            return []
        events: list[Message] = []
        try:
            for t in [t for t in self._orders.values() if t.in_doubt]:
                events.extend(self._settle_doubt(t, now_ns))
            events.extend(self._fills(now_ns))
            for t in [t for t in self._orders.values() if not t.done and t.alpaca_id]:
                events.extend(self._follow(t, now_ns))
            self._refresh()
        except Exception as exc:
            self._went_down(exc)
        return events

    # -- STATE FROM ALPACA --------------------------------------------------------------

    def _refresh(self) -> None:
        try:
            acct = self.client.get_account()
            positions = self.client.get_all_positions()
        except Exception as exc:
            self._went_down(exc)
            return
        self._account = {
            "equity": float(acct.equity or 0.0),
            "cash": float(acct.cash or 0.0),
            "long": float(acct.long_market_value or 0.0),
            "short": float(acct.short_market_value or 0.0),
        }
        self._positions = {
            p.symbol: (
                int(float(p.qty)),
                float(p.avg_entry_price),
                float(p.current_price or p.avg_entry_price),
            )
            for p in positions
        }
        if not self.up:
            log.info("Alpaca reachable")
        self.up = True
        self.down_since = None
        self.backoff.succeeded()

    def _went_down(self, exc: Exception) -> None:
        self.counters.errors += 1
        if self.up or self.down_since is None:
            self.down_since = self.clock()
        self.up = False
        self.backoff.failed(self.clock())
        log.warning("Alpaca unreachable: %s", _api_message(exc))

    def _settle_doubt(self, t: _Tracked, now_ns: int) -> list[Message]:
        from alpaca.common.exceptions import APIError

        try:
            found = self.client.get_order_by_client_id(t.order.order_id)
        except APIError as exc:
            if getattr(exc, "status_code", None) == 404:
                t.in_doubt = False
                t.done = True
                self.counters.lost_in_flight += 1
                return [self._reject(t.order, "LOST_IN_FLIGHT", "Alpaca never received the order")]
            raise
        t.in_doubt = False
        self.counters.adopted_after_doubt += 1
        self._bind(t, found)
        return self._ack(t, now_ns)

    def _follow(self, t: _Tracked, now_ns: int) -> list[Message]:
        o = self.client.get_order_by_id(t.alpaca_id)
        status = str(getattr(o.status, "value", o.status))
        self.counters.by_status[status] = self.counters.by_status.get(status, 0) + 1
        events = self._ack(t, now_ns) if status in ("new", "accepted", "partially_filled") else []
        if status in ("canceled", "expired", "done_for_day") and t.filled < t.order.quantity:
            t.done = True
            events.append(self._canceled(t, f"{status} at Alpaca", now_ns))
        elif status == "rejected":
            t.done = True
            events.append(self._reject(t.order, "BROKER_REJECTED", "rejected by Alpaca"))
        return events

    def _fills(self, now_ns: int) -> list[Message]:
        params = {"direction": "asc"}
        if self._last_activity:
            params["page_token"] = self._last_activity
        raw = self.client.get("/account/activities/FILL", params)
        out: list[Message] = []
        for act in raw or []:
            fill_id = str(act.get("id", ""))
            if not fill_id:
                continue
            self._last_activity = fill_id
            if fill_id in self._seen_fills:
                self.counters.duplicate_fills += 1
                continue
            order_id = self._by_alpaca.get(str(act.get("order_id", "")))
            if order_id is None:
                continue
            self._seen_fills.add(fill_id)
            t = self._orders[order_id]
            qty = int(float(act.get("qty", 0)))
            t.filled += qty
            if t.filled >= t.order.quantity:
                t.done = True
            ts = _parse_time(act.get("transaction_time")) or now_ns
            out.append(
                OrderFilled(
                    msg_id=self._ids.next(),
                    ts_event=ts,
                    ts_init=now_ns,
                    correlation_id=t.order.msg_id,
                    order_id=order_id,
                    execution_id=f"alpaca:{fill_id}",
                    shard=t.order.shard,
                    symbol=t.order.symbol,
                    side=t.order.side,
                    quantity=qty,
                    price=float(act.get("price", 0.0)),
                    commission=0.0,
                    cum_quantity=t.filled,
                    leaves_quantity=max(0, t.order.quantity - t.filled),
                    purpose=t.order.purpose,
                    liquidity="ALPACA",
                )
            )
        return out

    # -- QUERIES ------------------------------------------------------------------------

    def account(self, now_ns: int) -> AccountSnapshot:
        a = self._account
        gross = sum(abs(q * px) for q, _, px in self._positions.values())
        net = sum(q * px for q, _, px in self._positions.values())
        return AccountSnapshot(
            msg_id=self._ids.next(),
            ts_event=now_ns,
            ts_init=now_ns,
            cash=a.get("cash", 0.0),
            equity=a.get("equity", 0.0),
            realized_pnl=0.0,
            unrealized_pnl=sum((px - avg) * q for q, avg, px in self._positions.values()),
            gross_exposure=gross,
            net_exposure=net,
            commissions=0.0,
            open_positions=sum(1 for q, _, _ in self._positions.values() if q),
        )

    def positions(self) -> dict[str, int]:
        return {s: q for s, (q, _, _) in self._positions.items() if q}

    def position_snapshots(self, symbols: list[str], now_ns: int) -> list[PositionSnapshot]:
        return snapshots_from(self._ids, self._positions, symbols, now_ns)

    def book(self) -> tuple[list[BookPosition], list[BookOrder]]:
        return book_from(
            self._positions, ((t.order, t.filled) for t in self._orders.values() if not t.done)
        )

    def close(self) -> None:
        pass

    # -- HELPERS ------------------------------------------------------------------------

    def _bind(self, t: _Tracked, placed: Any) -> None:
        t.alpaca_id = str(placed.id)
        self._by_alpaca[t.alpaca_id] = t.order.order_id

    def _ack(self, t: _Tracked, now_ns: int) -> list[Message]:
        if t.acked:
            return []
        t.acked = True
        return [accepted(self._ids, t.order, t.alpaca_id, now_ns)]

    def _canceled(self, t: _Tracked, reason: str, now_ns: int) -> OrderCanceled:
        return canceled(self._ids, t.order, t.filled, reason, now_ns)

    def _reject(self, order: SubmitOrder, code: str, detail: str) -> OrderRejected:
        return rejected(self._ids, order, code, detail, int(self.clock() * 1e9))


def _with_timeout(client: Any, seconds: float) -> None:
    """alpaca-py sets no request timeout: a server that hangs would block the gateway
    forever. Give every request of this client a deadline."""
    import functools

    session = getattr(client, "_session", None)
    if session is not None:
        session.request = functools.partial(session.request, timeout=seconds)


def _api_message(exc: Exception) -> str:
    text = str(exc)
    return text if len(text) < 300 else text[:300] + "..."


def _parse_time(value: Any) -> int | None:
    if not value:
        return None
    try:
        dt = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1e9)


# -- BARS -------------------------------------------------------------------------------


class AlpacaBarSource:
    """Historical bars for a polling feed (the IEX feed on free accounts)."""

    name = "alpaca"

    def __init__(
        self, settings: AlpacaSettings, interval_s: int, *, warmup_bars: int = 300
    ) -> None:
        from alpaca.data.historical import StockHistoricalDataClient

        key, secret = settings.keys()
        self.settings = settings
        self.interval_s = interval_s
        self.warmup_bars = warmup_bars
        self.client = StockHistoricalDataClient(key, secret, url_override=settings.data_url or None)

    def fetch(
        self, symbol: str, since_ns: int | None, now_s: float
    ) -> list[tuple[int, float, float, float, float, float]]:
        from alpaca.common.enums import Sort
        from alpaca.data.requests import StockBarsRequest

        if since_ns is not None:
            request = StockBarsRequest(
                symbol_or_symbols=symbol,
                timeframe=_timeframe(self.interval_s),
                start=datetime.fromtimestamp(since_ns / 1e9, tz=UTC),
                feed=self.settings.feed,
            )
        else:
            # The first request: the latest bars to warm the indicators up on, newest
            # first — whatever the server's "now" is.
            request = StockBarsRequest(
                symbol_or_symbols=symbol,
                timeframe=_timeframe(self.interval_s),
                start=datetime(1990, 1, 1, tzinfo=UTC),
                limit=self.warmup_bars,
                sort=Sort.DESC,
                feed=self.settings.feed,
            )
        result = self.client.get_stock_bars(request)
        bars = result.data.get(symbol, []) if hasattr(result, "data") else []
        out = []
        for b in bars:
            ts = int(b.timestamp.timestamp() * 1e9)
            if self.interval_s >= 23_400:
                # Alpaca stamps a daily bar at midnight New York; ours start at the open.
                ts = _session_open(b.timestamp)
            vol = float(b.volume) if b.volume is not None else math.nan
            out.append((ts, float(b.open), float(b.high), float(b.low), float(b.close), vol))
        return out

    def close(self) -> None:
        pass


def _session_open(stamp: datetime) -> int:
    import pandas as pd

    from sovereign.data.validation import session_open_ns

    local = pd.Timestamp(stamp).tz_convert("America/New_York")
    return int(session_open_ns(pd.DatetimeIndex([pd.Timestamp(local.date())]))[0])


def _timeframe(interval_s: int) -> Any:
    from alpaca.data.timeframe import TimeFrame, TimeFrameUnit

    if interval_s >= 23_400:
        return TimeFrame(1, TimeFrameUnit.Day)
    if interval_s % 3600 == 0:
        return TimeFrame(interval_s // 3600, TimeFrameUnit.Hour)
    return TimeFrame(max(1, interval_s // 60), TimeFrameUnit.Minute)


class AlpacaStreamSource:
    """Streaming bars for live sessions: alpaca-py's ``StockDataStream``.

    One-minute bars (``subscribe_bars``) or daily bars (``subscribe_daily_bars``); other
    bar lengths use the polling feed. The stream runs on its own thread (alpaca-py runs its
    own event loop) and reconnects by itself; warm-up history comes from the REST API.
    Alpaca allows one stream per key.
    """

    name = "alpaca-stream"

    def __init__(
        self,
        settings: AlpacaSettings,
        symbols: list[str],
        interval_s: int,
        *,
        warmup_bars: int = 300,
    ) -> None:
        if interval_s not in (60, 23_400, 86_400):
            raise ValueError("Alpaca streams one-minute and daily bars; use polling for others")
        self.settings = settings
        self.symbols = list(symbols)
        self.interval_s = interval_s
        self.warmup_bars = warmup_bars
        self._stream: Any = None
        self._thread: Any = None

    def start(self, push: Callable[[str, Any], None]) -> list[tuple[str, Any]]:
        import threading

        from alpaca.data.enums import DataFeed
        from alpaca.data.live import StockDataStream

        history_source = AlpacaBarSource(
            self.settings, self.interval_s, warmup_bars=self.warmup_bars
        )
        history = [(s, b) for s in self.symbols for b in history_source.fetch(s, None, time.time())]
        key, secret = self.settings.keys()
        feed = DataFeed.SIP if self.settings.feed == "sip" else DataFeed.IEX
        self._stream = StockDataStream(
            key, secret, feed=feed, url_override=self.settings.stream_url or None
        )
        daily = self.interval_s >= 23_400

        async def on_bar(bar: Any) -> None:
            ts = _session_open(bar.timestamp) if daily else int(bar.timestamp.timestamp() * 1e9)
            vol = float(bar.volume) if bar.volume is not None else math.nan
            push(
                bar.symbol,
                (ts, float(bar.open), float(bar.high), float(bar.low), float(bar.close), vol),
            )

        if daily:
            self._stream.subscribe_daily_bars(on_bar, *self.symbols)
        else:
            self._stream.subscribe_bars(on_bar, *self.symbols)
        self._thread = threading.Thread(target=self._stream.run, name="alpaca-stream", daemon=True)
        self._thread.start()
        return history

    def close(self) -> None:
        if self._stream is not None:
            try:
                self._stream.stop()
            except Exception as exc:  # stopping a stream that never connected
                log.info("alpaca stream stop: %r", exc)
        if self._thread is not None:
            self._thread.join(timeout=6)

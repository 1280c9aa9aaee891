"""Interactive Brokers bars through ib_async: historical bars for a polling feed
(``IBBarSource``, paced) and streamed bars for live sessions (``IBStreamSource``).

Paper accounts have no TRADES data: bars come from MIDPOINT, which carries no volume (IB
sends -1). The bar sources report that volume as unknown (NaN), never as zero.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any

from sovereign.brokers.ib import IBConnection, IBSettings, stock
from sovereign.brokers.pacing import HistoricalPacer

log = logging.getLogger("sovereign.brokers.ib")

_BAR_SIZES = {
    60: "1 min",
    300: "5 mins",
    900: "15 mins",
    1800: "30 mins",
    3600: "1 hour",
    23_400: "1 day",
    86_400: "1 day",
}


def bar_size_setting(interval_s: int) -> str:
    try:
        return _BAR_SIZES[interval_s]
    except KeyError:
        raise ValueError(f"no IB bar size for {interval_s} s bars ({sorted(_BAR_SIZES)})") from None


def duration_setting(seconds: float, interval_s: int) -> str:
    """An IB ``durationStr`` covering ``seconds`` (at least two bars)."""
    seconds = max(seconds, 2 * interval_s)
    if seconds <= 86_400 and interval_s < 23_400:
        return f"{math.ceil(seconds)} S"
    days = max(2, math.ceil(seconds / 86_400) + 1)
    # IB refuses day durations over 365: longer spans must be asked for in years.
    return f"{days} D" if days <= 365 else f"{math.ceil(days / 365)} Y"


class IBBarSource:
    """Historical bars for a polling feed: MIDPOINT on paper (no volume), TRADES live."""

    name = "ib"

    def __init__(
        self,
        settings: IBSettings,
        interval_s: int,
        *,
        what_to_show: str = "MIDPOINT",
        use_rth: bool = True,
        warmup_bars: int = 300,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.conn = IBConnection(settings, clock=clock)
        self.interval_s = interval_s
        self.warmup_bars = warmup_bars
        self.what_to_show = what_to_show
        self.use_rth = use_rth
        self.clock = clock
        self.sleep = sleep
        self.pacer = (
            HistoricalPacer()
            if settings.historical_pacing
            else HistoricalPacer(
                max_requests=10**9, identical_cooldown_s=0.0, burst=10**9, burst_window_s=0.0
            )
        )
        self.bar_size = bar_size_setting(interval_s)
        self._contracts: dict[str, Any] = {}

    def fetch(
        self, symbol: str, since_ns: int | None, now_s: float
    ) -> list[tuple[int, float, float, float, float, float]]:
        if not self.conn.ensure():
            raise ConnectionError("IB is not connected")
        if since_ns is not None:
            span = now_s - since_ns / 1e9
        else:  # the first request: enough history to warm the indicators up on
            span = (
                self.warmup_bars
                * self.interval_s
                * (86_400 / 23_400 * 7 / 5 if self.interval_s >= 23_400 else 1)
            )
        duration = duration_setting(span + self.interval_s, self.interval_s)
        key = f"{symbol}|{duration}|{self.bar_size}|{self.what_to_show}"
        wait = self.pacer.wait_for(key, symbol, self.clock())
        if wait > 0:
            self.sleep(wait)  # waiting beats a pacing violation that locks us out for minutes
        self.pacer.record(key, symbol, self.clock())
        contract = self._contracts.setdefault(symbol, stock(symbol))
        bars = self.conn.ib.reqHistoricalData(
            contract,
            endDateTime="",
            durationStr=duration,
            barSizeSetting=self.bar_size,
            whatToShow=self.what_to_show,
            useRTH=self.use_rth,
            formatDate=2,
            timeout=30,
        )
        out = []
        for b in bars or []:
            ts = _bar_start_ns(b.date, self.interval_s)
            volume = float(b.volume)
            # MIDPOINT bars report -1: unknown, not zero.
            vol = volume if volume >= 0 and self.what_to_show != "MIDPOINT" else math.nan
            out.append((ts, float(b.open), float(b.high), float(b.low), float(b.close), vol))
        return out

    def close(self) -> None:
        self.conn.close()


def _bar_start_ns(d: date | datetime, interval_s: int) -> int:
    if isinstance(d, datetime):
        dt = d if d.tzinfo is not None else d.replace(tzinfo=UTC)
        return int(dt.timestamp() * 1_000_000_000)
    # A daily bar's date: the session opens at 09:30 New York.
    import pandas as pd

    from sovereign.data.validation import session_open_ns

    return int(session_open_ns(pd.DatetimeIndex([pd.Timestamp(d)]))[0])


class IBStreamSource:
    """Streaming bars for live sessions: ``reqHistoricalData(keepUpToDate=True)``.

    It runs its own ib_async connection on its own thread and event loop (ib_async is not
    thread-safe; nothing else touches this connection). A bar is pushed once it has
    closed by the wall clock; after a drop it reconnects with backoff and subscribes again
    with enough history to cover the gap, so no bar goes missing (the feed drops the
    repeats).
    """

    name = "ib-stream"

    def __init__(
        self,
        settings: IBSettings,
        symbols: list[str],
        interval_s: int,
        *,
        what_to_show: str = "TRADES",
        use_rth: bool = True,
        warmup_bars: int = 300,
        clock: Callable[[], float] = time.time,
    ) -> None:
        import threading

        self.settings = settings
        self.symbols = list(symbols)
        self.interval_s = interval_s
        self.what_to_show = what_to_show
        self.use_rth = use_rth
        self.warmup_bars = warmup_bars
        self.clock = clock
        self.bar_size = bar_size_setting(interval_s)
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._push: Callable[[str, Any], None] | None = None
        self._history: list[tuple[str, Any]] = []
        self._last: dict[str, int] = {}
        self._last_wall: dict[str, float] = {}
        self.resubscriptions = 0
        self.error: Exception | None = None

    def start(self, push: Callable[[str, Any], None]) -> list[tuple[str, Any]]:
        import threading

        self._push = push
        self._thread = threading.Thread(target=self._run, name="ib-stream", daemon=True)
        self._thread.start()
        self._ready.wait(timeout=self.settings.connect_timeout_s * 3 + 30)
        if self.error is not None and not self._history:
            raise ConnectionError(f"IB stream could not start: {self.error}")
        return list(self._history)

    def _run(self) -> None:
        import asyncio

        asyncio.set_event_loop(asyncio.new_event_loop())
        conn = IBConnection(self.settings, clock=self.clock)
        subscribed_on = -1  # the connection generation the subscriptions live on
        first = True
        while not self._stop.is_set():
            if not conn.ensure():
                if first:
                    self.error = ConnectionError("IB is not reachable")
                    self._ready.set()
                    first = False
                conn.pump(0.2)
                continue
            # ensure() may have reconnected by itself: subscriptions die with the socket.
            if subscribed_on != conn.connects:
                try:
                    self._subscribe(conn, initial=first)
                except Exception as exc:  # a failed subscription is retried next loop
                    self.error = exc
                    log.warning("IB stream subscription failed: %r", exc)
                    conn.pump(0.5)
                    continue
                subscribed_on = conn.connects
                conn.disconnected_at = None
                if first:
                    first = False
                    self._ready.set()
                else:
                    self.resubscriptions += 1
            conn.pump(0.1)
        conn.close()

    def _subscribe(self, conn: IBConnection, *, initial: bool) -> None:
        for symbol in self.symbols:
            last = self._last.get(symbol)
            if last is None:
                span = (
                    self.warmup_bars
                    * self.interval_s
                    * (1.4 * 86_400 / 23_400 if self.interval_s >= 23_400 else 1)
                )
            else:
                # The gap is measured on the local clock since the last delivered bar, not
                # from the bar's own time, so it stays right whatever the market clock is.
                span = self.clock() - self._last_wall.get(symbol, self.clock()) + self.interval_s
            bars = conn.ib.reqHistoricalData(
                stock(symbol),
                endDateTime="",
                durationStr=duration_setting(span + self.interval_s, self.interval_s),
                barSizeSetting=self.bar_size,
                whatToShow=self.what_to_show,
                useRTH=self.use_rth,
                formatDate=2,
                keepUpToDate=True,
                timeout=30,
            )
            if not bars:
                # ib_async answers an error (pacing, no permissions) with an empty list.
                raise ConnectionError(f"no bars for {symbol} from the subscription")
            closed = self._closed(symbol, bars)
            if initial:
                self._history.extend((symbol, b) for b in closed)
            else:
                for b in closed:
                    self._emit(symbol, b)
            bars.updateEvent += self._updater(symbol)

    def _updater(self, symbol: str) -> Callable[[Any, bool], None]:
        def on_update(bars: Any, has_new_bar: bool) -> None:
            for b in self._closed(symbol, bars):
                self._emit(symbol, b)

        return on_update

    def _closed(
        self, symbol: str, bars: Any
    ) -> list[tuple[int, float, float, float, float, float]]:
        """The bars that have closed and were not delivered yet (marks them delivered)."""
        now = self.clock()
        out = []
        last = self._last.get(symbol, -1)
        for b in bars or []:
            ts = _bar_start_ns(b.date, self.interval_s)
            if ts <= last or (ts / 1e9 + self.interval_s) > now:
                continue
            volume = float(b.volume)
            vol = volume if volume >= 0 and self.what_to_show != "MIDPOINT" else math.nan
            out.append((ts, float(b.open), float(b.high), float(b.low), float(b.close), vol))
            last = ts
        if out:
            self._last[symbol] = last
            self._last_wall[symbol] = now
        return out

    def _emit(self, symbol: str, bar: tuple[int, float, float, float, float, float]) -> None:
        if self._push is not None:
            self._push(symbol, bar)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

"""Live feeds: bars polled from a broker, turned into engine steps.

``PollingFeed`` asks a ``BarSource`` (IB historical MIDPOINT bars, Alpaca bars) for every
symbol's bars since the last one it has, once per ``poll_interval_s``. Each request covers
everything since the symbol's last bar, so a slow or missed poll leaves no hole, and bars
at or before the last one already received are dropped as duplicates (counted). Bars that
have not closed yet (a source may return the bar in progress) are left for a later poll.
After each poll round every bar time received is complete — each symbol was asked for all
of its bars up to now — so they are released as steps, in time order, one BarBatch per
shard. Bad bars are rejected and counted here, before any shard sees them.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from sovereign.messages import BarBatch, IdSource

log = logging.getLogger("sovereign.feed")

RawBar = tuple[int, float, float, float, float, float]
"""(bar start ns UTC, open, high, low, close, volume); volume NaN when unknown."""


class BarSource(Protocol):
    """Where a polling feed gets its bars."""

    name: str

    def fetch(self, symbol: str, since_ns: int | None, now_s: float) -> list[RawBar]:
        """Bars of ``symbol`` that started after ``since_ns`` (all recent ones if None)."""
        ...

    def close(self) -> None: ...


@dataclass(slots=True)
class FeedCounters:
    polls: int = 0
    bars: int = 0
    duplicates: int = 0
    incomplete: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    errors: int = 0


def bar_problem(bar: RawBar) -> str | None:
    """Why a raw bar must be rejected, or None."""
    _, o, h, lo, c, v = bar
    if not all(math.isfinite(x) for x in (o, h, lo, c)):
        return "nan_price"
    if min(o, h, lo, c) <= 0:
        return "nonpositive_price"
    if h < lo:
        return "high_lt_low"
    if not (lo <= o <= h and lo <= c <= h):
        return "open_or_close_outside_range"
    if math.isfinite(v) and v < 0:
        return "negative_volume"
    return None


class PollingFeed:
    """Steps for the engine from a polled bar source."""

    def __init__(
        self,
        source: BarSource,
        shard_symbols: list[list[str]],
        interval_s: int,
        *,
        poll_interval_s: float = 60.0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        stop: threading.Event | None = None,
    ) -> None:
        self.source = source
        self.shard_symbols = shard_symbols
        self.symbols = sorted(s for shard in shard_symbols for s in shard)
        self.interval_s = interval_s
        self.poll_interval_s = poll_interval_s
        self.clock = clock
        self.sleep = sleep
        self.stop = stop or threading.Event()
        self.last_ns: dict[str, int | None] = {s: None for s in self.symbols}
        self.counters = FeedCounters()
        self._ids = IdSource("feed")
        self._shard_of = {s: i for i, shard in enumerate(shard_symbols) for s in shard}
        self._first_round = True

    def __len__(self) -> int:
        return 0  # unknown: a live feed runs until it is stopped

    def poll(self) -> list[tuple[int, list[BarBatch | None]]]:
        """One poll round: the bar times it completed, as steps."""
        now = self.clock()
        self.counters.polls += 1
        by_ts: dict[int, dict[str, RawBar]] = {}
        for symbol in self.symbols:
            try:
                bars = self.source.fetch(symbol, self.last_ns[symbol], now)
            except Exception as exc:  # a source failure must not kill the session
                self.counters.errors += 1
                log.error("%s: fetching %s failed: %s", self.source.name, symbol, exc)
                continue
            for bar in sorted(bars):
                ts = bar[0]
                last = self.last_ns[symbol]
                if last is not None and ts <= last:
                    self.counters.duplicates += 1
                    continue
                if (ts + self.interval_s * 1_000_000_000) / 1e9 > now:
                    self.counters.incomplete += 1  # still forming: a later poll takes it
                    continue
                problem = bar_problem(bar)
                if problem is not None:
                    self.counters.rejected[problem] = self.counters.rejected.get(problem, 0) + 1
                    self.last_ns[symbol] = ts  # a bad bar is not asked for again
                    continue
                by_ts.setdefault(ts, {})[symbol] = bar
                self.last_ns[symbol] = ts
                self.counters.bars += 1
        times = sorted(by_ts)
        # The first round brings history to warm up on; only its latest bar is tradable.
        warm = set(times[:-1]) if self._first_round else set()
        if times:
            self._first_round = False
        return [(ts, self._batches(ts, by_ts[ts], warmup=ts in warm)) for ts in times]

    def steps(self, max_steps: int | None = None) -> Iterator[tuple[int, list[BarBatch | None]]]:
        """Poll until stopped (or ``max_steps`` steps), yielding each completed bar time."""
        produced = 0
        while not self.stop.is_set():
            started = self.clock()
            for step in self.poll():
                yield step
                produced += 1
                if max_steps is not None and produced >= max_steps:
                    return
            wait = self.poll_interval_s - (self.clock() - started)
            if wait > 0:
                if self.sleep is time.sleep:
                    self.stop.wait(wait)  # wakes at once when the session is stopped
                else:
                    self.sleep(wait)

    def _batches(
        self, ts: int, bars: dict[str, RawBar], *, warmup: bool = False
    ) -> list[BarBatch | None]:
        out: list[BarBatch | None] = []
        for shard, symbols in enumerate(self.shard_symbols):
            rows = [(s, bars[s]) for s in symbols if s in bars]
            if not rows:
                out.append(None)
                continue
            cols = np.array([b[1:] for _, b in rows], dtype=np.float64)
            out.append(
                BarBatch.from_arrays(
                    msg_id=self._ids.next(),
                    ts=ts,
                    interval_s=self.interval_s,
                    symbols=np.array([s.encode() for s, _ in rows]),
                    open=cols[:, 0],
                    high=cols[:, 1],
                    low=cols[:, 2],
                    close=cols[:, 3],
                    volume=cols[:, 4],
                    shard=shard,
                    warmup=warmup,
                )
            )
        return out

    def close(self) -> None:
        self.stop.set()
        self.source.close()


class FailoverBarSource:
    """Bars from the first source, or from the second while the first cannot answer."""

    name = "failover"

    def __init__(self, primary: BarSource, secondary: BarSource) -> None:
        self.primary = primary
        self.secondary = secondary
        self.fallbacks = 0

    def fetch(self, symbol: str, since_ns: int | None, now_s: float) -> list[RawBar]:
        try:
            return self.primary.fetch(symbol, since_ns, now_s)
        except Exception as exc:
            self.fallbacks += 1
            log.warning(
                "%s bars failed (%s); using %s", self.primary.name, exc, self.secondary.name
            )
            return self.secondary.fetch(symbol, since_ns, now_s)

    def close(self) -> None:
        self.primary.close()
        self.secondary.close()


# -- STREAMING --------------------------------------------------------------------------


class StreamSource(Protocol):
    """A source that pushes bars as they complete."""

    name: str

    def start(self, push: Callable[[str, RawBar], None]) -> list[tuple[str, RawBar]]:
        """Connect and subscribe; return warm-up history; later call ``push`` per bar."""
        ...

    def close(self) -> None: ...


class StreamingFeed:
    """Steps for the engine from bars a ``StreamSource`` pushes as they complete.

    A bar time is released once every symbol has delivered a bar at or after it — or
    ``grace_s`` seconds after its first bar arrived, for symbols that did not trade.
    Duplicates (a bar time a symbol already delivered) are dropped, bad bars rejected, and
    all counted, as in ``PollingFeed``. The source's warm-up history comes first, flagged
    ``warmup`` except for its latest bar time.
    """

    def __init__(
        self,
        source: StreamSource,
        shard_symbols: list[list[str]],
        interval_s: int,
        *,
        grace_s: float = 5.0,
        clock: Callable[[], float] = time.time,
        stop: threading.Event | None = None,
    ) -> None:
        import queue

        self.source = source
        self.shard_symbols = shard_symbols
        self.symbols = sorted(s for shard in shard_symbols for s in shard)
        self.interval_s = interval_s
        self.grace_s = grace_s
        self.clock = clock
        self.stop = stop or threading.Event()
        self.counters = FeedCounters()
        self._queue: queue.Queue[tuple[str, RawBar]] = queue.Queue()
        self._poller = PollingFeed(_NoSource(), shard_symbols, interval_s)  # for its batches
        self._latest: dict[str, int] = {}
        self._pending: dict[int, dict[str, RawBar]] = {}
        self._first_seen: dict[int, float] = {}

    def __len__(self) -> int:
        return 0

    def _push(self, symbol: str, bar: RawBar) -> None:
        self._queue.put((symbol, bar))

    def _accept(self, symbol: str, bar: RawBar) -> bool:
        ts = bar[0]
        if ts <= self._latest.get(symbol, -1):
            self.counters.duplicates += 1
            return False
        problem = bar_problem(bar)
        self._latest[symbol] = ts
        if problem is not None:
            self.counters.rejected[problem] = self.counters.rejected.get(problem, 0) + 1
            return False
        self.counters.bars += 1
        return True

    def steps(self, max_steps: int | None = None) -> Iterator[tuple[int, list[BarBatch | None]]]:
        import queue

        produced = 0
        history = self.source.start(self._push)
        by_ts: dict[int, dict[str, RawBar]] = {}
        for symbol, bar in sorted(history, key=lambda x: (x[1][0], x[0])):
            if self._accept(symbol, bar):
                by_ts.setdefault(bar[0], {})[symbol] = bar
        times = sorted(by_ts)
        for ts in times:
            yield ts, self._poller._batches(ts, by_ts[ts], warmup=ts != times[-1])
            produced += 1
            if max_steps is not None and produced >= max_steps:
                return
        while not self.stop.is_set():
            try:
                symbol, bar = self._queue.get(timeout=0.05)
                if self._accept(symbol, bar):
                    self._pending.setdefault(bar[0], {})[symbol] = bar
                    self._first_seen.setdefault(bar[0], self.clock())
            except queue.Empty:
                pass
            for ts in self._releasable():
                yield ts, self._poller._batches(ts, self._pending.pop(ts))
                self._first_seen.pop(ts, None)
                produced += 1
                if max_steps is not None and produced >= max_steps:
                    return

    def _releasable(self) -> list[int]:
        now = self.clock()
        out = []
        for ts in sorted(self._pending):
            everyone = all(self._latest.get(s, -1) >= ts for s in self.symbols)
            if everyone or now - self._first_seen[ts] >= self.grace_s:
                out.append(ts)
            else:
                break  # keep time order: nothing after an unreleased bar time
        return out

    def close(self) -> None:
        self.stop.set()
        self.source.close()


class _NoSource:
    name = "none"

    def fetch(self, symbol: str, since_ns: int | None, now_s: float) -> list[RawBar]:
        return []

    def close(self) -> None:
        pass

"""The breakout strategy in peer frameworks, on the same bars, for ``sovereign bench --peers``.

The runner calls these in a fresh process per measurement, with the workload as (T, N)
arrays ``ts, open, high, low, close, volume``; the peer comes from the optional ``bench``
extra (``pip install -e .[bench]``; ``scripts/bench`` installs it).

The strategy is written the way a user of each framework would write it — in the
framework's own event loop, reading the framework's data lines — with the rules of
``sovereign.config.breakout_preset``. backtrader fills a market order at the next bar's
open and reports the fill before the next ``next()``, which is Sovereign's timing, so its
trades should equal Sovereign's.
"""

from __future__ import annotations

import resource
import time
from typing import Any

import numpy as np

WINDOW, ATR_PERIOD, STOP, TARGET, MAX_HOLD, QTY = 20, 14, 1.5, 3.0, 50, 100


def _exit_due(d: Any, s: dict[str, float]) -> bool:
    return bool(d.low[0] <= s["stop"] or d.high[0] >= s["target"] or s["held"] >= MAX_HOLD)


def _entry_atr(d: Any) -> float | None:
    """The ATR frozen at the signal if bar 0 of ``d`` is a breakout entry, else None."""
    if len(d) <= WINDOW:
        return None
    if d.close[0] <= max(d.high.get(ago=-1, size=WINDOW)):
        return None
    if d.volume[0] <= float(np.median(d.volume.get(ago=-1, size=WINDOW))):
        return None
    trs = []
    for k in range(ATR_PERIOD):
        h, lo, pc = d.high[-k], d.low[-k], d.close[-k - 1]
        trs.append(max(h, pc) - min(lo, pc))
    return sum(trs) / ATR_PERIOD


def _breakout_strategy(bt: Any) -> Any:
    """The strategy as a backtrader Strategy (defined late: backtrader is optional)."""

    class Breakout(bt.Strategy):  # type: ignore[misc]
        def __init__(self) -> None:
            self.pending: dict[Any, bool] = {}
            self.state: dict[Any, dict[str, float]] = {}
            self.closed = 0

        def notify_order(self, order: Any) -> None:
            if order.status not in (order.Completed, order.Canceled, order.Rejected, order.Margin):
                return
            d = order.data
            self.pending[d] = False
            if order.status == order.Completed and order.isbuy():
                s = self.state[d]
                fill = order.executed.price
                s["stop"] = fill - STOP * s["atr"]
                s["target"] = fill + TARGET * s["atr"]
                s["held"] = 0

        def notify_trade(self, trade: Any) -> None:
            if trade.isclosed:
                self.closed += 1

        def next(self) -> None:
            for d in self.datas:
                if self.pending.get(d):
                    continue
                if self.getposition(d).size:
                    s = self.state[d]
                    s["held"] += 1
                    if _exit_due(d, s):
                        self.pending[d] = True
                        self.close(data=d)
                    continue
                atr = _entry_atr(d)
                if atr is not None:
                    self.state[d] = {"atr": atr}
                    self.pending[d] = True
                    self.buy(data=d, size=QTY)

    return Breakout


def run_backtrader(bars: dict[str, np.ndarray]) -> dict[str, Any]:
    import backtrader as bt
    import pandas as pd

    started = time.perf_counter()
    t, n = bars["close"].shape
    index = pd.to_datetime(bars["ts"], unit="ns")

    breakout = _breakout_strategy(bt)
    cerebro = bt.Cerebro(stdstats=False, preload=True, runonce=False)
    cerebro.broker.setcash(1e12)
    cerebro.broker.setcommission(commission=0.0)
    for j in range(n):
        frame = pd.DataFrame(
            {
                "open": bars["open"][:, j],
                "high": bars["high"][:, j],
                "low": bars["low"][:, j],
                "close": bars["close"][:, j],
                "volume": bars["volume"][:, j],
            },
            index=index,
        )
        cerebro.adddata(bt.feeds.PandasData(dataname=frame), name=f"S{j:04d}")
    cerebro.addstrategy(breakout)
    load_s = time.perf_counter() - started
    t0 = time.perf_counter()
    (strategy,) = cerebro.run()
    seconds = time.perf_counter() - t0
    return {
        "kind": "peer",
        "runtime": "backtrader",
        "symbols": n,
        "bars": t * n,
        "steps": t,
        "load_seconds": round(load_s, 3),
        "engine_seconds": round(seconds, 3),
        "bars_per_second": round(t * n / seconds, 1),
        "us_per_step": round(seconds / t * 1e6, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "trades": int(strategy.closed),
    }


PEERS = {"backtrader": run_backtrader}

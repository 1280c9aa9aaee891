"""The breakout strategy as a NautilusTrader ``Strategy`` on the low-level ``BacktestEngine``.

A standalone script (it imports nothing from Sovereign): NautilusTrader pins pandas < 3, so
it runs under its own interpreter (``sovereign bench --peers --nautilus-python PATH``).
Usage: ``python peer_nautilus.py FILE.npz``; the file holds (T, N) arrays ``ts, open,
high, low, close, volume``. Prints one JSON object.

Fill timing differs from Sovereign's and backtrader's: with bar execution, Nautilus moves
its simulated market through each bar's open, high, low and close before ``on_bar`` runs,
so a market order sent from ``on_bar`` fills at that bar's close, not at the next bar's
open. Entries and exits therefore happen one bar-open earlier at different prices, which
shifts stops and targets a little: the trade count is close to, not equal to, the others'.
Its instruments store prices to the cent, so the benchmark rounds every workload to the
cent for all paths (unrounded prices made Nautilus see other bars, and trade 3-6 % less).
"""

from __future__ import annotations

import json
import resource
import sys
import time
from collections import deque
from typing import Any

import numpy as np
import pandas as pd

WINDOW, ATR_PERIOD, STOP, TARGET, MAX_HOLD, QTY = 20, 14, 1.5, 3.0, 50, 100


def _breakout_class() -> type[Any]:
    """The strategy class, defined on call: NautilusTrader is imported only when run."""
    from nautilus_trader.model.enums import OrderSide
    from nautilus_trader.trading.strategy import Strategy

    class Breakout(Strategy):  # type: ignore[misc]
        def __init__(self, bar_types: list[Any], instruments: dict[Any, Any]) -> None:
            super().__init__()
            self.bar_types = bar_types
            self.instruments = instruments
            self.s: dict[Any, dict[str, Any]] = {}
            self.closed = 0

        def on_start(self) -> None:
            for bar_type in self.bar_types:
                iid = bar_type.instrument_id
                self.s[iid] = {
                    "highs": deque(maxlen=WINDOW),
                    "vols": deque(maxlen=WINDOW),
                    "trs": deque(maxlen=ATR_PERIOD),
                    "prev_close": None,
                    "pos": 0,
                    "pending": False,
                    "held": 0,
                }
                self.subscribe_bars(bar_type)

        def on_order_filled(self, event: Any) -> None:
            s = self.s[event.instrument_id]
            s["pending"] = False
            px = float(event.last_px)
            if event.order_side == OrderSide.BUY:
                s["pos"] = QTY
                s["stop"] = px - STOP * s["atr"]
                s["target"] = px + TARGET * s["atr"]
                s["held"] = 0
            else:
                s["pos"] = 0
                self.closed += 1

        def _submit(self, iid: Any, side: Any) -> None:
            inst = self.instruments[iid]
            order = self.order_factory.market(iid, side, inst.make_qty(QTY))
            self.s[iid]["pending"] = True
            self.submit_order(order)

        def on_bar(self, bar: Any) -> None:
            iid = bar.bar_type.instrument_id
            s = self.s[iid]
            h, lo, c, v = float(bar.high), float(bar.low), float(bar.close), float(bar.volume)
            pc = s["prev_close"]
            s["trs"].append(h - lo if pc is None else max(h, pc) - min(lo, pc))
            s["prev_close"] = c
            if not s["pending"]:
                if s["pos"]:
                    s["held"] += 1
                    if lo <= s["stop"] or h >= s["target"] or s["held"] >= MAX_HOLD:
                        self._submit(iid, OrderSide.SELL)
                elif (
                    len(s["highs"]) == WINDOW
                    and c > max(s["highs"])
                    and v > float(np.median(s["vols"]))
                ):
                    s["atr"] = sum(s["trs"]) / ATR_PERIOD
                    self._submit(iid, OrderSide.BUY)
            s["highs"].append(h)
            s["vols"].append(v)

    return Breakout


def run(path: str) -> dict[str, Any]:
    from nautilus_trader.backtest.engine import BacktestEngine, BacktestEngineConfig
    from nautilus_trader.config import LoggingConfig
    from nautilus_trader.model.currencies import USD
    from nautilus_trader.model.data import BarType
    from nautilus_trader.model.enums import AccountType, OmsType
    from nautilus_trader.model.identifiers import Venue
    from nautilus_trader.model.objects import Money
    from nautilus_trader.persistence.wranglers import BarDataWrangler
    from nautilus_trader.test_kit.providers import TestInstrumentProvider

    started = time.perf_counter()
    with np.load(path) as f:
        bars = {k: f[k] for k in f.files}
    t, n = bars["close"].shape
    index = pd.to_datetime(bars["ts"], unit="ns", utc=True)

    strategy_class = _breakout_class()

    engine = BacktestEngine(
        config=BacktestEngineConfig(logging=LoggingConfig(log_level="ERROR", bypass_logging=True))
    )
    venue = Venue("XNAS")
    engine.add_venue(
        venue=venue,
        oms_type=OmsType.NETTING,
        account_type=AccountType.CASH,
        base_currency=USD,
        starting_balances=[Money(1_000_000_000_000, USD)],
        bar_execution=True,
    )
    bar_types, instruments = [], {}
    for j in range(n):
        inst = TestInstrumentProvider.equity(symbol=f"S{j:04d}", venue="XNAS")
        engine.add_instrument(inst)
        bar_type = BarType.from_str(f"{inst.id}-1-MINUTE-LAST-EXTERNAL")
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
        engine.add_data(BarDataWrangler(bar_type, inst).process(frame))
        bar_types.append(bar_type)
        instruments[inst.id] = inst
    strategy = strategy_class(bar_types, instruments)
    engine.add_strategy(strategy)
    load_s = time.perf_counter() - started
    t0 = time.perf_counter()
    engine.run()
    seconds = time.perf_counter() - t0
    result = {
        "kind": "peer",
        "runtime": "nautilus",
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
    engine.dispose()
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.stdout.write(json.dumps(run(sys.argv[1])) + "\n")

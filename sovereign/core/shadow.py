"""The shadow book: the trades the rules prevented, followed on the real bar path.

A rule that skips an entry (``SkipTrade``, or ``RequireConfidence`` above the entry's
confidence) would otherwise leave no trace of what it prevented, and the
self-modification engine could never learn that the skipped trades would have won. So
the shard opens the prevented trade here instead:

* sized as the guardian sizes an entry before any room is taken into account
  (``core.risk.entry_target``, at the account's equity after the latest bar, at the
  entry's limit price: ``SizingPolicy.entry_limit``);
* filled by the simulated broker's model (``brokers.sim``): the buy limit fills at
  ``min(open, limit)`` on a bar that trades at or below it, at most ``max_volume_share`` of
  the bar's volume a bar, the rest canceled after ``entry_timeout_bars`` bar closes; exits
  are market orders at the next open moved by ``slippage_bps``, volume-capped the same
  way; ``commission_for`` on every fill;
* left by the same exits as a real trade (``core.trades.exit_reasons``: stop, target,
  regime change, max hold, with the trade's own stop, target and hold).

A rule that scales an entry down (``ScaleSize``) acts on a trade that is taken: the part
not bought is recorded as a shadow trade on the real trade's own prices when it closes.

Shadow trades are records and never orders: nothing here is ever sent to the guardian, the
gateway or a broker, and they count in no account figure. The shard sends them to the
self-modification engine and to trade memory only (``ShadowTradeClosed``), each tagged
with the rules that acted on it. The trade book's own decisions never depend on the
shadow book.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sovereign.core.constitution import Constitution
from sovereign.core.fills import commission_for, market_price, volume_cap
from sovereign.core.risk import SizingPolicy, entry_target
from sovereign.core.trades import ClosedTrade, closed_trade, exit_reasons
from sovereign.core.universe import Universe
from sovereign.domain.regimes import REGIME_NAMES, REGIME_UNKNOWN
from sovereign.domain.settings import SimConfig, StrategyConfig


@dataclass(frozen=True, slots=True)
class ShadowCosts:
    """What sizes and fills a shadow trade: the account's sizing and the broker model."""

    constitution: Constitution
    policy: SizingPolicy
    sim: SimConfig


@dataclass(slots=True)
class _Shadow:
    trade_id: str
    rule_ids: tuple[str, ...]
    regime_code: int
    confidence: float
    atr: float
    features: dict[str, float | int | str | bool | None]
    stop_mult: float
    target_mult: float
    limit: float
    ordered: int
    entry_age: int = 0
    entry_open: bool = True
    entry_ts: int = 0
    entry_qty: int = 0
    entry_cost: float = 0.0
    exit_qty: int = 0
    exit_proceeds: float = 0.0
    commission: float = 0.0
    exit_reason: str = ""


@dataclass(frozen=True, slots=True)
class ShadowClosed:
    """A closed shadow trade: the trade, the rules that prevented it, and how."""

    trade: ClosedTrade
    rule_ids: tuple[str, ...]
    effect: str  # "skipped" or "scaled"


class ShadowBook:
    """One shard's prevented trades, one at a time per symbol (as in the trade book)."""

    def __init__(self, universe: Universe, config: StrategyConfig, costs: ShadowCosts) -> None:
        n = len(universe)
        self.universe = universe
        self.config = config
        self.costs = costs
        self.equity = math.nan
        self.quantity = np.zeros(n, dtype=np.int64)
        self.pending_exit = np.zeros(n, dtype=bool)
        self.bars_held = np.zeros(n, dtype=np.int64)
        self.stop = np.full(n, np.nan)
        self.target = np.full(n, np.nan)
        self.entry_regime = np.full(n, REGIME_UNKNOWN, dtype=np.uint8)
        self.max_hold = np.full(n, config.max_hold_bars, dtype=np.int64)
        self.trades: dict[int, _Shadow] = {}
        self.closed: list[ShadowClosed] = []
        self._seq: dict[str, int] = {}
        self.counters: dict[str, int] = {
            "opened": 0,
            "unfilled": 0,
            "busy": 0,
            "unsized": 0,
            "below_floor": 0,
            "scaled": 0,
        }

    # -- OPENING ------------------------------------------------------------------------

    def busy(self, i: int) -> bool:
        return i in self.trades

    def open(
        self,
        i: int,
        *,
        ref_price: float,
        atr: float,
        confidence: float,
        regime_code: int,
        stop_mult: float,
        target_mult: float,
        max_hold: int,
        features: dict[str, float | int | str | bool | None],
        rule_ids: tuple[str, ...],
    ) -> None:
        """A prevented entry decided at this bar's close: ordered like a real one."""
        if i in self.trades:
            self.counters["busy"] += 1  # the symbol's previous prevented trade is still open
            return
        c = self.costs
        if not confidence >= c.constitution.min_confidence_for_trade:
            # The guardian would have refused it whatever the rules: nothing prevented.
            self.counters["below_floor"] += 1
            return
        regime = REGIME_NAMES[regime_code] if regime_code < len(REGIME_NAMES) else "Unknown"
        limit = c.policy.entry_limit(ref_price)
        notional = entry_target(confidence, regime, 1.0, self.equity, c.constitution, c.policy)
        ordered = math.floor(notional / limit) if notional > 0 and limit > 0 else 0
        if ordered <= 0:
            self.counters["unsized"] += 1  # no equity known yet, or a price beyond it
            return
        symbol = self.universe.symbols[i]
        n = self._seq.get(symbol, 0) + 1
        self._seq[symbol] = n
        self.trades[i] = _Shadow(
            trade_id=f"{symbol}-shadow-{n}",
            rule_ids=rule_ids,
            regime_code=regime_code,
            confidence=confidence,
            atr=atr,
            features=features,
            stop_mult=stop_mult,
            target_mult=target_mult,
            limit=limit,
            ordered=ordered,
        )
        self.max_hold[i] = max_hold
        self.entry_regime[i] = regime_code
        self.counters["opened"] += 1

    def scaled(self, trade: ClosedTrade, rule_ids: tuple[str, ...], size_scale: float) -> None:
        """The part of a scaled-down trade that was not bought, on the trade's own prices."""
        if not 0 < size_scale < 1 or trade.quantity <= 0:
            return
        quantity = round(trade.quantity * (1.0 - size_scale) / size_scale)
        if quantity <= 0:
            return
        sim = self.costs.sim
        commission = commission_for(quantity, trade.entry_price, sim) + commission_for(
            quantity, trade.exit_price, sim
        )
        cost = quantity * trade.entry_price
        pnl = quantity * (trade.exit_price - trade.entry_price) - commission
        self.counters["scaled"] += 1
        self.closed.append(
            ShadowClosed(
                trade._replace(
                    trade_id=f"{trade.trade_id}-scaled",
                    quantity=quantity,
                    pnl=pnl,
                    commission=commission,
                    return_pct=pnl / cost if cost else 0.0,
                ),
                rule_ids,
                "scaled",
            )
        )

    # -- BARS ---------------------------------------------------------------------------

    def on_bars(
        self,
        ts: int,
        mask: np.ndarray,
        open_: np.ndarray,
        high: np.ndarray,
        low: np.ndarray,
        volume: np.ndarray,
        regime_codes: np.ndarray,
    ) -> None:
        """One bar of every open shadow trade: the fills at its open, then the exits at its
        close (the trade book's order: a fill is booked before the bar it came with)."""
        if not self.trades:
            return
        for i in [i for i in self.trades if mask[i]]:
            self._fill(i, ts, float(open_[i]), float(low[i]), float(volume[i]))
        in_trade = mask & (self.quantity > 0)
        self.bars_held[in_trade] += 1
        for i, reason in exit_reasons(
            in_trade & ~self.pending_exit,
            high,
            low,
            regime_codes,
            stop=self.stop,
            target=self.target,
            entry_regime=self.entry_regime,
            bars_held=self.bars_held,
            max_hold=self.max_hold,
            on_regime_change=self.config.exit_on_regime_change,
        ):
            t = self.trades[i]
            t.exit_reason = reason
            t.entry_open = False  # a trade being left buys no more
            self.pending_exit[i] = True
        # Entries still working age by a bar close; past the timeout the rest is canceled.
        for i, t in list(self.trades.items()):
            if not (mask[i] and t.entry_open):
                continue
            t.entry_age += 1
            if t.entry_age > self.config.entry_timeout_bars:
                t.entry_open = False
                if t.entry_qty == 0:
                    self.counters["unfilled"] += 1
                    self._forget(i)

    def _fill(self, i: int, ts: int, open_: float, low: float, volume: float) -> None:
        t = self.trades[i]
        sim = self.costs.sim
        cap = volume_cap(volume, sim)
        if self.pending_exit[i]:
            quantity = int(self.quantity[i]) if cap is None else min(int(self.quantity[i]), cap)
            if quantity <= 0:
                return
            price = market_price(open_, "SELL", sim)
            t.commission += commission_for(quantity, price, sim)
            t.exit_qty += quantity
            t.exit_proceeds += quantity * price
            self.quantity[i] -= quantity
            if self.quantity[i] == 0:
                self._close(i, ts)
            return
        if not t.entry_open or low > t.limit:
            return
        quantity = t.ordered - t.entry_qty
        if cap is not None:
            quantity = min(quantity, cap)
        if quantity <= 0:
            return
        price = min(open_, t.limit)
        if t.entry_qty == 0:
            t.entry_ts = ts
            self.bars_held[i] = 0
        t.commission += commission_for(quantity, price, sim)
        t.entry_qty += quantity
        t.entry_cost += quantity * price
        self.quantity[i] += quantity
        avg = t.entry_cost / t.entry_qty
        self.stop[i] = avg - t.stop_mult * t.atr
        self.target[i] = avg + t.target_mult * t.atr
        if t.entry_qty >= t.ordered:
            t.entry_open = False

    def _close(self, i: int, ts: int) -> None:
        t = self.trades[i]
        trade = closed_trade(t, self.universe.symbols[i], ts, int(self.bars_held[i]))  # type: ignore[arg-type]
        self.closed.append(ShadowClosed(trade, t.rule_ids, "skipped"))
        self._forget(i)

    def _forget(self, i: int) -> None:
        del self.trades[i]
        self.quantity[i] = 0
        self.pending_exit[i] = False
        self.bars_held[i] = 0
        self.stop[i] = self.target[i] = np.nan
        self.entry_regime[i] = REGIME_UNKNOWN

    def take_closed(self) -> list[ShadowClosed]:
        out, self.closed = self.closed, []
        return out

    @property
    def open_trades(self) -> int:
        return len(self.trades)

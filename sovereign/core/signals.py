"""The shard's baseline strategy: entries, exits and the trade book, vectorised per bar.

Long only (short selling is not enabled yet). For every symbol of the shard, at each bar
close:

Entry (flat, nothing pending, all indicators warm):
    regime in ``entry_regimes`` (TrendingUp by default)
    and close > highest high of the previous ``breakout_window`` bars
    and volume percentile >= ``volume_threshold`` (unless volume confirmation is off).

Exit (in a trade, no exit pending), first that applies:
    ``stop``           low <= entry - ``stop_atr_mult`` * ATR at the signal bar
    ``target``         high >= entry + ``target_atr_mult`` * ATR at the signal bar
    ``regime_change``  the symbol's regime is no longer the one at entry
    ``max_hold``       ``max_hold_bars`` bar closes in the trade.
Orders are market orders decided at the close and filled by the broker at the next open.

Confidence (transparent, until the learner calibrates it), in [0, 1]:
    0.30 + 0.30 * breakout_strength + 0.25 * volume_pct / 100 + 0.15 * (1 - min(sr, 4) / 4)
where breakout_strength = clip((close - prior high) / ATR, 0, 1) and sr is the
support/resistance score (clustered levels near the price make a breakout less clean).
Without volume confirmation the volume term uses 50.

``kind = "breakout"`` (``sovereign.config.breakout_preset``) is the benchmarks' fixed
strategy instead: close > max(high of the previous 20 bars) and volume > median(volume of
the previous 20 bars), a simple-mean ATR, a fixed quantity, confidence 1, no regimes, no
rules, no support/resistance; exits by stop, target or max hold as above.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sovereign.core.calendar import new_york_time
from sovereign.core.codegen import (
    CompiledRuleset,
    Effects,
    RuleFeatures,
    compile_ruleset,
    eval_condition,
)
from sovereign.core.entries import (
    baseline_signal,
    breakout_features,
    breakout_signal,
    entry_features,
)
from sovereign.core.indicators import (
    ATR,
    RollingExtreme,
    RollingMedian,
    SimpleATR,
    VolumePercentile,
)
from sovereign.core.shadow import ShadowBook, ShadowCosts
from sovereign.core.support_resistance import SupportResistance
from sovereign.core.trade_book import StrategyCounters, TradeBook
from sovereign.core.trades import Order, Trade, exit_reasons
from sovereign.core.universe import Universe
from sovereign.domain.regimes import REGIME_NAMES, REGIME_UNKNOWN
from sovereign.domain.rules import RequireConfidence, Rule, ScaleSize, SkipTrade
from sovereign.domain.settings import StrategyConfig

ORPHAN_GRACE_BARS = 3
"""Bars to wait for an answer about an order before forgetting it (see _stale_orders)."""


@dataclass(frozen=True, slots=True)
class EntrySignal:
    intent_id: str
    index: int
    symbol: str
    ref_price: float
    stop_price: float
    confidence: float
    regime: str
    reason: str
    size_scale: float = 1.0
    quantity: int = 0  # 0: the guardian sizes it


@dataclass(frozen=True, slots=True)
class ExitSignal:
    intent_id: str
    index: int
    symbol: str
    quantity: int
    ref_price: float
    regime: str
    reason: str


@dataclass(frozen=True, slots=True)
class CancelSignal:
    order_id: str
    index: int
    symbol: str
    reason: str


def _probability(regime_probs: np.ndarray, i: int, code: int) -> float | None:
    """Symbol ``i``'s probability of the regime ``code`` (None: no regime known)."""
    return float(regime_probs[i, code]) if code < len(REGIME_NAMES) else None


def _skipped(effects: Effects, k: int, confidence: float) -> bool:
    """Whether the rules skip candidate ``k``: a skip, or a confidence below their floor."""
    floor = effects.min_confidence[k]
    return bool(effects.skip[k]) or (not np.isnan(floor) and confidence < floor)


class ShardStrategy(TradeBook):
    """Indicators, signals and the trade book of one shard's universe."""

    def __init__(
        self,
        universe: Universe,
        config: StrategyConfig,
        shard: int,
        *,
        shadow: ShadowCosts | None = None,
    ) -> None:
        n = len(universe)
        self.universe = universe
        self.config = config
        self.shard = shard
        self.breakout = config.kind == "breakout"
        self.atr: ATR | SimpleATR = (
            SimpleATR(n, period=config.atr_period)
            if self.breakout
            else ATR(n, period=config.atr_period)
        )
        self.volume_median = RollingMedian(n, window=config.volume_window)
        self.volume_pct = VolumePercentile(n, window=config.volume_window)
        self.prior_high = RollingExtreme(n, window=config.breakout_window, kind="max")
        self.sr = SupportResistance(
            n, swing=config.sr_swing, memory=config.sr_memory, band_atr=config.sr_band_atr
        )
        self.entry_codes = np.array(
            [REGIME_NAMES.index(r) for r in config.entry_regimes], dtype=np.uint8
        )
        self.quantity = np.zeros(n, dtype=np.int64)
        self.pending_entry = np.zeros(n, dtype=bool)
        self.pending_exit = np.zeros(n, dtype=bool)
        self.bars_held = np.zeros(n, dtype=np.int64)
        self.stop = np.full(n, np.nan)
        self.target = np.full(n, np.nan)
        self.entry_regime = np.full(n, REGIME_UNKNOWN, dtype=np.uint8)
        self.max_hold = np.full(n, config.max_hold_bars, dtype=np.int64)
        self.exit_late_fill = np.zeros(n, dtype=bool)
        self.trades: dict[int, Trade] = {}
        self.compiled: CompiledRuleset | None = None
        self.rules: list[Rule] = []
        # The trades the rules prevent, followed on the same bars (``core.shadow``).
        self.shadow: ShadowBook | None = None
        if shadow is not None:
            self.shadow = ShadowBook(universe, config, shadow)
        self.rules_version = 0
        self.parameters: dict[str, float] = {}
        self.losing_streak = 0
        self.orders: dict[str, Order] = {}
        self._seq: dict[str, int] = {}
        self.counters = StrategyCounters()

    # -- BARS ---------------------------------------------------------------------------

    def on_bars(
        self,
        ts: int,
        mask: np.ndarray,
        high: np.ndarray,
        low: np.ndarray,
        close: np.ndarray,
        volume: np.ndarray,
        regime_codes: np.ndarray,
        regime_probs: np.ndarray,
        *,
        trade: bool = True,
        open_: np.ndarray | None = None,
    ) -> tuple[list[EntrySignal], list[ExitSignal], list[CancelSignal]]:
        """Update indicators with one bar time and decide exits and entries (none when
        ``trade`` is False: warm-up history). ``open_`` moves the shadow book, if any."""
        self.counters.bars += int(mask.sum())
        if self.shadow is not None and open_ is not None:
            self.shadow.on_bars(ts, mask, open_, high, low, volume, regime_codes)
        self.atr.update(mask, high, low, close)
        atr = self.atr.value
        if self.breakout:
            self.volume_median.update(mask, volume)
        else:
            self.volume_pct.update(mask, volume)
        self.prior_high.update(mask, high)
        if not self.breakout:
            self.sr.update(mask, high, low, close, atr)

        in_trade = mask & (self.quantity > 0)
        self.bars_held[in_trade] += 1
        if not trade:
            return [], [], []
        stale = self._stale_orders(mask, ts)
        exits, cancels = self._exits(in_trade & ~self.pending_exit, high, low, close, regime_codes)
        cancels = stale + [c for c in cancels if c.order_id not in {s.order_id for s in stale}]
        if self.breakout:
            entries = self._breakout_entries(mask, close, volume, atr, regime_codes)
        else:
            entries = self._entries(ts, mask, close, atr, regime_codes, regime_probs)
        return entries, exits, cancels

    def _breakout_entries(
        self,
        mask: np.ndarray,
        close: np.ndarray,
        volume: np.ndarray,
        atr: np.ndarray,
        regime_codes: np.ndarray,
    ) -> list[EntrySignal]:
        flat = mask & (self.quantity == 0) & ~self.pending_entry & ~self.pending_exit
        if not flat.any():
            return []
        ready = self.atr.ready & self.prior_high.ready & self.volume_median.ready
        fire = flat & breakout_signal(
            ready, close, self.prior_high.value, volume, self.volume_median.value
        )
        out: list[EntrySignal] = []
        cfg = self.config
        for i in np.flatnonzero(fire).tolist():
            a, c = float(atr[i]), float(close[i])
            code = int(regime_codes[i])
            regime = REGIME_NAMES[code] if code < len(REGIME_NAMES) else "Unknown"
            symbol = self.universe.symbols[i]
            intent_id = self._next_id(symbol)
            self.orders[intent_id] = Order(i, "OPEN", "breakout", quantity=cfg.fixed_quantity)
            stop_mult, target_mult, max_hold, _ = self.exit_parameters(code, None, 0)
            self.trades[i] = Trade(
                trade_id=intent_id,
                regime_code=code,
                confidence=1.0,
                atr=a,
                features=breakout_features(a, c),
                stop_mult=stop_mult,
                target_mult=target_mult,
            )
            self.max_hold[i] = max_hold
            self.pending_entry[i] = True
            self.entry_regime[i] = code
            self.counters.entries += 1
            out.append(
                EntrySignal(
                    intent_id=intent_id,
                    index=i,
                    symbol=symbol,
                    ref_price=c,
                    stop_price=c - stop_mult * a,
                    confidence=1.0,
                    regime=regime,
                    reason="breakout",
                    quantity=cfg.fixed_quantity,
                )
            )
        return out

    def _stale_orders(self, mask: np.ndarray, ts: int) -> list[CancelSignal]:
        """Entries not completely filled within ``entry_timeout_bars`` are canceled (their
        signal is stale). Orders nobody ever answered for (their verdict or
        acknowledgement was lost with a failed actor call) are forgotten after a grace
        period, so the symbol can trade again; the guardian's book prevents doubles."""
        out: list[CancelSignal] = []
        forget: list[str] = []
        grace = ORPHAN_GRACE_BARS
        for order_id, order in self.orders.items():
            if not mask[order.index]:
                continue
            order.age += 1
            if order.purpose == "OPEN":
                if not order.cancel_sent and order.age > self.config.entry_timeout_bars:
                    order.cancel_sent = True
                    symbol = self.universe.symbols[order.index]
                    out.append(CancelSignal(order_id, order.index, symbol, "entry timed out"))
                elif order.cancel_sent and order.age > self.config.entry_timeout_bars + grace:
                    forget.append(order_id)
            elif order.filled == 0 and order.age > grace:
                forget.append(order_id)
        for order_id in forget:
            self.counters.orphaned_orders += 1
            self.on_canceled(order_id, ts)
        return out

    def _exits(
        self,
        candidates: np.ndarray,
        high: np.ndarray,
        low: np.ndarray,
        close: np.ndarray,
        regime_codes: np.ndarray,
    ) -> tuple[list[ExitSignal], list[CancelSignal]]:
        if not candidates.any():
            return [], []
        exits: list[ExitSignal] = []
        cancels: list[CancelSignal] = []
        for i, reason in exit_reasons(
            candidates,
            high,
            low,
            regime_codes,
            stop=self.stop,
            target=self.target,
            entry_regime=self.entry_regime,
            bars_held=self.bars_held,
            max_hold=self.max_hold,
            on_regime_change=self.config.exit_on_regime_change,
            late=self.exit_late_fill,
        ):
            symbol = self.universe.symbols[i]
            if self.pending_entry[i]:
                # Stop adding to a position we are leaving.
                for order_id, order in self.orders.items():
                    if order.index == i and order.purpose == "OPEN" and not order.cancel_sent:
                        order.cancel_sent = True
                        cancels.append(CancelSignal(order_id, i, symbol, f"exit: {reason}"))
            intent_id = self._next_id(symbol)
            self.orders[intent_id] = Order(i, "CLOSE", reason, quantity=int(self.quantity[i]))
            self.pending_exit[i] = True
            self.trades[i].exit_reason = reason
            code = int(regime_codes[i])
            exits.append(
                ExitSignal(
                    intent_id=intent_id,
                    index=i,
                    symbol=symbol,
                    quantity=int(self.quantity[i]),
                    ref_price=float(close[i]),
                    regime=REGIME_NAMES[code] if code < len(REGIME_NAMES) else "Unknown",
                    reason=reason,
                )
            )
            self.counters.exits += 1
        return exits, cancels

    def _entries(
        self,
        ts: int,
        mask: np.ndarray,
        close: np.ndarray,
        atr: np.ndarray,
        regime_codes: np.ndarray,
        regime_probs: np.ndarray,
    ) -> list[EntrySignal]:
        cfg = self.config
        flat = mask & (self.quantity == 0) & ~self.pending_entry & ~self.pending_exit
        if not flat.any():
            return []
        prior_high, vol_pct = self.prior_high.value, self.volume_pct.value
        # The entry's one definition, over a block of one bar.
        signal = baseline_signal(
            ready=(self.atr.ready & self.prior_high.ready)[None],
            regime=regime_codes[None],
            entry_codes=self.entry_codes,
            close=close[None],
            prior_high=prior_high[None],
            atr=atr[None],
            volume_pct=vol_pct[None],
            volume_ready=self.volume_pct.ready[None],
            sr_score=self.sr.score[None],
            volume_confirmation=cfg.volume_confirmation,
            volume_threshold=self.param("volume_threshold", cfg.volume_threshold),
        )
        self.counters.no_volume_blocked += int((flat & signal.no_volume[0]).sum())
        idx = np.flatnonzero(flat & signal.fire[0])
        if idx.size == 0:
            return []
        a, c = atr[idx], close[idx]
        strength, confidence = signal.strength[0, idx], signal.confidence[0, idx]
        sr = self.sr.score[idx].astype(np.int64)
        minute, weekday = new_york_time(ts)
        effects = acted = None
        if self.compiled is not None:
            features = self._rule_features(
                idx, regime_codes, vol_pct, sr, a / c * 100.0, minute, confidence
            )
            effects = self.compiled(features)
            acted = self.rules_acting(features, confidence, effects)
        out: list[EntrySignal] = []
        for k, i in enumerate(idx.tolist()):
            skipped = effects is not None and _skipped(effects, k, float(confidence[k]))
            if skipped:
                self.counters.rule_skips += 1
                if self.shadow is None:
                    continue
            signal = self._open(
                i,
                k,
                float(a[k]),
                float(c[k]),
                float(strength[k]),
                int(sr[k]),
                float(confidence[k]),
                int(regime_codes[i]),
                regime_probs,
                vol_pct,
                float(prior_high[i]),
                minute,
                weekday,
                effects,
                acted[k] if acted is not None else (),
                shadow=skipped,
            )
            if signal is not None:
                out.append(signal)
        return out

    def rules_acting(
        self, features: RuleFeatures, confidence: np.ndarray, effects: Effects
    ) -> list[tuple[str, ...]] | None:
        """For each candidate, the ids of the rules that skipped or scaled it down (what a
        shadow trade is tagged with); None when no rule did anything to any candidate."""
        if self.shadow is None:
            return None
        with np.errstate(invalid="ignore"):
            blocked = ~np.isnan(effects.min_confidence) & (confidence < effects.min_confidence)
        if not (effects.skip.any() or blocked.any() or (effects.scale < 1).any()):
            return None
        acted: list[list[str]] = [[] for _ in range(features.n)]
        for rule in self.rules:
            match rule.action:
                case SkipTrade() | ScaleSize():
                    hit = eval_condition(rule.condition, features)
                case RequireConfidence(minimum=m):
                    hit = eval_condition(rule.condition, features) & (confidence < m)
                case _:
                    continue
            for k in np.flatnonzero(hit).tolist():
                acted[k].append(rule.rule_id)
        return [tuple(x) for x in acted]

    def _rule_features(
        self,
        idx: np.ndarray,
        regime_codes: np.ndarray,
        vol_pct: np.ndarray,
        sr: np.ndarray,
        atr_pct: np.ndarray,
        minute: int,
        confidence: np.ndarray,
    ) -> RuleFeatures:
        return RuleFeatures(
            regime=regime_codes[idx],
            volume_pct=vol_pct[idx],
            sr_score=sr,
            atr_pct=atr_pct,
            minute=np.full(idx.size, minute, dtype=np.int64),
            symbol=self.universe.names[idx],
            confidence=confidence,
            losses=np.full(idx.size, self.losing_streak, dtype=np.int64),
        )

    def _open(
        self,
        i: int,
        k: int,
        a: float,
        c: float,
        strength: float,
        sr: int,
        confidence: float,
        code: int,
        regime_probs: np.ndarray,
        vol_pct: np.ndarray,
        prior_high: float,
        minute: int,
        weekday: int,
        effects: Effects | None,
        acted: tuple[str, ...] = (),
        *,
        shadow: bool = False,
    ) -> EntrySignal | None:
        """Record an entry decision and return its signal; with ``shadow`` (a rule
        prevented it) the decision goes to the shadow book instead, and no signal."""
        stop_mult, target_mult, max_hold, scale = self.exit_parameters(code, effects, k)
        symbol = self.universe.symbols[i]
        # A prevented entry takes no intent id: the real ids (and trades.csv) stay as
        # they are without rules.
        intent_id = "" if shadow else self._next_id(symbol)
        features = entry_features(
            a,
            c,
            float(vol_pct[i]),
            sr,
            strength,
            _probability(regime_probs, i, code),
            minute,
            weekday,
            scale,
            self.rules_version,
            acted,
        )
        if shadow:
            assert self.shadow is not None
            self.shadow.open(
                i,
                ref_price=c,
                atr=a,
                confidence=confidence,
                regime_code=code,
                stop_mult=stop_mult,
                target_mult=target_mult,
                max_hold=max_hold,
                features=features,
                rule_ids=acted,
            )
            return None
        self.orders[intent_id] = Order(i, "OPEN", "breakout")
        self.trades[i] = Trade(
            trade_id=intent_id,
            regime_code=code,
            confidence=confidence,
            atr=a,
            features=features,
            stop_mult=stop_mult,
            target_mult=target_mult,
        )
        self.max_hold[i] = max_hold
        self.pending_entry[i] = True
        self.entry_regime[i] = code
        self.counters.entries += 1
        return EntrySignal(
            intent_id=intent_id,
            index=i,
            symbol=symbol,
            ref_price=c,
            stop_price=c - stop_mult * a,
            confidence=confidence,
            regime=REGIME_NAMES[code],
            reason=f"breakout above {prior_high:.2f} in {REGIME_NAMES[code]}",
            size_scale=scale,
        )

    def exit_parameters(
        self, code: int, effects: Effects | None, k: int
    ) -> tuple[float, float, int, float]:
        """An entry's stop and target (ATR multiples), maximum hold and size scale: the
        strategy's, its regime's where set, and the rules' where they act."""
        cfg = self.config
        stop_mult = self.param("stop_atr_mult", cfg.stop_atr_mult)
        target_mult = self.param("target_atr_mult", cfg.target_atr_mult)
        max_hold = int(self.param("max_hold_bars", cfg.max_hold_bars))
        regime = cfg.per_regime.get(REGIME_NAMES[code]) if code < len(REGIME_NAMES) else None
        if regime is not None:
            stop_mult = regime.stop_atr_mult or stop_mult
            target_mult = regime.target_atr_mult or target_mult
            max_hold = regime.max_hold_bars or max_hold
        scale = 1.0
        if effects is not None:
            scale = float(effects.scale[k])
            if not np.isnan(effects.stop_mult[k]):
                stop_mult = float(effects.stop_mult[k])
            if not np.isnan(effects.target_mult[k]):
                target_mult = float(effects.target_mult[k])
            if effects.max_hold[k] > 0:
                max_hold = int(effects.max_hold[k])
        return stop_mult, target_mult, max_hold, scale

    # -- RULES --------------------------------------------------------------------------

    def set_rules(self, version: int, rules: list[Rule], parameters: dict[str, float]) -> None:
        """Adopt a rule-set snapshot: compiled once, used for every later entry."""
        self.rules_version = version
        self.rules = list(rules)
        self.compiled = compile_ruleset(rules) if rules else None
        self.parameters = dict(parameters)

    def param(self, name: str, default: float) -> float:
        return self.parameters.get(name, default)

    def _next_id(self, symbol: str) -> str:
        # Numbered per symbol: ids (and so trades.csv) do not depend on how symbols are
        # dealt to shards, and each symbol lives in exactly one shard, so they are unique.
        n = self._seq.get(symbol, 0) + 1
        self._seq[symbol] = n
        return f"{symbol}-{n}"

    @property
    def open_trades(self) -> int:
        return int((self.quantity > 0).sum())

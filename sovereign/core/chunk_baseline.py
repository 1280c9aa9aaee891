"""The baseline strategy's part of a speculative chunk (``core.chunks``): its indicators,
entry signals, rule effects and entry records over K bar times at once.

Every piece is the bar path's own definition asked for a block: the indicators' ``block``,
``core.entries.baseline_signal``, the compiled rule set (element-wise over candidates, so
one call over the chunk's candidate cells answers what one call a bar would), the
strategy's ``exit_parameters`` and ``core.entries.entry_features``. What the bar path
decides from state the chunk cannot know before its walk (whether a symbol was flat at a
bar) is counted after the walk, from it (``count_flat``).

Not modelled (the chunk is refused and replayed bar by bar): a rule on the losing streak
(it moves with every trade the chunk closes), and rules acting on an entry while the
shadow book follows prevented trades (the shadow book sizes at the account's equity of
the bar, which is known only once the chunk has been executed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from sovereign.core.calendar import new_york_time
from sovereign.core.chunk_state import blocks_once
from sovereign.core.chunk_walk import Signals, Walk, regime_exits
from sovereign.core.codegen import RuleFeatures
from sovereign.core.entries import Features, baseline_signal, entry_features
from sovereign.domain.regimes import REGIME_NAMES
from sovereign.domain.rules import And, ConsecutiveLossesAbove, Not, Or, Rule

_INDICATORS = ("atr", "volume_pct", "prior_high", "sr")
"""The baseline's indicators: they depend on the bars alone."""


class BaselineUnsupportedError(Exception):
    """The chunk's rules or shadow book need what only bar by bar knows."""


@dataclass(slots=True)
class BaselineCells:
    """What the walk's counts need of the chunk's signals (K, n)."""

    skipped: np.ndarray  # bool: a candidate the rules skip
    no_volume: np.ndarray  # bool: blocked for want of volume data
    acted: np.ndarray  # bool: a candidate a rule acts on while a shadow book follows them


def _uses_losses(condition: Any) -> bool:
    match condition:
        case ConsecutiveLossesAbove():
            return True
        case And(items=items) | Or(items=items):
            return any(_uses_losses(c) for c in items)
        case Not(item=item):
            return _uses_losses(item)
    return False


def rules_use_losses(rules: list[Rule]) -> bool:
    """Whether any rule reads the losing streak."""
    return any(_uses_losses(r.condition) for r in rules)


def baseline_signals(
    st: Any,
    bars: Any,
    present: np.ndarray,
    regime: np.ndarray,
    probs: np.ndarray,
    quantity: np.ndarray,
) -> tuple[Signals, BaselineCells]:
    """The chunk's indicators and entries for the baseline strategy (``ShardStrategy``
    with its default ``kind``), leaving the indicators as the chunk's bars one at a time
    would. ``regime`` (K, n) and ``probs`` (K, n, 4): each symbol's regime codes and
    probabilities after each bar; ``quantity`` (K, n): what an entry is speculated to
    fill."""
    cfg, c = st.config, bars.close
    key = (int(bars.ts[0]), int(bars.ts[-1]), len(bars), present.tobytes())
    atr, atr_ready, vol_pct, vol_ready, prior_high, ph_ready, sr_value = blocks_once(
        st, key, _INDICATORS, lambda: _indicator_blocks(st, bars, present)
    )
    # The strategy reads the score, which is the value where scored and 0 elsewhere.
    sr = np.where(np.isnan(sr_value), 0, sr_value).astype(np.int64)
    signal = baseline_signal(
        ready=atr_ready & ph_ready,
        regime=regime,
        entry_codes=st.entry_codes,
        close=c,
        prior_high=prior_high,
        atr=atr,
        volume_pct=vol_pct,
        volume_ready=vol_ready,
        sr_score=sr,
        volume_confirmation=cfg.volume_confirmation,
        volume_threshold=st.param("volume_threshold", cfg.volume_threshold),
    )
    stop_mult, target_mult, max_hold = regime_exits(st, regime)
    scale = np.ones(c.shape)
    fire = signal.fire.copy()
    skipped = np.zeros(c.shape, dtype=bool)
    acted = np.zeros(c.shape, dtype=bool)
    cells = np.nonzero(fire)
    if st.compiled is not None and cells[0].size:
        features = _rule_features(st, bars, cells, regime, vol_pct, sr, atr, signal.confidence)
        exits = (stop_mult, target_mult, max_hold)
        _apply_rules(st, cells, features, fire, skipped, acted, scale, *exits)

    def record(t: int, j: int) -> Features:
        code = int(regime[t, j])
        minute, weekday = new_york_time(int(bars.ts[t]))
        return entry_features(
            float(atr[t, j]),
            float(c[t, j]),
            float(vol_pct[t, j]),
            int(sr[t, j]),
            float(signal.strength[t, j]),
            float(probs[t, j, code]) if code < len(REGIME_NAMES) else None,
            minute,
            weekday,
            float(scale[t, j]),
            st.rules_version,
        )

    signals = Signals(
        atr=atr,
        signal=fire,
        present=present,
        quantity=quantity,
        stop_mult=stop_mult,
        target_mult=target_mult,
        max_hold=max_hold,
        confidence=signal.confidence,
        scale=scale,
        record=record,
    )
    return signals, BaselineCells(skipped, signal.no_volume, acted)


def _indicator_blocks(st: Any, bars: Any, present: np.ndarray) -> tuple[np.ndarray, ...]:
    """The baseline's indicators over the chunk (values and readiness), by their blocks."""
    h, lo, c, v = bars.high, bars.low, bars.close, bars.volume
    atr, atr_ready = st.atr.block(present, h, lo, c)
    vol_pct, vol_ready = st.volume_pct.block(present, v)
    prior_high, ph_ready = st.prior_high.block(present, h)
    sr_value, _ = st.sr.block(present, h, lo, c, atr)
    return atr, atr_ready, vol_pct, vol_ready, prior_high, ph_ready, sr_value


def _apply_rules(
    st: Any, cells: tuple[np.ndarray, np.ndarray], features: RuleFeatures, *out: np.ndarray
) -> None:
    """The rules' effects on the candidate ``cells``, into the (K, n) arrays ``out``:
    entry signal, skipped, acted on (with a shadow book), size scale, stop and target
    multiples, maximum hold."""
    fire, skipped, acted, scale, stop_mult, target_mult, max_hold = out
    if rules_use_losses(st.rules):
        raise BaselineUnsupportedError("a rule reads the losing streak")
    effects = st.compiled(features)
    floor = effects.min_confidence
    with np.errstate(invalid="ignore"):
        skip = effects.skip | (~np.isnan(floor) & (features.confidence < floor))
    skipped[cells], fire[cells], scale[cells] = skip, ~skip, effects.scale
    for mine, theirs in ((stop_mult, effects.stop_mult), (target_mult, effects.target_mult)):
        mine[cells] = np.where(np.isnan(theirs), mine[cells], theirs)
    max_hold[cells] = np.where(effects.max_hold > 0, effects.max_hold, max_hold[cells])
    if st.shadow is not None:
        tags = st.rules_acting(features, features.confidence, effects)
        if tags is not None:
            acted[cells] = np.array([bool(x) for x in tags], dtype=bool)


def _rule_features(
    st: Any,
    bars: Any,
    cells: tuple[np.ndarray, np.ndarray],
    regime: np.ndarray,
    vol_pct: np.ndarray,
    sr: np.ndarray,
    atr: np.ndarray,
    confidence: np.ndarray,
) -> RuleFeatures:
    t, j = cells
    times = np.unique(t)
    minutes = np.array([new_york_time(int(bars.ts[x]))[0] for x in times.tolist()], np.int64)
    return RuleFeatures(
        regime=regime[cells].astype(np.uint8),
        volume_pct=vol_pct[cells],
        sr_score=sr[cells],
        atr_pct=atr[cells] / bars.close[cells] * 100.0,
        minute=minutes[np.searchsorted(times, t)],
        symbol=st.universe.names[j],
        confidence=confidence[cells],
        losses=np.full(t.size, st.losing_streak, dtype=np.int64),
    )


def busy_cells(st: Any, walk: Walk, quantity: np.ndarray, k_bars: int) -> np.ndarray:
    """(K, n): whether each symbol is in a trade or has an order pending at each bar's
    entry decision (bar by bar: not flat), as the walk went. A trade entered at bar s is
    busy from s + 1 to the bar its exit is decided at; an entry denied at s (no shares in
    ``quantity``) frees the symbol at s + 1; a position or entry pending at the chunk's
    start is busy from 0."""
    n = st.quantity.shape[0]
    diff = np.zeros((k_bars + 1, n), dtype=np.int64)
    carried = ((st.quantity > 0) | st.pending_entry) & ~st.pending_exit
    diff[0, carried] += 1
    taken = quantity[walk.entry_bar, walk.entry_col] > 0
    np.add.at(diff, (walk.entry_bar[taken] + 1, walk.entry_col[taken]), 1)
    np.add.at(diff, (walk.exit_bar + 1, walk.exit_col), -1)
    return np.cumsum(diff[:k_bars], axis=0) > 0


def count_flat(
    st: Any, walk: Walk, cells: BaselineCells, quantity: np.ndarray, present: np.ndarray
) -> None:
    """What the bar path counts of flat symbols' candidates (the entries the rules skip,
    those blocked for want of volume data); with a shadow book, a rule acting on a flat
    candidate is refused (see the module doc). Called before the walk's state is taken
    into the strategy (it reads the state at the chunk's start)."""
    if not (cells.skipped.any() or cells.no_volume.any() or cells.acted.any()):
        return
    flat = ~busy_cells(st, walk, quantity, cells.skipped.shape[0]) & present[None]
    if (flat & cells.acted).any():
        raise BaselineUnsupportedError("rules act on entries the shadow book follows")
    st.counters.rule_skips += int((flat & cells.skipped).sum())
    st.counters.no_volume_blocked += int((flat & cells.no_volume).sum())

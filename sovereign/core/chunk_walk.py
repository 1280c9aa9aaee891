"""A speculative chunk's trades, walked from event to event (``core.chunks``).

Given each bar's entry signal, ATR, entry size and exit parameters over a chunk, a walk
finds every symbol's entries and exits as a replay bar by bar would, in the world the chunk
assumes (every entry approved for its size, or denied where that size is 0, and filled in
full at the next bar's open). Exits are ``core.trades.exit_code``'s, the one definition of
an exit, asked for each open trade's bars ahead at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from sovereign.core.trades import exit_code


@dataclass(slots=True)
class Signals:
    """What a walk needs of a chunk: each bar's ATR, entry signal, and an entry's size and
    exit parameters were it decided there."""

    atr: np.ndarray  # (K, n), NaN until ready
    signal: np.ndarray  # (K, n) entry signal (were the symbol flat)
    # (K, n) int64: the shares an entry decided at that bar fills (the strategy's own, or
    # what the guardian sized it at on an earlier speculation of the same bars; 0: the
    # guardian denies it, and the symbol is free to enter again from the next bar)
    quantity: np.ndarray
    # (K, n): an entry's stop and target (ATR multiples) and maximum hold, by its decision
    # bar (the strategy's ``exit_parameters`` for the regime there)
    stop_mult: np.ndarray
    target_mult: np.ndarray
    max_hold: np.ndarray
    present: np.ndarray  # (n,) symbols with bars in the chunk (the others have none at all)
    # (K, n): an entry's confidence and the rules' size scale, were it decided there
    # (None: 1 everywhere, as the breakout preset's)
    confidence: np.ndarray | None = None
    scale: np.ndarray | None = None
    # What an entry decided at (bar, column) records of its signal bar (its ``features``)
    record: Callable[[int, int], dict[str, Any]] | None = None

    def features(self, t: int, j: int) -> dict[str, Any]:
        assert self.record is not None, "the strategy's signals say what an entry records"
        return self.record(t, j)

    def confidence_at(self, t: np.ndarray, j: np.ndarray) -> np.ndarray:
        if self.confidence is None:
            return np.ones(np.shape(t))
        return self.confidence[t, j].astype(np.float64)


@dataclass(slots=True)
class Walk:
    """Every decision of a chunk, found symbol by symbol, and the trade state at its end."""

    entry_bar: np.ndarray
    entry_col: np.ndarray
    exit_bar: np.ndarray
    exit_col: np.ndarray
    exit_reason: np.ndarray  # index into EXIT_REASONS
    exit_held: np.ndarray  # bars held at the decision
    position: np.ndarray  # (n,) at the end
    stop: np.ndarray
    target: np.ndarray
    held: np.ndarray


def _walk(st: Any, bars: Any, ind: Signals, regime: np.ndarray) -> Walk:
    """Each symbol's trades, from event to event, all symbols at once.

    A round takes every flat symbol to its next entry signal (its fill, at the next open,
    sets the stop and target from the signal bar's ATR) and every open trade to its exit:
    the first bar at which ``exit_code`` (the one definition of an exit) gives a reason,
    over the trade's bars ahead at once. Exits filled at an open leave the symbol flat at
    that bar, free to enter again at its close. ``regime``: each bar's codes (K, n).
    """
    k_bars, n = bars.close.shape
    o, h, lo = bars.open, bars.high, bars.low
    seek, trading, done = 0, 1, 2
    mode = np.full(n, seek if k_bars else done, dtype=np.int64)
    cursor = np.zeros(n, dtype=np.int64)
    stop, target = st.stop.copy(), st.target.copy()
    held = st.bars_held.astype(np.int64).copy()
    limit = st.max_hold.astype(np.int64).copy()
    position = st.quantity.astype(np.int64).copy()
    entry_regime = st.entry_regime.copy()
    rows = np.arange(k_bars)
    marks = np.where(ind.signal, rows[:, None], k_bars)
    next_signal = np.vstack(
        [np.minimum.accumulate(marks[::-1], axis=0)[::-1], np.full((1, n), k_bars)]
    )
    log_e: list[tuple[np.ndarray, np.ndarray]] = []
    log_x: list[tuple[np.ndarray, ...]] = []

    def enter(cols: Any, fill: Any, atr: Any, mult: tuple[Any, Any], qty: Any) -> None:
        # The stop and target follow the average price, as the strategy books a fill.
        avg = (qty * o[fill, cols]) / qty
        stop[cols] = avg - mult[0] * atr
        target[cols] = avg + mult[1] * atr
        held[cols] = 0
        cursor[cols] = fill
        position[cols] = qty
        mode[cols] = trading

    if k_bars:
        pre_exit = np.flatnonzero(st.pending_exit)
        position[pre_exit] = 0
        stop[pre_exit] = target[pre_exit] = np.nan
        held[pre_exit] = 0
        pre_entry = np.flatnonzero(st.pending_entry)
        if pre_entry.size:
            trades = [st.trades[i] for i in pre_entry.tolist()]
            sm, tm, atr = (
                np.array([getattr(t, f) for t in trades])
                for f in ("stop_mult", "target_mult", "atr")
            )
            fills = np.array([opening_quantity(st, j) for j in pre_entry.tolist()], np.int64)
            enter(pre_entry, np.zeros(pre_entry.size, dtype=np.int64), atr, (sm, tm), fills)
        mode[(st.quantity > 0) & ~st.pending_exit] = trading
    mode[~ind.present] = done  # no bar, no decision (and no bar held)

    while (mode != done).any():
        flat = np.flatnonzero(mode == seek)
        if flat.size:
            s = next_signal[cursor[flat], flat]
            mode[flat[s >= k_bars]] = done
            go, s = flat[s < k_bars], s[s < k_bars]
            if go.size:
                log_e.append((s, go))
                limit[go] = ind.max_hold[s, go]
                entry_regime[go] = regime[s, go]
                mode[go[s == k_bars - 1]] = done  # pending at the chunk's end
                go, s = go[s < k_bars - 1], s[s < k_bars - 1]
                denied = ind.quantity[s, go] <= 0
                cursor[go[denied]] = s[denied] + 1
                go, s = go[~denied], s[~denied]
                if go.size:
                    mult = (ind.stop_mult[s, go], ind.target_mult[s, go])
                    enter(go, s + 1, ind.atr[s, go], mult, ind.quantity[s, go])
        active = np.flatnonzero(mode == trading)
        if not active.size:
            continue
        start = cursor[active]
        forced = start + np.maximum(0, limit[active] - held[active] - 1)
        width = np.minimum(forced, k_bars - 1) - start + 1
        offsets = np.arange(int(width.max()))
        at = np.minimum(start[:, None] + offsets[None, :], k_bars - 1)
        cols = active[:, None]
        ahead = (h[at, cols], lo[at, cols], regime[at, cols])
        code = _exits(
            st,
            ahead,
            stop[cols],
            target[cols],
            entry_regime[cols],
            held[cols] + offsets + 1,
            limit[cols],
        )
        # The maximum hold bounds the window: a trade is decided within it or runs on.
        hit = (code >= 0) & (offsets[None, :] < width[:, None])
        decided = hit.any(axis=1)
        first = hit.argmax(axis=1)
        still = active[~decided]  # they run on past the chunk
        held[still], mode[still] = held[still] + k_bars - cursor[still], done
        sel = np.flatnonzero(decided)
        if not sel.size:
            continue
        x_cols = active[sel]
        e = start[sel] + first[sel]
        held[x_cols] += e - cursor[x_cols] + 1
        log_x.append((e, x_cols, code[sel, first[sel]], held[x_cols].copy()))
        last = e == k_bars - 1
        mode[x_cols[last]] = done  # the exit fills after the chunk
        closing, e = x_cols[~last], e[~last]
        position[closing] = 0
        stop[closing] = target[closing] = np.nan
        held[closing] = 0
        cursor[closing] = e + 1
        mode[closing] = seek

    return _walked(log_e, log_x, position, stop, target, held)


SCALAR_WALK_MAX_SYMBOLS = 8
"""Shards this narrow walk their symbols one at a time (one small ``exit_code`` call a
trade): a vectorised round costs ~150 µs of numpy calls whatever its width, so with one
symbol it loses to a loop."""


def _walk_scalar(st: Any, bars: Any, ind: Signals, regime: np.ndarray) -> Walk:
    """``_walk`` for narrow shards: the same decisions, one symbol at a time."""
    k_bars = len(bars)
    stop = st.stop.copy()
    target = st.target.copy()
    held_out = st.bars_held.astype(np.int64).copy()
    position = st.quantity.astype(np.int64).copy()
    rows = np.arange(k_bars)
    marks = np.where(ind.signal, rows[:, None], k_bars)
    next_signal = np.minimum.accumulate(marks[::-1], axis=0)[::-1]
    e_bar: list[int] = []
    e_col: list[int] = []
    x_bar: list[int] = []
    x_col: list[int] = []
    x_reason: list[int] = []
    x_held: list[int] = []
    for j in np.flatnonzero(ind.present).tolist():
        nxt = [*next_signal[:, j].tolist(), k_bars]
        if not k_bars or (nxt[0] >= k_bars and not position[j] and not st.pending_entry[j]):
            continue
        o = bars.open[:, j].tolist()
        lo, hi, reg = bars.low[:, j], bars.high[:, j], regime[:, j]
        atr = ind.atr[:, j].tolist()
        limit = int(st.max_hold[j])
        entered_in = int(st.entry_regime[j])
        cursor = 0
        s_ = float(stop[j])
        t_ = float(target[j])
        held = int(held_out[j])
        trading = False
        if st.pending_exit[j]:
            position[j] = 0
            s_ = t_ = float("nan")
            held = 0
        elif st.pending_entry[j]:
            trade, qty = st.trades[j], opening_quantity(st, j)
            avg = (qty * o[0]) / qty
            s_ = avg - trade.stop_mult * trade.atr
            t_ = avg + trade.target_mult * trade.atr
            held, trading = 0, True
            position[j] = qty
        elif position[j] > 0:
            trading = True
        while True:
            if not trading:
                sig = nxt[cursor]
                if sig >= k_bars:
                    break
                e_bar.append(sig)
                e_col.append(j)
                limit = int(ind.max_hold[sig, j])
                entered_in = int(reg[sig])
                if sig == k_bars - 1:
                    break
                fill, qty = sig + 1, int(ind.quantity[sig, j])
                if qty <= 0:  # denied: free to enter again from the next bar
                    cursor = fill
                    continue
                avg = (qty * o[fill]) / qty
                a = atr[sig]
                s_ = avg - float(ind.stop_mult[sig, j]) * a
                t_ = avg + float(ind.target_mult[sig, j]) * a
                held, cursor, trading = 0, fill, True
                position[j] = qty
            # The maximum hold bounds the window: the trade is decided within it or runs on.
            end = min(cursor + max(0, limit - held - 1), k_bars - 1)
            ahead = slice(cursor, end + 1)
            bars_ahead = (hi[ahead], lo[ahead], reg[ahead])
            code = _exits(
                st, bars_ahead, s_, t_, entered_in, held + np.arange(1, end - cursor + 2), limit
            )
            hits = np.flatnonzero(code >= 0)
            if not hits.size:
                held += k_bars - cursor
                break
            exit_at, reason = cursor + int(hits[0]), int(code[hits[0]])
            held += exit_at - cursor + 1
            x_bar.append(exit_at)
            x_col.append(j)
            x_reason.append(reason)
            x_held.append(held)
            if exit_at == k_bars - 1:
                break
            position[j] = 0
            s_ = t_ = float("nan")
            held, cursor, trading = 0, exit_at + 1, False
        stop[j], target[j], held_out[j] = s_, t_, held

    entries = [(np.asarray(e_bar), np.asarray(e_col))]
    exits = [tuple(np.asarray(x) for x in (x_bar, x_col, x_reason, x_held))]
    return _walked(entries, exits, position, stop, target, held_out)


def _walked(
    entries: list[tuple[np.ndarray, ...]],
    exits: list[tuple[np.ndarray, ...]],
    *end: np.ndarray,
) -> Walk:
    """A walk's decisions, logged in parts ((bar, column) of entries; (bar, column,
    reason, bars held) of exits), and the position, stop, target and bars held at its
    end."""

    def cat(parts: list[tuple[np.ndarray, ...]], k: int) -> np.ndarray:
        if not parts:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([p[k] for p in parts]).astype(np.int64)

    position, stop, target, held = end
    return Walk(
        entry_bar=cat(entries, 0),
        entry_col=cat(entries, 1),
        exit_bar=cat(exits, 0),
        exit_col=cat(exits, 1),
        exit_reason=cat(exits, 2),
        exit_held=cat(exits, 3),
        position=position,
        stop=stop,
        target=target,
        held=held,
    )


def opening_quantity(st: Any, j: int) -> int:
    """What the entry pending for symbol ``j`` fills: the quantity the guardian approved
    (the strategy's own until it has)."""
    order = next(o for o in st.orders.values() if o.index == j and o.purpose == "OPEN")
    return int(order.quantity or st.config.fixed_quantity)


def _exits(
    st: Any,
    bars_ahead: tuple[np.ndarray, ...],
    stop: Any,
    target: Any,
    entry_regime: Any,
    held: Any,
    limit: Any,
) -> np.ndarray:
    """``exit_code`` for trades over their bars ahead (high, low, regime), with the
    strategy's setting for exits on a change of regime."""
    high, low, regime = bars_ahead
    return exit_code(
        high,
        low,
        regime,
        stop=stop,
        target=target,
        entry_regime=entry_regime,
        held=held,
        max_hold=limit,
        on_regime_change=st.config.exit_on_regime_change,
    )


def walk_trades(
    st: Any, bars: Any, ind: Signals, regime: np.ndarray, *, scalar: bool | None = None
) -> Walk:
    """The chunk's decisions: across all symbols at once, or symbol by symbol for narrow
    shards (``scalar``; by default when the shard has few symbols)."""
    if scalar is None:
        scalar = bars.close.shape[1] <= SCALAR_WALK_MAX_SYMBOLS
    return (_walk_scalar if scalar else _walk)(st, bars, ind, regime)


def entry_quantities(st: Any, close: np.ndarray, sizes: np.ndarray | None) -> np.ndarray:
    """What an entry decided at each bar and symbol is speculated to fill: the strategy's
    fixed quantity, or a first guess of the guardian's size, or the guardian's size from
    an earlier speculation of these bars (``sizes``)."""
    quantity = np.full(close.shape, int(st.config.fixed_quantity), dtype=np.int64)
    if not st.breakout or st.config.fixed_quantity <= 0:
        quantity = _first_guess(st, close)
    if sizes is not None:
        quantity = np.where(sizes >= 0, sizes, quantity)
    return quantity


def _first_guess(st: Any, close: np.ndarray) -> np.ndarray:
    """What an entry the guardian sizes (no fixed quantity) is speculated at until a
    speculation of these bars has told its size: the notional of the trades open now (the
    guardian sizes from a share of the equity, which moves slowly), at each bar's close; one
    share when none is open. Only a guess: the guardian checks every size exactly."""
    costs = [t.entry_cost for t in st.trades.values() if t.filled_once and t.entry_qty > 0]
    if not costs:
        return np.ones(close.shape, dtype=np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        guess = np.floor(float(np.median(costs)) / close)
    return np.where(np.isfinite(guess) & (guess >= 1), guess, 1).astype(np.int64)


def regime_exits(st: Any, regime: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each bar's stop and target (ATR multiples) and maximum hold for an entry decided
    there (K, n): the strategy's own ``exit_parameters``, asked once per regime the chunk
    holds (the rules' overrides are the caller's)."""
    codes = np.unique(regime)
    table = np.array([st.exit_parameters(int(code), None, 0)[:3] for code in codes.tolist()])
    at = np.searchsorted(codes, regime)
    return table[at, 0], table[at, 1], table[at, 2].astype(np.int64)

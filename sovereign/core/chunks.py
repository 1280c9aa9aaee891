"""Speculative chunks: many bar times of a backtest in one pass of each actor.

A replayed backtest is deterministic, and with the simulated broker nothing it does
reaches the outside world until it is committed. So instead of one round trip through the
actor graph per bar time, a backtest can hand each actor a *chunk* of K bar times:

1. the shard runs its strategy over the chunk **speculatively**: it assumes every intent
   is approved (an entry for its own quantity, or for the size the guardian gave it on an
   earlier speculation of these bars, or denied if that size is 0) and fills in full at the
   next bar's open (the simulated broker's fill model: a market sell at the open less its
   slippage, an entry whose limit the open does not cross at the open), and reports its
   intents as columns;
2. the guardian approves the chunk's orders **conditionally** (one signature over the
   batch), checking everything it can without the account path;
3. the gateway executes the batch on the simulated broker **without committing**: it
   checks that every order fills exactly as the shard assumed and computes the account
   path (equity, cash and exposure at every bar close);
4. the guardian **validates** the chunk against that path: no trading-state transition
   (drawdown, daily loss, new session) and every decision exactly what it would have been
   bar by bar (sizing against the equity, cash and exposure of its bar);
5. everyone commits; or, if anything differed, everyone discards the chunk and the engine
   replays those bar times one by one (exact by construction).

The results are identical to a replay bar by bar, to the last bit of every figure (tests check
it): chunks run the same backtest, they do not model it. This module holds the shard's part for
the breakout strategy (``breakout_chunk``) and pure helpers; the others live with their actors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from sovereign.core.chunk_baseline import BaselineUnsupportedError, baseline_signals, count_flat
from sovereign.core.chunk_state import assumed_fills
from sovereign.core.chunk_walk import (
    Signals,
    Walk,
    entry_quantities,
    opening_quantity,
    regime_exits,
    walk_trades,
)
from sovereign.core.entries import breakout_features, breakout_signal
from sovereign.core.trades import EXIT_REASONS, Order, Trade
from sovereign.domain.orders import SIDE_BUY, SIDE_SELL
from sovereign.domain.regimes import REGIME_UNKNOWN


@dataclass(frozen=True, slots=True)
class ChunkBars:
    """K consecutive bar times of one shard's universe, every symbol at every time.

    ``ts`` (K,) are the bar starts (ns); the price and volume arrays are (K, n), row t
    the bar time ``ts[t]``, column j the universe's symbol j. ``sell_open``: what a market
    sell fills at, each bar's open (``core.fills.market_price``; None: the open)."""

    ts: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    sell_open: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.ts.shape[0])


@dataclass(slots=True)
class ChunkIntents:
    """A chunk's intents as columns, in the order a shard emits them bar by bar (per bar:
    exits, then entries, each by universe index)."""

    bar: np.ndarray  # int64, the bar time (index in the chunk) the intent was decided at
    index: np.ndarray  # int64, universe index
    side: np.ndarray  # uint8, SIDE_BUY (an entry) or SIDE_SELL (an exit)
    quantity: np.ndarray  # int64, the shares it is speculated to fill
    ref_price: np.ndarray  # float64, the decision bar's close
    confidence: np.ndarray  # float64
    seq: np.ndarray  # int64, the intent's number for its symbol ("SYM-<seq>")
    asked: np.ndarray  # int64, the shares it asks for bar by bar (0: the guardian sizes it)
    regime: np.ndarray  # uint8, the symbol's regime code at the decision (sizing reads it)
    size_scale: np.ndarray  # float64, the rules' scale of an entry's size (sizing reads it)

    def __len__(self) -> int:
        return int(self.bar.shape[0])


@dataclass(slots=True)
class ChunkTrades:
    """The round trips a chunk closes, as columns, in the order their exit fills close
    them (by bar, then universe index). Commissions come with the execution report, when
    the chunk is committed (``commit_outcome``)."""

    index: np.ndarray  # int64, universe index
    exit_bar: np.ndarray  # int64, the bar (in the chunk) whose open filled the exit
    exit_ts: np.ndarray  # int64
    entry_ts: np.ndarray  # int64
    quantity: np.ndarray  # int64
    entry_cost: np.ndarray  # float64
    exit_proceeds: np.ndarray  # float64
    commission: np.ndarray  # float64, booked before the chunk (an entry filled earlier)
    bars_held: np.ndarray  # int64
    reason: np.ndarray  # int64, index into EXIT_REASONS; -1: the trade's own (earlier)
    entry_seq: np.ndarray  # int64, the entry order's seq if it filled in the chunk, else 0
    exit_seq: np.ndarray  # int64
    regime: np.ndarray  # int64, the regime code at the entry
    confidence: np.ndarray  # float64, the entry's (entries decided in the chunk)
    features: list[dict[str, Any]]  # what the entry recorded of its signal bar (same)
    # Trades opened before the chunk, by row: their records (trade id, features, ...).
    earlier: dict[int, Any]

    def __len__(self) -> int:
        return int(self.index.shape[0])


@dataclass(slots=True)
class ChunkOutcome:
    """What a shard's strategy made of a chunk: its intents and the trades it closed."""

    intents: ChunkIntents
    trades: ChunkTrades
    entries_filled: dict[int, int]  # universe index -> seq of an entry filled in the chunk
    # whose trade is still open at the chunk's end (its commission is booked at commit)


class ChunkUnsupportedError(Exception):
    """The chunk cannot be speculated from this state; the engine replays it bar by bar."""


def _check_supported(st: Any) -> None:
    """The states the kernel reproduces exactly; anything else is replayed bar by bar
    (partial fills, late fills, canceled entries, orders nobody answered, shadow trades
    open)."""
    if st.shadow is not None and st.shadow.trades:
        raise ChunkUnsupportedError("the shadow book follows a prevented trade")
    if st.exit_late_fill.any():
        raise ChunkUnsupportedError("a late entry fill is waiting to be sold")
    if (st.pending_entry & (st.quantity > 0)).any() or (st.pending_exit & (st.quantity <= 0)).any():
        raise ChunkUnsupportedError("an order is pending in a state the chunk does not model")
    if int(st.pending_entry.sum() + st.pending_exit.sum()) != len(st.orders):
        raise ChunkUnsupportedError("orders are pending that the pending flags do not account for")
    for order in st.orders.values():
        i = order.index
        if order.filled or order.cancel_sent:
            raise ChunkUnsupportedError("a partly filled or canceled order is pending")
        want = st.pending_entry[i] if order.purpose == "OPEN" else st.pending_exit[i]
        if not want:
            raise ChunkUnsupportedError("an order is pending without its flag")
    # An order the guardian approved for another quantity than the chunk fills it with is
    # filled bar by bar.
    assumed = assumed_fills(st)
    if any(order.quantity != assumed[k] for k, order in st.orders.items()):
        raise ChunkUnsupportedError("an order is pending for another quantity than assumed")
    if any(q <= 0 for q in assumed.values()):
        raise ChunkUnsupportedError("an entry is pending that the guardian has not sized")
    for i, trade in st.trades.items():
        if st.quantity[i] > 0 and (not trade.filled_once or trade.exit_qty):
            raise ChunkUnsupportedError("a position is partly closed")
    if (st.quantity < 0).any():
        raise ChunkUnsupportedError("short positions are not modelled")


def _indicators(
    st: Any, bars: ChunkBars, present: np.ndarray, quantity: np.ndarray, regime: np.ndarray
) -> Signals:
    """The breakout preset's indicators over the chunk, by the indicators' own ``block``
    (which leaves them as the chunk's bars one at a time would), and its entry signals."""
    h, c, v = bars.high, bars.close, bars.volume
    atr, atr_ready = st.atr.block(present, h, bars.low, c)
    prior_high, ph_ready = st.prior_high.block(present, h)
    with np.errstate(invalid="ignore"):
        maybe = atr_ready & ph_ready & (c > prior_high)
    # The median only where the other conditions hold (a sort per bar and symbol).
    median, vm_ready = st.volume_median.block(present, v, need=maybe)
    signal = breakout_signal(atr_ready & ph_ready & vm_ready, c, prior_high, v, median)
    # Each entry's exits as the strategy sets them for the regime of its decision bar: its
    # own ``exit_parameters``, asked once for each regime the chunk has.
    stop_mult, target_mult, max_hold = regime_exits(st, regime)

    def record(t: int, j: int) -> dict[str, Any]:
        return breakout_features(float(atr[t, j]), float(c[t, j]))

    return Signals(
        atr=atr,
        signal=signal,
        present=present,
        quantity=quantity,
        stop_mult=stop_mult,
        target_mult=target_mult,
        max_hold=max_hold,
        record=record,
    )


def strategy_chunk(
    st: Any,
    bars: ChunkBars,
    regime_codes: np.ndarray,
    *,
    regime_probs: np.ndarray | None = None,
    scalar: bool | None = None,
    sizes: np.ndarray | None = None,
) -> ChunkOutcome:
    """Run the shard's strategy (``ShardStrategy``: the baseline or the breakout preset)
    over a chunk, speculatively, and leave ``st`` as a replay bar by bar would (the caller
    checkpoints it first and restores it if the chunk is abandoned). ``regime_codes``:
    each symbol's regime after each bar time (K, n), or one row (n,) for all;
    ``regime_probs`` (K, n, 4) or (n, 4): their probabilities (the strategy's own when
    None). ``sizes`` (K, n), optional: the shares the guardian sized an entry decided at
    that bar and symbol at, on an earlier speculation of the same bars (0: it denies it;
    -1: not known, the strategy's first guess).

    Bar by bar, the shard books the fills at each bar's open, updates its indicators with
    the bar, counts a bar held for every open trade, decides exits (stop, target, regime
    change, maximum hold) and then entries. Here the indicators are columns over the whole
    chunk and each symbol's trades are walked from event to event (``walk_trades``); the
    decisions are then numbered and booked symbol by symbol (``_book``)."""
    _check_supported(st)
    if (
        regime_codes.ndim == 1
        and st.config.exit_on_regime_change
        and (regime_codes != REGIME_UNKNOWN).any()
    ):
        raise ChunkUnsupportedError("exits on regime changes need the regime of every bar")
    regime_codes = np.broadcast_to(regime_codes, bars.close.shape)
    present = ~np.isnan(bars.close[0]) if len(bars) else np.ones(bars.close.shape[1], bool)
    if ((st.pending_entry | st.pending_exit) & ~present).any():
        raise ChunkUnsupportedError("an order is pending for a symbol without bars")
    quantity = entry_quantities(st, bars.close, sizes)
    cells = None
    if st.breakout:
        ind = _indicators(st, bars, present, quantity, regime_codes)
    else:
        if regime_probs is None:
            raise ChunkUnsupportedError("the baseline's entries record regime probabilities")
        probs = np.broadcast_to(regime_probs, (*bars.close.shape, regime_probs.shape[-1]))
        try:
            ind, cells = baseline_signals(st, bars, present, regime_codes, probs, quantity)
        except BaselineUnsupportedError as exc:
            raise ChunkUnsupportedError(str(exc)) from exc
    walk = walk_trades(st, bars, ind, regime_codes, scalar=scalar)
    k_bars = len(bars)
    if cells is not None:
        try:
            count_flat(st, walk, cells, ind.quantity, present)
        except BaselineUnsupportedError as exc:
            raise ChunkUnsupportedError(str(exc)) from exc
    denied = ind.quantity[walk.entry_bar, walk.entry_col] <= 0
    if (denied & (walk.entry_bar == k_bars - 1)).any():
        # Its verdict would come after the chunk, to an order the chunk leaves pending.
        raise ChunkUnsupportedError("an entry the guardian denies is the chunk's last decision")
    outcome = _book(st, bars, regime_codes, ind, walk)
    st.counters.denied += int(denied.sum())
    st.counters.bars += k_bars * int(ind.present.sum())
    st.counters.entries += int(walk.entry_bar.size)
    st.counters.exits += int(walk.exit_bar.size)
    return outcome


def _order_seq(order_id: str) -> int:
    return int(order_id.rsplit("-", 1)[1])


def _numbered(st: Any, walk: Walk) -> tuple[np.ndarray, ...]:
    """Every decision of a walk, by symbol then time (entries and exits alternate in a
    column): bar, column, is an exit, exit reason, bars held, the intent's number for its
    symbol (the strategy's sequences move on past them), and each column's first and last
    decision."""
    symbols = st.universe.symbols
    n_e = walk.entry_bar.size
    bar = np.concatenate([walk.entry_bar, walk.exit_bar]).astype(np.int64)
    col = np.concatenate([walk.entry_col, walk.exit_col]).astype(np.int64)
    is_exit = np.r_[np.zeros(n_e, bool), np.ones(walk.exit_bar.size, bool)]
    reason = np.concatenate([np.full(n_e, -1, np.int64), walk.exit_reason])
    held = np.concatenate([np.zeros(n_e, np.int64), walk.exit_held])
    by = np.lexsort((bar, col))
    bar, col, is_exit, reason, held = bar[by], col[by], is_exit[by], reason[by], held[by]
    m = int(bar.size)
    first_of = np.r_[True, col[1:] != col[:-1]] if m else np.zeros(0, bool)
    last_of = np.r_[col[1:] != col[:-1], True] if m else np.zeros(0, bool)
    group = np.cumsum(first_of) - 1
    base = np.array([st._seq.get(symbols[j], 0) for j in col[first_of].tolist()], np.int64)
    start = np.flatnonzero(first_of)
    seq = base[group] + np.arange(m) - start[group] + 1 if m else np.zeros(0, np.int64)
    for j, n in zip(col[last_of].tolist(), seq[last_of].tolist(), strict=True):
        st._seq[symbols[j]] = n
    return bar, col, is_exit, reason, held, seq, first_of, last_of


def _book(  # noqa: C901 - the bookkeeping of one chunk, in one place
    st: Any, bars: ChunkBars, regime_codes: np.ndarray, ind: Signals, walk: Walk
) -> ChunkOutcome:
    """Number the chunk's intents, pair each exit with its entry into a closed trade, and
    leave the strategy's records as its bars one at a time would, all as columns; only the
    trades open (or orders pending) at the chunk's edges are handled one by one."""

    symbols = st.universe.symbols
    k_bars = len(bars)
    o, ts, sell = bars.open, bars.ts, bars.sell_open
    qtab = ind.quantity
    pending: dict[int, tuple[str, Any]] = {od.index: (oid, od) for oid, od in st.orders.items()}

    bar, col, is_exit, reason, held, seq, first_of, last_of = _numbered(st, walk)
    m = int(bar.size)
    touched = set(col[first_of].tolist())

    # Exits, and the entries right before them in their column (else: a trade from before).
    x_pos = np.flatnonzero(is_exit)
    paired = np.r_[False, ~is_exit[:-1] & (col[1:] == col[:-1])][x_pos] if m else np.zeros(0, bool)
    e_pos = x_pos - 1
    # An exit sells the position its entry (the event before it in its column) bought.
    exit_qty = qtab[bar[e_pos], col[e_pos]].astype(np.int64)
    closes = bar[x_pos] < k_bars - 1

    # Trades opened and closed inside the chunk, all columns at once.
    new = paired & closes
    xp, ep = x_pos[new], e_pos[new]
    j_new, s_new = col[xp], bar[ep]
    rows: list[dict[str, np.ndarray]] = [
        {
            "index": j_new,
            "exit_bar": bar[xp] + 1,
            "entry_ts": ts[s_new + 1],
            "quantity": qtab[s_new, j_new].astype(np.int64),
            "entry_cost": 0.0 + qtab[s_new, j_new] * o[s_new + 1, j_new],
            "commission": np.zeros(j_new.size),
            "bars_held": held[xp],
            "reason": reason[xp],
            "entry_seq": seq[ep],
            "exit_seq": seq[xp],
            "regime": regime_codes[s_new, j_new].astype(np.int64),
            "signal": s_new,
        }
    ]
    earlier_rows: list[tuple[dict[str, Any], Any]] = []
    entry_seq_of: dict[int, int] = {}

    def earlier(trade: Any, j: int, x: int, exit_seq: int, bars_held: int, why: int) -> None:
        earlier_rows.append(
            (
                {
                    "index": j,
                    "exit_bar": x,
                    "entry_ts": trade.entry_ts,
                    "quantity": trade.entry_qty,
                    "entry_cost": trade.entry_cost,
                    "commission": trade.commission,
                    "bars_held": bars_held,
                    "reason": why,
                    "entry_seq": entry_seq_of.get(j, 0),
                    "exit_seq": exit_seq,
                    "regime": trade.regime_code,
                    "signal": -1,
                },
                trade,
            )
        )

    # The edges. Orders pending before the chunk fill at its first open.
    entries_filled: dict[int, int] = {}
    for j, (order_id, order) in pending.items():
        trade = st.trades[j]
        if order.purpose == "CLOSE":
            earlier(trade, j, 0, _order_seq(order_id), int(st.bars_held[j]), -1)
            if j not in touched:
                del st.trades[j]
            continue
        trade.filled_once = True
        trade.entry_ts = int(ts[0])
        qty = opening_quantity(st, j)
        trade.entry_qty += qty
        trade.entry_cost += qty * float(o[0, j])
        entry_seq_of[j] = _order_seq(order_id)
        if j not in touched:
            entries_filled[j] = entry_seq_of[j]  # filled, and still open at the end
    # Exits of trades opened before the chunk (at most one a column: its first event).
    for k in np.flatnonzero(~paired).tolist():
        p, j = int(x_pos[k]), int(col[x_pos[k]])
        trade = st.trades[j]
        exit_qty[k] = trade.entry_qty
        if closes[k]:
            earlier(trade, j, int(bar[p]) + 1, int(seq[p]), int(held[p]), int(reason[p]))

    # What each touched column has open or pending at the chunk's end: its last event.
    end_exits: list[tuple[int, str, Any]] = []
    end_entries: list[tuple[int, str, Any]] = []
    for p in np.flatnonzero(last_of).tolist():
        j, b, n = int(col[p]), int(bar[p]), int(seq[p])
        symbol = symbols[j]
        if not is_exit[p] and qtab[b, j] <= 0:  # an entry the guardian denies: flat
            st.trades.pop(j, None)
            continue
        if is_exit[p]:
            if b < k_bars - 1:
                st.trades.pop(j, None)
                continue
            why = EXIT_REASONS[int(reason[p])]
            end_exits.append((j, f"{symbol}-{n}", Order(j, "CLOSE", why)))
            if p > 0 and col[p - 1] == j:
                # Opened in the chunk (its entry is the event before): its record.
                entry, entry_seq = int(bar[p - 1]), int(seq[p - 1])
                st.trades[j] = _open_trade(Trade, st, j, entry, entry_seq, bars, ind, regime_codes)
                entries_filled[j] = entry_seq
            elif j in entry_seq_of:
                entries_filled[j] = entry_seq_of[j]
            st.trades[j].exit_reason = why
            continue
        trade = _open_trade(Trade, st, j, b, n, bars, ind, regime_codes)
        st.trades[j] = trade
        if b == k_bars - 1:
            order = Order(j, "OPEN", "breakout", quantity=int(qtab[b, j]))
            end_entries.append((j, f"{symbol}-{n}", order))
        else:
            entries_filled[j] = n

    # The closed trades, in the order their exit fills close them.
    for r, _ in earlier_rows:
        rows.append({k: np.array([v]) for k, v in r.items()})
    cols = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
    order = np.lexsort((cols["index"], cols["exit_bar"]))
    position = np.empty_like(order)
    position[order] = np.arange(order.size)
    first_earlier = int(j_new.size)
    exit_bar = cols["exit_bar"][order].astype(np.int64)
    index = cols["index"][order].astype(np.int64)
    quantity = cols["quantity"][order].astype(np.int64)
    signal = cols["signal"][order].astype(np.int64)
    trades = ChunkTrades(
        index=index,
        exit_bar=exit_bar,
        exit_ts=ts[exit_bar].astype(np.int64),
        entry_ts=cols["entry_ts"][order].astype(np.int64),
        quantity=quantity,
        entry_cost=cols["entry_cost"][order].astype(np.float64),
        exit_proceeds=0.0 + quantity * (o if sell is None else sell)[exit_bar, index],
        commission=cols["commission"][order].astype(np.float64),
        bars_held=cols["bars_held"][order].astype(np.int64),
        reason=cols["reason"][order].astype(np.int64),
        entry_seq=cols["entry_seq"][order].astype(np.int64),
        exit_seq=cols["exit_seq"][order].astype(np.int64),
        regime=cols["regime"][order].astype(np.int64),
        confidence=np.where(signal >= 0, ind.confidence_at(signal, index), 1.0),
        features=[
            ind.features(t, j) if t >= 0 else {}
            for t, j in zip(signal.tolist(), index.tolist(), strict=True)
        ],
        earlier={int(position[first_earlier + i]): t for i, (_, t) in enumerate(earlier_rows)},
    )

    # The strategy's arrays as the walk left them.
    st.quantity[:] = walk.position
    st.stop[:] = walk.stop
    st.target[:] = walk.target
    st.bars_held[:] = walk.held
    st.pending_entry[:] = False
    st.pending_exit[:] = False
    st.orders = {}
    # Bar by bar, the last bar's orders are recorded exits first, then entries.
    for j, order_id, od in sorted(end_exits) + sorted(end_entries):
        st.orders[order_id] = od
        if od.purpose == "OPEN":
            st.pending_entry[j] = True
        else:  # an exit: of the whole position, as bar by bar
            st.pending_exit[j], od.quantity = True, int(st.quantity[j])
    _set_max_hold(st, walk, ind)
    holding = st.quantity > 0
    waiting = np.flatnonzero(st.pending_entry & ~holding)
    st.entry_regime[waiting] = regime_codes[-1, waiting]
    st.entry_regime[~holding & ~st.pending_entry] = REGIME_UNKNOWN
    for j in np.flatnonzero(holding).tolist():
        st.entry_regime[j] = st.trades[j].regime_code

    quantities = qtab[bar, col]
    quantities[x_pos] = exit_qty
    intents = _intents(st, ind, bars, regime_codes, bar, col, is_exit, seq, quantities)
    return ChunkOutcome(intents=intents, trades=trades, entries_filled=entries_filled)


def _intents(
    st: Any,
    ind: Signals,
    bars: ChunkBars,
    regime_codes: np.ndarray,
    *decisions: np.ndarray,
) -> ChunkIntents:
    """The chunk's decisions (bar, column, is an exit, seq, quantity; by symbol then
    time) as intents in the order the shard emits them bar by bar."""
    bar, col, is_exit, seq, quantities = decisions
    side = np.where(is_exit, SIDE_SELL, SIDE_BUY).astype(np.uint8)
    out = np.lexsort((col, side == SIDE_BUY, bar))
    bar, col, is_exit = bar[out], col[out], is_exit[out]
    # An entry asks for the strategy's quantity (the baseline's: none, the guardian sizes).
    asked = int(st.config.fixed_quantity) if st.breakout else 0
    return ChunkIntents(
        bar=bar,
        index=col,
        side=side[out],
        quantity=quantities[out],
        ref_price=bars.close[bar, col].astype(np.float64),
        confidence=np.where(is_exit, 1.0, ind.confidence_at(bar, col)),
        seq=seq[out],
        asked=np.where(is_exit, quantities[out], asked),
        regime=regime_codes[bar, col].astype(np.uint8),
        size_scale=np.where(is_exit, 1.0, 1.0 if ind.scale is None else ind.scale[bar, col]),
    )


def _set_max_hold(st: Any, walk: Walk, ind: Signals) -> None:
    """Each symbol's maximum hold as its last entry in the chunk set it (bar by bar, each
    decision sets it, and a later one overrides)."""
    by = np.lexsort((walk.entry_bar, walk.entry_col))
    e_col, e_bar = walk.entry_col[by], walk.entry_bar[by]
    last = np.r_[e_col[1:] != e_col[:-1], True] if by.size else np.zeros(0, bool)
    st.max_hold[e_col[last]] = ind.max_hold[e_bar[last], e_col[last]]


def _open_trade(
    cls: Any,
    st: Any,
    j: int,
    signal: int,
    seq: int,
    bars: ChunkBars,
    ind: Signals,
    regime_codes: np.ndarray,
) -> Any:
    """The record of a trade entered at ``signal`` in the chunk: filled at the next open,
    or still pending if the signal came at the chunk's last bar."""
    trade = cls(
        trade_id=f"{st.universe.symbols[j]}-{seq}",
        regime_code=int(regime_codes[signal, j]),
        confidence=float(ind.confidence_at(np.array(signal), np.array(j))),
        atr=float(ind.atr[signal, j]),
        features=ind.features(signal, j),
        stop_mult=float(ind.stop_mult[signal, j]),
        target_mult=float(ind.target_mult[signal, j]),
    )
    if signal + 1 < len(bars):
        qty = int(ind.quantity[signal, j])
        trade.filled_once = True
        trade.entry_ts = int(bars.ts[signal + 1])
        trade.entry_qty = qty
        trade.entry_cost += qty * float(bars.open[signal + 1, j])
    return trade


def strategy_state_names() -> tuple[str, ...]:
    """The attributes of a ``ShardStrategy`` that a chunk changes (its checkpoint)."""
    return (
        "atr",
        "volume_median",
        "prior_high",
        "quantity",
        "pending_entry",
        "pending_exit",
        "bars_held",
        "stop",
        "target",
        "entry_regime",
        "max_hold",
        "exit_late_fill",
        "trades",
        "orders",
        "_seq",
        "counters",
        "losing_streak",
        "volume_pct",
        "sr",
    )


__all__ = [
    "EXIT_REASONS",
    "SIDE_BUY",
    "SIDE_SELL",
    "ChunkBars",
    "ChunkIntents",
    "ChunkOutcome",
    "ChunkTrades",
    "ChunkUnsupportedError",
    "strategy_chunk",
    "strategy_state_names",
]

"""The simulated broker's part of a speculative chunk (``sovereign.core.chunks``).

``speculate`` executes a chunk's approved orders without touching the account: it checks
that every order fills as the shards assumed (in full, at the open of the bar after its
decision: at the open, or a market sell at the open less its slippage) and computes the
account at every bar close, with the arithmetic ``SimBroker.on_bars`` uses bar by bar, so
the path is the same to the last bit. ``commit`` then books the fills through the
account's own ``apply_fill``, in the same order, and leaves the broker as the bars one at
a time would have.

Anything the fill model would do differently (a limit the open crosses, a market buy's
slippage, a volume cap, a position cap that could cut a fill) makes the execution
*diverge*: nothing is booked and the engine replays those bar times one at a time, where
the broker decides each fill exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from sovereign.brokers.base import _about
from sovereign.core.calendar import session_days
from sovereign.core.fills import commission_for, market_price
from sovereign.messages import BookOrder, IdSource, OrderFilled, SubmitOrder

if TYPE_CHECKING:
    from sovereign.core.portfolio import Portfolio
    from sovereign.domain.settings import SimConfig


@dataclass(slots=True)
class Working:
    """An order working at the simulated broker: what has filled of it so far."""

    order: SubmitOrder
    submitted_ns: int
    filled: int = 0
    executions: int = 0
    commission: float = 0.0

    @property
    def remaining(self) -> int:
        return self.order.quantity - self.filled


class SimBroker(Protocol):
    """What a chunk's execution reads and books on the simulated broker
    (``brokers.sim.SimBroker``); named here so that this module does not import that
    one, which imports this one."""

    config: SimConfig
    portfolio: Portfolio
    position_cap: float | None
    counters: dict[str, int]
    last_ts: int
    _working: dict[str, Working]


@dataclass(frozen=True, slots=True)
class ChunkMarket:
    """The bars of a chunk for every symbol of the run: (K, N) arrays, column j the
    symbol ``symbols[j]``; ``ts`` the bar starts and ``ts_event`` the closes."""

    ts: np.ndarray
    ts_event: np.ndarray
    symbols: list[str]
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    column: dict[str, int]
    shard_of: np.ndarray  # (N,) the shard (bar batch) each column's bars come in
    # (N,) symbols without a bar in the chunk (listed later, or no more): their prices
    # hold the account's mark throughout (``_marked``).
    absent: np.ndarray | None = None


@dataclass(frozen=True, slots=True)
class ChunkOrders:
    """A chunk's approved orders as columns, in submission order (by decision bar)."""

    order_id: list[str]
    symbol: list[str]
    shard: np.ndarray
    bar: np.ndarray
    buy: np.ndarray
    quantity: np.ndarray
    limit: np.ndarray  # NaN: a market order
    seq: np.ndarray  # the number in each order id ("<symbol>-<seq>")

    def __len__(self) -> int:
        return len(self.order_id)


@dataclass(slots=True)
class Speculation:
    """A chunk executed on paper: the account path and what ``commit`` will book."""

    diverged: str = ""
    bar: int = -1
    equity: np.ndarray = field(default_factory=lambda: np.zeros(0))
    cash: np.ndarray = field(default_factory=lambda: np.zeros(0))
    gross: np.ndarray = field(default_factory=lambda: np.zeros(0))
    open_positions: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    day: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    dates: list[str] = field(default_factory=list)
    held: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    # The fills, in the order they happen: the orders working before the chunk, then the
    # approved ones that fill inside it (those of the last bar stay working).
    fill_col: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    fill_bar: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    fill_buy: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    fill_qty: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    fill_price: np.ndarray = field(default_factory=lambda: np.zeros(0))
    fill_commission: np.ndarray = field(default_factory=lambda: np.zeros(0))
    fill_marked: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    fill_order: list[str] = field(default_factory=list)
    fill_shard: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    fill_seq: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    started: list[Working] = field(default_factory=list)
    unknown_volume: int = 0
    end_positions: dict[str, int] = field(default_factory=dict)
    working: list[BookOrder] = field(default_factory=list)
    market: ChunkMarket | None = None


def _seq_of(order_id: str) -> int:
    tail = order_id.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def _diverged(why: str, bar: int) -> Speculation:
    return Speculation(diverged=why, bar=bar)


def ordered_row_sums(values: np.ndarray) -> np.ndarray:
    """``Portfolio``'s ``ordered_sum`` of every row: ascending, one addition at a time
    (``np.add.accumulate`` is sequential along the row). Zeros add nothing."""
    if values.shape[1] == 0:
        return np.zeros(values.shape[0])
    return np.add.accumulate(np.sort(values, axis=1), axis=1)[:, -1]


def _start_problem(
    broker: SimBroker, m: ChunkMarket, started: list[Working], expects: dict[str, int]
) -> str:
    """Why the book before the chunk is not the one the shards assumed ("" when it is)."""
    if {w.order.order_id for w in started} != set(expects) or len(started) != len(expects):
        return "the orders working before the chunk are not those the shards assumed"
    for w in started:
        if w.filled or w.submitted_ns > int(m.ts[0]) or w.order.symbol not in m.column:
            return f"order {w.order.order_id} is not a whole order due at the open"
        if w.order.quantity != expects[w.order.order_id]:
            # The shards would book another quantity than the broker fills.
            return f"order {w.order.order_id} is for another quantity than assumed"
    if any(s not in m.column for s in broker.portfolio.open):
        return "a position is held in a symbol the chunk has no bars for"
    return ""


def _prepared(
    broker: SimBroker,
    m: ChunkMarket,
    orders: ChunkOrders,
    started: list[Working],
    expects: dict[str, int],
) -> tuple[str, ChunkMarket]:
    """Why the chunk cannot be speculated ("" when it can), and its bars with the symbols
    that have none holding their marks (``_marked``)."""
    problem = _start_problem(broker, m, started, expects)
    if problem or not len(m.ts) or not np.isnan(m.close[0]).any():
        return problem, m
    m = _marked(broker, m, np.isnan(m.close[0]))
    assert m.absent is not None
    symbols = [w.order.symbol for w in started] + list(orders.symbol)
    if any(m.absent[m.column[s]] for s in symbols if s in m.column):
        return "an order for a symbol without bars in the chunk", m
    return "", m


def speculate(
    broker: SimBroker, m: ChunkMarket, orders: ChunkOrders, expects: dict[str, int]
) -> Speculation:
    """Execute the chunk's orders on paper (nothing in ``broker`` changes). ``expects``:
    the orders the shards assumed working before the chunk, and what each fills."""
    k_bars, n = m.close.shape
    cfg = broker.config
    column = m.column
    started = list(broker._working.values())
    problem, m = _prepared(broker, m, orders, started, expects)
    if problem:
        return _diverged(problem, 0)

    later = orders.bar < k_bars - 1
    in_chunk = np.flatnonzero(later)

    def both(before: list[Any], now: np.ndarray, dtype: Any) -> np.ndarray:
        # The orders working before the chunk, then those approved in it.
        return np.r_[np.array(before, dtype=dtype), now].astype(dtype)

    work = [w.order for w in started]
    fill_col = both(
        [column[o.symbol] for o in work],
        np.array([column[orders.symbol[i]] for i in in_chunk.tolist()], np.int64),
        np.int64,
    )
    fill_bar = both([0] * len(work), orders.bar[in_chunk] + 1, np.int64)
    fill_buy = both([o.side == "BUY" for o in work], orders.buy[in_chunk], bool)
    fill_qty = both([o.quantity for o in work], orders.quantity[in_chunk], np.int64)
    limits = [np.nan if o.limit_price is None else o.limit_price for o in work]
    fill_limit = both(limits, orders.limit[in_chunk], np.float64)
    fill_open = both([o.purpose == "OPEN" for o in work], orders.buy[in_chunk], bool)
    fill_order = [o.order_id for o in work] + [orders.order_id[i] for i in in_chunk.tolist()]
    fill_shard = both([o.shard for o in work], orders.shard[in_chunk], np.int64)
    fill_seq = both([_seq_of(o.order_id) for o in work], orders.seq[in_chunk], np.int64)
    # Bar by bar the broker takes each shard's batch in turn and fills, in submission
    # order, the orders of that batch's symbols: so fills go by bar, then shard.
    order = np.lexsort((np.arange(fill_col.size), m.shard_of[fill_col], fill_bar))
    fill_col, fill_bar, fill_buy = fill_col[order], fill_bar[order], fill_buy[order]
    fill_qty, fill_limit, fill_open = fill_qty[order], fill_limit[order], fill_open[order]
    fill_order = [fill_order[i] for i in order.tolist()]
    fill_shard = fill_shard[order]
    fill_seq = fill_seq[order]

    # The fill model (_try_fill's) must fill in full where the shards assumed: the open,
    # a market sell at the open less its slippage.
    o, hi = m.open[fill_bar, fill_col], m.high[fill_bar, fill_col]
    lo, vol = m.low[fill_bar, fill_col], m.volume[fill_bar, fill_col]
    market, sell_open = np.isnan(fill_limit), market_price(o, "SELL", cfg)
    with np.errstate(invalid="ignore"):
        price = np.where(
            market,
            np.where(fill_buy, market_price(o, "BUY", cfg), sell_open),
            np.where(fill_buy, np.minimum(o, fill_limit), np.maximum(o, fill_limit)),
        )
        reaches = market | np.where(fill_buy, lo <= fill_limit, hi >= fill_limit)
        unknown = np.isnan(vol)
        room = np.where(unknown, fill_qty, np.floor(vol * cfg.max_volume_share))
        assumed = np.where(market & ~fill_buy, sell_open, o)
        ok = reaches & (price == assumed) & (room > 0) & (room >= fill_qty)
    if not ok.all():
        bad = int(np.argmax(~ok))
        return _diverged("an order would not fill in full at the open", int(fill_bar[bad]))

    # Positions after each bar's fills; long only, never sold below zero.
    signed = np.where(fill_buy, fill_qty, -fill_qty)
    start = np.array([broker.portfolio.quantity(s) for s in m.symbols], dtype=np.int64)
    delta = np.zeros((k_bars, n), dtype=np.int64)
    np.add.at(delta, (fill_bar, fill_col), signed)
    after = start[None, :] + np.cumsum(delta, axis=0)
    if (after < 0).any():
        return _diverged("a sale exceeds the position", int(np.argmax((after < 0).any(axis=1))))
    before = np.vstack([start[None, :], after[:-1]])
    held_before = before[fill_bar, fill_col]

    if cfg.commission_per_share == 0 and cfg.commission_min == 0:
        commission = np.zeros(fill_qty.size)
    else:
        commission = np.array(
            [
                commission_for(q, p, cfg)
                for q, p in zip(fill_qty.tolist(), price.tolist(), strict=True)
            ]
        )
    amounts = signed * price + commission
    cash_after = np.subtract.accumulate(np.r_[broker.portfolio.cash, amounts])[1:]
    last_fill = np.searchsorted(fill_bar, np.arange(k_bars), side="right") - 1
    cash = (
        np.where(last_fill >= 0, cash_after[np.maximum(last_fill, 0)], broker.portfolio.cash)
        if cash_after.size
        else np.full(k_bars, broker.portfolio.cash)
    )

    capped = -1
    if broker.position_cap is not None:
        capped = _cap_might_cut(
            broker,
            m,
            before,
            cash,
            fill_bar,
            fill_col,
            (fill_buy, fill_buy & fill_open),
            fill_qty,
            (price, o),
            commission,
            held_before,
        )

    values = after * m.close
    net = ordered_row_sums(values)
    equity = cash + net
    gross = net if (values >= 0).all() else ordered_row_sums(np.abs(values))
    day, dates = session_days(m.ts)
    approved_cols = np.array([column[s] for s in orders.symbol], dtype=np.int64)
    held = after[orders.bar, approved_cols] if len(orders) else np.zeros(0, np.int64)
    end = after[-1]
    last_close = m.close[-1]
    working = [
        BookOrder(
            order_id=orders.order_id[i],
            symbol=orders.symbol[i],
            side="BUY" if orders.buy[i] else "SELL",
            remaining=int(orders.quantity[i]),
            price=float(orders.limit[i])
            if not np.isnan(orders.limit[i])
            else float(last_close[approved_cols[i]]),
            purpose="OPEN" if orders.buy[i] else "CLOSE",
        )
        for i in np.flatnonzero(~later).tolist()
    ]
    spec = Speculation(
        equity=equity,
        cash=cash,
        gross=gross,
        open_positions=(after != 0).sum(axis=1).astype(np.int64),
        day=day,
        dates=dates,
        held=held.astype(np.int64),
        fill_col=fill_col,
        fill_bar=fill_bar,
        fill_buy=fill_buy,
        fill_qty=fill_qty,
        fill_price=price,
        fill_commission=commission,
        fill_marked=held_before != 0,
        fill_order=fill_order,
        fill_shard=fill_shard,
        fill_seq=fill_seq,
        started=started,
        unknown_volume=int(unknown.sum()),
        end_positions={m.symbols[j]: int(end[j]) for j in np.flatnonzero(end).tolist()},
        working=working,
        market=m,
    )
    if capped >= 0:
        # The account path as speculated comes with it: up to the bar before that fill it
        # is the path, and the guardian sizes the entries decided there from it (an entry
        # it cuts is what the broker's cap would cut). It is never committed.
        why = "the position cap might cut an opening fill"
        return replace(spec, diverged=why, bar=int(fill_bar[capped]))
    return spec


def _marked(broker: SimBroker, m: ChunkMarket, absent: np.ndarray) -> ChunkMarket:
    """The chunk's bars with each symbol that has none holding its mark throughout (what
    the account values a position at between its bars, bar by bar; 0 if none is held),
    so that the account path values it as bar by bar does."""
    marks = np.zeros(int(absent.sum()))
    for k, j in enumerate(np.flatnonzero(absent).tolist()):
        pos = broker.portfolio.open.get(m.symbols[j])
        if pos is not None:
            marks[k] = pos.market_price if np.isfinite(pos.market_price) else pos.avg_price
    prices = {}
    for name in ("open", "high", "low", "close"):
        a = getattr(m, name).copy()
        a[:, absent] = marks
        prices[name] = a
    return replace(m, absent=absent, **prices)


def _cap_might_cut(
    broker: SimBroker,
    m: ChunkMarket,
    before: np.ndarray,
    cash_end: np.ndarray,
    fill_bar: np.ndarray,
    fill_col: np.ndarray,
    side: tuple[np.ndarray, np.ndarray],
    qty: np.ndarray,
    prices: tuple[np.ndarray, np.ndarray],
    commission: np.ndarray,
    held_before: np.ndarray,
) -> int:
    """The first opening fill that the position cap at fill could cut, or -1. ``side``:
    each fill's (is a buy, opens a position); ``prices``: its (fill price, bar's open).

    Bar by bar, the cap is measured against the equity at that moment of the bar's fills
    (positions marked at the open). A fill moves that equity by no less than minus its
    commission and minus what it trades worse than the mark: a position bought from flat
    is marked at its fill price (``Portfolio.apply_fill``); shares added to one or sold
    from one held at the open's mark gain or lose the difference to the open. The equity
    at the open less the sum of those worst moves over the bar's fills is a lower bound
    that holds in any fill order."""
    buy, opening = side
    price, mark = prices
    cash_open = np.r_[broker.portfolio.cash, cash_end[:-1]]
    equity_open = cash_open + (before * m.open).sum(axis=1)
    low = equity_floor(equity_open, fill_bar, buy, qty, price, mark, commission)
    cap = broker.position_cap
    assert cap is not None
    room = cap * (low[fill_bar] - commission) - held_before * price - qty * price
    unsafe = opening & ~(room > 1e-9 * qty * price + 1e-6)
    return int(np.argmax(unsafe)) if unsafe.any() else -1


def equity_floor(
    equity_open: np.ndarray,
    fill_bar: np.ndarray,
    buy: np.ndarray,
    qty: np.ndarray,
    price: np.ndarray,
    mark: np.ndarray,
    commission: np.ndarray,
) -> np.ndarray:
    """A lower bound of the equity at any moment of each bar's fills, in any order:
    the equity at the open (positions marked there) less each fill's commission and what
    it trades worse than its mark (``_cap_might_cut``), with room for rounding."""
    worse = np.maximum(0.0, np.where(buy, qty * (price - mark), qty * (mark - price)))
    spent = np.bincount(fill_bar, weights=commission + worse, minlength=equity_open.size)
    return equity_open - spent - 1e-9 * (np.abs(equity_open) + spent) - 1e-6


def commit(broker: SimBroker, spec: Speculation, ids: IdSource) -> list[OrderFilled]:
    """Book a speculation's fills on the account, in order, and mark what is held at the
    last close: the broker ends as the bars one at a time would leave it. Returns the
    fills of the orders that were working before the chunk (their owners track them one
    by one); the others were only ever the chunk's."""
    m = spec.market
    assert m is not None
    p = broker.portfolio
    events: list[OrderFilled] = []
    started = {w.order.order_id: w for w in spec.started}
    if not _book_whole_trades(p, spec, m):
        _book_one_by_one(p, spec, m)
    # Each order's fill event is the broker's to send, whatever the order of booking.
    for i, order_id in enumerate(spec.fill_order if started else ()):
        w = started.pop(order_id, None)
        if w is not None:
            events.append(_started_fill(broker, spec, m, ids, w, i))
    last = m.close[-1]
    for symbol, pos in p.open.items():
        if m.absent is None or not m.absent[m.column[symbol]]:
            pos.market_price = float(last[m.column[symbol]])
    broker.counters["fills"] += int(spec.fill_col.size)
    broker.counters["uncapped_unknown_volume"] += spec.unknown_volume
    broker.last_ts = max(broker.last_ts, int(m.ts[-1]))
    return events


def _started_fill(
    broker: SimBroker, spec: Speculation, m: ChunkMarket, ids: IdSource, w: Working, i: int
) -> OrderFilled:
    """The fill event of an order that was working before the chunk (fill ``i``)."""
    bar, qty = int(spec.fill_bar[i]), int(spec.fill_qty[i])
    price, fee = float(spec.fill_price[i]), float(spec.fill_commission[i])
    order_id = w.order.order_id
    del broker._working[order_id]
    w.filled += qty
    w.executions += 1
    w.commission += fee
    order = w.order
    about = _about(ids, order, int(m.ts_event[bar]))
    about["ts_event"] = int(m.ts[bar])  # as bar by bar: the bar's start
    return OrderFilled(
        **about,
        execution_id=f"{order_id}/E{w.executions}",
        side=order.side,
        quantity=qty,
        price=price,
        commission=fee,
        cum_quantity=w.filled,
        leaves_quantity=order.quantity - w.filled,
        purpose=order.purpose,
        liquidity="SIM",
    )


def _book_whole_trades(p: Portfolio, spec: Speculation, m: ChunkMarket) -> bool:
    """Book every fill at once when each one opens a long position from flat or sells a
    whole one (what a fixed-quantity long strategy does): the account and every position
    end exactly, bit for bit, as ``Portfolio.apply_fill`` one fill at a time leaves them
    (same operations in the same order: the running sums are ``accumulate``s and
    ``add.at``, which go element by element). False, with nothing booked, otherwise."""
    col, qty, price, fee = spec.fill_col, spec.fill_qty, spec.fill_price, spec.fill_commission
    buy, marked = spec.fill_buy, spec.fill_marked
    k = int(col.size)
    if not k:
        return True
    if not ((qty > 0).all() and np.isfinite(price).all() and (price > 0).all()):
        return False  # let apply_fill refuse it, as it would one by one
    symbols = m.symbols
    signed = np.where(buy, qty, -qty)
    by = np.argsort(col, kind="stable")  # by symbol, each symbol's fills in order
    col_by = col[by]
    first = np.r_[True, col_by[1:] != col_by[:-1]]
    last = np.r_[col_by[1:] != col_by[:-1], True]
    group = np.cumsum(first) - 1
    names = [symbols[c] for c in col_by[first].tolist()]
    held = [p.positions.get(s) for s in names]
    start = np.array([0 if h is None else h.quantity for h in held], dtype=np.int64)
    # Each fill's position before it: the symbol's start plus its earlier fills.
    earlier = np.cumsum(signed[by]) - signed[by]
    before_by = start[group] + earlier - earlier[first][group]
    before = np.empty(k, np.int64)
    before[by] = before_by
    # Opens from flat at a bar that began flat; sales of everything, at a bar that began
    # with it held (so the position was marked at that bar's open, as one by one).
    whole = np.where(buy, (before == 0) & ~marked, (before == qty) & marked)
    if not whole.all():
        return False
    opened = (price * qty) / qty  # apply_fill's average price, opening from flat
    base_avg = np.array([0.0 if h is None else h.avg_price for h in held])
    prior = np.r_[0, np.arange(k - 1)]
    avg_by = np.where(first, base_avg[group], opened[by][prior])
    realized = np.zeros(k)
    realized[by] = np.where(buy[by], 0.0, (price[by] - avg_by) * qty[by])
    p.realized_pnl = float(np.add.accumulate(np.r_[p.realized_pnl, realized])[-1])
    p.cash = float(np.subtract.accumulate(np.r_[p.cash, signed * price + fee])[-1])
    p.commissions = float(np.add.accumulate(np.r_[p.commissions, fee])[-1])
    per_symbol = np.array([0.0 if h is None else h.realized_pnl for h in held])
    np.add.at(per_symbol, group, realized[by])

    # New positions appear in the order of their first fills; a position that ends open
    # was (re)opened by its last fill, and sits in ``open`` in that order.
    first_fill = by[first]
    last_fill = by[last]
    for g in np.argsort(first_fill, kind="stable").tolist():
        if held[g] is None:
            held[g] = p.position(names[g])
    ends_open = buy[last_fill]
    for g, pos in enumerate(held):
        assert pos is not None
        p.open.pop(pos.symbol, None)
        pos.realized_pnl = float(per_symbol[g])
    bars = spec.fill_bar[last_fill]
    cols = col_by[last]
    for g in np.argsort(last_fill, kind="stable").tolist():
        pos = held[g]
        assert pos is not None
        i = int(last_fill[g])
        if ends_open[g]:
            pos.quantity, pos.avg_price = int(qty[i]), float(opened[i])
            if not np.isfinite(pos.market_price):
                pos.market_price = float(price[i])
            p.open[pos.symbol] = pos
        else:
            pos.quantity, pos.avg_price = 0, 0.0
            pos.market_price = float(m.open[bars[g], cols[g]])
    return True


def _book_one_by_one(p: Portfolio, spec: Speculation, m: ChunkMarket) -> None:
    """Book the fills one at a time (any mix of fills)."""
    symbols = m.symbols
    for col, bar, buy, qty, price, fee, marked in zip(
        spec.fill_col.tolist(),
        spec.fill_bar.tolist(),
        spec.fill_buy.tolist(),
        spec.fill_qty.tolist(),
        spec.fill_price.tolist(),
        spec.fill_commission.tolist(),
        spec.fill_marked.tolist(),
        strict=True,
    ):
        if marked:
            # Bar by bar, what is held is marked at the open before the bar's fills.
            p.positions[symbols[col]].market_price = float(m.open[bar, col])
        p.apply_fill(symbols[col], "BUY" if buy else "SELL", qty, price, fee)

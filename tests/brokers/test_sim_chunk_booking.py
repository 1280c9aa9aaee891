"""Booking a committed chunk's fills at once leaves the account exactly as one by one."""

from __future__ import annotations

import copy

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from sovereign.brokers import sim_chunk
from sovereign.brokers.sim import SimBroker
from sovereign.brokers.sim_chunk import ChunkMarket, Speculation
from sovereign.config import SimConfig
from sovereign.messages import IdSource

SYMBOLS = ["AAA", "BBB", "CCC", "DDD"]
K = 6
cents = st.integers(1_000, 20_000).map(lambda c: c / 100)


def market(draw: st.DrawFn) -> ChunkMarket:
    prices = np.array(draw(st.lists(cents, min_size=K * 4, max_size=K * 4))).reshape(K, 4)
    ts = np.arange(K, dtype=np.int64) * 60_000_000_000
    return ChunkMarket(
        ts=ts,
        ts_event=ts + 60_000_000_000,
        symbols=SYMBOLS,
        open=prices,
        high=prices * 1.01,
        low=prices * 0.99,
        close=prices * 1.001,
        volume=np.full((K, 4), 1e6),
        column={s: j for j, s in enumerate(SYMBOLS)},
        shard_of=np.zeros(4, dtype=np.int64),
    )


@st.composite
def chunks(draw: st.DrawFn) -> tuple[SimBroker, Speculation, bool]:
    """A broker holding some positions (and some it held and sold) and a chunk of fills:
    whole trades (a long opened from flat, a whole position sold), or now and then a
    partial sale, an addition or two fills of a symbol in one bar; the last value says
    whether every fill is a whole trade."""
    m = market(draw)
    broker = SimBroker(SimConfig(), 1_000_000.0)
    p = broker.portfolio
    position = dict.fromkeys(range(4), 0)
    for j in draw(st.lists(st.integers(0, 3), unique=True, max_size=4)):
        q = draw(st.integers(1, 300))
        p.apply_fill(SYMBOLS[j], "BUY", q, draw(cents), draw(st.sampled_from([0.0, 1.0])))
        position[j] = q
        if draw(st.booleans()):  # held once, flat now
            p.apply_fill(SYMBOLS[j], "SELL", q, draw(cents), 0.0)
            position[j] = 0
    # Half the chunks are whole trades only; the others mix in partial sales and
    # additions, or let a symbol fill twice in a bar.
    kind = draw(st.sampled_from(["whole", "whole", "mixed", "twice"]))
    mixed = kind == "mixed"
    whole = True
    fills: list[tuple[int, int, bool, int, bool]] = []  # bar, col, buy, qty, marked
    for bar in range(K):
        start = dict(position)
        # A symbol may fill twice in a bar (sold and bought again, or the reverse).
        for j in draw(st.lists(st.integers(0, 3), unique=kind != "twice", max_size=5)):
            if position[j] == 0:
                buy, qty = True, draw(st.integers(1, 300))
            elif mixed and draw(st.booleans()):
                buy, qty = draw(st.booleans()), draw(st.integers(1, position[j]))
            else:
                buy, qty = False, position[j]
            marked = start[j] != 0  # held when the bar began: marked at its open
            # Whole: a long opened at a bar that began flat, or all of one sold at a bar
            # that began with it.
            if buy:
                whole = whole and position[j] == 0 and not marked
            else:
                whole = whole and qty == position[j] and marked
            fills.append((bar, j, buy, qty, marked))
            position[j] += qty if buy else -qty
    n = len(fills)
    bar = np.array([f[0] for f in fills], dtype=np.int64)
    col = np.array([f[1] for f in fills], dtype=np.int64)
    fees = draw(st.lists(st.sampled_from([0.0, 1.0, 0.35]), min_size=n, max_size=n))
    spec = Speculation(
        fill_col=col,
        fill_bar=bar,
        fill_buy=np.array([f[2] for f in fills], dtype=bool),
        fill_qty=np.array([f[3] for f in fills], dtype=np.int64),
        fill_price=m.open[bar, col],
        fill_commission=np.array(fees, dtype=np.float64),
        fill_marked=np.array([f[4] for f in fills], dtype=bool),
        fill_order=[f"X-{i}" for i in range(n)],
        fill_shard=np.zeros(n, dtype=np.int64),
        fill_seq=np.arange(n, dtype=np.int64),
        market=m,
    )
    return broker, spec, whole


def state(broker: SimBroker) -> tuple[object, ...]:
    """Everything booked, floats to the bit, dicts in their order."""
    p = broker.portfolio
    return (
        p.cash.hex(),
        p.commissions.hex(),
        p.realized_pnl.hex(),
        [
            (s, x.quantity, x.avg_price.hex(), x.realized_pnl.hex(), x.market_price.hex())
            for s, x in p.positions.items()
        ],
        list(p.open),
        dict(broker.counters),
        broker.last_ts,
    )


@settings(max_examples=300, deadline=None)
@given(chunks())
def test_fills_booked_at_once_leave_the_account_as_one_by_one(case) -> None:
    broker, spec, whole = case
    one = copy.deepcopy(broker)
    assert spec.market is not None
    took = sim_chunk._book_whole_trades(copy.deepcopy(broker).portfolio, spec, spec.market)
    assert took == whole
    original = sim_chunk._book_whole_trades
    try:
        sim_chunk._book_whole_trades = lambda *a: False  # type: ignore[assignment]
        sim_chunk.commit(one, spec, IdSource("sim"))
    finally:
        sim_chunk._book_whole_trades = original  # type: ignore[assignment]
    sim_chunk.commit(broker, spec, IdSource("sim"))
    assert state(broker) == state(one)


def test_a_working_order_for_another_quantity_than_assumed_is_not_speculated() -> None:
    """The shards assume what each order working before a chunk fills; the broker's book
    says what it will fill. Where they differ the chunk goes bar by bar."""
    from sovereign.brokers.sim_chunk import ChunkOrders
    from sovereign.messages import Approval, SubmitOrder

    prices = np.full((K, 4), 50.0)
    ts = np.arange(K, dtype=np.int64) * 60_000_000_000 + 60_000_000_000
    m = ChunkMarket(
        ts=ts,
        ts_event=ts + 60_000_000_000,
        symbols=SYMBOLS,
        open=prices,
        high=prices * 1.01,
        low=prices * 0.99,
        close=prices,
        volume=np.full((K, 4), 1e6),
        column={s: j for j, s in enumerate(SYMBOLS)},
        shard_of=np.zeros(4, dtype=np.int64),
    )
    broker = SimBroker(SimConfig(slippage_bps=0.0), 1_000_000.0)
    approval = Approval(
        order_id="AAA-1",
        symbol="AAA",
        side="BUY",
        quantity=99,
        limit_price=None,
        expires_ns=10**18,
        signature=b"\0" * 32,
    )
    broker.submit(
        SubmitOrder(
            msg_id="s",
            ts_event=0,
            ts_init=0,
            order_id="AAA-1",
            intent_id="AAA-1",
            shard=0,
            symbol="AAA",
            side="BUY",
            quantity=99,
            order_type="MARKET",
            approval=approval,
            purpose="OPEN",
        ),
        0,
    )
    none = ChunkOrders(
        order_id=[],
        symbol=[],
        shard=np.zeros(0, np.int64),
        bar=np.zeros(0, np.int64),
        buy=np.zeros(0, bool),
        quantity=np.zeros(0, np.int64),
        limit=np.zeros(0),
        seq=np.zeros(0, np.int64),
    )
    wrong = sim_chunk.speculate(broker, m, none, {"AAA-1": 100})
    assert wrong.diverged == "order AAA-1 is for another quantity than assumed"
    assert wrong.bar == 0
    assert not sim_chunk.speculate(broker, m, none, {"AAA-1": 99}).diverged


@settings(max_examples=300, deadline=None)
@given(
    cash=st.floats(1_000.0, 1e6),
    held=st.lists(st.tuples(st.integers(1, 500), st.floats(5.0, 500.0)), min_size=0, max_size=4),
    buys=st.lists(
        st.tuples(st.integers(1, 500), st.floats(5.0, 500.0), st.floats(0.0, 0.02), st.booleans()),
        max_size=4,
    ),
    sells=st.lists(st.tuples(st.floats(0.0, 0.02), st.floats(0.0, 1.0)), max_size=4),
    order=st.randoms(use_true_random=False),
)
def test_the_equity_floor_holds_at_every_fill_in_any_order(cash, held, buys, sells, order):
    """What the position cap is checked against in a chunk: the equity at the open less
    each fill's commission and what it trades worse than its mark is never above the
    account's equity (``Portfolio``, positions marked at the open) at any moment of the
    bar's fills, whatever their order: buys from flat at or below the open (a limit) or
    above it (a market buy's slippage), sells of held positions below their mark."""
    from sovereign.brokers.sim_chunk import equity_floor
    from sovereign.core.portfolio import Portfolio

    p = Portfolio(cash)
    for k, (q, px) in enumerate(held):
        p.apply_fill(f"H{k}", "BUY", q, px * 1.1, 0.0)
        p.mark(f"H{k}", px)  # marked at this bar's open
    equity_open = p.equity
    fills = []  # (symbol, side, quantity, price, mark, commission)
    for k, (q, px, move, above) in enumerate(buys):
        fills.append((f"B{k}", "BUY", q, px * (1 + move if above else 1 - move), px, 1.0))
    for k, (slip, share) in enumerate(sells[: len(held)]):
        q, px = held[k]
        sold = max(1, int(q * share))
        fills.append((f"H{k}", "SELL", sold, px * (1 - slip), px, 0.35 + slip))
    if not fills:
        return
    floor = equity_floor(
        np.array([equity_open]),
        np.zeros(len(fills), dtype=np.int64),
        np.array([f[1] == "BUY" for f in fills]),
        np.array([f[2] for f in fills], dtype=np.int64),
        np.array([f[3] for f in fills]),
        np.array([f[4] for f in fills]),
        np.array([f[5] for f in fills]),
    )[0]
    order.shuffle(fills)
    for symbol, side, q, px, _, fee in fills:
        p.apply_fill(symbol, side, q, px, fee)
        assert floor <= p.equity, (floor, p.equity)

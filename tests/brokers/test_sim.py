"""The simulated broker's fill model, commissions, volume cap and accounting."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sovereign.brokers.sim import SimBroker
from sovereign.config import SimConfig
from sovereign.core.fills import commission_for
from sovereign.messages import OrderAccepted, OrderCanceled, OrderFilled
from tests.kit import bars, one_bar, submit

T0 = 1_700_000_000 * 1_000_000_000
MIN = 60 * 1_000_000_000


def broker(**kw: float) -> SimBroker:
    return SimBroker(SimConfig(**kw), initial_cash=100_000.0)


def test_commission_is_ibkr_fixed_with_minimum_and_cap() -> None:
    cfg = SimConfig()
    assert commission_for(100, 50.0, cfg) == pytest.approx(1.00)  # 0.50 -> the $1 minimum
    assert commission_for(1_000, 50.0, cfg) == pytest.approx(5.00)  # 1000 x 0.005
    # 1 % of value caps it: 300 shares at $0.10 = $30 value -> at most $0.30
    assert commission_for(300, 0.10, cfg) == pytest.approx(0.30)


def test_market_order_fills_at_next_open_with_slippage() -> None:
    b = broker(slippage_bps=10)
    b.on_bars(one_bar(T0, "AAPL", 100, 101, 99, 100.5))
    events = b.submit(submit("o1", "AAPL", "BUY", 10, now=T0 + MIN), now_ns=T0 + MIN)
    assert isinstance(events[0], OrderAccepted)
    fills = b.on_bars(one_bar(T0 + MIN, "AAPL", 102, 103, 101, 102.5))
    assert len(fills) == 1
    f = fills[0]
    assert isinstance(f, OrderFilled)
    assert f.price == pytest.approx(102 * 1.001)
    assert f.quantity == 10 and f.leaves_quantity == 0
    assert f.commission == pytest.approx(1.0)
    assert b.portfolio.cash == pytest.approx(100_000 - 10 * 102 * 1.001 - 1.0)
    # Marked to the close of the fill bar.
    assert b.account(T0).equity == pytest.approx(b.portfolio.cash + 10 * 102.5)


def test_order_does_not_fill_on_a_bar_that_started_before_it_was_sent() -> None:
    b = broker()
    b.submit(submit("o1", "AAPL", "BUY", 10, now=T0 + 2 * MIN), now_ns=T0 + 2 * MIN)
    assert b.on_bars(one_bar(T0 + MIN, "AAPL", 100, 101, 99, 100)) == []
    assert len(b.on_bars(one_bar(T0 + 2 * MIN, "AAPL", 100, 101, 99, 100))) == 1


def test_sell_slippage_is_against_us() -> None:
    b = broker(slippage_bps=10)
    b.submit(submit("o1", "AAPL", "BUY", 10), now_ns=0)
    b.on_bars(one_bar(T0, "AAPL", 100, 101, 99, 100))
    b.submit(submit("o2", "AAPL", "SELL", 10, purpose="CLOSE"), now_ns=T0)
    (fill,) = b.on_bars(one_bar(T0 + MIN, "AAPL", 110, 111, 109, 110))
    assert fill.price == pytest.approx(110 * 0.999)
    assert b.portfolio.quantity("AAPL") == 0
    # Realised P&L against the average entry price, commissions apart.
    assert b.portfolio.realized_pnl == pytest.approx(10 * (110 * 0.999 - 100 * 1.001))
    assert b.portfolio.commissions == pytest.approx(2.0)


def test_buy_limit_fills_only_when_traded_through_at_the_better_of_open_and_limit() -> None:
    b = broker()
    b.submit(submit("o1", "AAPL", "BUY", 5, order_type="LIMIT", limit_price=95.0), now_ns=0)
    assert b.on_bars(one_bar(T0, "AAPL", 100, 101, 96, 98)) == []  # low 96 > 95
    (fill,) = b.on_bars(one_bar(T0 + MIN, "AAPL", 97, 97, 94, 95))
    assert fill.price == pytest.approx(95.0)
    b.submit(submit("o2", "AAPL", "BUY", 5, order_type="LIMIT", limit_price=95.0), now_ns=T0)
    (gap,) = b.on_bars(one_bar(T0 + 2 * MIN, "AAPL", 90, 92, 89, 91))
    assert gap.price == pytest.approx(90.0)  # gapped below the limit: filled at the open


def test_sell_limit_fills_at_max_of_open_and_limit() -> None:
    b = broker()
    b.submit(submit("o1", "AAPL", "BUY", 5), now_ns=0)
    b.on_bars(one_bar(T0, "AAPL", 100, 100, 100, 100))
    b.submit(submit("o2", "AAPL", "SELL", 5, order_type="LIMIT", limit_price=105.0), now_ns=T0)
    assert b.on_bars(one_bar(T0 + MIN, "AAPL", 101, 104, 100, 103)) == []
    (fill,) = b.on_bars(one_bar(T0 + 2 * MIN, "AAPL", 107, 108, 106, 107))
    assert fill.price == pytest.approx(107.0)


def test_fill_is_capped_by_bar_volume_and_the_rest_carries_over() -> None:
    b = broker(max_volume_share=0.1)
    b.submit(submit("o1", "AAPL", "BUY", 250), now_ns=0)
    f1 = b.on_bars(one_bar(T0, "AAPL", 10, 10, 10, 10, v=1000))  # cap 100
    f2 = b.on_bars(one_bar(T0 + MIN, "AAPL", 10, 10, 10, 10, v=0))  # nothing trades
    f3 = b.on_bars(one_bar(T0 + 2 * MIN, "AAPL", 10, 10, 10, 10, v=1000))
    f4 = b.on_bars(one_bar(T0 + 3 * MIN, "AAPL", 10, 10, 10, 10, v=1000))
    assert [f.quantity for f in f1 + f2 + f3 + f4] == [100, 100, 50]
    assert [f.leaves_quantity for f in f1 + f3 + f4] == [150, 50, 0]
    assert len({f.execution_id for f in f1 + f3 + f4}) == 3
    assert b.working_orders == 0
    assert b.counters["zero_volume_bars"] == 1


def test_unknown_volume_is_not_capped_and_is_counted() -> None:
    b = broker(max_volume_share=0.1)
    b.submit(submit("o1", "AAPL", "BUY", 250), now_ns=0)
    (f,) = b.on_bars(one_bar(T0, "AAPL", 10, 10, 10, 10, v=math.nan))
    assert f.quantity == 250
    assert b.counters["uncapped_unknown_volume"] == 1


def test_cancel_stops_the_rest_of_a_partially_filled_order() -> None:
    b = broker(max_volume_share=0.1)
    b.submit(submit("o1", "AAPL", "BUY", 250), now_ns=0)
    b.on_bars(one_bar(T0, "AAPL", 10, 10, 10, 10, v=1000))
    (c,) = b.cancel("o1", T0)
    assert isinstance(c, OrderCanceled) and c.filled_quantity == 100
    assert b.on_bars(one_bar(T0 + MIN, "AAPL", 10, 10, 10, 10, v=1000)) == []
    assert b.cancel("o1", T0) == []  # already gone
    assert b.portfolio.quantity("AAPL") == 100


def test_duplicate_working_order_id_is_rejected() -> None:
    b = broker()
    b.submit(submit("o1", "AAPL", "BUY", 1), now_ns=0)
    (ev,) = b.submit(submit("o1", "AAPL", "BUY", 1), now_ns=0)
    assert ev.reason_code == "DUPLICATE_ORDER_ID"  # type: ignore[attr-defined]


def test_orders_for_other_symbols_wait_for_their_own_bars() -> None:
    b = broker()
    b.submit(submit("o1", "MSFT", "BUY", 1), now_ns=0)
    assert b.on_bars(one_bar(T0, "AAPL", 10, 10, 10, 10)) == []
    assert len(b.on_bars(one_bar(T0 + MIN, "MSFT", 10, 10, 10, 10))) == 1


@settings(max_examples=80, deadline=None)
@given(
    held=st.lists(st.integers(0, 400), min_size=4, max_size=4),
    opens=st.lists(st.floats(5.0, 500.0), min_size=4, max_size=4),
    orders=st.lists(st.tuples(st.integers(0, 3), st.integers(1, 600)), min_size=1, max_size=12),
    cash=st.floats(5_000.0, 200_000.0),
    slippage_bps=st.floats(0.0, 800.0),
)
def test_many_fills_in_one_bar_are_capped_against_the_equity_at_each_fill(
    held: list[int],
    opens: list[float],
    orders: list[tuple[int, int]],
    cash: float,
    slippage_bps: float,
) -> None:
    """The sim carries the account's equity through a bar's fills instead of summing every
    position at every fill: each fill must still be cut exactly as if equity were summed
    afresh just before it (the 5 % position cap, in submission order). Slippage makes
    every fill move equity (a fill at the mark would not)."""
    symbols = ["AAA", "BBB", "CCC", "DDD"]
    cfg = SimConfig(slippage_bps=slippage_bps)
    b = SimBroker(cfg, initial_cash=cash, position_cap=0.05)
    for s, q, o in zip(symbols, held, opens, strict=True):
        if q:
            b.portfolio.set_position(s, q, o * 0.9, 0.0, o * 0.9)
    for n, (k, q) in enumerate(orders):
        b.submit(submit(f"o{n}", symbols[k], "BUY", q), now_ns=0)
    batch = bars(T0, symbols, opens, opens, opens, opens, [1e9] * 4)
    fills = [e for e in b.on_bars(batch) if isinstance(e, OrderFilled)]

    # The rule, written out: held positions marked at the open, a new one at its first
    # fill; equity summed before each fill.
    qty = dict(zip(symbols, held, strict=True))
    mark = {s: o for s, o, q in zip(symbols, opens, held, strict=True) if q}
    want_cash = cash
    expected = []
    for n, (k, q) in enumerate(orders):
        s = symbols[k]
        price = opens[k] * (1 + slippage_bps / 10_000.0)
        equity = want_cash + sum(qty[x] * mark[x] for x in mark)
        fee = commission_for(q, price, cfg)
        room = 0.05 * (equity - fee) - qty[s] * price
        allowed = max(0, math.floor(room / price)) if room > 0 else 0
        fill = min(q, allowed)
        if fill > 0:
            expected.append((f"o{n}", fill))
            qty[s] += fill
            mark.setdefault(s, price)
            want_cash -= fill * price + commission_for(fill, price, cfg)
    assert [(f.order_id, f.quantity) for f in fills] == expected

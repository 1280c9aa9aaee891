"""Average-cost accounting."""

from __future__ import annotations

import pytest

from sovereign.core.portfolio import Portfolio


def test_buy_add_sell_realises_against_average_cost() -> None:
    p = Portfolio(10_000.0)
    p.apply_fill("A", "BUY", 10, 100.0, 1.0)
    p.apply_fill("A", "BUY", 10, 110.0, 1.0)
    assert p.position("A").avg_price == pytest.approx(105.0)
    realized = p.apply_fill("A", "SELL", 5, 120.0, 1.0)
    assert realized == pytest.approx(5 * 15.0)
    assert p.quantity("A") == 15
    assert p.cash == pytest.approx(10_000 - 1000 - 1100 + 600 - 3.0)
    p.mark("A", 100.0)
    assert p.unrealized_pnl == pytest.approx(15 * (100 - 105))
    assert p.equity == pytest.approx(p.cash + 15 * 100.0)
    assert p.gross_exposure == pytest.approx(1500.0)


def test_closing_flat_resets_the_average() -> None:
    p = Portfolio(1_000.0)
    p.apply_fill("A", "BUY", 3, 10.0, 0.0)
    p.apply_fill("A", "SELL", 3, 12.0, 0.0)
    assert p.quantity("A") == 0 and p.position("A").avg_price == 0.0
    assert p.realized_pnl == pytest.approx(6.0)
    assert p.open_positions == 0
    assert p.equity == pytest.approx(1_006.0)


def test_bad_fills_raise() -> None:
    p = Portfolio(1_000.0)
    with pytest.raises(ValueError):
        p.apply_fill("A", "BUY", 0, 10.0, 0.0)
    with pytest.raises(ValueError):
        p.apply_fill("A", "BUY", 1, float("nan"), 0.0)

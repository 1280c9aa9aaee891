"""Order lifecycle: idempotent submits, deduplicated fills, no over-fills."""

from __future__ import annotations

from sovereign.execution.order_manager import OrderManager, OrderState
from sovereign.messages import OrderAccepted, OrderCanceled, OrderFilled, OrderRejected
from tests.kit import submit


def fill(order_id: str, exec_id: str, qty: int, leaves: int, price: float = 10.0) -> OrderFilled:
    return OrderFilled(
        msg_id=exec_id,
        ts_event=0,
        ts_init=0,
        order_id=order_id,
        execution_id=exec_id,
        shard=0,
        symbol="AAPL",
        side="BUY",
        quantity=qty,
        price=price,
        commission=1.0,
        cum_quantity=0,
        leaves_quantity=leaves,
    )


def test_lifecycle_to_filled() -> None:
    om = OrderManager()
    assert om.register(submit("o1", "AAPL", "BUY", 10))
    om.on_accepted(
        OrderAccepted(
            msg_id="a",
            ts_event=0,
            ts_init=0,
            order_id="o1",
            shard=0,
            symbol="AAPL",
            side="BUY",
            quantity=10,
        )
    )
    assert om.get("o1").state is OrderState.ACCEPTED  # type: ignore[union-attr]
    assert om.on_fill(fill("o1", "e1", 4, 6, 10.0))
    assert om.get("o1").state is OrderState.PARTIALLY_FILLED  # type: ignore[union-attr]
    assert om.on_fill(fill("o1", "e2", 6, 0, 11.0))
    rec = om.get("o1")
    assert rec is not None and rec.state is OrderState.FILLED
    assert rec.avg_price == (4 * 10 + 6 * 11) / 10
    assert om.working() == []


def test_duplicate_submit_is_refused() -> None:
    om = OrderManager()
    assert om.register(submit("o1", "AAPL", "BUY", 10))
    assert not om.register(submit("o1", "AAPL", "BUY", 10))
    assert om.counters["duplicate_submits"] == 1


def test_duplicate_fill_is_dropped_and_overfill_refused() -> None:
    om = OrderManager()
    om.register(submit("o1", "AAPL", "BUY", 10))
    assert om.on_fill(fill("o1", "e1", 5, 5))
    assert not om.on_fill(fill("o1", "e1", 5, 5))
    assert om.counters["duplicate_fills"] == 1
    assert not om.on_fill(fill("o1", "e9", 6, 0))
    assert om.counters["overfills_refused"] == 1
    assert om.get("o1").filled == 5  # type: ignore[union-attr]


def test_events_for_unknown_orders_are_counted() -> None:
    om = OrderManager()
    assert not om.on_fill(fill("nope", "e1", 1, 0))
    assert om.counters["unknown_order_events"] == 1


def test_cancel_and_reject_are_terminal() -> None:
    om = OrderManager()
    om.register(submit("o1", "AAPL", "BUY", 10))
    om.register(submit("o2", "AAPL", "BUY", 10))
    assert om.on_canceled(
        OrderCanceled(
            msg_id="c",
            ts_event=0,
            ts_init=0,
            order_id="o1",
            shard=0,
            symbol="AAPL",
            filled_quantity=0,
            reason="",
        )
    )
    assert om.on_rejected(
        OrderRejected(
            msg_id="r",
            ts_event=0,
            ts_init=0,
            order_id="o2",
            shard=0,
            symbol="AAPL",
            reason_code="X",
            detail="",
        )
    )
    assert om.get("o1").state is OrderState.CANCELED  # type: ignore[union-attr]
    assert om.get("o2").state is OrderState.REJECTED  # type: ignore[union-attr]


def test_a_fill_that_crossed_a_cancel_is_booked_and_the_order_stays_canceled() -> None:
    om = OrderManager()
    om.register(submit("o1", "AAPL", "BUY", 10))
    om.on_canceled(
        OrderCanceled(
            msg_id="c",
            ts_event=0,
            ts_init=0,
            order_id="o1",
            shard=0,
            symbol="AAPL",
            filled_quantity=0,
            reason="",
        )
    )
    assert om.on_fill(fill("o1", "late", 1, 9))
    rec = om.get("o1")
    assert rec is not None and rec.filled == 1 and rec.state is OrderState.CANCELED
    assert om.counters["fills_after_cancel"] == 1

"""Order commands and order events.

The path of an order: a shard emits an ``OrderIntent``; the guardian answers with a
``RiskVerdict`` and, if it approves, a ``SubmitOrder`` carrying a signed ``Approval``; the
gateway refuses any submit whose approval does not verify, then reports the lifecycle with
``OrderAccepted`` / ``OrderRejected`` / ``OrderFilled`` / ``OrderCanceled``.
"""

from __future__ import annotations

import math
from typing import Literal

import msgspec

from sovereign.domain.orders import Side
from sovereign.messages.base import Message

OrderType = Literal["MARKET", "LIMIT"]
Purpose = Literal["OPEN", "CLOSE"]
TimeInForce = Literal["DAY", "GTC"]
Algo = Literal["DIRECT", "TWAP", "VWAP", "ICEBERG"]


def _check_price(name: str, value: float | None, *, allow_none: bool = True) -> None:
    if value is None:
        if not allow_none:
            raise ValueError(f"{name} is required")
        return
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite price, got {value!r}")


class OrderIntent(Message, frozen=True, gc=False):
    """What a shard would like to trade. It is a wish, not an order.

    For an entry (``purpose="OPEN"``) ``quantity`` may be 0: the guardian sizes it. For an
    exit it is the quantity to close. ``ref_price`` is the price the decision was made at
    (the bar close) and ``stop_price`` the protective stop the strategy will use; the
    guardian sizes from them.
    """

    intent_id: str
    shard: int
    symbol: str
    side: Side
    purpose: Purpose
    quantity: int
    ref_price: float
    confidence: float
    regime: str
    reason: str
    order_type: OrderType = "MARKET"
    limit_price: float | None = None
    stop_price: float | None = None
    size_scale: float = 1.0

    def __post_init__(self) -> None:
        if not (0.0 <= self.size_scale <= 1.0):
            raise ValueError(f"OrderIntent.size_scale must be in [0, 1], got {self.size_scale}")
        if self.quantity < 0:
            raise ValueError(f"OrderIntent.quantity must be >= 0, got {self.quantity}")
        if not (0.0 <= self.confidence <= 1.0):
            raise ValueError(f"OrderIntent.confidence must be in [0, 1], got {self.confidence}")
        _check_price("OrderIntent.ref_price", self.ref_price, allow_none=False)
        _check_price("OrderIntent.limit_price", self.limit_price)
        if self.order_type == "LIMIT" and self.limit_price is None:
            raise ValueError("a LIMIT intent needs a limit_price")


class RiskVerdict(Message, frozen=True, gc=False):
    """The guardian's answer to one intent: approved with a size, or denied with a reason.

    ``reason_code`` is a stable machine-readable code (``APPROVED``, ``LOW_CONFIDENCE``,
    ``POSITION_LIMIT``, ...); ``detail`` is the human explanation.
    """

    intent_id: str
    symbol: str
    approved: bool
    reason_code: str
    detail: str
    quantity: int = 0
    order_id: str = ""


class Approval(msgspec.Struct, frozen=True, gc=False):
    """The guardian's signature on one order.

    ``signature`` is an HMAC-SHA256, under a per-run secret shared only by the guardian and
    the gateway, over the canonical encoding of the order id, symbol, side, quantity, limit
    price and expiry. The gateway verifies it, checks the expiry, and accepts each approval
    once.
    """

    order_id: str
    symbol: str
    side: Side
    quantity: int
    limit_price: float | None
    expires_ns: int
    signature: bytes


class SubmitOrder(Message, frozen=True, gc=False):
    """A command to the gateway to send an order. Useless without a valid approval."""

    order_id: str
    intent_id: str
    shard: int
    symbol: str
    side: Side
    quantity: int
    order_type: OrderType
    approval: Approval
    limit_price: float | None = None
    time_in_force: TimeInForce = "GTC"
    algo: Algo = "DIRECT"
    purpose: Purpose = "OPEN"

    def __post_init__(self) -> None:
        if self.quantity <= 0:
            raise ValueError(f"SubmitOrder.quantity must be positive, got {self.quantity}")
        _check_price("SubmitOrder.limit_price", self.limit_price)
        if self.order_type == "LIMIT" and self.limit_price is None:
            raise ValueError("a LIMIT order needs a limit_price")


class CancelOrder(Message, frozen=True, gc=False):
    """A command to cancel a working order. Cancels only reduce risk, so they need no
    approval, but the gateway only cancels orders it knows."""

    order_id: str
    reason: str


class OrderAccepted(Message, frozen=True, gc=False):
    """The broker accepted the order; it is working."""

    order_id: str
    shard: int
    symbol: str
    side: Side
    quantity: int
    broker_order_id: str = ""


class OrderRejected(Message, frozen=True, gc=False):
    """The gateway or the broker refused the order. ``reason_code`` is stable."""

    order_id: str
    shard: int
    symbol: str
    reason_code: str
    detail: str


class OrderFilled(Message, frozen=True, gc=False):
    """One execution. ``execution_id`` is unique per fill, so fills deduplicate."""

    order_id: str
    execution_id: str
    shard: int
    symbol: str
    side: Side
    quantity: int
    price: float
    commission: float
    cum_quantity: int
    leaves_quantity: int
    purpose: Purpose = "OPEN"
    liquidity: str = ""


class OrderCanceled(Message, frozen=True, gc=False):
    """The order stopped working without being completely filled."""

    order_id: str
    shard: int
    symbol: str
    filled_quantity: int
    reason: str


class RecentOrderEvents(Message, frozen=True, gc=False):
    """The order events the gateway reported in its last few calls, sent again with every
    output of a paper or live session. A shard whose call failed (it was killed and Ray
    restarted it from its checkpoint) finds here the fills, cancels and rejections it
    missed; it books each fill once, by execution id, so the copies it already has are
    ignored. Only shards read it: the events themselves went to everyone when they
    happened."""

    events: list[OrderFilled | OrderCanceled | OrderRejected]

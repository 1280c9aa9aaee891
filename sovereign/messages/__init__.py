"""The wire: frozen, tagged msgspec Structs encoded as msgpack.

``ALL_MESSAGES`` lists every concrete message type; ``WIRE`` is the codec for a batch of
any of them. New message types must be added to ``ALL_MESSAGES``.
"""

from __future__ import annotations

from sovereign.messages.account import (
    AccountSnapshot,
    ActorStats,
    BookOrder,
    BookPosition,
    BookSnapshot,
    DailySummary,
    EquityCurve,
    Notification,
    PositionSnapshot,
    RuleEvaluationRequested,
    SessionEnded,
    SessionStarted,
    ShardReport,
    TradeClosed,
    TradingStateChanged,
)
from sovereign.messages.base import IdSource, Message, MessageDecodeError, NDArray
from sovereign.messages.codec import Codec
from sovereign.messages.governance import (
    ModificationDecision,
    ModificationProposal,
    RollbackRequest,
    RuleSetSnapshot,
)
from sovereign.messages.market import (
    REGIME_NAMES,
    REGIME_UNKNOWN,
    Bar,
    BarBatch,
    RegimeUpdate,
    regime_name,
)
from sovereign.messages.orders import (
    Approval,
    CancelOrder,
    OrderAccepted,
    OrderCanceled,
    OrderFilled,
    OrderIntent,
    OrderRejected,
    RiskVerdict,
    SubmitOrder,
)

ALL_MESSAGES: tuple[type[Message], ...] = (
    Bar,
    BarBatch,
    RegimeUpdate,
    OrderIntent,
    RiskVerdict,
    SubmitOrder,
    CancelOrder,
    OrderAccepted,
    OrderRejected,
    OrderFilled,
    OrderCanceled,
    AccountSnapshot,
    PositionSnapshot,
    TradeClosed,
    Notification,
    DailySummary,
    SessionStarted,
    SessionEnded,
    ShardReport,
    EquityCurve,
    ActorStats,
    BookSnapshot,
    TradingStateChanged,
    RuleEvaluationRequested,
    RuleSetSnapshot,
    ModificationProposal,
    ModificationDecision,
    RollbackRequest,
)

WIRE = Codec(ALL_MESSAGES, name="wire")

__all__ = [
    "ALL_MESSAGES",
    "REGIME_NAMES",
    "REGIME_UNKNOWN",
    "WIRE",
    "AccountSnapshot",
    "ActorStats",
    "Approval",
    "Bar",
    "BarBatch",
    "BookOrder",
    "BookPosition",
    "BookSnapshot",
    "CancelOrder",
    "Codec",
    "DailySummary",
    "EquityCurve",
    "IdSource",
    "Message",
    "MessageDecodeError",
    "ModificationDecision",
    "ModificationProposal",
    "NDArray",
    "Notification",
    "OrderAccepted",
    "OrderCanceled",
    "OrderFilled",
    "OrderIntent",
    "OrderRejected",
    "PositionSnapshot",
    "RegimeUpdate",
    "RiskVerdict",
    "RollbackRequest",
    "RuleEvaluationRequested",
    "RuleSetSnapshot",
    "SessionEnded",
    "SessionStarted",
    "ShardReport",
    "SubmitOrder",
    "TradeClosed",
    "TradingStateChanged",
    "regime_name",
]

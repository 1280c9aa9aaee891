"""GuardianActor: the single gate between what the strategy wants and what reaches a broker.

It keeps its own book of the account (equity, cash, holdings, pending orders) from the
gateway's snapshots and order events, checks every intent against the constitution and
sizes it (``sovereign.core.risk``), and signs an approval for each order it lets through.
It denies rather than raises: every intent gets a RiskVerdict with a reason code.
"""

from __future__ import annotations

from sovereign.actors.base import Actor
from sovereign.core.constitution import Constitution
from sovereign.core.risk import RiskBook, SizingPolicy, evaluate_intent, sign_approval
from sovereign.messages import (
    AccountSnapshot,
    CancelOrder,
    Message,
    OrderCanceled,
    OrderFilled,
    OrderIntent,
    OrderRejected,
    PositionSnapshot,
    RiskVerdict,
    SessionEnded,
    SessionStarted,
    SubmitOrder,
)


class GuardianActor(Actor):
    role = "guardian"

    def __init__(
        self,
        index: int,
        constitution: Constitution,
        policy: SizingPolicy,
        secret: bytes,
        approval_ttl_s: int,
    ) -> None:
        super().__init__(index)
        self.constitution = constitution
        self.fingerprint = constitution.fingerprint
        self.policy = policy
        self._secret = secret
        self.ttl_ns = approval_ttl_s * 1_000_000_000
        self.book = RiskBook(equity=0.0, cash=0.0)
        self.reasons: dict[str, int] = {}

    def receive(self, messages: list[Message]) -> list[Message]:
        out: list[Message] = []
        intents: list[OrderIntent] = []
        for msg in messages:
            match msg:
                case AccountSnapshot():
                    self.book.equity = msg.equity
                    self.book.cash = msg.cash
                    self.book.gross_exposure = msg.gross_exposure
                case PositionSnapshot():
                    self.book.held[msg.symbol] = msg.quantity
                case OrderFilled():
                    self.book.on_fill(msg.order_id, msg.quantity)
                case OrderCanceled() | OrderRejected():
                    self.book.on_done(msg.order_id)
                case OrderIntent():
                    intents.append(msg)
                case CancelOrder():
                    out.append(msg)  # cancels only reduce risk; pass them to the gateway
                case SessionStarted():
                    self.book.equity = self.book.cash = msg.initial_capital
                case SessionEnded():
                    self.counters.update({f"verdict_{k}": v for k, v in self.reasons.items()})
                    out.append(self.stats(msg.ts_event))
                case _:
                    pass
        # Exits first (they free room), then by symbol: the decision order, and so the
        # trades, do not depend on how symbols are dealt to shards.
        intents.sort(key=lambda m: (m.purpose != "CLOSE", m.symbol, m.intent_id))
        for intent in intents:
            out.extend(self._decide(intent))
        return out

    def _decide(self, intent: OrderIntent) -> list[Message]:
        if self.constitution.fingerprint != self.fingerprint:
            # The limits changed under us: nothing is approved until a restart.
            decision_code, detail, quantity, approved = (
                "CONSTITUTION_TAMPERED",
                "the constitution fingerprint no longer matches",
                0,
                False,
            )
        else:
            d = evaluate_intent(intent, self.book, self.constitution, self.policy)
            decision_code, detail, quantity, approved = (
                d.reason_code,
                d.detail,
                d.quantity,
                d.approved,
            )
        self.reasons[decision_code] = self.reasons.get(decision_code, 0) + 1
        now = intent.ts_event
        order_id = intent.intent_id
        verdict = RiskVerdict(
            msg_id=self.ids.next(),
            ts_event=now,
            ts_init=now,
            correlation_id=intent.msg_id,
            intent_id=intent.intent_id,
            symbol=intent.symbol,
            approved=approved,
            reason_code=decision_code,
            detail=detail,
            quantity=quantity,
            order_id=order_id if approved else "",
        )
        if not approved:
            return [verdict]
        limit_price = intent.limit_price if intent.order_type == "LIMIT" else None
        approval = sign_approval(
            self._secret,
            order_id=order_id,
            symbol=intent.symbol,
            side=intent.side,
            quantity=quantity,
            limit_price=limit_price,
            expires_ns=now + self.ttl_ns,
        )
        self.book.add_pending(order_id, intent.symbol, intent.side, quantity, intent.ref_price)
        submit = SubmitOrder(
            msg_id=self.ids.next(),
            ts_event=now,
            ts_init=now,
            correlation_id=intent.msg_id,
            order_id=order_id,
            intent_id=intent.intent_id,
            shard=intent.shard,
            symbol=intent.symbol,
            side=intent.side,
            quantity=quantity,
            order_type=intent.order_type,
            approval=approval,
            limit_price=limit_price,
            purpose=intent.purpose,
        )
        return [verdict, submit]

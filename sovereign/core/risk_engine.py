"""The risk engine: every decision the guardian takes, with no I/O of its own.

It holds what the guardian knows of the account (``RiskBook``), the trading state machine
(``core.guardian``) and the decisions' tallies, and turns what it is told (intents, the
broker's book and account, closed trades, speculative chunks) into the messages the
guardian sends: verdicts, signed orders, cancels, flatten orders, state changes and
requests for a rule evaluation. The ``GuardianActor`` is its shell: it loads and persists
the trading state, audits its changes (through ``record``, injected) and checks proposed
modifications against the governance store.
"""

from __future__ import annotations

from collections.abc import Callable
from operator import itemgetter
from typing import Any

from sovereign.core.constitution import Constitution
from sovereign.core.guardian import GuardianState, TradingState, TradingStateMachine, Transition
from sovereign.core.risk import (
    RiskBook,
    SizingPolicy,
    evaluate_intent,
    sign_approval,
)
from sovereign.core.risk_chunks import PendingChunk, approve_chunk, validate_chunk
from sovereign.messages import (
    AccountSnapshot,
    ApprovedChunk,
    BookSnapshot,
    CancelOrder,
    ChunkExecution,
    ChunkHorizon,
    ChunkVerdict,
    IntentChunk,
    Message,
    Notification,
    OrderCanceled,
    OrderFilled,
    OrderIntent,
    OrderRejected,
    PositionSnapshot,
    RiskVerdict,
    RuleEvaluationRequested,
    SubmitOrder,
    TradeClosed,
    TradesClosed,
    TradingStateChanged,
)
from sovereign.messages.base import IdSource

Record = Callable[[str, int, dict[str, object]], tuple[int, str]]
"""Audit a change of the trading state: (action, ts, payload) -> (entry seq, entry hash)."""
Count = Callable[[str, int], None]


def closed_rows(msg: TradeClosed | TradesClosed) -> list[tuple[int, float, str, str]]:
    """(exit time, P&L, trade id, message id) of each trade a message closes."""
    if isinstance(msg, TradeClosed):
        return [(msg.ts_event, msg.pnl, msg.trade_id, msg.msg_id)]
    ts, pnl = msg.exit_ts.to_numpy().tolist(), msg.pnl.to_numpy().tolist()
    return list(zip(ts, pnl, msg.trade_id, msg.msg_ids, strict=True))


class RiskEngine:
    """The guardian's decisions over its book and trading state (see the module doc)."""

    def __init__(
        self,
        constitution: Constitution,
        policy: SizingPolicy,
        secret: bytes,
        approval_ttl_s: int,
        *,
        ids: IdSource,
        count: Count,
        record: Record,
        fingerprint: str,
        shard_of: dict[str, int] | None = None,
        flatten_on_halt: bool = True,
        review_after_losses: int = 3,
    ) -> None:
        self.constitution = constitution
        self.policy = policy
        self.secret = secret
        self.ttl_ns = approval_ttl_s * 1_000_000_000
        self.ids = ids
        self.count = count
        self._record = record
        # The constitution's fingerprint at start: every decision is checked against it.
        self.fingerprint = fingerprint
        self.shard_of = shard_of or {}
        self.flatten_on_halt = flatten_on_halt
        self.review_after = review_after_losses
        self.book = RiskBook(equity=0.0, cash=0.0)
        self.working: list[Any] = []
        self.reasons: dict[str, int] = {}
        self.reconciled = False
        self.recent_losses: list[str] = []
        self.machine: TradingStateMachine | None = None
        # The chunk approved on condition, until its execution report is validated.
        self.chunk: PendingChunk | None = None

    def adopt_state(self, state: GuardianState | None) -> None:
        self.machine = (
            None
            if state is None
            else TradingStateMachine(
                self.constitution, state, review_after_losses=self.review_after
            )
        )

    def record(self, action: str, ts: int, payload: dict[str, object]) -> None:
        """Audit a change of the trading state; the state names the audit entry."""
        seq, digest = self._record(action, ts, payload)
        if self.machine is not None:
            self.machine.s.audit_seq, self.machine.s.audit_hash = seq, digest

    # -- WHAT THE BROKER SAYS -----------------------------------------------------------

    def on_broker_event(self, msg: Message) -> None:
        """A book, a position, a fill or an order's end (the account: ``account_seen``)."""
        match msg:
            case BookSnapshot():
                # The broker's book is the truth: rebuild holdings and pending orders.
                self.book.held = {p.symbol: p.quantity for p in msg.positions}
                self.book.pending = {}
                for o in msg.working:
                    self.book.add_pending(o.order_id, o.symbol, o.side, o.remaining, o.price)
                self.working = list(msg.working)
                self.reconciled = True
            case PositionSnapshot():
                self.book.held[msg.symbol] = msg.quantity
            case OrderFilled():
                self.book.on_fill(msg.order_id, msg.quantity)
            case OrderCanceled() | OrderRejected():
                self.book.on_done(msg.order_id)

    def session_started(self) -> None:
        # A fresh account is baselined on the broker's first AccountSnapshot, not on the
        # configured capital: a real account holding less than that would otherwise start
        # in a phantom drawdown (and one holding more would hide a real one). Until then
        # nothing is approved (NOT_STARTED).
        if self.machine is not None:
            self.book.equity = self.book.cash = self.machine.s.last_equity

    def account_seen(self, msg: AccountSnapshot) -> None:
        """Take the account's figures; a fresh account gets its trading state here."""
        self.book.equity = msg.equity
        self.book.cash = msg.cash
        self.book.gross_exposure = msg.gross_exposure
        if self.machine is None:
            self.adopt_state(GuardianState.fresh(msg.equity))
            # From here on the account has a history: its state may never go missing.
            self.record(
                "trading_state_created",
                msg.ts_event,
                {"to": TradingState.ACTIVE.value, "equity": msg.equity},
            )

    def observe_account(self, msg: AccountSnapshot) -> list[Message]:
        """Move the trading state on the account just seen, and act on where it lands."""
        assert self.machine is not None  # account_seen made one
        s = self.machine.s
        s.last_cash, s.last_gross_exposure = msg.cash, msg.gross_exposure
        s.last_open_positions, s.last_ts = msg.open_positions, msg.ts_event
        out: list[Message] = []
        for t in self.machine.observe(msg.equity, msg.session_date, msg.ts_event):
            out.extend(self.announce(t, msg.ts_event))
            out.extend(self.act_on(t.state, msg.ts_event))
        if self.machine.state is TradingState.HALTED and self.flatten_on_halt:
            out.extend(self.flatten(msg.ts_event))
        return out

    # -- TRADING STATE ------------------------------------------------------------------

    def announce(self, t: Transition, ts: int) -> list[Message]:
        self.count(f"to_{t.state.value}", 1)
        self.record(
            "trading_state",
            ts,
            {
                "from": t.previous.value,
                "to": t.state.value,
                "reason": t.reason,
                "equity": t.equity,
                "high_water_mark": t.high_water_mark,
                "drawdown": t.drawdown,
                "day_loss": t.day_loss,
                "session_date": t.session_date,
            },
        )
        return self.notify(t, ts)

    def notify(self, t: Transition, ts: int) -> list[Message]:
        level = {"HALTED": "critical", "NO_NEW_POSITIONS": "warning"}.get(t.state.value, "info")
        return [
            TradingStateChanged(
                msg_id=self.ids.next(),
                ts_event=ts,
                ts_init=ts,
                previous=t.previous.value,
                state=t.state.value,
                reason=t.reason,
                equity=t.equity,
                high_water_mark=t.high_water_mark,
                day_start_equity=t.day_start_equity,
                drawdown=t.drawdown,
                day_loss=t.day_loss,
                session_date=t.session_date,
            ),
            Notification(
                msg_id=self.ids.next(),
                ts_event=ts,
                ts_init=ts,
                kind="trading_state",
                level=level,  # type: ignore[arg-type]
                title=f"trading {t.previous.value} -> {t.state.value}",
                text=t.reason,
                data={"equity": t.equity, "drawdown": t.drawdown, "day_loss": t.day_loss},
            ),
        ]

    def act_on(self, state: TradingState, ts: int) -> list[Message]:
        """Cancel what the new state forbids: every working order on a halt (the flatten
        orders follow), working entries when new positions stop."""
        if state is TradingState.HALTED:
            doomed = self.working
        elif state is TradingState.NO_NEW_POSITIONS:
            doomed = [o for o in self.working if o.side == "BUY"]
        else:
            return []
        out: list[Message] = []
        for o in doomed:
            out.append(
                CancelOrder(
                    msg_id=self.ids.next(),
                    ts_event=ts,
                    ts_init=ts,
                    order_id=o.order_id,
                    reason=f"guardian: {state.value}",
                )
            )
            self.book.on_done(o.order_id)
        self.count("orders_canceled_by_state", len(out))
        return out

    def flatten(self, ts: int) -> list[Message]:
        """Sell every long position not already being sold, at market."""
        out: list[Message] = []
        for symbol, held in sorted(self.book.held.items()):
            quantity = held - self.book.pending_quantity(symbol, "SELL")
            if quantity <= 0:
                continue
            assert self.machine is not None  # flattening needs an account state
            s = self.machine.s
            s.flatten_seq += 1
            # With the audit entry of the state change: unique even if a state that could
            # not be read started the numbering again.
            order_id = f"G-{symbol}-{s.audit_seq}.{s.flatten_seq}"
            out.append(
                self.submit(
                    order_id=order_id,
                    intent_id=order_id,
                    symbol=symbol,
                    side="SELL",
                    quantity=quantity,
                    order_type="MARKET",
                    limit_price=None,
                    purpose="CLOSE",
                    ts=ts,
                    correlation_id="",
                )
            )
            self.book.add_pending(order_id, symbol, "SELL", quantity, 0.0)
            self.count("flatten_orders", 1)
        return out

    def superseded(self, ours: TradingState, theirs: GuardianState) -> list[Message]:
        """The stored state (``theirs``) replaced this guardian's (``ours``): say so, and
        cancel what it forbids."""
        assert self.machine is not None
        if self.machine.state is ours:
            return []
        now = self.machine.s.last_ts
        t = Transition(
            previous=ours,
            state=self.machine.state,
            reason=f"the stored state supersedes this session's: {theirs.halted_reason}".rstrip(
                ": "
            ),
            equity=self.book.equity,
            high_water_mark=theirs.high_water_mark,
            day_start_equity=theirs.day_start_equity,
            drawdown=self.machine.drawdown(self.book.equity),
            day_loss=self.machine.day_loss(self.book.equity),
            session_date=theirs.session_date,
        )
        self.count(f"to_{t.state.value}", 1)
        return [*self.notify(t, now), *self.act_on(t.state, now)]

    # -- CLOSED TRADES ------------------------------------------------------------------

    def trades_closed(self, closed: list[tuple[int, float, str, str]]) -> list[Message]:
        """Closed trades count towards losing streaks in the order they closed: a step's
        come in shard order, a committed chunk's (many bar times) are put in time order,
        shard order kept within a bar time, as its bars one at a time would bring them."""
        out: list[Message] = []
        for ts, pnl, trade_id, msg_id in sorted(closed, key=itemgetter(0)):
            out.extend(self._trade_closed(ts, pnl, trade_id, msg_id))
        return out

    def _trade_closed(self, ts: int, pnl: float, trade_id: str, msg_id: str) -> list[Message]:
        if self.machine is None:
            return []
        if pnl < 0:
            self.recent_losses.append(trade_id)
        else:
            self.recent_losses.clear()
        if not self.machine.on_trade_closed(pnl):
            return []
        losses, self.recent_losses = self.recent_losses, []
        self.count("rule_evaluations_requested", 1)
        return [
            RuleEvaluationRequested(
                msg_id=self.ids.next(),
                ts_event=ts,
                ts_init=ts,
                correlation_id=msg_id,
                reason=f"{len(losses)} consecutive losing trades",
                consecutive_losses=len(losses),
                trade_ids=losses,
            )
        ]

    # -- DECISIONS ----------------------------------------------------------------------

    def decide_all(self, intents: list[OrderIntent]) -> list[Message]:
        """Exits first (they free room), then by symbol: the decision order, and so the
        trades, do not depend on how symbols are dealt to shards."""
        intents = sorted(intents, key=lambda m: (m.purpose != "CLOSE", m.symbol, m.intent_id))
        # The tamper check hashes the whole constitution: once per batch of decisions,
        # before any of them (nothing but this loop runs between them).
        tampered = bool(intents) and self.constitution.fingerprint != self.fingerprint
        out: list[Message] = []
        for intent in intents:
            out.extend(self.decide(intent, tampered))
        return out

    def decide(self, intent: OrderIntent, tampered: bool) -> list[Message]:
        limit_price: float | None = None
        if intent.purpose == "OPEN":
            limit_price = self.policy.entry_limit(intent.ref_price)
            if intent.order_type == "LIMIT" and intent.limit_price is not None:
                limit_price = min(limit_price, intent.limit_price)
        elif intent.order_type == "LIMIT":
            limit_price = intent.limit_price
        refusal = self.refusal(intent, tampered)
        if refusal is not None:
            code, detail, quantity, approved = *refusal, 0, False
        else:
            d = evaluate_intent(
                intent, self.book, self.constitution, self.policy, price=limit_price
            )
            code, detail, quantity, approved = d.reason_code, d.detail, d.quantity, d.approved
        self.reasons[code] = self.reasons.get(code, 0) + 1
        now = intent.ts_event
        verdict = RiskVerdict(
            msg_id=self.ids.next(),
            ts_event=now,
            ts_init=now,
            correlation_id=intent.msg_id,
            intent_id=intent.intent_id,
            symbol=intent.symbol,
            approved=approved,
            reason_code=code,
            detail=detail,
            quantity=quantity,
            order_id=intent.intent_id if approved else "",
        )
        if not approved:
            return [verdict]
        submit = self.submit(
            order_id=intent.intent_id,
            intent_id=intent.intent_id,
            symbol=intent.symbol,
            side=intent.side,
            quantity=quantity,
            order_type="LIMIT" if limit_price is not None else "MARKET",
            limit_price=limit_price,
            purpose=intent.purpose,
            ts=now,
            correlation_id=intent.msg_id,
            shard=intent.shard,
        )
        self.book.add_pending(
            intent.intent_id, intent.symbol, intent.side, quantity, limit_price or intent.ref_price
        )
        return [verdict, submit]

    def refusal(self, intent: OrderIntent, tampered: bool) -> tuple[str, str] | None:
        if tampered:
            return "CONSTITUTION_TAMPERED", "the constitution no longer matches its fingerprint"
        if self.machine is None:
            return "NOT_STARTED", "no account state yet"
        if intent.purpose == "CLOSE":
            return None
        if not self.reconciled:
            return "RECONCILING", "no book snapshot from the broker since the guardian started"
        return self.machine.entry_refusal()

    def submit(
        self,
        *,
        order_id: str,
        intent_id: str,
        symbol: str,
        side: str,
        quantity: int,
        order_type: str,
        limit_price: float | None,
        purpose: str,
        ts: int,
        correlation_id: str,
        shard: int | None = None,
    ) -> SubmitOrder:
        """An order with the approval (HMAC) the gateway checks before any broker sees it."""
        approval = sign_approval(
            self.secret,
            order_id=order_id,
            symbol=symbol,
            side=side,
            quantity=quantity,
            limit_price=limit_price,
            expires_ns=ts + self.ttl_ns,
        )
        return SubmitOrder(
            msg_id=self.ids.next(),
            ts_event=ts,
            ts_init=ts,
            correlation_id=correlation_id,
            order_id=order_id,
            intent_id=intent_id,
            shard=self.shard_of.get(symbol, 0) if shard is None else shard,
            symbol=symbol,
            side=side,  # type: ignore[arg-type]
            quantity=quantity,
            order_type=order_type,  # type: ignore[arg-type]
            approval=approval,
            limit_price=limit_price,
            purpose=purpose,  # type: ignore[arg-type]
        )

    # -- SPECULATIVE CHUNKS (backtests with the simulated broker; ``core.risk_chunks``) --

    def approve_chunk(self, chunks: list[IntentChunk]) -> ApprovedChunk:
        return approve_chunk(self, chunks)

    def validate_chunk(
        self, ex: ChunkExecution, horizon: ChunkHorizon | None = None
    ) -> ChunkVerdict:
        return validate_chunk(self, ex, horizon)

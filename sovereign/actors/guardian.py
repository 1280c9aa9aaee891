"""GuardianActor: the single gate between what the strategy wants and what reaches a broker.

Per step it reads the broker's book (positions and working orders) and the account,
updates the trading state (ACTIVE / NO_NEW_POSITIONS / HALTED, ``core.guardian``), and
then checks every intent against the constitution and sizes it (``core.risk``). Approved
orders carry an HMAC approval that the gateway verifies. It denies rather than raises:
every intent gets a RiskVerdict with a reason code.

Its trading state (state, high-water mark, day-start equity, session date, streak) is
persisted in the state store after every change and reloaded by the constructor, so a
guardian that Ray restarts comes back in the same state. Until the first book snapshot
after a (re)start it approves no entries: it does not yet know what is held and pending.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from operator import itemgetter

import msgspec
import numpy as np

from sovereign.actors.base import Actor, accepting
from sovereign.core.constitution import Constitution
from sovereign.core.guardian import (
    GuardianState,
    TradingState,
    TradingStateMachine,
    Transition,
    halted_from,
)
from sovereign.core.risk import (
    RiskBook,
    SizingPolicy,
    evaluate_intent,
    first_unsafe_order,
    sign_approval,
    sign_chunk,
    sign_verdict,
)
from sovereign.core.selfmod import Change, RuleBook, check_proposal
from sovereign.memory.account import (
    GUARDIAN_KIND,
    MAC_FIELD,
    StateIntegrityError,
    check_guardian_state,
    guarded,
    guardian_state_key,
    read_guardian_state,
    seal,
    unseal,
)
from sovereign.memory.audit import AuditLog, governance_path
from sovereign.memory.governance import GovernanceStore
from sovereign.memory.state_store import CorruptStateError, open_state_store
from sovereign.messages import (
    AccountSnapshot,
    ApprovedChunk,
    BookSnapshot,
    CancelOrder,
    ChunkExecution,
    ChunkVerdict,
    IntentChunk,
    Message,
    ModificationDecision,
    ModificationProposal,
    NDArray,
    Notification,
    OrderCanceled,
    OrderFilled,
    OrderIntent,
    OrderRejected,
    PositionSnapshot,
    RiskVerdict,
    RuleEvaluationRequested,
    SessionEnded,
    SessionStarted,
    SubmitOrder,
    TradeClosed,
    TradesClosed,
    TradingStateChanged,
)


def _closed_rows(msg: TradeClosed | TradesClosed) -> list[tuple[int, float, str, str]]:
    """(exit time, P&L, trade id, message id) of each trade a message closes."""
    if isinstance(msg, TradeClosed):
        return [(msg.ts_event, msg.pnl, msg.trade_id, msg.msg_id)]
    ts, pnl = msg.exit_ts.to_numpy().tolist(), msg.pnl.to_numpy().tolist()
    return list(zip(ts, pnl, msg.trade_id, msg.msg_ids, strict=True))


GuardianInbox = (
    OrderIntent
    | BookSnapshot
    | AccountSnapshot
    | PositionSnapshot
    | OrderFilled
    | OrderCanceled
    | OrderRejected
    | TradeClosed
    | TradesClosed
    | CancelOrder
    | ModificationProposal
    | SessionStarted
    | SessionEnded
    | IntentChunk
    | ChunkExecution
)


class GuardianActor(Actor[GuardianInbox]):
    role = "guardian"
    accepts = accepting(GuardianInbox)

    def __init__(
        self,
        index: int,
        constitution: Constitution,
        policy: SizingPolicy,
        secret: bytes,
        approval_ttl_s: int,
        *,
        state_dir: str,
        state_scope: str,
        shard_of: dict[str, int] | None = None,
        flatten_on_halt: bool = True,
        review_after_losses: int = 3,
        redis_url: str = "",
        audit_key: bytes | None = None,
    ) -> None:
        super().__init__(index)
        self.constitution = constitution
        self.policy = policy
        self._secret = secret
        self.ttl_ns = approval_ttl_s * 1_000_000_000
        self.flatten_on_halt = flatten_on_halt
        self.shard_of = shard_of or {}
        self.book = RiskBook(equity=0.0, cash=0.0)
        self.working: list = []
        self.reasons: dict[str, int] = {}
        self.reconciled = False
        self.recent_losses: list[str] = []
        # The chunk approved on condition, until its execution report is validated.
        self._chunk: _Pending | None = None
        self.scope = state_scope
        self.state_key = guardian_state_key(state_scope)
        self.store = open_state_store(state_dir, redis_url)
        self.audit = AuditLog(governance_path(state_dir), key=audit_key)
        self._seal_key = self.audit.ledger.key(self.audit.connection)
        self.governance = GovernanceStore(state_dir, audit_key=self._seal_key)
        self._review_after = review_after_losses
        self._persisted: dict[str, object] | None = None
        self._persisted_at = 0.0
        self._persisted_limits: tuple[object, ...] | None = None
        # The fingerprint every decision is checked against: written to the audit log now.
        self.fingerprint = constitution.fingerprint
        problem = ""
        doc: dict[str, object] | None = None
        try:
            doc = self.store.get(self.state_key)
            state = check_guardian_state(doc, state_scope, self.audit.connection, self._seal_key)
        except (StateIntegrityError, CorruptStateError) as exc:
            # Fail closed: a safety state that cannot be trusted is a halt, which only the
            # operator's resume lifts (a session's start refuses it before it gets here;
            # this is a restart mid-session, or a store damaged under a running session).
            # What can be read of it is kept (its resumes above all: a stale document that
            # records as many resumes cannot pass for a later one, and be adopted).
            problem = str(exc)
            state = halted_from(read_guardian_state(doc, self._seal_key)[0], problem)
        self.machine = (
            TradingStateMachine(constitution, state, review_after_losses=review_after_losses)
            if state is not None
            else None
        )
        if state is not None and not problem:
            self._persisted = state.to_dict()
            self._persisted_limits = state.limit_figures()
        self.audit.append(
            ts_ns=0,
            actor=self.name,
            action="constitution",
            payload={
                "fingerprint": self.fingerprint,
                "limits": _limits(constitution),
                "state_scope": state_scope,
                "restored_state": None if state is None else state.state,
            },
        )
        if problem:
            self.count("state_integrity_halts")
            self.log.critical("trading HALTED: %s", problem)
            self._record_state(
                "trading_state",
                0,
                {
                    "from": "UNKNOWN",
                    "to": TradingState.HALTED.value,
                    "reason": f"state integrity: {problem}",
                },
            )
            self._persist(force=True)
        elif state is not None:
            self.log.warning("restored trading state %s for %s", state.state, state_scope)

    # -- INBOX --------------------------------------------------------------------------

    def receive(self, messages: list[GuardianInbox]) -> list[Message]:
        out: list[Message] = []
        intents: list[OrderIntent] = []
        chunk_intents: list[IntentChunk] = []
        # (exit time, P&L, trade id, message id) of each closed trade.
        closed: list[tuple[int, float, str, str]] = []
        for msg in messages:
            match msg:
                case OrderIntent():
                    intents.append(msg)
                case IntentChunk():
                    chunk_intents.append(msg)
                case ChunkExecution():
                    out.append(self._validate_chunk(msg))
                case (
                    BookSnapshot()
                    | AccountSnapshot()
                    | PositionSnapshot()
                    | OrderFilled()
                    | OrderCanceled()
                    | OrderRejected()
                ):
                    out.extend(self._on_broker_event(msg))
                case TradeClosed() | TradesClosed():
                    closed.extend(_closed_rows(msg))
                case CancelOrder():
                    out.append(msg)  # cancels only reduce risk; pass them to the gateway
                case ModificationProposal():
                    out.append(self._check_modification(msg))
                case SessionStarted():
                    self._on_session_started(msg)
                case SessionEnded():
                    out.append(self._on_session_ended(msg))
                case _:
                    pass
        # Closed trades count towards losing streaks in the order they closed: a step's
        # come in shard order, a committed chunk's (many bar times) are put in time order,
        # shard order kept within a bar time, as its bars one at a time would bring them.
        closed.sort(key=itemgetter(0))
        for ts, pnl, trade_id, msg_id in closed:
            out.extend(self._on_trade_closed(ts, pnl, trade_id, msg_id))
        # Exits first (they free room), then by symbol: the decision order, and so the
        # trades, do not depend on how symbols are dealt to shards.
        intents.sort(key=lambda m: (m.purpose != "CLOSE", m.symbol, m.intent_id))
        # The tamper check hashes the whole constitution: once per batch of decisions, before
        # any of them (nothing but this loop runs between them).
        tampered = bool(intents) and self.constitution.fingerprint != self.fingerprint
        for intent in intents:
            out.extend(self._decide(intent, tampered))
        if chunk_intents:
            out.append(self._approve_chunk(chunk_intents))
        out.extend(self._persist())
        return out

    def _on_broker_event(self, msg: Message) -> list[Message]:
        match msg:
            case BookSnapshot():
                self._on_book(msg)
            case AccountSnapshot():
                return self._on_account(msg)
            case PositionSnapshot():
                self.book.held[msg.symbol] = msg.quantity
            case OrderFilled():
                self.book.on_fill(msg.order_id, msg.quantity)
            case OrderCanceled() | OrderRejected():
                self.book.on_done(msg.order_id)
        return []

    def _on_session_ended(self, msg: SessionEnded) -> Message:
        self._persist(force=True)  # a refused write adopts the stored state; nothing to send
        self.counters.update({f"verdict_{k}": v for k, v in self.reasons.items()})
        if self.machine is not None:
            self.counters["worst_drawdown_bp"] = round(self.machine.s.worst_drawdown * 10_000)
        return self.stats(msg.ts_event)

    # -- STATE --------------------------------------------------------------------------

    def _on_session_started(self, msg: SessionStarted) -> None:
        # A fresh account is baselined on the broker's first AccountSnapshot, not on the
        # configured capital: a real account holding less than that would otherwise start
        # in a phantom drawdown (and one holding more would hide a real one). Until then
        # nothing is approved (NOT_STARTED).
        if self.machine is not None:
            self.book.equity = self.book.cash = self.machine.s.last_equity

    def _on_book(self, msg: BookSnapshot) -> None:
        # The broker's book is the truth: rebuild holdings and pending orders from it.
        self.book.held = {p.symbol: p.quantity for p in msg.positions}
        self.book.pending = {}
        for o in msg.working:
            self.book.add_pending(o.order_id, o.symbol, o.side, o.remaining, o.price)
        self.working = list(msg.working)
        self.reconciled = True

    def _on_account(self, msg: AccountSnapshot) -> list[Message]:
        self.book.equity = msg.equity
        self.book.cash = msg.cash
        self.book.gross_exposure = msg.gross_exposure
        if self.machine is None:
            self.machine = TradingStateMachine(
                self.constitution,
                GuardianState.fresh(msg.equity),
                review_after_losses=self._review_after,
            )
            # From here on the account has a history: its state may never go missing.
            self._record_state(
                "trading_state_created",
                msg.ts_event,
                {"to": TradingState.ACTIVE.value, "equity": msg.equity},
            )
        if self.machine.state is TradingState.HALTED:
            self._adopt_external_resume()
        s = self.machine.s
        s.last_cash, s.last_gross_exposure = msg.cash, msg.gross_exposure
        s.last_open_positions, s.last_ts = msg.open_positions, msg.ts_event
        out: list[Message] = []
        for t in self.machine.observe(msg.equity, msg.session_date, msg.ts_event):
            out.extend(self._announce(t, msg.ts_event))
            out.extend(self._act_on(t.state, msg.ts_event))
        if self.machine.state is TradingState.HALTED and self.flatten_on_halt:
            out.extend(self._flatten(msg.ts_event))
        return out

    def _adopt_external_resume(self) -> None:
        """``sovereign resume`` writes the store; a running guardian picks it up here."""
        assert self.machine is not None
        theirs = self._stored(audited=True)
        if (
            theirs is not None
            and theirs.state != TradingState.HALTED.value
            and len(theirs.resumed) > len(self.machine.s.resumed)
        ):
            self._adopt(theirs)
            self.log.warning("trading resumed by an operator: %s", theirs.resumed[-1])

    def _stored(self, *, audited: bool) -> GuardianState | None:
        """The stored state, if its seal holds and (``audited``) it agrees with the audit
        log: the last change of the trading state the audit log records is its own. Only
        such a state is ever adopted."""
        try:
            doc = self.store.get(self.state_key)
        except CorruptStateError:
            return None
        if doc is None:
            return None
        try:
            if audited:
                return check_guardian_state(doc, self.scope, self.audit.connection, self._seal_key)
            return GuardianState.from_dict(
                unseal(self._seal_key, GUARDIAN_KIND, doc, "the stored trading state")
            )
        except (StateIntegrityError, TypeError, ValueError):
            return None

    def _adopt(self, theirs: GuardianState) -> None:
        assert self.machine is not None
        self.machine.s = theirs
        self._persisted = theirs.to_dict()
        self._persisted_limits = theirs.limit_figures()

    def _record_state(self, action: str, ts: int, payload: dict[str, object]) -> None:
        """Audit a change of the trading state; the stored state names the entry."""
        entry = self.audit.append(
            ts_ns=ts, actor=self.name, action=action, payload={"scope": self.scope, **payload}
        )
        if self.machine is not None:
            self.machine.s.audit_seq, self.machine.s.audit_hash = entry.seq, entry.hash

    def _announce(self, t: Transition, ts: int) -> list[Message]:
        self.count(f"to_{t.state.value}")
        self._record_state(
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
        return self._notify(t, ts)

    def _notify(self, t: Transition, ts: int) -> list[Message]:
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

    def _act_on(self, state: TradingState, ts: int) -> list[Message]:
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

    def _flatten(self, ts: int) -> list[Message]:
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
                self._submit(
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
            self.count("flatten_orders")
        return out

    def _on_trade_closed(self, ts: int, pnl: float, trade_id: str, msg_id: str) -> list[Message]:
        if self.machine is None:
            return []
        if pnl < 0:
            self.recent_losses.append(trade_id)
        else:
            self.recent_losses.clear()
        if not self.machine.on_trade_closed(pnl):
            return []
        losses, self.recent_losses = self.recent_losses, []
        self.count("rule_evaluations_requested")
        self.log.info("%d consecutive losses: asking for a rule evaluation", len(losses))
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

    def _persist(self, *, force: bool = False) -> list[Message]:
        """Write the trading state when it changed.

        Everything the limits depend on (state, high-water mark, day start, losing streak,
        halt, resumes) is written at once. The account as last seen (``last_*``, shown to
        operators between sessions) changes every bar and is written at most once a second
        — and always at the session's end — so a backtest does not pay a database write
        per bar for it; a restarted guardian re-reads the account from the broker anyway
        before it approves anything. The limit figures are written at once in every mode,
        backtests included: a guardian restarted by Ray mid-run restores them, and a
        high-water mark a second stale would understate the drawdown.
        """
        if self.machine is None:
            return []
        # Every bar comes here: compare the limit figures as one tuple, and build the
        # document only when something may have to be written.
        limits = self.machine.s.limit_figures()
        changed = limits != self._persisted_limits
        now = time.monotonic()
        if not (changed or force or now - self._persisted_at >= 1.0):
            return []
        doc = self.machine.s.to_dict()
        if doc != self._persisted:
            stored = self.store.update(self.state_key, guarded(self._seal_key, self.machine.s))
            if stored is not None and stored.get(MAC_FIELD) != seal(
                self._seal_key, GUARDIAN_KIND, doc
            ).get(MAC_FIELD):
                return self._refused_write()
            self._persisted = doc
            self._persisted_at = now
        self._persisted_limits = limits
        return []

    def _refused_write(self) -> list[Message]:
        """The store refused our state: someone with a later word wrote it (an operator's
        resume, or the halt of another writer). Theirs stands; ours is dropped, and what
        the adopted state forbids is canceled at once."""
        assert self.machine is not None
        self.count("state_writes_refused")
        theirs = self._stored(audited=True)
        if theirs is None:
            # Not a state the audit log stands behind: ours stays, in memory, and the
            # store's is refused at the next start.
            return []
        ours = self.machine.state
        self.log.critical(
            "the stored trading state (%s, audit entry %d) supersedes this guardian's (%s)",
            theirs.state,
            theirs.audit_seq,
            ours.value,
        )
        self._adopt(theirs)
        now = self.machine.s.last_ts
        if self.machine.state is ours:
            return []
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
        self.count(f"to_{t.state.value}")
        return [*self._notify(t, now), *self._act_on(t.state, now)]

    # -- SELF-MODIFICATION --------------------------------------------------------------

    def _check_modification(self, p: ModificationProposal) -> ModificationDecision:
        """The constitutional check of a proposed change, counted against the governance
        store: the day's approved changes and the active rules are what the store holds
        (approvals not yet deployed included), so a restart or a second session cannot
        approve more than the constitution allows."""
        change = Change(
            kind=p.kind, rule=p.rule, rule_id=p.rule_id, parameter=p.parameter, value=p.value
        )
        day = self.machine.s.session_date if self.machine is not None else p.session_date
        day = day or p.session_date
        tampered = self.constitution.fingerprint != self.fingerprint

        def check(book: RuleBook, today: int) -> list[str]:
            violations = check_proposal(change, self.constitution, book, today)
            if tampered:
                violations.append("CONSTITUTION_TAMPERED: the constitution no longer matches")
            return violations

        decision = self.governance.decide(
            scope=self.scope,
            proposal_id=p.proposal_id,
            session_date=day,
            change=change,
            check=check,
            ts_ns=p.ts_event,
            actor=self.name,
            audit={
                "kind": p.kind,
                "rule": p.rule.render() if p.rule is not None else None,
                "parameter": p.parameter or None,
                "fingerprint": self.fingerprint,
            },
        )
        self.count("modifications_approved" if decision.approved else "modifications_rejected")
        return ModificationDecision(
            msg_id=self.ids.next(),
            ts_event=p.ts_event,
            ts_init=p.ts_event,
            correlation_id=p.msg_id,
            proposal_id=p.proposal_id,
            approved=decision.approved,
            violations=decision.violations,
            fingerprint=self.fingerprint,
            changes_today=decision.changes_today,
            active_rules=decision.active_rules,
        )

    # -- SPECULATIVE CHUNKS (backtests with the simulated broker) -----------------------

    def _approve_chunk(self, chunks: list[IntentChunk]) -> ApprovedChunk:
        """Approve a chunk's intents on condition, as one signed batch.

        Everything that does not depend on the account inside the chunk is checked here,
        as ``_decide`` checks it; the rest (sizing against each bar's equity, cash and
        exposure, and the trading state at every bar) waits for the execution report
        (``_validate_chunk``). A chunk that cannot be approved this way is refused whole,
        and the engine replays it bar by bar, where each intent is decided on its own."""
        self._chunk = None
        chunk = chunks[0].chunk
        names = np.concatenate([c.symbols.to_numpy()[c.index.to_numpy()] for c in chunks])
        shard = np.concatenate([np.full(len(c), c.shard, dtype=np.int64) for c in chunks])
        cols = {
            k: np.concatenate([getattr(c, k).to_numpy() for c in chunks])
            for k in ("bar", "side", "quantity", "ref_price", "confidence", "seq")
        }
        order = np.lexsort((names, cols["side"] == 1, cols["bar"]))
        names, shard = names[order], shard[order]
        bar, side, quantity, ref, confidence, seq = (
            cols[k][order] for k in ("bar", "side", "quantity", "ref_price", "confidence", "seq")
        )
        buy = side == 1
        bar_close = chunks[0].bar_close.to_numpy()
        refused = self._chunk_refusal(chunks, bar_close, bar, side, buy, quantity, ref, confidence)
        limit = np.where(buy, self.policy.entry_limits(ref), np.nan)
        expires = (
            bar_close[bar] + self.ttl_ns if not refused else np.zeros(bar.size, dtype=np.int64)
        )
        columns = tuple(
            NDArray.from_numpy(np.ascontiguousarray(x))
            for x in (
                names,
                shard.astype(np.int64),
                bar.astype(np.int64),
                side.astype(np.uint8),
                quantity.astype(np.int64),
                limit.astype(np.float64),
                seq.astype(np.int64),
                expires.astype(np.int64),
            )
        )
        expects = sorted({o for c in chunks for o in c.pending})
        signature = b"" if refused else sign_chunk(self._secret, chunk, columns, expects)
        if refused:
            self.count("chunks_refused")
        else:
            self._chunk = _Pending(
                chunk=chunk,
                signature=signature,
                bar=bar,
                buy=buy,
                quantity=quantity,
                price=np.where(buy, limit, ref),
                confidence=confidence,
            )
        now = int(bar_close[-1]) if bar_close.size else 0
        return ApprovedChunk(
            msg_id=self.ids.next(),
            ts_event=now,
            ts_init=now,
            chunk=chunk,
            symbol=columns[0],
            shard=columns[1],
            bar=columns[2],
            side=columns[3],
            quantity=columns[4],
            limit_price=columns[5],
            seq=columns[6],
            expires_ns=columns[7],
            expects=expects,
            signature=signature,
            refused=refused,
        )

    def _chunk_refusal(
        self,
        chunks: list[IntentChunk],
        bar_close: np.ndarray,
        bar: np.ndarray,
        side: np.ndarray,
        buy: np.ndarray,
        quantity: np.ndarray,
        ref: np.ndarray,
        confidence: np.ndarray,
    ) -> str:
        """Why a chunk cannot be approved on condition ("" when it can)."""
        if any(c.chunk != chunks[0].chunk for c in chunks):
            return "intents of different chunks"
        for c in chunks:
            if c.refused:
                return f"shard {c.shard}: {c.refused}"
            if not np.array_equal(c.bar_close.to_numpy(), bar_close):
                return "the shards' bar times differ"
        if self.constitution.fingerprint != self.fingerprint:
            return "CONSTITUTION_TAMPERED"
        if self.machine is None:
            return "NOT_STARTED: no account state yet"
        if not self.reconciled:
            return "RECONCILING: no book snapshot since the guardian started"
        if self.machine.state is not TradingState.ACTIVE:
            # Denials, flattening and the way back to ACTIVE are decided bar by bar.
            return f"trading is {self.machine.state.value}"
        if bar.size and ((bar < 0).any() or (bar >= bar_close.size).any()):
            return "an intent's bar is outside the chunk"
        if ((side != 1) & (side != 2)).any() or (quantity <= 0).any():
            return "malformed intents"
        with np.errstate(invalid="ignore"):
            if not (np.isfinite(ref) & (ref > 0)).all():
                return "BAD_PRICE"
            # Written so that NaN is refused too (it compares false either way).
            if (buy & ~(confidence >= self.constitution.min_confidence_for_trade)).any():
                return "LOW_CONFIDENCE"
        return ""

    def _validate_chunk(self, ex: ChunkExecution) -> ChunkVerdict:
        """Decide a chunk against its execution report: valid if every order would have
        been approved in full bar by bar and no bar moves the trading state. A valid chunk
        is taken into the guardian's state here, as its bars one at a time would have."""
        pending, self._chunk = self._chunk, None
        ts = ex.ts.to_numpy()
        now = int(ts[-1]) if ts.size else ex.ts_event

        def verdict(valid: bool, reason: str = "", bar: int = -1, n: int = 0) -> ChunkVerdict:
            self.count("chunks_valid" if valid else "chunks_invalid")
            assert pending is not None or not valid
            signature = (
                sign_verdict(self._secret, ex.chunk, pending.signature)
                if valid and pending is not None
                else b""
            )
            return ChunkVerdict(
                msg_id=self.ids.next(),
                ts_event=now,
                ts_init=now,
                chunk=ex.chunk,
                valid=valid,
                reason=reason,
                bar=bar,
                approved=n,
                fills=ex.fills if valid else 0,
                signature=signature,
            )

        if pending is None or pending.chunk != ex.chunk:
            return verdict(False, "no conditional approval for this chunk")
        if ex.diverged:
            return verdict(False, ex.diverged, ex.bar)
        machine = self.machine
        assert machine is not None  # a chunk is only approved with an account state
        equity, cash = ex.equity.to_numpy(), ex.cash.to_numpy()
        gross, held = ex.gross_exposure.to_numpy(), ex.held.to_numpy()
        if held.shape != pending.bar.shape or equity.shape != ts.shape or not ts.size:
            return verdict(False, "the execution report does not match the approval")
        b = pending.bar
        first = first_unsafe_order(
            bar=b,
            buy=pending.buy,
            quantity=pending.quantity,
            price=pending.price,
            confidence=pending.confidence,
            held=held,
            equity=equity[b],
            cash=cash[b],
            gross=gross[b],
            constitution=self.constitution,
            policy=self.policy,
        )
        if first >= 0:
            return verdict(False, "an order might not be approved in full", int(b[first]))
        moved = machine.observe_path(equity, ex.day.to_numpy(), ex.session_dates)
        if moved >= 0:
            return verdict(False, "the trading state would change", moved)
        s = machine.s
        s.last_cash, s.last_gross_exposure = float(cash[-1]), float(gross[-1])
        s.last_open_positions = int(ex.open_positions.to_numpy()[-1])
        s.last_ts = now
        self.book.equity, self.book.cash = float(equity[-1]), float(cash[-1])
        self.book.gross_exposure = float(gross[-1])
        names = [x.decode() for x in ex.position_symbols.to_numpy().tolist()]
        self.book.held = dict(zip(names, ex.positions.to_numpy().tolist(), strict=True))
        self.book.pending = {}
        for o in ex.working:
            self.book.add_pending(o.order_id, o.symbol, o.side, o.remaining, o.price)
        self.working = list(ex.working)
        n = int(b.size)
        self.reasons["APPROVED"] = self.reasons.get("APPROVED", 0) + n
        return verdict(True, n=n)

    # -- DECISIONS ----------------------------------------------------------------------

    def _decide(self, intent: OrderIntent, tampered: bool) -> list[Message]:
        limit_price: float | None = None
        if intent.purpose == "OPEN":
            limit_price = self.policy.entry_limit(intent.ref_price)
            if intent.order_type == "LIMIT" and intent.limit_price is not None:
                limit_price = min(limit_price, intent.limit_price)
        elif intent.order_type == "LIMIT":
            limit_price = intent.limit_price
        refusal = self._refusal(intent, tampered)
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
        order_type = "LIMIT" if limit_price is not None else "MARKET"
        submit = self._submit(
            order_id=intent.intent_id,
            intent_id=intent.intent_id,
            symbol=intent.symbol,
            side=intent.side,
            quantity=quantity,
            order_type=order_type,
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

    def _refusal(self, intent: OrderIntent, tampered: bool) -> tuple[str, str] | None:
        if tampered:
            return "CONSTITUTION_TAMPERED", "the constitution no longer matches its fingerprint"
        if self.machine is None:
            return "NOT_STARTED", "no account state yet"
        if intent.purpose == "CLOSE":
            return None
        if not self.reconciled:
            return "RECONCILING", "no book snapshot from the broker since the guardian started"
        return self.machine.entry_refusal()

    def _submit(
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
        approval = sign_approval(
            self._secret,
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


@dataclass(frozen=True, slots=True)
class _Pending:
    """A chunk approved on condition: its orders in decision order (the price is the
    entry's limit, or the exit's reference price)."""

    chunk: int
    signature: bytes
    bar: np.ndarray
    buy: np.ndarray
    quantity: np.ndarray
    price: np.ndarray
    confidence: np.ndarray


def _limits(constitution: Constitution) -> dict[str, object]:
    data = msgspec.structs.asdict(constitution)
    data["forbidden_modifications"] = sorted(constitution.forbidden_modifications)
    return data

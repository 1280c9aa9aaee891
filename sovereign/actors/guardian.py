"""GuardianActor: the single gate between what the strategy wants and what reaches a broker.

Per step it reads the broker's book (positions and working orders) and the account,
updates the trading state (ACTIVE / NO_NEW_POSITIONS / HALTED, ``core.guardian``), and
then checks every intent against the constitution and sizes it (``core.risk``). Approved
orders carry an HMAC approval that the gateway verifies. It denies rather than raises:
every intent gets a RiskVerdict with a reason code. The decisions are the risk engine's
(``core.risk_engine``); this actor is its shell: it keeps the trading state, audits it and
checks proposed modifications against the governance store.

Its trading state (state, high-water mark, day-start equity, session date, streak) is
persisted in the state store after every change and reloaded by the constructor, so a
guardian that Ray restarts comes back in the same state. Until the first book snapshot
after a (re)start it approves no entries: it does not yet know what is held and pending.
"""

from __future__ import annotations

import time

import msgspec

from sovereign.actors.base import Actor, accepting
from sovereign.core.constitution import Constitution
from sovereign.core.guardian import GuardianState, TradingState, TradingStateMachine, halted_from
from sovereign.core.risk import RiskBook, SizingPolicy
from sovereign.core.risk_engine import RiskEngine, closed_rows
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
from sovereign.memory.state_store import CorruptStateError
from sovereign.memory.stores import Stores
from sovereign.messages import (
    AccountSnapshot,
    BookSnapshot,
    CancelOrder,
    ChunkExecution,
    ChunkHorizon,
    IntentChunk,
    Message,
    ModificationDecision,
    ModificationProposal,
    OrderCanceled,
    OrderFilled,
    OrderIntent,
    OrderRejected,
    PositionSnapshot,
    SessionEnded,
    SessionStarted,
    TradeClosed,
    TradesClosed,
)

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
    | ChunkHorizon
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
        stores: Stores,
        state_scope: str,
        shard_of: dict[str, int] | None = None,
        flatten_on_halt: bool = True,
        review_after_losses: int = 3,
    ) -> None:
        super().__init__(index)
        self.constitution = constitution
        self.scope = state_scope
        self.state_key = guardian_state_key(state_scope)
        # The trading state is read at once: a guardian Ray restarts must come back in it.
        self.state = stores.state()
        self.store = self.state()
        self.audit = stores.audit()
        self._seal_key = self.audit.ledger.key(self.audit.connection)
        self.governance = stores.governance(self._seal_key)
        self._persisted: dict[str, object] | None = None
        self._persisted_at = 0.0
        self._persisted_limits: tuple[object, ...] | None = None
        # The fingerprint every decision is checked against: written to the audit log now.
        self.fingerprint = constitution.fingerprint
        self.engine = RiskEngine(
            constitution,
            policy,
            secret,
            approval_ttl_s,
            ids=self.ids,
            count=self.count,
            record=self._record_state,
            fingerprint=self.fingerprint,
            shard_of=shard_of,
            flatten_on_halt=flatten_on_halt,
            review_after_losses=review_after_losses,
        )
        state, problem = self._restored(state_scope)
        self.engine.adopt_state(state)
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
            self.engine.record(
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

    def _restored(self, scope: str) -> tuple[GuardianState | None, str]:
        """The stored trading state, and what is wrong with it ("" when nothing is)."""
        doc: dict[str, object] | None = None
        try:
            doc = self.store.get(self.state_key)
            return check_guardian_state(doc, scope, self.audit.connection, self._seal_key), ""
        except (StateIntegrityError, CorruptStateError) as exc:
            # Fail closed: a safety state that cannot be trusted is a halt, which only the
            # operator's resume lifts (a session's start refuses it before it gets here;
            # this is a restart mid-session, or a store damaged under a running session).
            # What can be read of it is kept (its resumes above all: a stale document that
            # records as many resumes cannot pass for a later one, and be adopted).
            problem = str(exc)
            return halted_from(read_guardian_state(doc, self._seal_key)[0], problem), problem

    def release(self) -> None:
        try:
            self.governance.close()
        finally:
            self.audit.close()

    # What the engine holds, as the guardian's (operators' tools and tests read them).
    @property
    def machine(self) -> TradingStateMachine | None:
        return self.engine.machine

    @property
    def book(self) -> RiskBook:
        return self.engine.book

    @property
    def reasons(self) -> dict[str, int]:
        return self.engine.reasons

    # -- INBOX --------------------------------------------------------------------------

    def receive(self, messages: list[GuardianInbox]) -> list[Message]:
        engine = self.engine
        out: list[Message] = []
        intents: list[OrderIntent] = []
        chunk_intents: list[IntentChunk] = []
        # (exit time, P&L, trade id, message id) of each closed trade.
        closed: list[tuple[int, float, str, str]] = []
        # Where self-modification would review the rules in a chunk it validates.
        horizon = next((m for m in messages if isinstance(m, ChunkHorizon)), None)
        for msg in messages:
            match msg:
                case OrderIntent():
                    intents.append(msg)
                case IntentChunk():
                    chunk_intents.append(msg)
                case ChunkExecution():
                    out.append(engine.validate_chunk(msg, horizon))
                case ChunkHorizon():
                    pass  # read with the execution report it comes with, above
                case AccountSnapshot():
                    out.extend(self._on_account(msg))
                case (
                    BookSnapshot()
                    | PositionSnapshot()
                    | OrderFilled()
                    | OrderCanceled()
                    | OrderRejected()
                ):
                    engine.on_broker_event(msg)
                case TradeClosed() | TradesClosed():
                    closed.extend(closed_rows(msg))
                case CancelOrder():
                    out.append(msg)  # cancels only reduce risk; pass them to the gateway
                case ModificationProposal():
                    out.append(self._check_modification(msg))
                case SessionStarted():
                    engine.session_started()
                case SessionEnded():
                    out.append(self._on_session_ended(msg))
                case _:
                    pass
        requests = engine.trades_closed(closed)
        if requests:
            self.log.info("consecutive losses: asking for a rule evaluation")
        out.extend(requests)
        out.extend(engine.decide_all(intents))
        if chunk_intents:
            out.append(engine.approve_chunk(chunk_intents))
        out.extend(self._persist())
        return out

    def _on_session_ended(self, msg: SessionEnded) -> Message:
        self._persist(force=True)  # a refused write adopts the stored state; nothing to send
        self.counters.update({f"verdict_{k}": v for k, v in self.reasons.items()})
        if self.machine is not None:
            self.counters["worst_drawdown_bp"] = round(self.machine.s.worst_drawdown * 10_000)
        return self.stats(msg.ts_event)

    # -- STATE --------------------------------------------------------------------------

    def _on_account(self, msg: AccountSnapshot) -> list[Message]:
        self.engine.account_seen(msg)
        if self.engine.machine is not None and self.engine.machine.state is TradingState.HALTED:
            self._adopt_external_resume()
        return self.engine.observe_account(msg)

    def _adopt_external_resume(self) -> None:
        """``sovereign resume`` writes the store; a running guardian picks it up here."""
        machine = self.engine.machine
        assert machine is not None
        theirs = self._stored(audited=True)
        if (
            theirs is not None
            and theirs.state != TradingState.HALTED.value
            and len(theirs.resumed) > len(machine.s.resumed)
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
        machine = self.engine.machine
        assert machine is not None
        machine.s = theirs
        self._persisted = theirs.to_dict()
        self._persisted_limits = theirs.limit_figures()

    def _record_state(self, action: str, ts: int, payload: dict[str, object]) -> tuple[int, str]:
        """Audit a change of the trading state (the engine's ``record``)."""
        entry = self.audit.append(
            ts_ns=ts, actor=self.name, action=action, payload={"scope": self.scope, **payload}
        )
        return entry.seq, entry.hash

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
        machine = self.engine.machine
        if machine is None:
            return []
        # Every bar comes here: compare the limit figures as one tuple, and build the
        # document only when something may have to be written.
        limits = machine.s.limit_figures()
        changed = limits != self._persisted_limits
        now = time.monotonic()
        if not (changed or force or now - self._persisted_at >= 1.0):
            return []
        doc = machine.s.to_dict()
        if doc != self._persisted:
            stored = self.store.update(self.state_key, guarded(self._seal_key, machine.s))
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
        machine = self.engine.machine
        assert machine is not None
        self.count("state_writes_refused")
        theirs = self._stored(audited=True)
        if theirs is None:
            # Not a state the audit log stands behind: ours stays, in memory, and the
            # store's is refused at the next start.
            return []
        ours = machine.state
        self.log.critical(
            "the stored trading state (%s, audit entry %d) supersedes this guardian's (%s)",
            theirs.state,
            theirs.audit_seq,
            ours.value,
        )
        self._adopt(theirs)
        return self.engine.superseded(ours, theirs)

    # -- SELF-MODIFICATION --------------------------------------------------------------

    def _check_modification(self, p: ModificationProposal) -> ModificationDecision:
        """The constitutional check of a proposed change, counted against the governance
        store: the day's approved changes and the active rules are what the store holds
        (approvals not yet deployed included), so a restart or a second session cannot
        approve more than the constitution allows."""
        change = Change(
            kind=p.kind, rule=p.rule, rule_id=p.rule_id, parameter=p.parameter, value=p.value
        )
        day = (
            self.engine.machine.s.session_date
            if self.engine.machine is not None
            else p.session_date
        )
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


def _limits(constitution: Constitution) -> dict[str, object]:
    data = msgspec.structs.asdict(constitution)
    data["forbidden_modifications"] = sorted(constitution.forbidden_modifications)
    return data

"""SelfModActor: finds where the system trades badly and changes its rules — within the
constitution, with no human approval.

Triggers: the end of each trading day, when enough new trades have closed or the guardian
asked for a review after a losing streak during the day (rules change between sessions
only, so that a speculative chunk is cut at most once a session). Each proposal goes to
the guardian; an approved one is applied, stored as a new rule-set version with its
evidence, audited, and sent to the shards as a ``RuleSetSnapshot`` (AutoDeployed); a
refused one is stored and reported with every limit it broke (AutoRejected). A rollback
made with ``sovereign rollback`` (or an operator's request) reaches the running shards
through the same snapshot.
"""

from __future__ import annotations

import json

import msgspec
import numpy as np

from sovereign.actors.base import Actor, accepting
from sovereign.core.selfmod import (
    Change,
    EvidenceTrade,
    Proposal,
    RuleBook,
    refusal_lifts,
)
from sovereign.core.selfmod_engine import SelfModEngine
from sovereign.memory.governance import (
    RollbackError,
    UnapprovedChangeError,
    summarize,
)
from sovereign.memory.stores import Stores
from sovereign.messages import (
    AccountSnapshot,
    ChunkExecution,
    ChunkHorizon,
    ChunkVerdict,
    IntentChunk,
    Message,
    ModificationDecision,
    ModificationProposal,
    NDArray,
    Notification,
    RollbackRequest,
    RuleEvaluationRequested,
    RuleSetSnapshot,
    SessionEnded,
    SessionStarted,
    ShadowTradeClosed,
    TradeClosed,
    TradesClosed,
)

_TRADE_ENCODER = msgspec.msgpack.Encoder()
_TRADE_DECODER = msgspec.msgpack.Decoder(EvidenceTrade)


SelfModInbox = (
    SessionStarted
    | TradeClosed
    | TradesClosed
    | AccountSnapshot
    | RuleEvaluationRequested
    | ModificationDecision
    | RollbackRequest
    | SessionEnded
    | ShadowTradeClosed
    | IntentChunk
    | ChunkExecution
    | ChunkVerdict
)


_NOTIFIED_EVIDENCE = frozenset(
    (
        "n",
        "win_rate",
        "expectancy",
        "test",
        "statistic",
        "q_value",
        "actual_pnl",
        "counterfactual_pnl",
        "confirm_p",
        "prevented_n",
        "prevented_mean_return",
        "kept_mean_return",
        "p_value",
        "prevented_pnl",
    )
)
"""The evidence a deployment's notification names (the rest is in the audit log)."""


class SelfModActor(Actor[SelfModInbox]):
    role = "selfmod"
    accepts = accepting(SelfModInbox)

    def __init__(
        self,
        index: int,
        *,
        stores: Stores,
        scope: str,
        enabled: bool = True,
        min_trades: int = 20,
        alpha: float = 0.05,
        look_growth: float = 1.5,
        confirm_trades: int = 20,
        min_new_trades: int = 10,
        max_proposals: int = 1,
    ) -> None:
        super().__init__(index)
        self.scope = scope
        self.enabled = enabled
        self.engine = SelfModEngine(
            min_trades=min_trades,
            alpha=alpha,
            look_growth=look_growth,
            confirm_trades=confirm_trades,
            min_new_trades=min_new_trades,
            max_proposals=max_proposals,
        )
        self.store = stores.governance() if enabled else None
        # Only a named account's evidence outlives its session (a backtest's scope is its
        # own run, which never comes again).
        self._keep_evidence = scope.startswith("account/")
        # Whether the stored evidence is in the engine: never saved over before it is.
        self._loaded = False
        self.session_date = ""
        self.now = 0
        self._data_version = -1
        self.deployed: list[int] = []
        # A losing streak asked for a review of the rules: it runs when the session
        # changes (rules change between sessions only, bar by bar and in chunks alike).
        self.review_due = False

    def release(self) -> None:
        if self.store is not None:
            self.store.close()

    # -- INBOX --------------------------------------------------------------------------

    def receive(self, messages: list[SelfModInbox]) -> list[Message]:
        out: list[Message] = []
        if not self.enabled:
            return self._disabled(messages)
        if not self._loaded and not any(isinstance(m, SessionStarted) for m in messages):
            # Restarted in the middle of a session (its start is not coming again): go on
            # from the account's stored rules and evidence, never from nothing.
            self._load()
        if any(isinstance(m, (IntentChunk, ChunkVerdict)) for m in messages):
            return [*self._on_chunk(messages), *self._external_changes()]
        for msg in messages:
            match msg:
                case SessionStarted():
                    self.now = msg.ts_event
                    self._on_session_started()
                    out.append(self._snapshot(""))
                case TradeClosed() | ShadowTradeClosed():
                    self.engine.on_trade(msg)
                case TradesClosed():
                    for trade in msg.trades():
                        self.engine.on_trade(trade)
                case AccountSnapshot():
                    self.now = msg.ts_event
                    out.extend(self._on_session(msg.session_date))
                case RuleEvaluationRequested():
                    self.count("reviews_requested")
                    self.review_due = True
                case ModificationDecision():
                    out.extend(self._on_decision(msg))
                case RollbackRequest():
                    out.extend(self._rollback(msg))
                case SessionEnded():
                    self._save_evidence()
                    out.append(self.stats(msg.ts_event))
                case IntentChunk() | ChunkExecution() | ChunkVerdict():
                    pass  # a chunk's call is answered whole (``_on_chunk``), above
                case _:
                    pass
        out.extend(self._external_changes())
        return out

    def _on_session_started(self) -> None:
        self._load()

    def _load(self) -> None:
        store = self.store
        assert store is not None
        self._loaded = True
        self.engine.book = store.current(self.scope)
        # A named account goes on with the evidence of its earlier sessions: the budget
        # already spent, the candidates, the rules' records and the trades.
        doc, blobs = store.evidence(self.scope)
        trades: list[EvidenceTrade] = []
        for blob in blobs:
            try:
                trades.append(_TRADE_DECODER.decode(blob))
            except msgspec.DecodeError:
                self.count("evidence_trades_unreadable")
        self.engine.adopt_evidence(doc, trades, damaged=len(trades) != len(blobs))
        if self.engine.counters.get("evidence_unreadable"):
            self.log.error("%s: the stored self-modification evidence is unreadable", self.scope)
        self.count("evidence_trades_loaded", len(trades))
        self._data_version = store.data_version()

    def _save_evidence(self) -> None:
        """Store what the engine learned: a named account keeps it between sessions."""
        if self.store is None or not self._keep_evidence or not self._loaded:
            return
        trades = [_TRADE_ENCODER.encode(t) for t in self.engine.unsaved_trades()]
        self.store.save_evidence(self.scope, self.engine.evidence(), self.now, trades)
        self.engine.saved()

    def _disabled(self, messages: list[Message]) -> list[Message]:
        # A run without self-modification (the counterfactual replay): no rules at all.
        return [self.stats(m.ts_event) for m in messages if isinstance(m, SessionEnded)]

    def _on_session(self, session_date: str) -> list[Message]:
        """A new session: the rules are reviewed if a losing streak asked for it (whatever
        the new trades), or if enough new trades have closed (``SelfModEngine.analyse``)."""
        if not session_date or session_date == self.session_date:
            return []
        ended = bool(self.session_date)
        self.session_date = session_date
        if not ended:
            return []
        if self.review_due:
            self.review_due = False
            return self._propose("losing_streak", force=True)
        return self._propose("end_of_day")

    # -- CHUNKS -------------------------------------------------------------------------

    def _on_chunk(self, messages: list[Message]) -> list[Message]:
        """A speculative chunk (``core.chunks``): before its verdict, where this actor
        would review the rules in it (``ChunkHorizon``); after a valid one, its bars'
        sessions, review requests and closed trades, in the order the bars one at a time
        would bring them (a review only ever at its last bar: the guardian cuts a chunk
        there)."""
        ex = next((m for m in messages if isinstance(m, ChunkExecution)), None)
        verdict = next((m for m in messages if isinstance(m, ChunkVerdict)), None)
        if ex is None:
            return []
        if verdict is None:
            intents = [m for m in messages if isinstance(m, IntentChunk)]
            return [self._horizon(intents, ex)]
        if not verdict.valid:
            return []
        return self._committed(messages, ex)

    def _session_changes(self, ex: ChunkExecution) -> list[tuple[int, str]]:
        """The chunk's bars at which ``_on_session`` would see a new session after an
        earlier one, with its date."""
        days, dates = ex.day.to_numpy(), ex.session_dates
        if not days.size:
            return []
        moved = np.flatnonzero(np.r_[True, days[1:] != days[:-1]]).tolist()
        out: list[tuple[int, str]] = []
        current = self.session_date
        for t in moved:
            date = dates[int(days[t])]
            if not date or date == current:
                continue
            if current:
                out.append((t, date))
            current = date
        return out

    def _horizon(self, intents: list[IntentChunk], ex: ChunkExecution) -> ChunkHorizon:
        changes = [t for t, _ in self._session_changes(ex)]
        due = -1
        closed = [c.closed_bar.to_numpy() for c in intents if c.closed_bar is not None]
        if len(closed) != len(intents):
            due = changes[0] if changes else -1  # no count of the trades: the first change
        elif changes:
            # Trades closed at a bar reach this actor after that bar's session change.
            bars = np.sort(np.concatenate(closed)) if closed else np.zeros(0, np.int64)
            before = np.searchsorted(bars, changes, side="left")
            new = self.engine.new_trades() + before
            due_at = [
                t
                for t, n in zip(changes, new.tolist(), strict=True)
                if self.review_due or n >= self.engine.min_new_trades
            ]
            due = due_at[0] if due_at else -1
        return ChunkHorizon(
            msg_id=self.ids.next(),
            ts_event=ex.ts_event,
            ts_init=ex.ts_event,
            chunk=ex.chunk,
            changes=NDArray.from_numpy(np.array(changes, dtype=np.int64)),
            due=due,
        )

    def _committed(self, messages: list[Message], ex: ChunkExecution) -> list[Message]:
        closes = ex.ts.to_numpy()
        k_bars = int(closes.size)

        def bar_of(ts: int) -> int:
            # The bar whose open a fill came at: the first to close after it starts.
            return min(int(np.searchsorted(closes, ts, side="right")), k_bars - 1)

        events: dict[int, list[Message | object]] = {}
        for t, date in self._session_changes(ex):
            events.setdefault(t, []).append(date)
        for m in messages:
            if isinstance(m, RuleEvaluationRequested):
                events.setdefault(bar_of(m.ts_event), []).append(m)
        for m in messages:
            if isinstance(m, TradesClosed):
                for trade in m.trades():
                    events.setdefault(bar_of(trade.exit_ts), []).append(trade)
        out: list[Message] = []
        for t in sorted(events):
            self.now = int(closes[t])
            # A bar's session first, then the reviews asked for, then its closed trades.
            ordered = sorted(
                events[t],
                key=lambda e: (
                    0 if isinstance(e, str) else 1 if isinstance(e, RuleEvaluationRequested) else 2
                ),
            )
            for e in ordered:
                if isinstance(e, str):
                    analyses = self.engine.analyses
                    out.extend(self._on_session(e))
                    if self.engine.analyses != analyses and t < k_bars - 1:
                        # The guardian cuts a chunk at a review: never seen, counted.
                        self.count("reviews_inside_chunks")
                elif isinstance(e, RuleEvaluationRequested):
                    self.count("reviews_requested")
                    self.review_due = True
                else:
                    self.engine.on_trade(e)
        self.now = int(closes[-1]) if k_bars else self.now
        return out

    # -- PROPOSALS ----------------------------------------------------------------------

    def _propose(self, trigger: str, *, force: bool = False) -> list[Message]:
        analyses = self.engine.analyses
        proposals = self.engine.analyse(
            trigger=trigger, session_date=self.session_date, ts=self.now, force=force
        )
        self.counters["analyses"] = self.engine.analyses
        self.counters.update(self.engine.counters)
        if self.engine.analyses != analyses:
            self._save_evidence()
        return [self._proposal_message(p) for p in proposals]

    def _proposal_message(self, p: Proposal) -> ModificationProposal:
        self.count("proposals")
        c = p.change
        return ModificationProposal(
            msg_id=self.ids.next(),
            ts_event=self.now,
            ts_init=self.now,
            proposal_id=p.proposal_id,
            kind=c.kind,  # type: ignore[arg-type]
            reason=p.reason,
            session_date=p.session_date,
            rule=c.rule,
            rule_id=c.rule_id,
            parameter=c.parameter,
            value=c.value,
            evidence=p.evidence,
            trigger=p.trigger,
        )

    def _on_decision(self, d: ModificationDecision) -> list[Message]:
        p = self.engine.settle(d.proposal_id, d.approved, d.violations)
        if p is None:
            self.count("decisions_for_unknown_proposals")
            return []
        store = self.store
        assert store is not None
        before = self.engine.book
        if not d.approved:
            mod_id = store.record_reject(
                scope=self.scope,
                ts_ns=self.now,
                session_date=p.session_date,
                change=p.change,
                evidence=p.evidence,
                violations=d.violations,
                trigger=p.trigger,
                actor=self.name,
                version=before.version,
            )
            self._data_version = store.data_version()
            self.count("auto_rejected")
            return [
                self._note(
                    "modification_rejected",
                    "warning",
                    f"AutoRejected #{mod_id}: {summarize(p.change)}",
                    "violates: "
                    + "; ".join(d.violations)
                    + f". Proposed again {refusal_lifts(d.violations)}.",
                    {"modification_id": mod_id, "violations": json.dumps(d.violations)},
                )
            ]
        try:
            mod_id, after = store.record_deploy(
                scope=self.scope,
                ts_ns=self.now,
                session_date=p.session_date,
                change=p.change,
                evidence=p.evidence,
                trigger=p.trigger,
                actor=self.name,
                proposal_id=p.proposal_id,
            )
        except UnapprovedChangeError as exc:
            # The store holds the guardian's approvals: a decision message it does not
            # back (forged, or replayed after its approval was used) deploys nothing.
            self.count("deploys_refused_unapproved")
            self.log.error("%s", exc)
            return [self._note("modification_rejected", "critical", str(exc), "", {})]
        self._data_version = store.data_version()
        self.engine.deployed(p)
        self.engine.book = after
        self.deployed.append(mod_id)
        self.count("auto_deployed")
        evidence = ", ".join(
            f"{k}={_short(v)}" for k, v in p.evidence.items() if k in _NOTIFIED_EVIDENCE
        )
        return [
            self._snapshot(str(mod_id)),
            self._note(
                "modification_deployed",
                "info",
                f"AutoDeployed #{mod_id}: {summarize(p.change)}",
                f"{p.reason}. Evidence: {evidence}",
                {"modification_id": mod_id, "version": after.version},
            ),
        ]

    # -- ROLLBACKS ----------------------------------------------------------------------

    def _rollback(self, msg: RollbackRequest) -> list[Message]:
        store = self.store
        assert store is not None
        try:
            mod_id = int(msg.modification_id)
            result = store.rollback(mod_id, reason=msg.reason, by=msg.requested_by, ts_ns=self.now)
        except (ValueError, RollbackError) as exc:
            return [self._note("rollback_refused", "warning", f"rollback refused: {exc}", "", {})]
        self._data_version = store.data_version()
        self.engine.book = result.book
        return [
            self._snapshot(f"rollback:{mod_id}"),
            self._note(
                "rollback",
                "warning",
                f"rolled back #{mod_id} (undoing {result.undone})",
                msg.reason,
                {"modification_id": mod_id},
            ),
        ]

    def _external_changes(self) -> list[Message]:
        """A rollback done from the command line: adopt the store's newest rule set."""
        store = self.store
        if store is None:
            return []
        version = store.data_version()
        if version == self._data_version:
            return []
        self._data_version = version
        latest = store.current(self.scope)
        if latest.version == self.engine.book.version:
            return []
        self.engine.book = latest
        self.count("external_rule_changes")
        return [
            self._snapshot("external"),
            self._note(
                "rules_changed",
                "warning",
                f"rule set v{latest.version} adopted (changed outside the session)",
                ", ".join(r.rule_id for r in latest.rules) or "no rules",
                {"version": latest.version},
            ),
        ]

    # -- OUTPUT -------------------------------------------------------------------------

    def _snapshot(self, modification_id: str) -> RuleSetSnapshot:
        book: RuleBook = self.engine.book
        return RuleSetSnapshot(
            msg_id=self.ids.next(),
            ts_event=self.now,
            ts_init=self.now,
            version=book.version,
            rules=list(book.rules),
            parameters=dict(book.parameters),
            ruleset_hash=book.hash,
            modification_id=modification_id,
        )

    def _note(
        self, kind: str, level: str, title: str, text: str, data: dict[str, object]
    ) -> Notification:
        self.count(f"notified_{kind}")
        return Notification(
            msg_id=self.ids.next(),
            ts_event=self.now,
            ts_init=self.now,
            kind=kind,
            level=level,  # type: ignore[arg-type]
            title=title,
            text=text,
            data={k: v for k, v in data.items() if isinstance(v, str | int | float | bool)},
        )


def _short(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def change_from_proposal(p: ModificationProposal) -> Change:
    return Change(kind=p.kind, rule=p.rule, rule_id=p.rule_id, parameter=p.parameter, value=p.value)

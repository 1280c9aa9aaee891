"""The governance store: versioned rule sets, the modification history, the audit log.

One SQLite file (``<state>/governance.sqlite``) shared by the self-modification actor of a
running session and the ``sovereign`` commands (``rules``, ``history``, ``rollback``,
``audit verify``). Every write is one ``BEGIN IMMEDIATE`` transaction that also appends
its audit entry, so the record and its audit entry commit together or not at all.

Rule sets belong to a *scope*: ``account/<name>`` for a named account (they persist from
session to session) or ``run/<id>`` for a session without one. Modification ids are global
integers, so ``sovereign rollback 12`` needs no scope.

Rollback restores the rule set from before the modification, as a new version. Later
deployments of the same scope are part of what is undone, and are marked rolled back too;
the command says which.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sovereign.core.selfmod import Change, RuleBook
from sovereign.memory.audit import (
    AuditEntry,
    Ledger,
    VerifyResult,
    append_in_transaction,
    connect,
    governance_path,
    verify_audit,
)
from sovereign.memory.governance_schema import SCHEMA, change_doc, change_from_doc

DEPLOYED, REJECTED, ROLLED_BACK = "AutoDeployed", "AutoRejected", "RolledBack"


class RollbackError(ValueError):
    """A rollback that cannot be done; the message says why."""


class UnapprovedChangeError(ValueError):
    """A deployment the guardian never approved (or whose approval was already used)."""


@dataclass(frozen=True, slots=True)
class Decision:
    """The guardian's verdict on a proposal, as recorded."""

    approved: bool
    violations: list[str]
    changes_today: int
    active_rules: int


@dataclass(frozen=True, slots=True)
class ModificationRecord:
    id: int
    scope: str
    ts_ns: int
    session_date: str
    kind: str
    status: str
    summary: str
    change: dict[str, Any]
    evidence: dict[str, Any]
    violations: list[str]
    trigger: str
    version_before: int | None
    version_after: int | None
    rolled_back_ts: int | None
    rolled_back_by: str | None
    rollback_reason: str | None


@dataclass(frozen=True, slots=True)
class RollbackResult:
    modification_id: int
    scope: str
    book: RuleBook
    undone: list[int]


def summarize(change: Change) -> str:
    if change.kind == "add_rule" and change.rule is not None:
        return f"add {change.rule.rule_id}: {change.rule.render()}"
    if change.kind == "remove_rule":
        return f"remove {change.rule_id}"
    if change.kind == "replace_rule" and change.rule is not None:
        return f"replace {change.rule_id} by {change.rule.rule_id}: {change.rule.render()}"
    return f"set {change.parameter} = {change.value:g}"


class GovernanceStore:
    """Reads and writes of rule sets and modifications, each audited."""

    def __init__(self, state_dir: str | Path, *, audit_key: bytes | None = None) -> None:
        self.path = governance_path(state_dir)
        self._conn = connect(self.path)
        self._conn.executescript(SCHEMA)
        self.ledger = Ledger(state_dir, audit_key)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> GovernanceStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def data_version(self) -> int:
        """Changes when another connection commits (a rollback from the command line)."""
        return int(self._conn.execute("PRAGMA data_version").fetchone()[0])

    # -- READS --------------------------------------------------------------------------

    def current(self, scope: str) -> RuleBook:
        row = self._conn.execute(
            "SELECT doc FROM rule_sets WHERE scope = ? ORDER BY version DESC LIMIT 1", (scope,)
        ).fetchone()
        return RuleBook() if row is None else RuleBook.from_doc(json.loads(row[0]))

    def version(self, scope: str, version: int) -> RuleBook:
        if version == 0:
            return RuleBook()
        row = self._conn.execute(
            "SELECT doc FROM rule_sets WHERE scope = ? AND version = ?", (scope, version)
        ).fetchone()
        if row is None:
            raise KeyError(f"{scope} has no rule set version {version}")
        return RuleBook.from_doc(json.loads(row[0]))

    def evidence(self, scope: str) -> tuple[dict[str, Any], list[bytes]]:
        """The self-modification engine's evidence kept for a scope: its document and
        its trades (msgpack-encoded ``EvidenceTrade``s), oldest first. A document that is
        not a JSON object reads as empty (the engine counts it)."""
        row = self._conn.execute("SELECT doc FROM evidence WHERE scope = ?", (scope,)).fetchone()
        doc: Any = {}
        if row is not None:
            try:
                doc = json.loads(row[0])
            except (ValueError, RecursionError):
                doc = {"unreadable": True}
        trades = [
            bytes(t)
            for (t,) in self._conn.execute(
                "SELECT trade FROM evidence_trades WHERE scope = ? ORDER BY seq", (scope,)
            )
        ]
        return (doc if isinstance(doc, dict) else {"unreadable": True}), trades

    def save_evidence(
        self, scope: str, doc: dict[str, Any], ts_ns: int, trades: Sequence[bytes] = ()
    ) -> None:
        """Store the evidence document and append the new trades, in one transaction."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "INSERT INTO evidence (scope, ts_ns, doc) VALUES (?, ?, ?) ON CONFLICT(scope) "
                "DO UPDATE SET ts_ns = excluded.ts_ns, doc = excluded.doc",
                (scope, ts_ns, json.dumps(doc, sort_keys=True)),
            )
            if trades:
                (last,) = conn.execute(
                    "SELECT COALESCE(MAX(seq), 0) FROM evidence_trades WHERE scope = ?", (scope,)
                ).fetchone()
                conn.executemany(
                    "INSERT INTO evidence_trades (scope, seq, trade) VALUES (?, ?, ?)",
                    [(scope, last + 1 + i, t) for i, t in enumerate(trades)],
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def scopes(self) -> list[str]:
        rows = self._conn.execute(
            "SELECT scope, MAX(ts_ns) AS t FROM modifications GROUP BY scope ORDER BY t DESC"
        )
        return [r[0] for r in rows]

    def history(
        self, scope: str | None = None, *, limit: int = 20, offset: int = 0
    ) -> list[ModificationRecord]:
        sql = "SELECT * FROM modifications"
        args: list[Any] = []
        if scope is not None:
            sql += " WHERE scope = ?"
            args.append(scope)
        sql += " ORDER BY id DESC LIMIT ? OFFSET ?"
        args += [limit, offset]
        return [self._record(r) for r in self._conn.execute(sql, args)]

    def get(self, modification_id: int) -> ModificationRecord | None:
        row = self._conn.execute(
            "SELECT * FROM modifications WHERE id = ?", (modification_id,)
        ).fetchone()
        return None if row is None else self._record(row)

    def count(self, scope: str | None = None) -> int:
        if scope is None:
            return int(self._conn.execute("SELECT COUNT(*) FROM modifications").fetchone()[0])
        return int(
            self._conn.execute(
                "SELECT COUNT(*) FROM modifications WHERE scope = ?", (scope,)
            ).fetchone()[0]
        )

    @staticmethod
    def _record(r: tuple[Any, ...]) -> ModificationRecord:
        return ModificationRecord(
            id=r[0],
            scope=r[1],
            ts_ns=r[2],
            session_date=r[3],
            kind=r[4],
            status=r[5],
            summary=r[6],
            change=json.loads(r[7]),
            evidence=json.loads(r[8]),
            violations=json.loads(r[9]),
            trigger=r[10],
            version_before=r[11],
            version_after=r[12],
            rolled_back_ts=r[13],
            rolled_back_by=r[14],
            rollback_reason=r[15],
        )

    def verify(self) -> VerifyResult:
        return verify_audit(self.path.parent)

    # -- WRITES -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _audited(self) -> Iterator[Callable[..., AuditEntry]]:
        """One transaction that writes a record and appends its audit entry (with the
        function it yields), so the two commit together or not at all; the audit log's
        anchor advances once the transaction has committed."""
        conn = self._conn
        key = self.ledger.key(conn)
        appended: list[AuditEntry] = []

        def audit(**entry: Any) -> AuditEntry:
            appended.append(append_in_transaction(conn, key, **entry))
            return appended[-1]

        conn.execute("BEGIN IMMEDIATE")
        try:
            yield audit
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        if appended:
            self.ledger.anchor(conn, appended[-1].seq, appended[-1].hash)

    def decide(
        self,
        *,
        scope: str,
        proposal_id: str,
        session_date: str,
        change: Change,
        check: Callable[[RuleBook, int], list[str]],
        ts_ns: int,
        actor: str,
        audit: dict[str, Any],
    ) -> Decision:
        """The guardian's constitutional check of a proposal, counted and recorded in one
        transaction: the day's changes and the active rules are read from this store (not
        from any process's memory), including what was approved and not yet deployed, so
        no restart, second process or second session gets a fourth change in a day or a
        51st rule. ``check(book, changes_today)`` returns the violations."""
        conn = self._conn
        with self._audited() as record:
            book = self._approved_book(scope, session_date)
            today = self._changes_on(scope, session_date)
            violations = check(book, today)
            approved = not violations
            conn.execute(
                "INSERT INTO decisions (scope, proposal_id, session_date, ts_ns, approved, "
                "change, violations) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    scope,
                    proposal_id,
                    session_date,
                    ts_ns,
                    int(approved),
                    change_doc(change),
                    json.dumps(violations),
                ),
            )
            record(
                ts_ns=ts_ns,
                actor=actor,
                action="modification_decision",
                payload={
                    "scope": scope,
                    "proposal_id": proposal_id,
                    "session_date": session_date,
                    **audit,
                    "approved": approved,
                    "violations": violations,
                },
            )
        if approved:
            book, today = book.apply(change), today + 1
        return Decision(approved, violations, today, len(book.rules))

    def _changes_on(self, scope: str, session_date: str) -> int:
        row = self._conn.execute(
            "SELECT COUNT(*) FROM decisions WHERE scope = ? AND session_date = ? AND approved = 1",
            (scope, session_date),
        ).fetchone()
        return int(row[0])

    def _approved_book(self, scope: str, session_date: str) -> RuleBook:
        """The rule set as deployed, with today's approved additions and settings not yet
        deployed applied (an approval in flight already takes its rule id and its place
        among the rules; one from an earlier day whose deployment never came is void).
        Removals not yet deployed are not: a removal that never comes must not make room
        for a rule over the limit."""
        book = self.current(scope)
        rows = self._conn.execute(
            "SELECT change FROM decisions WHERE scope = ? AND session_date = ? AND approved = 1 "
            "AND modification_id IS NULL ORDER BY id",
            (scope, session_date),
        )
        for (doc,) in rows:
            change = change_from_doc(json.loads(doc))
            if change.kind == "remove_rule":
                continue
            with contextlib.suppress(KeyError, ValueError):
                book = book.apply(change)
        return book

    def record_deploy(
        self,
        *,
        scope: str,
        ts_ns: int,
        session_date: str,
        change: Change,
        evidence: dict[str, Any],
        trigger: str,
        actor: str,
        proposal_id: str,
    ) -> tuple[int, RuleBook]:
        """Deploy a change the guardian approved (``decide``) on the rule set the store
        holds now; its approval is used up. Returns the modification id and the new rule
        set. Refused (``UnapprovedChangeError``): a change without an approval of its own,
        an approval of a day after which the guardian has decided on another day (the
        rule set and the count it was checked against are gone), and a change that no
        longer applies (a rule id already active, or a removal of one that is not). A
        change counts against the day it was approved: a deployment comes a step after
        its decision, which with daily bars is the next day."""
        conn = self._conn
        with self._audited() as record:
            approval_id = self._unused_approval(scope, proposal_id, change)
            before = self.current(scope)
            rule = change.rule if change.kind in ("add_rule", "replace_rule") else None
            replaced = change.rule_id if change.kind == "replace_rule" else None
            if rule is not None and rule.rule_id != replaced and rule.rule_id in before.rule_ids():
                raise UnapprovedChangeError(f"{scope}: rule {rule.rule_id!r} is already active")
            if change.kind in ("remove_rule", "replace_rule") and (
                change.rule_id not in before.rule_ids()
            ):
                raise UnapprovedChangeError(f"{scope}: no active rule {change.rule_id!r}")
            after = before.apply(change)
            mod_id = self._insert(
                scope,
                ts_ns,
                session_date,
                change,
                DEPLOYED,
                evidence,
                [],
                trigger,
                before.version,
                after.version,
            )
            self._save_book(scope, ts_ns, after, str(mod_id))
            conn.execute(
                "UPDATE decisions SET modification_id = ? WHERE id = ?", (mod_id, approval_id)
            )
            record(
                ts_ns=ts_ns,
                actor=actor,
                action="modification_deployed",
                payload={
                    "modification_id": mod_id,
                    "scope": scope,
                    "summary": summarize(change),
                    "version": after.version,
                    "ruleset_hash": after.hash,
                    "evidence": evidence,
                },
            )
        return mod_id, after

    def _unused_approval(self, scope: str, proposal_id: str, change: Change) -> int:
        """The id of the guardian's unused approval of ``change`` as ``proposal_id``, given
        on the day the guardian decides on now (``UnapprovedChangeError`` if there is none)."""
        conn = self._conn
        approval = conn.execute(
            "SELECT id, change, session_date FROM decisions WHERE scope = ? AND "
            "proposal_id = ? AND approved = 1 AND modification_id IS NULL "
            "ORDER BY id DESC LIMIT 1",
            (scope, proposal_id),
        ).fetchone()
        if approval is None or json.loads(approval[1]) != json.loads(change_doc(change)):
            raise UnapprovedChangeError(
                f"{scope}: proposal {proposal_id!r} has no unused approval of the guardian "
                "for this change; nothing was deployed"
            )
        (latest,) = conn.execute(
            "SELECT MAX(session_date) FROM decisions WHERE scope = ?", (scope,)
        ).fetchone()
        if approval[2] != latest:
            # Approved on a day that has ended without its deployment: the rule set
            # and the day's count it was checked against are gone.
            raise UnapprovedChangeError(
                f"{scope}: the approval of proposal {proposal_id!r} ({approval[2]}) expired "
                f"when {latest} began; nothing was deployed"
            )
        return int(approval[0])

    def record_reject(
        self,
        *,
        scope: str,
        ts_ns: int,
        session_date: str,
        change: Change,
        evidence: dict[str, Any],
        violations: list[str],
        trigger: str,
        actor: str,
        version: int,
    ) -> int:
        with self._audited() as record:
            mod_id = self._insert(
                scope,
                ts_ns,
                session_date,
                change,
                REJECTED,
                evidence,
                violations,
                trigger,
                version,
                None,
            )
            record(
                ts_ns=ts_ns,
                actor=actor,
                action="modification_rejected",
                payload={
                    "modification_id": mod_id,
                    "scope": scope,
                    "summary": summarize(change),
                    "violations": violations,
                },
            )
        return mod_id

    def rollback(self, modification_id: int, *, reason: str, by: str, ts_ns: int) -> RollbackResult:
        """Restore the rule set from before a deployed modification (a new version)."""
        conn = self._conn
        with self._audited() as record:
            rec = self.get(modification_id)
            if rec is None:
                raise RollbackError(f"no modification {modification_id}")
            if rec.status == ROLLED_BACK:
                raise RollbackError(
                    f"modification {modification_id} was already rolled back "
                    f"({rec.rollback_reason or 'no reason given'})"
                )
            if rec.status != DEPLOYED or rec.version_before is None:
                raise RollbackError(
                    f"modification {modification_id} was {rec.status}, never deployed: "
                    "there is nothing to roll back"
                )
            restored = self.version(rec.scope, rec.version_before)
            latest = self.current(rec.scope)
            book = RuleBook(
                version=latest.version + 1, rules=restored.rules, parameters=restored.parameters
            )
            undone = [
                r[0]
                for r in conn.execute(
                    "SELECT id FROM modifications WHERE scope = ? AND id >= ? AND status = ?",
                    (rec.scope, modification_id, DEPLOYED),
                )
            ]
            conn.execute(
                f"UPDATE modifications SET status = ?, rolled_back_ts = ?, rolled_back_by = ?, "
                f"rollback_reason = ? WHERE id IN ({','.join('?' * len(undone))})",
                (ROLLED_BACK, ts_ns, by, reason, *undone),
            )
            self._save_book(rec.scope, ts_ns, book, f"rollback:{modification_id}")
            record(
                ts_ns=ts_ns,
                actor=by,
                action="rollback",
                payload={
                    "modification_id": modification_id,
                    "scope": rec.scope,
                    "undone": undone,
                    "restored_version": rec.version_before,
                    "new_version": book.version,
                    "ruleset_hash": book.hash,
                    "reason": reason,
                },
            )
        return RollbackResult(modification_id, rec.scope, book, undone)

    def _insert(
        self,
        scope: str,
        ts_ns: int,
        session_date: str,
        change: Change,
        status: str,
        evidence: dict[str, Any],
        violations: list[str],
        trigger: str,
        version_before: int | None,
        version_after: int | None,
    ) -> int:
        cur = self._conn.execute(
            "INSERT INTO modifications (scope, ts_ns, session_date, kind, status, summary, "
            "change, evidence, violations, trigger, version_before, version_after) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                scope,
                ts_ns,
                session_date,
                change.kind,
                status,
                summarize(change),
                change_doc(change),
                json.dumps(evidence, sort_keys=True, default=str),
                json.dumps(violations),
                trigger,
                version_before,
                version_after,
            ),
        )
        return int(cur.lastrowid or 0)

    def _save_book(self, scope: str, ts_ns: int, book: RuleBook, modification_id: str) -> None:
        self._conn.execute(
            "INSERT INTO rule_sets (scope, version, ts_ns, doc, hash, modification_id) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (
                scope,
                book.version,
                ts_ns,
                json.dumps(book.to_doc(), sort_keys=True),
                book.hash,
                modification_id,
            ),
        )


def open_readonly(state_dir: str | Path) -> sqlite3.Connection:
    return connect(governance_path(state_dir), readonly=True)

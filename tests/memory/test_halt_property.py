"""A property: no interleaving of two sessions, restarts and damage to the state store
takes a HALTED account out of HALTED, except ``sovereign resume --confirm``.

A program of operations runs against one state directory: guardians of two sessions on
the same account (as if both got past the lock, or one were a stale process) observing
equity, Ray restarting either, the store damaged in the ways an operator or an attacker
could (row deleted, state edited, an older genuine copy put back, the file truncated, the
audit log cut short), and the operator's resume. After every operation, once the account
has halted and not been resumed since, a new session must either be refused at its start
or find the account HALTED, and whatever the store holds that checks out says HALTED.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import closing, contextmanager, suppress
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sovereign.actors.guardian import GuardianActor
from sovereign.config import parse_config
from sovereign.core.constitution import Constitution
from sovereign.core.risk import SizingPolicy
from sovereign.memory.account import (
    AccountRefusedError,
    check_guardian_state,
    guardian_state_key,
)
from sovereign.memory.audit import AuditLog, governance_path, read_audit_key, verify_audit
from sovereign.memory.state_store import SqliteStateStore, state_path
from sovereign.memory.stores import Stores
from sovereign.messages import BookSnapshot
from sovereign.operations import OperationError, resume_account
from sovereign.session import check_account
from tests.kit import SECRET, cash_account

SCOPE = "account/prop"
KEY = guardian_state_key(SCOPE)
CONFIG = parse_config({"broker": {"kind": "ib"}, "engine": {"account": "prop"}})

operation = st.one_of(
    st.tuples(st.just("observe"), st.integers(0, 1), st.sampled_from([100e3, 104e3, 80e3])),
    # The guardian dies between auditing a halt and storing it (its process is killed).
    st.tuples(st.just("die_halting"), st.integers(0, 1), st.just(60e3)),
    st.tuples(st.just("restart"), st.integers(0, 1), st.just(0.0)),
    st.tuples(
        st.just("damage"),
        st.sampled_from(["delete", "edit", "older", "truncate", "cut_audit", "strip_macs"]),
        st.integers(0, 20),
    ),
    st.tuples(st.just("resume"), st.just(0), st.just(0.0)),
)


class World:
    def __init__(self, root: Path) -> None:
        self.state = root
        self.guardians: list[GuardianActor | None] = [None, None]
        # Which of them were built (started or restarted) while the account was halted.
        self.built_halted = [False, False]
        self.docs: list[dict[str, Any]] = []
        self.halted = False
        self.ts = 0

    def guardian(self) -> GuardianActor:
        return GuardianActor(
            0,
            Constitution(),
            SizingPolicy(),
            SECRET,
            300,
            stores=Stores(str(self.state)),
            state_scope=SCOPE,
        )

    @contextmanager
    def watching(self) -> Iterator[None]:
        """The account halts when a halt is recorded in the audit log (a guardian that
        merely holds a stale HALTED has not halted it again)."""
        with AuditLog(governance_path(self.state)) as audit:
            (before,) = audit.connection.execute(
                "SELECT COALESCE(MAX(seq), 0) FROM audit"
            ).fetchone()
        try:
            yield
        finally:
            with AuditLog(governance_path(self.state)) as audit:
                new = audit.connection.execute(
                    "SELECT payload FROM audit WHERE seq > ? AND action = 'trading_state'",
                    (before,),
                ).fetchall()
            if any(json.loads(p).get("to") == "HALTED" for (p,) in new):
                self.halted = True

    def stored(self) -> dict[str, Any] | None:
        if not state_path(self.state).exists():
            return None
        try:
            with closing(SqliteStateStore(state_path(self.state))) as store:
                return store.get(KEY)
        except Exception:
            return None

    def note(self) -> None:
        doc = self.stored()
        if doc is not None and doc not in self.docs:
            self.docs.append(doc)

    def run(self, op: str, arg: Any, equity: float) -> None:
        self.ts += 1
        if op == "observe":
            g = self.guardians[arg]
            if g is None:
                try:
                    check_account(CONFIG, self.state, SCOPE)
                except AccountRefusedError:
                    return  # this session is refused at its start
                g = self.guardians[arg] = self.guardian()
                self.built_halted[arg] = self.halted
            book = BookSnapshot(msg_id="b", ts_event=self.ts, ts_init=self.ts, session_date="")
            with self.watching():
                g.receive([book, cash_account(self.ts, equity)])
        elif op == "die_halting":
            g = self.guardians[arg]
            if g is None or g.machine is None:
                return
            # The store write that follows the audit entry never happens: the process died.
            g.store.update = _dies  # type: ignore[method-assign]
            book = BookSnapshot(msg_id="b", ts_event=self.ts, ts_init=self.ts, session_date="")
            with suppress(_DiedError), self.watching():
                g.receive([book, cash_account(self.ts, equity)])
            _close(g)
            self.guardians[arg] = None
        elif op == "restart":
            old = self.guardians[arg]
            if old is not None:
                _close(old)  # Ray kills its process ...
                self.guardians[arg] = self.guardian()  # ... and builds it again
                self.built_halted[arg] = self.halted
        elif op == "damage":
            self.damage(arg, int(equity))
        elif op == "resume":
            try:
                resume_account(
                    self.state, CONFIG, SCOPE, reason="reviewed", operator="test", ts=self.ts
                )
            except OperationError:
                return
            self.halted = False
            self.built_halted = [False, False]
            # Sessions running through a resume pick it up at their next snapshot.
        self.note()

    def damage(self, kind: str, pick: int = 0) -> None:
        path = state_path(self.state)
        if not path.exists():
            return
        if kind == "truncate":
            # Files are replaced between processes (a process that has the file open goes
            # on with the old one): the sessions end first.
            for i, g in enumerate(self.guardians):
                if g is not None:
                    _close(g)
                    self.guardians[i] = None
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'kv'").fetchone() is None:
                kind = "nothing to edit" if kind in ("delete", "edit", "older") else kind
            if kind == "delete":
                conn.execute("DELETE FROM kv WHERE key = ?", (KEY,))
            elif kind == "edit":
                row = conn.execute("SELECT value FROM kv WHERE key = ?", (KEY,)).fetchone()
                if row is not None:
                    doc = {**json.loads(row[0]), "state": "ACTIVE"}
                    conn.execute("UPDATE kv SET value = ? WHERE key = ?", (json.dumps(doc), KEY))
            elif kind == "older" and self.docs:
                old = self.docs[pick % len(self.docs)]
                conn.execute("UPDATE kv SET value = ? WHERE key = ?", (json.dumps(old), KEY))
        finally:
            conn.close()
        if kind == "truncate":
            for suffix in ("-wal", "-shm"):
                Path(str(path) + suffix).unlink(missing_ok=True)
            path.write_bytes(b"")
        elif kind == "cut_audit":
            gov = sqlite3.connect(governance_path(self.state), isolation_level=None)
            try:
                gov.execute("DELETE FROM audit WHERE seq = (SELECT MAX(seq) FROM audit)")
            finally:
                gov.close()
        elif kind == "strip_macs":
            # Passing the log off as one written before it was keyed: MACs and anchor gone.
            gov = sqlite3.connect(governance_path(self.state), isolation_level=None)
            try:
                gov.execute("UPDATE audit SET mac = ''")
            finally:
                gov.close()
            with closing(sqlite3.connect(path, isolation_level=None)) as conn2:
                if conn2.execute("SELECT 1 FROM sqlite_master WHERE name = 'kv'").fetchone():
                    conn2.execute("DELETE FROM kv WHERE key = 'audit/anchor'")

    def check(self) -> None:
        if not self.halted:
            return
        # A guardian built while the account was halted never trades as if it were not.
        for g, built in zip(self.guardians, self.built_halted, strict=True):
            if g is not None and built and g.machine is not None:
                assert g.machine.state.value == "HALTED", g.machine.s
        # A new session: refused at its start, or it finds the account HALTED.
        try:
            check_account(CONFIG, self.state, SCOPE)
        except AccountRefusedError:
            pass
        else:
            g = self.guardian()
            assert g.machine is not None and g.machine.state.value == "HALTED"
            _close(g)
        # Whatever the store holds that checks out (against an audit log that verifies)
        # says HALTED.
        doc = self.stored()
        key = read_audit_key(self.state)
        if doc is None or key is None or not verify_audit(self.state).ok:
            return
        with AuditLog(governance_path(self.state)) as audit:
            try:
                state = check_guardian_state(doc, SCOPE, audit.connection, key)
            except AccountRefusedError:
                return
        assert state is not None and state.state == "HALTED"


class _DiedError(Exception):
    pass


def _dies(*args: object, **kwargs: object) -> None:
    raise _DiedError("killed between the audit entry and the store write")


def _close(g: GuardianActor) -> None:
    g.store.close()
    g.audit.close()
    g.governance.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(operation, min_size=1, max_size=14))
def test_only_resume_takes_an_account_out_of_halted(program) -> None:
    root = Path(tempfile.mkdtemp())
    try:
        world = World(root / "state")
        # The account trades and halts first: every program starts from a halt.
        world.run("observe", 0, 100e3)
        world.run("observe", 0, 100e3)
        world.run("observe", 0, 80e3)
        assert world.halted
        world.check()
        for op, arg, equity in program:
            world.run(op, arg, equity)
            world.check()
    finally:
        for g in world.guardians:
            if g is not None:
                _close(g)
        shutil.rmtree(root, ignore_errors=True)

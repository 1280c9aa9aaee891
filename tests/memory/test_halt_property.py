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
from contextlib import closing
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
from sovereign.memory.audit import AuditLog, governance_path, read_audit_key
from sovereign.memory.state_store import SqliteStateStore, state_path
from sovereign.messages import BookSnapshot
from sovereign.operations import OperationError, resume_account
from sovereign.session import check_account
from tests.kit import SECRET, cash_account

SCOPE = "account/prop"
KEY = guardian_state_key(SCOPE)
CONFIG = parse_config({"broker": {"kind": "ib"}, "engine": {"account": "prop"}})

operation = st.one_of(
    st.tuples(st.just("observe"), st.integers(0, 1), st.sampled_from([100e3, 104e3, 80e3])),
    st.tuples(st.just("restart"), st.integers(0, 1), st.just(0.0)),
    st.tuples(
        st.just("damage"),
        st.sampled_from(["delete", "edit", "older", "truncate", "cut_audit"]),
        st.just(0.0),
    ),
    st.tuples(st.just("resume"), st.just(0), st.just(0.0)),
)


class World:
    def __init__(self, root: Path) -> None:
        self.state = root
        self.guardians: list[GuardianActor | None] = [None, None]
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
            state_dir=str(self.state),
            state_scope=SCOPE,
        )

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
            book = BookSnapshot(msg_id="b", ts_event=self.ts, ts_init=self.ts, session_date="")
            g.receive([book, cash_account(self.ts, equity)])
            if g.machine is not None and g.machine.state.value == "HALTED":
                self.halted = True
        elif op == "restart":
            old = self.guardians[arg]
            if old is not None:
                _close(old)  # Ray kills its process ...
                self.guardians[arg] = self.guardian()  # ... and builds it again
        elif op == "damage":
            self.damage(arg)
        elif op == "resume":
            try:
                resume_account(
                    self.state, CONFIG, SCOPE, reason="reviewed", operator="test", ts=self.ts
                )
            except OperationError:
                return
            self.halted = False
            # Sessions running through a resume pick it up at their next snapshot.
        self.note()

    def damage(self, kind: str) -> None:
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
                conn.execute(
                    "UPDATE kv SET value = ? WHERE key = ?", (json.dumps(self.docs[0]), KEY)
                )
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

    def check(self) -> None:
        if not self.halted:
            return
        # A new session: refused at its start, or it finds the account HALTED.
        try:
            check_account(CONFIG, self.state, SCOPE)
        except AccountRefusedError:
            pass
        else:
            g = self.guardian()
            assert g.machine is not None and g.machine.state.value == "HALTED"
            _close(g)
        # Whatever the store holds that checks out says HALTED.
        doc = self.stored()
        key = read_audit_key(self.state)
        if doc is None or key is None:
            return
        with AuditLog(governance_path(self.state)) as audit:
            try:
                state = check_guardian_state(doc, SCOPE, audit.connection, key)
            except AccountRefusedError:
                return
        assert state is not None and state.state == "HALTED"


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

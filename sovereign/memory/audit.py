"""The append-only, hash-chained audit log.

Every entry stores the hash of the entry before it; its own hash is the sha256 of that
previous hash and the canonical encoding of its sequence number, time, actor, action and
payload. Editing an entry breaks its hash; deleting one leaves a gap in the sequence and
breaks the next entry's link; reordering breaks the links. ``verify`` walks the chain and
names the first entry where any of that happened.

It lives in the governance database (``<state>/governance.sqlite``) next to the rule sets
and the modification history. Several processes may append (the guardian of a running
session, the ``sovereign resume`` command): each append is one ``BEGIN IMMEDIATE``
transaction, so the chain never forks.
"""

from __future__ import annotations

import hashlib
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

GENESIS = "0" * 64

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    seq       INTEGER PRIMARY KEY,
    ts_ns     INTEGER NOT NULL,
    actor     TEXT    NOT NULL,
    action    TEXT    NOT NULL,
    payload   TEXT    NOT NULL,
    prev_hash TEXT    NOT NULL,
    hash      TEXT    NOT NULL
);
"""

_json = msgspec.json.Encoder(order="sorted")


def governance_path(state_dir: str | Path) -> Path:
    return Path(state_dir) / "governance.sqlite"


def entry_hash(prev_hash: str, seq: int, ts_ns: int, actor: str, action: str, payload: str) -> str:
    body = _json.encode([prev_hash, seq, ts_ns, actor, action, payload])
    return hashlib.sha256(body).hexdigest()


@dataclass(frozen=True, slots=True)
class AuditEntry:
    seq: int
    ts_ns: int
    actor: str
    action: str
    payload: dict[str, Any]
    prev_hash: str
    hash: str


@dataclass(frozen=True, slots=True)
class VerifyResult:
    ok: bool
    entries: int
    problems: list[str]


def connect(path: str | Path, *, readonly: bool = False) -> sqlite3.Connection:
    """Open a governance database (WAL, waiting politely for other writers)."""
    p = Path(path)
    if readonly:
        conn = sqlite3.connect(f"file:{p}?mode=ro", uri=True, timeout=30.0)
    else:
        p.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(p, timeout=30.0, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.executescript(_SCHEMA)
    return conn


class AuditLog:
    """Append to and verify the hash chain."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._conn = connect(self.path)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def append(self, *, ts_ns: int, actor: str, action: str, payload: dict[str, Any]) -> AuditEntry:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            entry = append_in_transaction(
                conn, ts_ns=ts_ns, actor=actor, action=action, payload=payload
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return entry

    def entries(self, *, action: str | None = None, limit: int | None = None) -> list[AuditEntry]:
        return read_entries(self._conn, action=action, limit=limit)

    def verify(self) -> VerifyResult:
        return verify_chain(self._conn)


def append_in_transaction(
    conn: sqlite3.Connection, *, ts_ns: int, actor: str, action: str, payload: dict[str, Any]
) -> AuditEntry:
    """Append inside a transaction the caller holds (``BEGIN IMMEDIATE``), so the entry
    commits or rolls back together with the change it records."""
    body = _json.encode(payload).decode()
    row = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    seq, prev = (row[0] + 1, row[1]) if row else (1, GENESIS)
    digest = entry_hash(prev, seq, ts_ns, actor, action, body)
    conn.execute(
        "INSERT INTO audit (seq, ts_ns, actor, action, payload, prev_hash, hash) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (seq, ts_ns, actor, action, body, prev, digest),
    )
    return AuditEntry(seq, ts_ns, actor, action, payload, prev, digest)


def read_entries(
    conn: sqlite3.Connection, *, action: str | None = None, limit: int | None = None
) -> list[AuditEntry]:
    sql = "SELECT seq, ts_ns, actor, action, payload, prev_hash, hash FROM audit"
    args: list[Any] = []
    if action is not None:
        sql += " WHERE action = ?"
        args.append(action)
    sql += " ORDER BY seq"
    if limit is not None:
        sql += " LIMIT ?"
        args.append(limit)
    return [
        AuditEntry(r[0], r[1], r[2], r[3], msgspec.json.decode(r[4]), r[5], r[6])
        for r in conn.execute(sql, args)
    ]


def verify_chain(conn: sqlite3.Connection) -> VerifyResult:
    """Walk the chain in storage order; report every break."""
    problems: list[str] = []
    prev_hash = GENESIS
    expected_seq = 1
    n = 0
    rows = conn.execute(
        "SELECT seq, ts_ns, actor, action, payload, prev_hash, hash FROM audit ORDER BY rowid"
    )
    for seq, ts_ns, actor, action, payload, stored_prev, stored_hash in rows:
        n += 1
        if seq != expected_seq:
            problems.append(
                f"entry {seq}: expected sequence {expected_seq} "
                f"({'missing entries' if seq > expected_seq else 'out of order'})"
            )
        if stored_prev != prev_hash:
            problems.append(f"entry {seq}: does not link to the entry before it")
        if entry_hash(stored_prev, seq, ts_ns, actor, action, payload) != stored_hash:
            problems.append(f"entry {seq}: content does not match its hash (edited)")
        prev_hash = stored_hash
        expected_seq = seq + 1
    return VerifyResult(ok=not problems, entries=n, problems=problems)

"""The append-only, hash-chained, keyed audit log.

Every entry stores the hash of the entry before it; its own hash is the sha256 of that
previous hash and the canonical encoding of its sequence number, time, actor, action and
payload. Editing an entry breaks its hash; deleting one leaves a gap in the sequence and
breaks the next entry's link; reordering breaks the links.

A hash chain alone does not notice two things: the last entries cut off, and the whole
chain recomputed after an edit. So:

* every entry also carries a MAC (HMAC-SHA256 of its hash) under the **audit key**, a
  random key kept outside the database (``<state>/audit.key`` by default, or the file named
  by ``SOVEREIGN_AUDIT_KEY_FILE``), so that a recomputed chain fails without the key;
* the chain's head (its last sequence number and hash, MAC'd too) is **anchored** in the
  state store of the same directory (``state.sqlite``) after every append, and written in
  each session's report: a chain that no longer holds the anchored entry was truncated,
  replaced or dropped.

``verify_audit`` opens everything read-only (it never creates or repairs what it checks)
and names every problem. It lives in the governance database (``<state>/governance.sqlite``)
next to the rule sets and the modification history. Several processes may append (the
guardian of a running session, the ``sovereign resume`` command): each append is one
``BEGIN IMMEDIATE`` transaction, so the chain never forks. Entries written before the log
was keyed (an older version of Sovereign) may form a prefix without MACs; they are checked
by hash only, and reported as such.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

GENESIS = "0" * 64
KEY_FILE_ENV = "SOVEREIGN_AUDIT_KEY_FILE"
ANCHOR_KEY = "audit/anchor"
# Entries that change an account's trading state: the account's safety state must agree
# with the last of them (``memory.account``).
STATE_ACTIONS = ("trading_state_created", "trading_state", "resume")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    seq       INTEGER PRIMARY KEY,
    ts_ns     INTEGER NOT NULL,
    actor     TEXT    NOT NULL,
    action    TEXT    NOT NULL,
    payload   TEXT    NOT NULL,
    prev_hash TEXT    NOT NULL,
    hash      TEXT    NOT NULL,
    mac       TEXT    NOT NULL DEFAULT ''
);
"""

_json = msgspec.json.Encoder(order="sorted")


class AuditKeyError(RuntimeError):
    """The audit key is missing or unreadable where the log needs it."""


def governance_path(state_dir: str | Path) -> Path:
    return Path(state_dir) / "governance.sqlite"


def entry_hash(prev_hash: str, seq: int, ts_ns: int, actor: str, action: str, payload: str) -> str:
    body = _json.encode([prev_hash, seq, ts_ns, actor, action, payload])
    return hashlib.sha256(body).hexdigest()


def entry_mac(key: bytes, digest: str) -> str:
    return hmac.new(key, b"audit-entry:" + digest.encode(), "sha256").hexdigest()


def anchor_mac(key: bytes, seq: int, digest: str, legacy: int) -> str:
    return hmac.new(key, _json.encode(["audit-anchor", seq, digest, legacy]), "sha256").hexdigest()


def same_mac(given: object, expected: str) -> bool:
    """Constant-time comparison of a stored MAC (whatever an editor put there) with the
    expected one; never raises."""
    return hmac.compare_digest(str(given).encode("utf-8", "replace"), expected.encode())


def key_is_default(state_dir: str | Path) -> bool:
    """Whether the key lives in the state directory (not named by the environment): then
    its existence proves the directory has an audit history."""
    return audit_key_path(state_dir) == Path(state_dir) / "audit.key"


def has_history(state_dir: str | Path) -> bool:
    """Whether anything shows that this state directory has kept an audit log: the log,
    its anchor, or the key made with its first entry."""
    return (
        governance_path(state_dir).exists()
        or read_anchor(state_dir) is not None
        or (key_is_default(state_dir) and audit_key_path(state_dir).exists())
    )


# -- THE KEY ------------------------------------------------------------------------------


def audit_key_path(state_dir: str | Path) -> Path:
    """Where the audit key of a state directory lives (``SOVEREIGN_AUDIT_KEY_FILE`` wins:
    an operator can keep the key off the disk that holds the databases)."""
    override = os.environ.get(KEY_FILE_ENV, "")
    return Path(override) if override else Path(state_dir) / "audit.key"


def read_audit_key(state_dir: str | Path) -> bytes | None:
    """The key, or None when there is none yet."""
    path = audit_key_path(state_dir)
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise AuditKeyError(f"cannot read the audit key {path}: {exc}") from None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise AuditKeyError(f"the audit key {path} is not hex") from None
    if len(key) < 32:
        raise AuditKeyError(f"the audit key {path} is shorter than 32 bytes")
    return key


def create_audit_key(state_dir: str | Path) -> bytes:
    """Make the key (readable by its owner only). Two processes racing both end up with
    the one that reached the disk first."""
    path = audit_key_path(state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = os.urandom(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        found = read_audit_key(state_dir)
        assert found is not None
        return found
    with os.fdopen(fd, "w") as f:
        f.write(key.hex() + "\n")
    return key


@dataclass(frozen=True, slots=True)
class AuditEntry:
    seq: int
    ts_ns: int
    actor: str
    action: str
    payload: dict[str, Any]
    prev_hash: str
    hash: str
    mac: str = ""


@dataclass(frozen=True, slots=True)
class VerifyResult:
    ok: bool
    entries: int
    problems: list[str]
    head_seq: int = 0
    head_hash: str = ""
    notes: list[str] = field(default_factory=list)
    keyed_entries: int = 0


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
        columns = {r[1] for r in conn.execute("PRAGMA table_info(audit)")}
        if "mac" not in columns:
            # A log written before entries were keyed: its entries stay as they are.
            conn.execute("ALTER TABLE audit ADD COLUMN mac TEXT NOT NULL DEFAULT ''")
    return conn


class Ledger:
    """What appending needs besides the database: the key, and the anchor to advance."""

    def __init__(self, state_dir: str | Path, key: bytes | None = None) -> None:
        self.state_dir = Path(state_dir)
        self._key = key

    def key(self, conn: sqlite3.Connection) -> bytes:
        if self._key is None:
            found = read_audit_key(self.state_dir)
            if found is None:
                keyed = conn.execute("SELECT 1 FROM audit WHERE mac != '' LIMIT 1").fetchone()
                if keyed is not None:
                    # Making a new key now would let anyone rewrite the chain unnoticed.
                    raise AuditKeyError(
                        f"the audit key {audit_key_path(self.state_dir)} is missing, but the "
                        "audit log was written with one: restore the key file"
                    )
                found = create_audit_key(self.state_dir)
            self._key = found
        return self._key

    def anchor(self, conn: sqlite3.Connection, seq: int, digest: str) -> None:
        """Advance the anchored head to (seq, digest), never back. It also records how
        many entries have no MAC (written before the log was keyed): MACs stripped later
        to pass entries off as that old are then noticed."""
        from sovereign.memory.state_store import SqliteStateStore, state_path

        assert self._key is not None
        (legacy,) = conn.execute("SELECT COUNT(*) FROM audit WHERE mac = ''").fetchone()
        mac = anchor_mac(self._key, seq, digest, int(legacy))
        doc = {"seq": seq, "hash": digest, "legacy": int(legacy), "mac": mac}
        store = SqliteStateStore(state_path(self.state_dir))
        try:
            store.update(
                ANCHOR_KEY,
                lambda old: doc if old is None or int(old.get("seq", 0)) < seq else None,
            )
        finally:
            store.close()


class AuditLog:
    """Append to and verify the chain."""

    def __init__(self, path: str | Path, *, key: bytes | None = None) -> None:
        self.path = Path(path)
        self._conn = connect(self.path)
        self.ledger = Ledger(self.path.parent, key)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def connection(self) -> sqlite3.Connection:
        return self._conn

    def append(self, *, ts_ns: int, actor: str, action: str, payload: dict[str, Any]) -> AuditEntry:
        conn = self._conn
        key = self.ledger.key(conn)
        conn.execute("BEGIN IMMEDIATE")
        try:
            entry = append_in_transaction(
                conn, key, ts_ns=ts_ns, actor=actor, action=action, payload=payload
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self.ledger.anchor(conn, entry.seq, entry.hash)
        return entry

    def entries(self, *, action: str | None = None, limit: int | None = None) -> list[AuditEntry]:
        return read_entries(self._conn, action=action, limit=limit)

    def verify(self) -> VerifyResult:
        return verify_audit(self.path.parent)


def append_in_transaction(
    conn: sqlite3.Connection,
    key: bytes,
    *,
    ts_ns: int,
    actor: str,
    action: str,
    payload: dict[str, Any],
) -> AuditEntry:
    """Append inside a transaction the caller holds (``BEGIN IMMEDIATE``), so the entry
    commits or rolls back together with the change it records. The caller advances the
    anchor (``Ledger.anchor``) once the transaction has committed."""
    body = _json.encode(payload).decode()
    row = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    seq, prev = (row[0] + 1, row[1]) if row else (1, GENESIS)
    digest = entry_hash(prev, seq, ts_ns, actor, action, body)
    conn.execute(
        "INSERT INTO audit (seq, ts_ns, actor, action, payload, prev_hash, hash, mac) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (seq, ts_ns, actor, action, body, prev, digest, entry_mac(key, digest)),
    )
    return AuditEntry(seq, ts_ns, actor, action, payload, prev, digest, entry_mac(key, digest))


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


def state_changes(conn: sqlite3.Connection, scope: str) -> list[AuditEntry]:
    """The entries that changed ``scope``'s trading state, oldest first."""
    marks = ",".join("?" * len(STATE_ACTIONS))
    rows = conn.execute(
        "SELECT seq, ts_ns, actor, action, payload, prev_hash, hash, mac FROM audit "
        f"WHERE action IN ({marks}) AND json_extract(payload, '$.scope') = ? ORDER BY seq",
        (*STATE_ACTIONS, scope),
    )
    return [
        AuditEntry(r[0], r[1], r[2], r[3], msgspec.json.decode(r[4]), r[5], r[6], r[7])
        for r in rows
    ]


def verify_chain(conn: sqlite3.Connection, key: bytes | None) -> VerifyResult:
    """Walk the chain in storage order; report every break. With a key, every entry after
    the legacy (unkeyed) prefix must carry a valid MAC."""
    problems: list[str] = []
    notes: list[str] = []
    prev_hash = GENESIS
    expected_seq = 1
    n = 0
    legacy = 0
    keyed_seen = False
    head_seq, head_hash = 0, ""
    rows = conn.execute(
        "SELECT seq, ts_ns, actor, action, payload, prev_hash, hash, mac FROM audit ORDER BY rowid"
    )
    for seq, ts_ns, actor, action, payload, stored_prev, stored_hash, mac in rows:
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
        if not mac:
            if keyed_seen:
                problems.append(f"entry {seq}: has no MAC after keyed entries (rewritten)")
            else:
                legacy += 1
        else:
            keyed_seen = True
            if key is not None and not same_mac(mac, entry_mac(key, stored_hash)):
                problems.append(
                    f"entry {seq}: its MAC does not match the audit key (chain recomputed)"
                )
        prev_hash = stored_hash
        expected_seq = seq + 1
        head_seq, head_hash = seq, stored_hash
    if legacy:
        notes.append(f"{legacy} entries predate the keyed chain (checked by hash only)")
    return VerifyResult(
        ok=not problems,
        entries=n,
        problems=problems,
        head_seq=head_seq,
        head_hash=head_hash,
        notes=notes,
        keyed_entries=n - legacy,
    )


def open_readonly(path: str | Path) -> sqlite3.Connection:
    """Open a database for reading without writing anything next to it. With no write-ahead
    log beside it, the file is all there is (``immutable``: not even SQLite's shared-memory
    file is made); with one, a writer may be at work, and the log must be read too."""
    p = Path(path)
    wal = Path(str(p) + "-wal")
    mode = "ro" if wal.exists() else "ro&immutable=1"
    return sqlite3.connect(f"file:{p}?mode={mode}", uri=True, timeout=30.0)


def read_anchor(state_dir: str | Path) -> dict[str, Any] | None:
    """The anchored head, read without creating or changing anything."""
    from sovereign.memory.state_store import state_path

    path = state_path(state_dir)
    if not path.exists():
        return None
    try:
        conn = open_readonly(path)
        try:
            row = conn.execute("SELECT value FROM kv WHERE key = ?", (ANCHOR_KEY,)).fetchone()
        finally:
            conn.close()
    except sqlite3.DatabaseError:
        return None
    if row is None:
        return None
    try:
        doc = msgspec.json.decode(row[0])
    except msgspec.DecodeError:
        return {"seq": -1, "hash": "", "mac": ""}
    return doc if isinstance(doc, dict) else {"seq": -1, "hash": "", "mac": ""}


def verify_audit(state_dir: str | Path) -> VerifyResult:
    """Verify a state directory's audit log against its key and its anchor, read-only."""
    path = governance_path(state_dir)
    problems: list[str] = []
    try:
        key = read_audit_key(state_dir)
    except AuditKeyError as exc:
        key = None
        problems.append(str(exc))
    anchor = read_anchor(state_dir)
    chain: VerifyResult | None = None
    anchored_hash: str | None = None
    if path.exists():
        try:
            conn = open_readonly(path)
            try:
                chain = verify_chain(conn, key)
                if anchor is not None and isinstance(anchor.get("seq"), int):
                    row = conn.execute(
                        "SELECT hash FROM audit WHERE seq = ?", (anchor["seq"],)
                    ).fetchone()
                    anchored_hash = None if row is None else str(row[0])
            finally:
                conn.close()
        except sqlite3.DatabaseError as exc:
            problems.append(f"the audit table cannot be read ({exc}): dropped or corrupted")
    else:
        problems.append(f"{path} does not exist")
    keyed = chain is not None and chain.keyed_entries > 0
    if chain is not None:
        problems = chain.problems + problems
        if key is None and keyed:
            problems.append(
                f"the audit key {audit_key_path(state_dir)} is missing: the MACs cannot be checked"
            )
    # The key is made with the log's first keyed entry: where it is the directory's own,
    # a log that is empty or gone while it exists has lost its history, and one without a
    # single MAC has had them stripped (a log older than its key keeps its newer entries'
    # MACs).
    if key is not None and key_is_default(state_dir):
        if chain is None or not chain.entries:
            problems.append(
                "the audit key exists but the audit log is empty or missing: its history was lost"
            )
        elif not chain.keyed_entries:
            problems.append(
                "no entry has a MAC although the audit key exists: the MACs were stripped"
            )
    problems.extend(
        _anchor_problems(anchor, chain, anchored_hash, key, keyed=keyed or key is not None)
    )
    return VerifyResult(
        ok=not problems,
        entries=chain.entries if chain else 0,
        problems=problems,
        head_seq=chain.head_seq if chain else 0,
        head_hash=chain.head_hash if chain else "",
        notes=chain.notes if chain else [],
        keyed_entries=chain.keyed_entries if chain else 0,
    )


def _anchor_problems(
    anchor: dict[str, Any] | None,
    chain: VerifyResult | None,
    anchored_hash: str | None,
    key: bytes | None,
    *,
    keyed: bool,
) -> list[str]:
    if anchor is None:
        # A keyed chain is always anchored (an append advances the anchor right after it
        # commits); a missing anchor means the state store was lost or replaced.
        return ["the audit anchor is missing from the state store"] if keyed else []
    try:
        seq, digest, mac = int(anchor["seq"]), str(anchor["hash"]), str(anchor["mac"])
        legacy = int(anchor.get("legacy", 0))
    except (KeyError, TypeError, ValueError):
        return ["the audit anchor is unreadable"]
    if seq < 1:
        return ["the audit anchor is unreadable"]
    out: list[str] = []
    if key is not None and not same_mac(mac, anchor_mac(key, seq, digest, legacy)):
        out.append("the audit anchor's MAC does not match the audit key (anchor edited)")
    if chain is not None and chain.entries - chain.keyed_entries != legacy:
        out.append(
            f"{chain.entries - chain.keyed_entries} entries have no MAC where {legacy} were "
            "written before the log was keyed (MACs stripped)"
        )
    if chain is None or anchored_hash is None:
        found = chain.entries if chain else 0
        out.append(
            f"the anchor expects at least {seq} entries and the log has {found} (truncated, "
            "replaced or dropped)"
        )
    elif anchored_hash != digest:
        out.append(f"entry {seq} is not the entry that was anchored (the chain was replaced)")
    return out

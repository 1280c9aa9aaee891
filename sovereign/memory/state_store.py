"""The state store: small JSON documents that must survive restarts.

SQLite by default (``<state>/state.sqlite``, WAL); Redis when a URL is
configured (``[state] redis_url``), so that every node of a Ray cluster sees the same
state. Values are JSON objects; every write replaces the whole document atomically.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import msgspec

_json = msgspec.json.Encoder(order="sorted")


class StateStore(Protocol):
    """Get and put JSON documents by key."""

    def get(self, key: str) -> dict[str, Any] | None: ...

    def put(self, key: str, value: dict[str, Any]) -> None: ...

    def update(
        self, key: str, change: Callable[[dict[str, Any] | None], dict[str, Any] | None]
    ) -> dict[str, Any] | None: ...

    def close(self) -> None: ...


Change = Callable[[dict[str, Any] | None], dict[str, Any] | None]
"""A read-modify-write: given the stored document (None: none), the document to store,
or None to leave it as it is."""


def state_path(state_dir: str | Path) -> Path:
    return Path(state_dir) / "state.sqlite"


class SqliteStateStore:
    """Key-value documents in one SQLite file; safe for several processes."""

    def __init__(self, path: str | Path) -> None:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        self.path = p
        self._conn = sqlite3.connect(p, timeout=30.0, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        # WAL with synchronous=NORMAL: a committed write survives the death of the process
        # (a crashed or killed actor), which is what restarts need; only a power cut can
        # lose the last commits. FULL would fsync every step's write.
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL, "
            "updated_ns INTEGER NOT NULL)"
        )

    def get(self, key: str) -> dict[str, Any] | None:
        row = self._conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else _decode(row[0])

    def put(self, key: str, value: dict[str, Any]) -> None:
        self._conn.execute(
            "INSERT INTO kv (key, value, updated_ns) VALUES (?, ?, ?) ON CONFLICT(key) "
            "DO UPDATE SET value = excluded.value, updated_ns = excluded.updated_ns",
            (key, _json.encode(value).decode(), time.time_ns()),
        )

    def update(self, key: str, change: Change) -> dict[str, Any] | None:
        """Apply ``change`` to the stored document atomically (no other writer, in this or
        another process, gets between the read and the write); return what is stored
        afterwards."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
            old = None if row is None else _decode_or_damaged(row[0])
            new = change(old)
            if new is not None:
                conn.execute(
                    "INSERT INTO kv (key, value, updated_ns) VALUES (?, ?, ?) ON CONFLICT(key) "
                    "DO UPDATE SET value = excluded.value, updated_ns = excluded.updated_ns",
                    (key, _json.encode(new).decode(), time.time_ns()),
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return old if new is None else new

    def delete(self, key: str) -> None:
        self._conn.execute("DELETE FROM kv WHERE key = ?", (key,))

    def keys(self, prefix: str = "") -> list[str]:
        rows = self._conn.execute(
            "SELECT key FROM kv WHERE key LIKE ? ORDER BY key", (prefix.replace("%", r"\%") + "%",)
        )
        return [r[0] for r in rows]

    def close(self) -> None:
        self._conn.close()


class RedisStateStore:
    """The same documents in Redis, under ``sovereign:state:<key>``."""

    PREFIX = "sovereign:state:"

    def __init__(self, url: str) -> None:
        import redis

        self.url = url
        self._redis = redis.Redis.from_url(url, socket_timeout=5.0, socket_connect_timeout=5.0)
        # Fail at start, not at the first halt.
        self._redis.ping()

    def get(self, key: str) -> dict[str, Any] | None:
        raw = self._redis.get(self.PREFIX + key)
        return None if raw is None else _decode(raw)

    def put(self, key: str, value: dict[str, Any]) -> None:
        self._redis.set(self.PREFIX + key, _json.encode(value))

    def update(self, key: str, change: Change) -> dict[str, Any] | None:
        """As ``SqliteStateStore.update``, with Redis's optimistic transactions: the write
        is dropped and retried if anyone changed the key since it was read."""
        import redis

        name = self.PREFIX + key
        while True:
            with self._redis.pipeline() as pipe:
                try:
                    pipe.watch(name)
                    raw = pipe.get(name)
                    old = None if raw is None else _decode_or_damaged(raw)
                    new = change(old)
                    if new is None:
                        pipe.unwatch()
                        return old
                    pipe.multi()
                    pipe.set(name, _json.encode(new))
                    pipe.execute()
                    return new
                except redis.WatchError:
                    continue

    def delete(self, key: str) -> None:
        self._redis.delete(self.PREFIX + key)

    def keys(self, prefix: str = "") -> list[str]:
        found = self._redis.scan_iter(match=f"{self.PREFIX}{prefix}*")
        return sorted(k.decode()[len(self.PREFIX) :] for k in found)

    def close(self) -> None:
        self._redis.close()


class CorruptStateError(ValueError):
    """A stored document that is not a JSON object (a damaged or edited store)."""


def _decode(raw: str | bytes) -> dict[str, Any]:
    try:
        doc = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise CorruptStateError(f"a stored state document is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise CorruptStateError("a stored state document is not a JSON object")
    return doc


DAMAGED = "__damaged__"


def _decode_or_damaged(raw: str | bytes) -> dict[str, Any]:
    """For a read-modify-write: a stored document that does not decode is handed to the
    change as ``{DAMAGED: True}``, which decides whether to write over it."""
    try:
        return _decode(raw)
    except CorruptStateError:
        return {DAMAGED: True}


def open_state_store(
    state_dir: str | Path, redis_url: str = ""
) -> SqliteStateStore | RedisStateStore:
    """The configured store: Redis when a URL is given, else SQLite in the state dir."""
    if redis_url:
        return RedisStateStore(redis_url)
    return SqliteStateStore(state_path(state_dir))


class LazyStateStore:
    """The state store an actor uses all session: opened at its first use and kept open
    (opening one per call cost a SQLite connection, its pragmas and a schema check on
    every step of a paper session), closed with the actor. Until then it holds only where
    the store is, so it can be built in one process and handed to another."""

    def __init__(self, state_dir: str | Path, redis_url: str = "") -> None:
        self.state_dir = str(state_dir)
        self.redis_url = redis_url
        self._store: SqliteStateStore | RedisStateStore | None = None

    def __call__(self) -> SqliteStateStore | RedisStateStore:
        if self._store is None:
            self._store = open_state_store(self.state_dir, self.redis_url)
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

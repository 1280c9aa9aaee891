"""The state store: small JSON documents that must survive restarts.

SQLite by default (``<state>/state.sqlite``, WAL); Redis when a URL is
configured (``[state] redis_url``), so that every node of a Ray cluster sees the same
state. Values are JSON objects; every write replaces the whole document atomically.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any, Protocol

import msgspec

_json = msgspec.json.Encoder(order="sorted")


class StateStore(Protocol):
    """Get and put JSON documents by key."""

    def get(self, key: str) -> dict[str, Any] | None: ...

    def put(self, key: str, value: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


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
        return None if row is None else msgspec.json.decode(row[0])

    def put(self, key: str, value: dict[str, Any]) -> None:
        self._conn.execute(
            "INSERT INTO kv (key, value, updated_ns) VALUES (?, ?, ?) ON CONFLICT(key) "
            "DO UPDATE SET value = excluded.value, updated_ns = excluded.updated_ns",
            (key, _json.encode(value).decode(), time.time_ns()),
        )

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
        return None if raw is None else msgspec.json.decode(raw)

    def put(self, key: str, value: dict[str, Any]) -> None:
        self._redis.set(self.PREFIX + key, _json.encode(value))

    def keys(self, prefix: str = "") -> list[str]:
        found = self._redis.scan_iter(match=f"{self.PREFIX}{prefix}*")
        return sorted(k.decode()[len(self.PREFIX) :] for k in found)

    def close(self) -> None:
        self._redis.close()


def open_state_store(
    state_dir: str | Path, redis_url: str = ""
) -> SqliteStateStore | RedisStateStore:
    """The configured store: Redis when a URL is given, else SQLite in the state dir."""
    if redis_url:
        return RedisStateStore(redis_url)
    return SqliteStateStore(state_path(state_dir))

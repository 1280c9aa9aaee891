"""The state store (SQLite and a real Redis) and the hash-chained audit log."""

from __future__ import annotations

import sqlite3

import pytest

from sovereign.memory.audit import AuditLog, governance_path
from sovereign.memory.state_store import RedisStateStore, SqliteStateStore, open_state_store


def test_sqlite_state_store_round_trips_and_persists(tmp_path) -> None:
    store = SqliteStateStore(tmp_path / "state.sqlite")
    assert store.get("guardian/x") is None
    store.put("guardian/x", {"state": "HALTED", "hwm": 1.5})
    store.put("guardian/x", {"state": "HALTED", "hwm": 2.5})
    store.close()
    again = open_state_store(tmp_path)
    assert again.get("guardian/x") == {"state": "HALTED", "hwm": 2.5}
    assert again.keys("guardian/") == ["guardian/x"]
    mode = sqlite3.connect(tmp_path / "state.sqlite").execute("PRAGMA journal_mode").fetchone()
    assert mode[0] == "wal"


def test_redis_state_store_round_trips(redis_url: str) -> None:
    store = open_state_store("unused", redis_url)
    assert isinstance(store, RedisStateStore)
    store.put("guardian/account/r1", {"state": "ACTIVE", "n": [1, 2]})
    assert RedisStateStore(redis_url).get("guardian/account/r1") == {"state": "ACTIVE", "n": [1, 2]}
    assert "guardian/account/r1" in store.keys("guardian/")
    assert store.get("nope") is None


def test_redis_that_is_not_there_fails_at_start() -> None:
    import redis

    with pytest.raises(redis.exceptions.ConnectionError):
        RedisStateStore("redis://127.0.0.1:1/0")


def _log(tmp_path) -> AuditLog:
    log = AuditLog(governance_path(tmp_path))
    for i in range(5):
        log.append(ts_ns=i, actor="test", action="event", payload={"i": i, "what": f"e{i}"})
    return log


def test_untouched_chain_verifies(tmp_path) -> None:
    log = _log(tmp_path)
    result = log.verify()
    assert result.ok and result.entries == 5 and result.problems == []
    entries = log.entries()
    assert [e.seq for e in entries] == [1, 2, 3, 4, 5]
    assert entries[1].prev_hash == entries[0].hash


@pytest.mark.parametrize(
    ("tamper", "needle"),
    [
        (
            'UPDATE audit SET payload = \'{"i":2,"what":"nothing"}\' WHERE seq = 3',
            "entry 3: content",
        ),
        ("DELETE FROM audit WHERE seq = 3", "entry 4: expected sequence 3"),
        ("UPDATE audit SET action = 'other' WHERE seq = 5", "entry 5: content"),
        ("UPDATE audit SET ts_ns = 99 WHERE seq = 1", "entry 1: content"),
    ],
)
def test_editing_the_database_file_is_detected(tmp_path, tamper: str, needle: str) -> None:
    _log(tmp_path).close()
    raw = sqlite3.connect(governance_path(tmp_path))
    raw.execute(tamper)
    raw.commit()
    raw.close()
    result = AuditLog(governance_path(tmp_path)).verify()
    assert not result.ok
    assert any(needle in p for p in result.problems), result.problems


def test_reordering_entries_is_detected(tmp_path) -> None:
    _log(tmp_path).close()
    raw = sqlite3.connect(governance_path(tmp_path))
    cols = "ts_ns, actor, action, payload, prev_hash, hash"
    two = raw.execute(f"SELECT {cols} FROM audit WHERE seq = 2").fetchone()
    three = raw.execute(f"SELECT {cols} FROM audit WHERE seq = 3").fetchone()
    update = (
        "UPDATE audit SET ts_ns=?, actor=?, action=?, payload=?, prev_hash=?, hash=? WHERE seq=?"
    )
    raw.execute(update, (*three, 2))
    raw.execute(update, (*two, 3))
    raw.commit()
    raw.close()
    result = AuditLog(governance_path(tmp_path)).verify()
    assert not result.ok
    assert any("entry 2: does not link" in p for p in result.problems), result.problems


def test_two_writers_never_fork_the_chain(tmp_path) -> None:
    a = AuditLog(governance_path(tmp_path))
    b = AuditLog(governance_path(tmp_path))
    for i in range(10):
        (a if i % 2 else b).append(ts_ns=i, actor="w", action="x", payload={"i": i})
    assert a.verify().ok and a.verify().entries == 10

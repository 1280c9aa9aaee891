"""The state store (SQLite and a real Redis) and the hash-chained audit log."""

from __future__ import annotations

import sqlite3

import pytest

from sovereign.memory.audit import AuditLog, governance_path, verify_audit
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


# -- THE KEYED, ANCHORED CHAIN ----------------------------------------------------------------


def _tamper(tmp_path, sql: str, *args: object) -> None:
    raw = sqlite3.connect(governance_path(tmp_path))
    raw.execute(sql, args)
    raw.commit()
    raw.close()


def test_cutting_off_the_last_entries_is_detected(tmp_path) -> None:
    _log(tmp_path).close()
    _tamper(tmp_path, "DELETE FROM audit WHERE seq >= 4")
    result = verify_audit(tmp_path)
    assert not result.ok
    assert any("the anchor expects at least 5 entries" in p for p in result.problems)


def test_a_recomputed_chain_is_detected(tmp_path) -> None:
    """An edit followed by recomputing every hash after it: the sha256 chain links again,
    but the MACs need the key, which is not in the database."""
    from sovereign.memory.audit import entry_hash

    _log(tmp_path).close()
    raw = sqlite3.connect(governance_path(tmp_path))
    rows = raw.execute(
        "SELECT seq, ts_ns, actor, action, payload FROM audit ORDER BY seq"
    ).fetchall()
    prev = "0" * 64
    for seq, ts, actor, action, payload in rows:
        if seq == 2:
            payload = '{"i":1,"what":"rewritten"}'
        digest = entry_hash(prev, seq, ts, actor, action, payload)
        raw.execute(
            "UPDATE audit SET payload = ?, prev_hash = ?, hash = ? WHERE seq = ?",
            (payload, prev, digest, seq),
        )
        prev = digest
    raw.commit()
    raw.close()
    result = verify_audit(tmp_path)
    assert not result.ok
    assert any("entry 2: its MAC does not match" in p for p in result.problems)
    # Recomputed without MACs too (as if never keyed): detected all the same.
    _tamper(tmp_path, "UPDATE audit SET mac = ''")
    assert not verify_audit(tmp_path).ok


def test_a_dropped_table_is_detected_and_verify_never_recreates_it(tmp_path) -> None:
    _log(tmp_path).close()
    _tamper(tmp_path, "DROP TABLE audit")
    result = verify_audit(tmp_path)
    assert not result.ok and any("cannot be read" in p for p in result.problems)
    raw = sqlite3.connect(governance_path(tmp_path))
    assert raw.execute("SELECT name FROM sqlite_master WHERE name = 'audit'").fetchone() is None
    raw.close()
    governance_path(tmp_path).unlink()
    result = verify_audit(tmp_path)
    assert not result.ok
    assert not governance_path(tmp_path).exists()


def test_the_command_line_verify_is_read_only_and_says_tampered(tmp_path) -> None:
    import os
    import subprocess
    import sys

    _log(tmp_path).close()
    _tamper(tmp_path, "DELETE FROM audit WHERE seq = 5")
    before = sorted(p.name for p in tmp_path.iterdir())
    mtime = governance_path(tmp_path).stat().st_mtime_ns
    r = subprocess.run(
        [sys.executable, "-m", "sovereign", "audit", "verify", "--state", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
    )
    assert r.returncode == 1 and "AUDIT LOG TAMPERED" in r.stdout, r.stdout + r.stderr
    assert "anchor expects at least 5" in r.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert governance_path(tmp_path).stat().st_mtime_ns == mtime


def test_an_edited_anchor_is_detected(tmp_path) -> None:
    import json

    _log(tmp_path).close()
    _tamper(tmp_path, "DELETE FROM audit WHERE seq >= 4")
    store = SqliteStateStore(tmp_path / "state.sqlite")
    anchor = store.get("audit/anchor")
    assert anchor is not None and anchor["seq"] == 5
    # Point the anchor at the new head: without the key its MAC cannot follow.
    raw = sqlite3.connect(governance_path(tmp_path))
    (head,) = raw.execute("SELECT hash FROM audit WHERE seq = 3").fetchone()
    raw.close()
    store.put("audit/anchor", {**anchor, "seq": 3, "hash": head})
    store.close()
    result = verify_audit(tmp_path)
    assert not result.ok and any("anchor's MAC" in p for p in result.problems), json.dumps(
        result.problems
    )


def test_a_lost_key_stops_appends_and_verification(tmp_path) -> None:
    from sovereign.memory.audit import AuditKeyError, audit_key_path

    _log(tmp_path).close()
    audit_key_path(tmp_path).unlink()
    with pytest.raises(AuditKeyError, match="missing"):
        AuditLog(governance_path(tmp_path)).append(ts_ns=9, actor="t", action="x", payload={})
    result = verify_audit(tmp_path)
    assert not result.ok and any("audit key" in p for p in result.problems)


def test_a_key_can_live_outside_the_state_directory(tmp_path, monkeypatch) -> None:
    elsewhere = tmp_path / "vault" / "audit.key"
    monkeypatch.setenv("SOVEREIGN_AUDIT_KEY_FILE", str(elsewhere))
    state = tmp_path / "state"
    _log(state).close()
    assert elsewhere.exists() and not (state / "audit.key").exists()
    assert oct(elsewhere.stat().st_mode & 0o777) == "0o600"
    assert verify_audit(state).ok


def test_entries_from_before_the_key_verify_as_a_legacy_prefix(tmp_path) -> None:
    _log(tmp_path).close()
    # As an older Sovereign left it: no MAC column contents, no anchor, no key.
    _tamper(tmp_path, "UPDATE audit SET mac = ''")
    (tmp_path / "audit.key").unlink()
    SqliteStateStore(tmp_path / "state.sqlite").delete("audit/anchor")
    result = verify_audit(tmp_path)
    assert result.ok
    assert result.notes == ["5 entries predate the keyed chain (checked by hash only)"]
    log = AuditLog(governance_path(tmp_path))
    log.append(ts_ns=9, actor="t", action="x", payload={})
    after = verify_audit(tmp_path)
    assert after.ok and after.entries == 6 and after.keyed_entries == 1


def test_stripped_macs_and_a_deleted_anchor_are_not_taken_for_an_old_log(tmp_path) -> None:
    """With the key in place, entries without MACs cannot pass for a log written before
    the key: cut the chain, strip its MACs and delete the anchor, and it is still caught."""
    _log(tmp_path).close()
    _tamper(tmp_path, "DELETE FROM audit WHERE seq >= 4")
    _tamper(tmp_path, "UPDATE audit SET mac = ''")
    SqliteStateStore(tmp_path / "state.sqlite").delete("audit/anchor")
    result = verify_audit(tmp_path)
    assert not result.ok
    assert any("MACs were stripped" in p for p in result.problems), result.problems
    assert any("anchor is missing" in p for p in result.problems), result.problems


def test_a_lost_log_with_its_key_left_behind_is_a_lost_history(tmp_path) -> None:
    _log(tmp_path).close()
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / f"governance.sqlite{suffix}").unlink(missing_ok=True)
        (tmp_path / f"state.sqlite{suffix}").unlink(missing_ok=True)
    result = verify_audit(tmp_path)
    assert not result.ok
    assert any("history was lost" in p for p in result.problems), result.problems


def test_garbage_in_a_mac_is_a_finding_not_a_crash(tmp_path) -> None:
    _log(tmp_path).close()
    _tamper(tmp_path, "UPDATE audit SET mac = 'é' WHERE seq = 2")
    store = SqliteStateStore(tmp_path / "state.sqlite")
    anchor = store.get("audit/anchor")
    assert anchor is not None
    store.put("audit/anchor", {**anchor, "mac": "ü"})
    store.close()
    result = verify_audit(tmp_path)
    assert not result.ok
    assert any("entry 2: its MAC" in p for p in result.problems)
    assert any("anchor's MAC" in p for p in result.problems)

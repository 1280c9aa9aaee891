"""A HALT is forever: one owner per account, a safety state that cannot be lost or edited
without the next start noticing, and no write that leaves HALTED but a resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from sovereign.config import parse_config
from sovereign.core.constitution import Constitution
from sovereign.core.risk import SizingPolicy
from sovereign.data.loaders import load_ohlcv
from sovereign.memory.account import (
    AccountBusyError,
    AccountLock,
    StateIntegrityError,
    guardian_state_key,
    sim_account_key,
)
from sovereign.memory.audit import AuditLog, governance_path
from sovereign.memory.state_store import state_path
from sovereign.memory.stores import Stores
from sovereign.messages import BookSnapshot, CancelOrder, TradingStateChanged
from sovereign.messages.account import BookOrder
from sovereign.operations import inspect_state, resume_account
from sovereign.session import run_session
from tests.kit import CRASH_DATA, HOLDING, SECRET, cash_account

SCOPE = "account/shared"
GUARDIAN = guardian_state_key(SCOPE)
SIM = sim_account_key("shared")


def config(account: str = "shared"):
    return parse_config({**HOLDING, "engine": {"shards": 2, "account": account}})


@pytest.fixture(scope="module")
def crash_data():
    return load_ohlcv(CRASH_DATA, seed=7)


def session(state: Path, data: Any, run_id: str, **kw: Any):
    return run_session(
        config(),
        data,
        runtime="local",
        mode="backtest",
        state_dir=state,
        out_dir=None,
        run_id=run_id,
        **kw,
    )


def raw(state: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(state_path(state), isolation_level=None)
    return conn


def doc(state: Path, key: str = GUARDIAN) -> dict[str, Any]:
    with closing(raw(state)) as conn:
        (value,) = conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
    return json.loads(value)


def put(state: Path, value: dict[str, Any], key: str = GUARDIAN) -> None:
    with closing(raw(state)) as conn:
        conn.execute("UPDATE kv SET value = ? WHERE key = ?", (json.dumps(value), key))


@pytest.fixture(scope="module")
def halted_dir(tmp_path_factory, crash_data) -> tuple[Path, dict[str, Any]]:
    """A state directory whose account ``shared`` traded (its stored state while ACTIVE
    kept aside) and then halted in a crash."""
    state = tmp_path_factory.mktemp("halted") / "state"
    first = session(state, crash_data, "before-crash", max_steps=300)
    assert first.guardian is not None and first.guardian.state == "ACTIVE"
    active_doc = doc(state)
    second = session(state, crash_data, "crash")
    assert second.guardian is not None and second.guardian.state == "HALTED"
    return state, active_doc


@pytest.fixture
def halted(tmp_path, halted_dir) -> tuple[Path, dict[str, Any]]:
    src, active_doc = halted_dir
    state = tmp_path / "state"
    shutil.copytree(src, state)
    return state, active_doc


def sovereign(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sovereign", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
    )


# -- ONE OWNER ----------------------------------------------------------------------------


def test_a_second_session_on_an_owned_account_is_refused_with_exit_2(tmp_path) -> None:
    state = tmp_path / "state"
    with AccountLock.acquire(state, SCOPE, run_id="the-owner"):
        with pytest.raises(AccountBusyError, match="in use by session the-owner"):
            session(state, load_ohlcv("synthetic:4x50", seed=1), "intruder")
        r = sovereign(
            "backtest",
            "--data",
            "synthetic:4x50",
            "--account",
            "shared",
            "--state",
            str(state),
            "--out",
            str(tmp_path / "out"),
            cwd=tmp_path,
        )
    assert r.returncode == 2, r.stderr
    assert "in use by session the-owner" in r.stderr and "Traceback" not in r.stderr
    # Other accounts are not affected, and the account is free again once released.
    session(state, load_ohlcv("synthetic:4x50", seed=1), "after")


def test_the_issue_two_concurrent_sessions_cannot_unhalt_the_account(tmp_path) -> None:
    """The reported sequence: a crashing session and a calm one on one account at once.
    Whichever order they end in, the account ends HALTED."""
    state = tmp_path / "state"
    common = ["--account", "shared", "--state", str(state), "--shards", "2"]
    cfg = tmp_path / "holding.toml"
    cfg.write_text(
        "[regime]\ntrend_margin = 0.0005\n[strategy]\nmax_hold_bars = 1000\n"
        "exit_on_regime_change = false\ntarget_atr_mult = 50.0\nstop_atr_mult = 20.0\n"
        "volume_threshold = 0.0\n"
    )
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    crash = subprocess.Popen(
        [sys.executable, "-m", "sovereign", "backtest", "--data", CRASH_DATA, "--config", str(cfg),
         "--out", str(tmp_path / "a"), *common],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(1.0)
    calm = subprocess.run(
        [sys.executable, "-m", "sovereign", "backtest", "--data", "synthetic:40x900",
         "--config", str(cfg), "--out", str(tmp_path / "b"), *common],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    _crash_out, crash_err = crash.communicate(timeout=300)
    assert crash.returncode == 0, crash_err
    # Either the calm session found the account in use, or it ran after the halt.
    assert calm.returncode in (0, 2), calm.stderr
    if calm.returncode == 2:
        assert "in use by" in calm.stderr
    shown = sovereign("constitution", "--account", "shared", "--state", str(state), cwd=tmp_path)
    assert "account/shared: HALTED" in shown.stdout, shown.stdout


def test_the_lock_dies_with_its_process(tmp_path) -> None:
    script = (
        "import sys, time\n"
        "from sovereign.memory.account import AccountLock\n"
        f"AccountLock.acquire({str(tmp_path)!r}, {SCOPE!r}, run_id='doomed')\n"
        "print('locked', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    with pytest.raises(AccountBusyError, match="doomed"):
        AccountLock.acquire(tmp_path, SCOPE)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    AccountLock.acquire(tmp_path, SCOPE).release()  # the kernel released it


def test_a_redis_lease_has_one_owner_expires_after_a_crash_and_notices_a_takeover(
    redis_url: str, monkeypatch
) -> None:
    import redis

    monkeypatch.setattr(AccountLock, "LEASE_MS", 600)
    scope = "account/leased"
    owner = AccountLock.acquire("unused", scope, run_id="owner", redis_url=redis_url)
    with pytest.raises(AccountBusyError, match="owner"):
        AccountLock.acquire("unused", scope, redis_url=redis_url)
    time.sleep(1.0)  # renewed meanwhile: still owned
    with pytest.raises(AccountBusyError):
        AccountLock.acquire("unused", scope, redis_url=redis_url)
    owner._stop.set()  # the owner's process dies: nobody renews
    time.sleep(0.9)
    successor = AccountLock.acquire("unused", scope, run_id="next", redis_url=redis_url)
    # A lease taken over behind its owner's back is noticed at the next renewal.
    redis.Redis.from_url(redis_url).set(f"sovereign:lock:{scope}", "someone else")
    time.sleep(0.5)
    with pytest.raises(AccountBusyError, match="lost"):
        successor.check()
    successor.release()
    owner.release()


# -- GUARDED WRITES -------------------------------------------------------------------------


def guardian(state: Path, scope: str = SCOPE):
    from sovereign.actors.guardian import GuardianActor

    return GuardianActor(
        0, Constitution(), SizingPolicy(), SECRET, 300, stores=Stores(str(state)), state_scope=scope
    )


def test_a_writer_that_did_not_see_the_halt_cannot_write_over_it(tmp_path) -> None:
    """Two guardians on one account (two sessions that got past the lock, or a stale
    process): the one that halts wins; the other's ACTIVE is refused and it adopts the
    halt at once, canceling its working orders."""
    state = tmp_path / "state"
    calm, crashing = guardian(state), guardian(state)
    working = BookOrder(order_id="AAA-1", symbol="AAA", side="BUY", remaining=10, price=10.0)
    book = BookSnapshot(msg_id="b", ts_event=1, ts_init=1, working=[working], session_date="")
    calm.receive([book, cash_account(1, 100_000.0)])
    crashing.receive([book, cash_account(1, 100_000.0)])
    crashing.receive([cash_account(2, 80_000.0)])
    assert crashing.machine is not None and crashing.machine.state.value == "HALTED"
    calm.receive([cash_account(3, 104_000.0)])
    out = calm.receive([cash_account(4, 104_500.0)])  # a new high, held: it writes
    assert calm.machine is not None and calm.machine.state.value == "HALTED"
    assert calm.counters["state_writes_refused"] == 1
    changed = [m for m in out if isinstance(m, TradingStateChanged)]
    assert [(m.previous, m.state) for m in changed] == [("ACTIVE", "HALTED")]
    assert [m.order_id for m in out if isinstance(m, CancelOrder)] == ["AAA-1"]
    g, problem = inspect_state(state, parse_config({}), SCOPE)
    assert problem == "" and g is not None and g.state == "HALTED"


# -- A STATE THAT CANNOT BE LOST OR EDITED ----------------------------------------------------


def _delete_file(state: Path, active: dict[str, Any]) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(str(state_path(state)) + suffix).unlink(missing_ok=True)


def _truncate_file(state: Path, active: dict[str, Any]) -> None:
    for suffix in ("-wal", "-shm"):
        Path(str(state_path(state)) + suffix).unlink(missing_ok=True)
    state_path(state).write_bytes(b"")


def _delete_row(state: Path, active: dict[str, Any]) -> None:
    with closing(raw(state)) as conn:
        conn.execute("DELETE FROM kv WHERE key = ?", (GUARDIAN,))


def _edit_to_active(state: Path, active: dict[str, Any]) -> None:
    put(state, {**doc(state), "state": "ACTIVE"})


def _edit_without_seal(state: Path, active: dict[str, Any]) -> None:
    d = {**doc(state), "state": "ACTIVE", "high_water_mark": 50_000.0}
    d.pop("mac")
    put(state, d)


def _older_copy(state: Path, active: dict[str, Any]) -> None:
    put(state, active)  # a genuine, sealed document: from before the halt


def _garbage_file(state: Path, active: dict[str, Any]) -> None:
    for suffix in ("-wal", "-shm"):
        Path(str(state_path(state)) + suffix).unlink(missing_ok=True)
    state_path(state).write_bytes(os.urandom(4096))


def _sim_book_deleted(state: Path, active: dict[str, Any]) -> None:
    with closing(raw(state)) as conn:
        conn.execute("DELETE FROM kv WHERE key = ?", (SIM,))


def _sim_cash_edited(state: Path, active: dict[str, Any]) -> None:
    put(state, {**doc(state, SIM), "cash": 1e9}, SIM)


TAMPERING = {
    "state file deleted": _delete_file,
    "state file truncated": _truncate_file,
    "state file garbage": _garbage_file,
    "guardian row deleted": _delete_row,
    "state edited to ACTIVE": _edit_to_active,
    "state edited without its seal": _edit_without_seal,
    "state replaced by an older copy": _older_copy,
    "simulated book deleted": _sim_book_deleted,
    "simulated cash edited": _sim_cash_edited,
}


@pytest.mark.parametrize("tamper", list(TAMPERING))
def test_a_lost_or_edited_state_is_refused_at_start_never_reset(
    halted, crash_data, tamper: str
) -> None:
    state, active = halted
    TAMPERING[tamper](state, active)
    before = _files(state)
    with pytest.raises(StateIntegrityError, match="sovereign resume"):
        session(state, crash_data, "after-tampering", max_steps=20)
    # Nothing was written on the way out: the stores are as the tampering left them.
    assert _files(state) == before


def _files(state: Path) -> dict[str, bytes]:
    """The state directory's databases, their logs checkpointed in (what a reader sees)."""
    out: dict[str, bytes] = {}
    for name in ("state.sqlite", "governance.sqlite"):
        path = state / name
        if not path.exists():
            continue
        try:
            with closing(sqlite3.connect(path)) as conn:
                rows = conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
                ).fetchall()
                dump = [
                    (t, sorted(map(repr, conn.execute(f"SELECT * FROM {t}").fetchall())))
                    for (t,) in rows
                ]
        except sqlite3.DatabaseError:
            dump = [("unreadable", [repr(path.read_bytes())])]
        out[name] = repr(dump).encode()
    return out


def test_the_command_line_refuses_with_exit_2_and_names_resume(halted, tmp_path) -> None:
    state, active = halted
    _edit_to_active(state, active)
    r = sovereign(
        "backtest",
        "--data",
        "synthetic:4x50",
        "--account",
        "shared",
        "--state",
        str(state),
        "--out",
        str(tmp_path / "out"),
        cwd=tmp_path,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "edited" in r.stderr and "sovereign resume --account shared --confirm" in r.stderr
    shown = sovereign("constitution", "--account", "shared", "--state", str(state), cwd=tmp_path)
    assert "REFUSED AT START" in shown.stdout


def test_resume_starts_a_damaged_account_again_on_the_record(halted, crash_data) -> None:
    state, active = halted
    _delete_file(state, active)
    done = resume_account(
        state, config(), SCOPE, reason="store lost, reviewed", operator="test", ts=1
    )
    assert done.rebuilt and "no stored trading state" in done.rebuilt
    assert done.sim_account_reset
    with AuditLog(governance_path(state)) as audit:
        (entry,) = audit.entries(action="resume")
    assert entry.payload["rebuilt"] is True and entry.payload["sim_account_reset"] is True
    after = session(state, crash_data, "after-resume", max_steps=50)
    assert after.guardian is not None and after.guardian.state == "ACTIVE"


def test_a_guardian_restarted_on_a_damaged_store_comes_up_halted(halted) -> None:
    """Mid-session there is no start to refuse: a guardian that Ray restarts onto a state
    that fails its checks halts (audited) rather than trust it."""
    state, active = halted
    _older_copy(state, active)
    g = guardian(state)
    assert g.machine is not None and g.machine.state.value == "HALTED"
    assert "later change" in g.machine.s.halted_reason
    g2, problem = inspect_state(state, config(), SCOPE)
    assert problem == "" and g2 is not None and g2.state == "HALTED"


def test_an_older_copy_from_after_a_resume_cannot_undo_a_later_halt(halted) -> None:
    """The stale document records a resume: the restarted guardian's fail-closed halt must
    not be taken for a state with fewer resumes and give way to it, nor may a guardian
    adopt a stored state the audit log does not stand behind."""
    state, _ = halted
    resume_account(state, config(), SCOPE, reason="reviewed", operator="t", ts=10)
    g = guardian(state)
    book = BookSnapshot(msg_id="b", ts_event=11, ts_init=11, session_date="")
    g.receive([book, cash_account(11, 70_000.0)])
    g.receive([cash_account(12, 70_000.0)])
    resumed_doc = doc(state)  # ACTIVE, one resume
    g.receive([cash_account(13, 50_000.0)])  # halts again
    assert g.machine is not None and g.machine.state.value == "HALTED"
    put(state, resumed_doc)  # the older, genuine copy put back
    restarted = guardian(state)
    assert restarted.machine is not None and restarted.machine.state.value == "HALTED"
    restarted.receive([book, cash_account(14, 52_000.0)])
    restarted.receive([cash_account(15, 51_000.0)])
    assert restarted.machine.state.value == "HALTED"
    stored, problem = inspect_state(state, config(), SCOPE)
    assert problem == "" and stored is not None and stored.state == "HALTED"


def test_a_lost_simulated_book_is_started_again_by_resume(halted, crash_data) -> None:
    state, active = halted
    resume_account(state, config(), SCOPE, reason="reviewed", operator="t", ts=10)
    _sim_book_deleted(state, active)
    with pytest.raises(StateIntegrityError, match="book"):
        session(state, crash_data, "no-book", max_steps=20)
    done = resume_account(state, config(), SCOPE, reason="book lost", operator="t", ts=11)
    assert done.sim_account_reset and "book" in done.rebuilt
    after = session(state, crash_data, "new-book", max_steps=20)
    assert after.guardian is not None and after.guardian.state == "ACTIVE"


def test_an_active_account_resumed_after_a_halt_trades_again(halted, crash_data) -> None:
    state, _ = halted
    done = resume_account(state, config(), SCOPE, reason="reviewed", operator="t", ts=5)
    assert not done.rebuilt and done.state.state == "ACTIVE"
    after = session(state, crash_data, "resumed", max_steps=350)
    assert after.guardian is not None and after.guardian.state == "ACTIVE"
    (stats,) = [s for s in after.result.actor_stats if s.role == "guardian"]
    assert stats.counters.get("verdict_APPROVED", 0) > 0

"""What operators can ask and do, answered from the stored state.

One plain core behind every front end — the Telegram bot, the console and the CLI only
format what these functions return. Everything is read from the state directory (the
state store, the governance store with its audit log, the trade memory), so it works the
same while a session runs and when none does; a rollback written here is picked up by a
running session at its next step.
"""

from __future__ import annotations

import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sovereign.config import Config
from sovereign.core.guardian import GuardianState

COMMANDS: dict[str, str] = {
    "status": "trading state, equity and what is active",
    "capital": "equity, cash, day P&L, drawdown from the peak, exposure",
    "rules": "the active rules, with their ids",
    "history": "self-modifications, newest first (/history 2 for page 2)",
    "constitution": "the limits, their fingerprint and the trading state",
    "readiness": "the live-readiness checklist: what passes and what does not yet",
    "rollback": "/rollback <id> — restore the rules from before modification <id>",
    "help": "this list",
}


class OperationError(ValueError):
    """A command that cannot be carried out; the message is for the operator."""


@dataclass(frozen=True, slots=True)
class Scope:
    """Whose state: a named account, or the latest run's."""

    key: str  # e.g. "account/prop-1" or "run/<id>"

    @property
    def label(self) -> str:
        return self.key.replace("/", " ", 1)


def find_scope(state_dir: str | Path, config: Config, explicit: str = "") -> Scope | None:
    """The scope to report on: explicit, the configured account, or the latest one seen."""
    if explicit:
        return Scope(explicit)
    if config.engine.account:
        return Scope(f"account/{config.engine.account}")
    best: tuple[int, str] | None = None
    with closing(_store(state_dir, config)) as store:
        for key in store.keys("guardian/"):
            doc = store.get(key)
            ts = int((doc or {}).get("last_ts", 0))
            if best is None or ts > best[0]:
                best = (ts, key.removeprefix("guardian/"))
    return Scope(best[1]) if best else None


def _store(state_dir: str | Path, config: Config) -> Any:
    from sovereign.memory.state_store import open_state_store

    return open_state_store(state_dir, config.state.redis_url)


def guardian_state(state_dir: str | Path, config: Config, scope: Scope) -> GuardianState | None:
    with closing(_store(state_dir, config)) as store:
        doc = store.get(f"guardian/{scope.key}")
    return None if doc is None else GuardianState.from_dict(doc)


# -- QUERIES ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Capital:
    scope: str
    equity: float
    cash: float
    day_pnl: float
    day_return: float
    drawdown: float
    high_water_mark: float
    gross_exposure: float
    exposure: float
    open_positions: int
    as_of_ts: int


def capital(state_dir: str | Path, config: Config, scope: Scope) -> Capital:
    g = guardian_state(state_dir, config, scope)
    if g is None:
        raise OperationError(f"no account state for {scope.label} yet")
    equity = g.last_equity
    return Capital(
        scope=scope.label,
        equity=equity,
        cash=g.last_cash,
        day_pnl=equity - g.day_start_equity,
        day_return=(equity / g.day_start_equity - 1) if g.day_start_equity else 0.0,
        drawdown=(1 - equity / g.high_water_mark) if g.high_water_mark else 0.0,
        high_water_mark=g.high_water_mark,
        gross_exposure=g.last_gross_exposure,
        exposure=g.last_gross_exposure / equity if equity else 0.0,
        open_positions=g.last_open_positions,
        as_of_ts=g.last_ts,
    )


@dataclass(frozen=True, slots=True)
class ConstitutionView:
    limits: dict[str, Any]
    fingerprint: str
    trading_state: str
    halted_reason: str


def constitution(state_dir: str | Path, config: Config, scope: Scope | None) -> ConstitutionView:
    import msgspec

    c = config.build_constitution()
    limits = msgspec.structs.asdict(c)
    limits["forbidden_modifications"] = sorted(c.forbidden_modifications)
    g = guardian_state(state_dir, config, scope) if scope is not None else None
    return ConstitutionView(
        limits=limits,
        fingerprint=c.fingerprint,
        trading_state=g.state if g else "no session yet",
        halted_reason=g.halted_reason if g and g.state == "HALTED" else "",
    )


@dataclass(frozen=True, slots=True)
class RuleView:
    rule_id: str
    text: str
    provenance: str


def rules(state_dir: str | Path, scope: Scope) -> tuple[int, list[RuleView], dict[str, float]]:
    from sovereign.memory.governance import GovernanceStore

    with GovernanceStore(state_dir) as store:
        book = store.current(scope.key)
    return (
        book.version,
        [RuleView(r.rule_id, r.render(), r.provenance) for r in book.rules],
        dict(book.parameters),
    )


@dataclass(frozen=True, slots=True)
class HistoryPage:
    page: int
    pages: int
    total: int
    entries: list[Any]


def history(
    state_dir: str | Path, scope: Scope, *, page: int = 1, per_page: int = 5
) -> HistoryPage:
    from sovereign.memory.governance import GovernanceStore

    if page < 1:
        raise OperationError("pages start at 1")
    with GovernanceStore(state_dir) as store:
        total = store.count(scope.key)
        entries = store.history(scope.key, limit=per_page, offset=(page - 1) * per_page)
    pages = max(1, -(-total // per_page))
    if page > pages:
        raise OperationError(f"there are only {pages} page(s) of history")
    return HistoryPage(page, pages, total, entries)


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    passed: bool
    detail: str


@dataclass(slots=True)
class Readiness:
    checks: list[Check] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return all(c.passed for c in self.checks)


# What paper trading must show before live money (documented in the README).
READY_MIN_DAYS = 20
READY_MIN_TRADES = 50
READY_MAX_DRAWDOWN = 0.05


def readiness(state_dir: str | Path, config: Config, scope: Scope | None) -> Readiness:
    """The live-readiness checklist, from what the stored state shows."""
    from sovereign.memory.audit import governance_path, verify_audit
    from sovereign.memory.trade_memory import TradeMemory

    r = Readiness()
    gov = governance_path(state_dir)
    if gov.exists():
        result = verify_audit(state_dir)  # read-only
        r.checks.append(
            Check(
                "audit log intact",
                result.ok,
                f"{result.entries} entries" + ("" if result.ok else f"; {result.problems[0]}"),
            )
        )
    else:
        r.checks.append(Check("audit log intact", False, "no audit log yet"))
    g = guardian_state(state_dir, config, scope) if scope is not None else None
    r.checks.append(
        Check(
            "trading state ACTIVE",
            g is not None and g.state == "ACTIVE",
            g.state if g else "no session yet",
        )
    )
    worst = g.worst_drawdown if g else 1.0
    r.checks.append(
        Check(
            f"worst drawdown under {READY_MAX_DRAWDOWN:.0%}",
            g is not None and worst < READY_MAX_DRAWDOWN,
            f"{worst:.2%}" if g else "no session yet",
        )
    )
    frame = TradeMemory(state_dir).to_frame()
    paper = frame[frame["run_id"].astype(str).str.startswith("paper")] if not frame.empty else frame
    days = 0
    if not paper.empty:
        from sovereign.core.calendar import session_date

        days = len({session_date(int(t)) for t in paper["exit_ts"]})
    r.checks.append(
        Check(f"{READY_MIN_DAYS}+ paper trading days", days >= READY_MIN_DAYS, f"{days} days")
    )
    n = len(paper)
    r.checks.append(
        Check(f"{READY_MIN_TRADES}+ paper trades", n >= READY_MIN_TRADES, f"{n} trades")
    )
    if n:
        expectancy = float(paper["pnl"].mean())
        r.checks.append(
            Check("positive paper expectancy", expectancy > 0, f"{expectancy:+.2f} per trade")
        )
    else:
        r.checks.append(Check("positive paper expectancy", False, "no paper trades"))
    r.checks.append(
        Check(
            "broker is not the simulator",
            config.broker.kind != "sim",
            f"configured broker: {config.broker.kind}",
        )
    )
    return r


# -- ACTIONS ----------------------------------------------------------------------------


def rollback(state_dir: str | Path, argument: str, *, by: str, reason: str = "") -> Any:
    """Roll back a modification (``argument`` is its id, as typed by the operator)."""
    from sovereign.memory.governance import GovernanceStore, RollbackError

    text = argument.strip().lstrip("#")
    if not text.isdigit():
        raise OperationError(
            f"/rollback needs a modification number, e.g. /rollback 3 (got {argument!r}); "
            "/history lists them"
        )
    with GovernanceStore(state_dir) as store:
        try:
            return store.rollback(
                int(text), reason=reason or f"rollback by {by}", by=by, ts_ns=time.time_ns()
            )
        except RollbackError as exc:
            raise OperationError(f"{exc} (/history lists the modifications)") from None


@dataclass(frozen=True, slots=True)
class Resumed:
    scope: str
    audit_seq: int
    state: GuardianState
    rebuilt: str
    """Why the state had to be rebuilt ("" for a resume of a plain halt)."""
    sim_account_reset: bool


def resume_account(
    state_dir: str | Path, config: Config, scope: str, *, reason: str, operator: str, ts: int
) -> Resumed:
    """Leave HALTED — the only way — or start again an account whose safety state (its
    trading state, or a named simulated account's book) was lost or failed its checks.
    Audited first, then written (a crash between the two leaves the state older than the
    audit log, which the next start refuses: run it again)."""
    import sqlite3

    from sovereign.memory.audit import AuditKeyError
    from sovereign.memory.state_store import CorruptStateError

    if not reason.strip():
        raise OperationError("a reason is required to resume trading")
    try:
        return _resume(state_dir, config, scope, reason=reason, operator=operator, ts=ts)
    except (AuditKeyError, CorruptStateError, sqlite3.DatabaseError) as exc:
        raise OperationError(
            f"the state directory {state_dir} cannot be written ({exc}): restore it, or its "
            "audit key, from a backup, or move the damaged file aside and resume again"
        ) from None


def _resume(
    state_dir: str | Path, config: Config, scope: str, *, reason: str, operator: str, ts: int
) -> Resumed:
    from sovereign.core.guardian import TradingState, rebuild, resume
    from sovereign.memory.account import (
        GUARDIAN_KIND,
        StateIntegrityError,
        check_guardian_state,
        guardian_state_key,
        read_guardian_state,
        seal,
    )
    from sovereign.memory.audit import AuditLog, governance_path
    from sovereign.memory.state_store import CorruptStateError

    name = guardian_state_key(scope)
    with closing(_store(state_dir, config)) as store, AuditLog(governance_path(state_dir)) as audit:
        key = audit.ledger.key(audit.connection)
        problem = ""
        try:
            doc = store.get(name)
        except CorruptStateError as exc:
            doc, problem = None, str(exc)
        state: GuardianState | None = None
        if not problem:
            try:
                state = check_guardian_state(doc, scope, audit.connection, key)
            except StateIntegrityError as exc:
                problem = str(exc)
        book_problem = _sim_book_problem(
            store, key, config, scope, history=bool(problem) or (state is not None)
        )
        if not problem and state is None:
            raise OperationError(f"no trading state for {scope} in {state_dir}")
        if not problem and state is not None and state.state != TradingState.HALTED.value:
            if not book_problem:
                raise OperationError(f"trading is {state.state}, not HALTED: nothing to resume")
            # Only the simulated book has to start again; the trading state stands.
            entry = audit.append(
                ts_ns=ts,
                actor="cli",
                action="sim_account_reset",
                payload={
                    "scope": scope,
                    "reason": reason,
                    "operator": operator,
                    "problem": book_problem,
                    "capital": config.engine.initial_capital,
                },
            )
            _reset_sim_book(store, key, config, scope)
            return Resumed(scope, entry.seq, state, book_problem, True)
        if not problem:
            assert state is not None
            record = resume(state, reason=reason, operator=operator, ts=ts)
        else:
            readable, _ = read_guardian_state(doc, key)
            state, record = rebuild(
                readable, reason=reason, operator=operator, ts=ts, problem=problem
            )
        entry = audit.append(
            ts_ns=ts,
            actor="cli",
            action="resume",
            payload={
                "scope": scope,
                "to": "ACTIVE",
                **record,
                "sim_account_reset": bool(book_problem),
            },
        )
        if book_problem:
            # The operator starts the simulated account again from the configured capital:
            # said in the audit entry, so the record shows the reset.
            _reset_sim_book(store, key, config, scope)
        state.audit_seq, state.audit_hash = entry.seq, entry.hash
        store.put(name, seal(key, GUARDIAN_KIND, state.to_dict()))
    return Resumed(scope, entry.seq, state, problem or book_problem, bool(book_problem))


def _sim_book_problem(store: Any, key: bytes, config: Config, scope: str, *, history: bool) -> str:
    """What is wrong with a named simulated account's book ("" if nothing, or if the
    account trades at a real broker)."""
    from sovereign.memory.account import StateIntegrityError, check_sim_account
    from sovereign.memory.state_store import CorruptStateError

    if not scope.startswith("account/") or config.broker.kind != "sim":
        return ""
    account = scope.split("/", 1)[1]
    from sovereign.memory.account import sim_account_key

    try:
        check_sim_account(store.get(sim_account_key(account)), key, account, has_history=history)
    except (StateIntegrityError, CorruptStateError) as exc:
        return str(exc)
    return ""


def _reset_sim_book(store: Any, key: bytes, config: Config, scope: str) -> None:
    from sovereign.memory.account import SIM_ACCOUNT_KIND, seal, sim_account_key

    fresh = {"cash": config.engine.initial_capital, "positions": {}}
    store.put(sim_account_key(scope.split("/", 1)[1]), seal(key, SIM_ACCOUNT_KIND, fresh))


def inspect_state(
    state_dir: str | Path, config: Config, scope: str
) -> tuple[GuardianState | None, str]:
    """A scope's trading state for display, and what is wrong with it ("" if nothing):
    the checks a session's start makes, without changing anything."""
    import sqlite3

    from sovereign.memory.account import (
        StateIntegrityError,
        check_guardian_state,
        guardian_state_key,
        read_guardian_state,
    )
    from sovereign.memory.audit import AuditKeyError, governance_path, read_audit_key
    from sovereign.memory.state_store import CorruptStateError

    try:
        with closing(_store(state_dir, config)) as store:
            doc = store.get(guardian_state_key(scope))
    except (CorruptStateError, sqlite3.DatabaseError) as exc:
        return None, f"the state store is damaged: {exc}"
    try:
        key = read_audit_key(state_dir)
    except AuditKeyError as exc:
        return read_guardian_state(doc, None)[0], str(exc)
    path = governance_path(state_dir)
    if key is None:
        state, problem = read_guardian_state(doc, None)
        return state, problem if doc is not None else ""
    from sovereign.memory.audit import open_readonly

    conn = open_readonly(path) if path.exists() else sqlite3.connect(":memory:")
    try:
        if not path.exists():
            conn.execute("CREATE TABLE audit (seq, ts_ns, actor, action, payload, prev_hash, hash)")
        try:
            return check_guardian_state(doc, scope, conn, key), ""
        except StateIntegrityError as exc:
            return read_guardian_state(doc, key)[0], str(exc)
        except sqlite3.DatabaseError as exc:
            return read_guardian_state(doc, key)[0], f"the audit log cannot be read: {exc}"
    finally:
        conn.close()

"""Running a session end to end: data in, actor graph, report out.

Shared by ``sovereign backtest`` and ``sovereign paper`` (and the tests), so both commands
produce the same report from the same kind of session.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sovereign.config import Config
from sovereign.core.guardian import GuardianState
from sovereign.core.metrics import compute_metrics
from sovereign.data.loaders import LoadedData
from sovereign.engine import Engine, Mode, Progress, SessionResult, make_runtime
from sovereign.memory.account import AccountLock, guardian_state_key
from sovereign.memory.checkpoints import drop_checkpoints
from sovereign.memory.state_store import CorruptStateError, open_state_store, state_path
from sovereign.memory.trade_memory import TradeMemory
from sovereign.messages import Notification, ShardReport
from sovereign.report import ReportPaths, write_report
from sovereign.specs import state_scope


@dataclass(slots=True)
class SessionOutput:
    result: SessionResult
    metrics: dict[str, Any]
    trades: pd.DataFrame
    paths: ReportPaths | None
    guardian: GuardianState | None = None
    selfmod: dict[str, Any] | None = None


def new_run_id(mode: str) -> str:
    """A readable, unique run id: mode, UTC wall time, and random suffix."""
    import secrets

    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{mode}-{stamp}-{secrets.token_hex(3)}"


def run_session(
    config: Config,
    data: LoadedData | None,
    *,
    runtime: str,
    mode: Mode,
    state_dir: str | Path,
    out_dir: str | Path | None,
    run_id: str | None = None,
    speed: float = 0.0,
    max_steps: int | None = None,
    on_notification: Callable[[Notification], None] | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    wire: bool = False,
    on_started: Callable[[Engine], None] | None = None,
    feed: Any | None = None,
    symbols: list[str] | None = None,
    daily_summary: bool = False,
) -> SessionOutput:
    """Run one session and, when ``out_dir`` is given, write its report.

    With ``data`` it replays it; with a live ``feed`` (and its ``symbols``) it trades what
    the feed delivers until it stops or ``max_steps``.
    """
    run_id = run_id or new_run_id(mode)
    # Absolute before it reaches any actor: an actor process on a Ray cluster has its own
    # working directory, where a relative path would put the state somewhere else (and
    # apart from its audit key).
    state_dir = Path(state_dir).resolve()
    if feed is not None:
        config = with_broker_account(config, state_dir)
    scope = state_scope(config, run_id)
    # One owner per account, and a safety state that checks out, before anything starts.
    lock = AccountLock.acquire(state_dir, scope, run_id=run_id, redis_url=config.state.redis_url)
    try:
        audit_key = check_account(config, state_dir, scope)
        return _run_locked(
            config,
            data,
            lock,
            audit_key,
            runtime=runtime,
            mode=mode,
            state_dir=state_dir,
            out_dir=out_dir,
            run_id=run_id,
            speed=speed,
            max_steps=max_steps,
            on_notification=on_notification,
            on_progress=on_progress,
            wire=wire,
            on_started=on_started,
            feed=feed,
            symbols=symbols,
            daily_summary=daily_summary,
        )
    finally:
        lock.release()


def with_broker_account(config: Config, state_dir: str | Path) -> Config:
    """A live session's configuration with the account it must trade under: a real
    broker's account is identified by the broker, never by the session's name alone, so
    its trading state persists from session to session (``memory.account``)."""
    if config.broker.kind == "sim":
        return config
    import sqlite3

    import msgspec

    from sovereign.memory.account import AccountRefusedError, bind_broker_account
    from sovereign.memory.audit import AuditKeyError, AuditLog, governance_path
    from sovereign.specs import BrokerAccountError, broker_account_id

    try:
        identity = broker_account_id(config)
    except BrokerAccountError as exc:
        raise AccountRefusedError(str(exc)) from None
    try:
        with AuditLog(governance_path(state_dir)) as audit:
            scope = bind_broker_account(audit, identity, config.engine.account)
    except (AuditKeyError, sqlite3.DatabaseError) as exc:
        raise AccountRefusedError(
            f"the audit log in {state_dir} cannot bind the broker account {identity}: {exc}"
        ) from None
    return msgspec.structs.replace(
        config,
        engine=msgspec.structs.replace(config.engine, account=scope.split("/", 1)[1]),
    )


def check_account(config: Config, state_dir: str | Path, scope: str) -> bytes:
    """The checks a session makes before it starts (``memory.account``); returns the
    audit key its actors seal with. Raises ``AccountRefusedError`` with what to do."""
    import sqlite3
    from contextlib import closing

    from sovereign.memory.account import (
        StateIntegrityError,
        check_guardian_state,
        check_sim_account,
        sim_account_key,
    )
    from sovereign.memory.audit import (
        AuditKeyError,
        AuditLog,
        governance_path,
        has_history,
        verify_audit,
    )

    try:
        # The audit log is what the safety state is checked against: it must hold. It is
        # verified read-only before anything opens it for writing (which would make an
        # empty log where one was lost).
        if has_history(state_dir):
            verified = verify_audit(state_dir)
            if not verified.ok:
                raise StateIntegrityError(_audit_refusal(state_dir, scope, verified.problems))
        with (
            AuditLog(governance_path(state_dir)) as audit,
            closing(open_state_store(state_dir, config.state.redis_url)) as store,
        ):
            key = audit.ledger.key(audit.connection)
            state = check_guardian_state(
                store.get(guardian_state_key(scope)), scope, audit.connection, key
            )
            if config.broker.kind == "sim" and scope.startswith("account/"):
                account = scope.split("/", 1)[1]
                check_sim_account(
                    store.get(sim_account_key(account)),
                    key,
                    account,
                    has_history=state is not None,
                )
    except (AuditKeyError, CorruptStateError, sqlite3.DatabaseError) as exc:
        raise StateIntegrityError(
            f"the state of {scope} in {state_dir} cannot be read ({exc}); it is not reset "
            "silently: restore it from a backup, or move the damaged file aside and run "
            "`sovereign resume ... --confirm --reason ...`"
        ) from None
    return key


def _audit_refusal(state_dir: str | Path, scope: str, problems: list[str]) -> str:
    from sovereign.memory.account import resume_hint

    shown = "; ".join(problems[:3]) + ("; ..." if len(problems) > 3 else "")
    if problems == ["the audit anchor is missing from the state store"]:
        # The chain itself holds: the state store that anchored it was lost.
        return (
            f"the state store in {state_dir} was lost or replaced (the audit log's anchor is "
            f"missing); it is not started again silently: {resume_hint(scope)}"
        )
    return (
        f"the audit log in {state_dir} does not verify ({shown}): no session starts on a "
        "state that cannot be checked against it. Restore governance.sqlite (and audit.key) "
        "from a backup, or start a new state directory (`sovereign audit verify` shows the "
        "problems)"
    )


def _run_locked(
    config: Config,
    data: LoadedData | None,
    lock: AccountLock,
    audit_key: bytes,
    *,
    runtime: str,
    mode: Mode,
    state_dir: str | Path,
    out_dir: str | Path | None,
    run_id: str,
    speed: float,
    max_steps: int | None,
    on_notification: Callable[[Notification], None] | None,
    on_progress: Callable[[Progress], None] | None,
    wire: bool,
    on_started: Callable[[Engine], None] | None,
    feed: Any | None,
    symbols: list[str] | None,
    daily_summary: bool,
) -> SessionOutput:
    rt = make_runtime(runtime, config, wire=wire)
    engine = Engine(
        config,
        data,
        rt,
        mode=mode,
        run_id=run_id,
        state_dir=state_dir,
        speed=speed,
        max_steps=max_steps,
        on_notification=on_notification,
        on_progress=on_progress,
        feed=feed,
        symbols=symbols,
        daily_summary=daily_summary,
        interval_s=config.broker.bar_interval_s if feed is not None else None,
        audit_key=audit_key,
        lease=lock,
    )
    if on_started is not None:
        on_started(engine)
    try:
        result = engine.run()
    finally:
        # A session's checkpoints serve its own restarts only.
        drop_checkpoints(state_dir, run_id, config.state.redis_url)
    trades = TradeMemory(state_dir).to_frame(run_id=run_id)
    metrics = session_metrics(result, trades, config)
    guardian = load_guardian_state(config, state_dir, state_scope(config, run_id))
    selfmod = self_modification_record(
        config, data, result, trades, state_dir=state_dir, run_id=run_id, mode=mode
    )
    paths = None
    if out_dir is not None:
        paths = write_report(
            out_dir,
            title=f"Sovereign {mode} {run_id}",
            metrics=metrics,
            trades=trades,
            ts=result.ts,
            equity=result.equity,
            meta={
                **session_meta(result, data, config, guardian, metrics),
                # The audit chain's head when the session ended: evidence kept outside the
                # state directory of how long the chain was and what it ended with.
                "audit_head": audit_head(state_dir),
            },
            selfmod=selfmod,
        )
    return SessionOutput(
        result=result,
        metrics=metrics,
        trades=trades,
        paths=paths,
        guardian=guardian,
        selfmod=selfmod,
    )


def self_modification_record(
    config: Config,
    data: LoadedData | None,
    result: SessionResult,
    trades: pd.DataFrame,
    *,
    state_dir: str | Path,
    run_id: str,
    mode: str,
) -> dict[str, Any] | None:
    """What the self-modification engine did in this run, and — for a backtest that
    deployed rules — the period after the first deployment compared with the same period
    replayed without self-modification."""
    if not config.selfmod.enabled:
        return None
    from sovereign.memory.governance import DEPLOYED, ROLLED_BACK, GovernanceStore

    scope = state_scope(config, run_id)
    with GovernanceStore(state_dir) as store:
        history = sorted(store.history(scope, limit=10_000), key=lambda r: r.id)
    since = int(result.ts[0]) if len(result.ts) else 0
    history = [r for r in history if r.ts_ns >= since]
    record: dict[str, Any] = {
        "scope": scope,
        "deployed": sum(r.status in (DEPLOYED, ROLLED_BACK) for r in history),
        "rejected": sum(r.status == "AutoRejected" for r in history),
        "modifications": [
            {
                "id": r.id,
                "time": _iso(r.ts_ns),
                "status": r.status,
                "summary": r.summary,
                "violations": r.violations,
                "evidence": ", ".join(
                    f"{k}={_fmt(r.evidence.get(k))}"
                    for k in ("n", "win_rate", "q_value", "actual_pnl", "counterfactual_pnl")
                    if k in r.evidence
                ),
            }
            for r in history
        ],
    }
    deployed = [r for r in history if r.status in (DEPLOYED, ROLLED_BACK)]
    if deployed:
        from sovereign.memory.trade_memory import TradeMemory
        from sovereign.selfmod_eval import rule_records

        shadow = TradeMemory(state_dir).shadow_frame(run_id=run_id)
        # Each rule's shadow record: what the trades it acted on made, against the rest.
        record["rules"] = rule_records(deployed, trades, shadow)
    if mode == "backtest" and deployed and config.selfmod.compare_without_rules and data:
        import msgspec

        start = deployed[0].ts_ns
        # The replay is a what-if: it runs in a scope of its own, never on the named
        # account (whose trading state and book it would otherwise overwrite).
        plain = msgspec.structs.replace(
            config,
            selfmod=msgspec.structs.replace(config.selfmod, enabled=False),
            engine=msgspec.structs.replace(config.engine, account=""),
        )
        other = run_session(
            plain,
            data,
            runtime="local",
            mode="backtest",
            state_dir=state_dir,
            out_dir=None,
            run_id=f"{run_id}-without-rules",
        )
        record["comparison"] = {
            "from": _iso(start),
            "with_rules": window_metrics(result, trades, start, config),
            "without_rules": window_metrics(other.result, other.trades, start, config),
            "replay_run_id": f"{run_id}-without-rules",
        }
    return record


def window_metrics(
    result: SessionResult, trades: pd.DataFrame, start_ns: int, config: Config
) -> dict[str, Any]:
    """Metrics of the part of a session from ``start_ns`` on (equity rebased there)."""
    keep = result.ts >= start_ns
    before = np.flatnonzero(~keep)
    base = float(result.equity[before[-1]]) if before.size else config.engine.initial_capital
    if not trades.empty:
        trades = trades[trades["entry_ts"].to_numpy(dtype=np.int64) >= start_ns]
    window = SessionResult(
        **{
            **{f: getattr(result, f) for f in result.__slots__},  # type: ignore[attr-defined]
            "ts": result.ts[keep],
            "equity": result.equity[keep],
            "cash": result.cash[keep],
            "gross_exposure": result.gross_exposure[keep],
        }
    )
    import msgspec

    rebased = msgspec.structs.replace(
        config, engine=msgspec.structs.replace(config.engine, initial_capital=base)
    )
    return session_metrics(window, trades, rebased)


def _fmt(v: object) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def load_guardian_state(config: Config, state_dir: str | Path, scope: str) -> GuardianState | None:
    """The guardian's persisted state for a scope (``account/<name>`` or ``run/<id>``)."""
    from contextlib import closing

    if not config.state.redis_url and not state_path(state_dir).exists():
        # Reading must not create an empty state database where none was kept.
        return None
    with closing(open_state_store(state_dir, config.state.redis_url)) as store:
        doc = store.get(guardian_state_key(scope))
    return None if doc is None else GuardianState.from_dict(doc)


def guardian_notes(
    guardian: GuardianState | None, metrics: dict[str, Any], config: Config
) -> list[str]:
    """What the report says about the kill conditions."""
    if guardian is None:
        return []
    limit = config.build_constitution().max_drawdown
    worst = float(metrics.get("max_drawdown") or 0.0)
    notes = [
        f"Trading state at the end: {guardian.state}. Worst drawdown seen by the guardian "
        f"{guardian.worst_drawdown:.2%}; worst realised drawdown of the equity curve "
        f"{worst:.2%} (limit {limit:.0%})."
    ]
    if guardian.state == "HALTED":
        notes.append(f"HALTED: {guardian.halted_reason}.")
    if worst > limit:
        notes.append(
            f"The drawdown overshot the {limit:.0%} limit by {worst - limit:.2%}: the guardian "
            "checks equity once per bar, so a loss that happens between two bars (an "
            "overnight or intraday gap) is only seen at the next bar, after it happened; the "
            "positions were then flattened at the next open, which can add the next gap. "
            "This is gap risk, which a stop on bar data cannot remove; smaller positions, "
            "fewer of them, or intraday bars reduce it."
        )
    return notes


def starting_equity(result: SessionResult, config: Config) -> float:
    """The equity the session's performance is measured from.

    A fresh simulated account starts with the configured capital. A broker account (or a
    named simulated account carried over from earlier sessions) holds what it holds: its
    first observed equity is the start, never the configured figure.
    """
    if (config.broker.kind == "sim" and not config.engine.account) or not len(result.equity):
        return config.engine.initial_capital
    return float(result.equity[0])


def session_metrics(result: SessionResult, trades: pd.DataFrame, config: Config) -> dict[str, Any]:
    """The report's metrics: performance of the equity curve and the closed trades."""
    if trades.empty:
        pnl = bars_held = duration = np.zeros(0)
    else:
        pnl = trades["pnl"].to_numpy(dtype=np.float64)
        bars_held = trades["bars_held"].to_numpy(dtype=np.float64)
        duration = (
            trades["exit_ts"].to_numpy(dtype=np.int64) - trades["entry_ts"].to_numpy(dtype=np.int64)
        ) / 1e9
    perf = compute_metrics(
        ts=result.ts,
        equity=result.equity,
        trade_pnl=pnl,
        trade_bars_held=bars_held,
        trade_duration_s=duration,
        exposure=result.gross_exposure,
        initial_capital=starting_equity(result, config),
    )
    return perf.to_dict()


def _iso(ts: int) -> str:
    return dt.datetime.fromtimestamp(ts / 1e9, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ratio(ratio: float) -> str:
    return f"{ratio:g}:1" if ratio >= 1 else f"1:{1 / ratio:g}"


_ORDER_EVENT_NOTES = {
    "late_entry_fills": "Entries filled after they were canceled: {n} fills, booked into "
    "their trades and sold at the next close.",
    "unknown_order_events": "Order events matching no order of the strategy (counted, not "
    "booked): {n}.",
    "orphaned_orders": "Orders nobody answered for, forgotten after a grace period: {n}.",
}


def _order_event_notes(reports: list[ShardReport]) -> list[str]:
    totals: dict[str, int] = {}
    for report in reports:
        for k, v in report.order_events.items():
            totals[k] = totals.get(k, 0) + v
    return [text.format(n=totals[k]) for k, text in _ORDER_EVENT_NOTES.items() if totals.get(k)]


def audit_head(state_dir: str | Path) -> dict[str, Any]:
    from sovereign.memory.audit import read_anchor

    anchor = read_anchor(state_dir) or {}
    return {"entries": anchor.get("seq", 0), "hash": anchor.get("hash", "")}


def _data_notes(data: LoadedData | None, config: Config) -> list[str]:
    """Where the bars came from: what was accepted, rejected and split-adjusted at load."""
    notes: list[str] = []
    if data is not None:
        notes.append(
            f"Data: {data.source}; {data.validation.accepted_rows} of "
            f"{data.validation.total_rows} rows accepted."
        )
        for reason, n in sorted(data.validation.rejected.items()):
            notes.append(f"Rejected at load: {n} rows ({reason}).")
        for event in data.splits:
            notes.append(
                f"Split adjusted: {event.symbol} {_ratio(event.ratio)} at "
                f"{_iso(event.ts)[:10]} ({event.source}; {event.evidence})."
            )
    else:
        notes.append(f"Live bars from the {config.broker.kind} broker's feed.")
    return notes


def session_meta(
    result: SessionResult,
    data: LoadedData | None,
    config: Config,
    guardian: GuardianState | None = None,
    metrics: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Facts about the run for the report: what ran, on what, and what was refused."""
    rejected_bars: dict[str, int] = {}
    for report in result.shard_reports:
        for k, v in report.rejected_bars.items():
            rejected_bars[k] = rejected_bars.get(k, 0) + v
    decode_errors = sum(r.decode_errors for r in result.shard_reports)
    notes = _data_notes(data, config)
    for reason, n in sorted(rejected_bars.items()):
        notes.append(f"Rejected by shards at run time: {n} bars ({reason}).")
    if decode_errors:
        notes.append(f"Undecodable message batches dropped: {decode_errors}.")
    notes.extend(_order_event_notes(result.shard_reports))
    open_trades = sum(r.open_trades for r in result.shard_reports)
    if open_trades:
        notes.append(
            f"{open_trades} positions were still open at the end; they are marked to market "
            "in the equity curve and are not in trades.csv."
        )
    notes.extend(guardian_notes(guardian, metrics or {}, config))
    notes.append(
        "Fill model: orders decided at a bar's close work from the next bar's open. Entries "
        f"are marketable limits at the decision price + {config.risk.entry_limit_buffer:.1%} "
        "(filled at the better of open and limit, canceled if not filled in "
        f"{config.strategy.entry_timeout_bars} bar(s)); exits are market orders with "
        f"{config.sim.slippage_bps:g} bps slippage. Commission ${config.sim.commission_per_share}"
        f"/share (min ${config.sim.commission_min:.2f}, max "
        f"{config.sim.commission_max_pct:.0%} of value); fills capped at "
        f"{config.sim.max_volume_share:.0%} of bar volume."
    )
    counters: dict[str, int] = dict(result.counters)
    for stats in result.actor_stats:
        for k, v in stats.counters.items():
            counters[f"{stats.role}.{k}"] = v
    account = result.final_account
    return {
        "run_id": result.run_id,
        "mode": result.mode,
        "runtime": result.runtime,
        "data_source": data.source if data is not None else f"live:{config.broker.kind}",
        "symbols": ", ".join(sorted(s for shard in result.shard_symbols for s in shard)),
        "shards": len(result.shard_symbols),
        "period": f"{_iso(int(result.ts[0]))} .. {_iso(int(result.ts[-1]))}"
        if len(result.ts)
        else "",
        "bar_interval_s": data.interval_s if data is not None else config.broker.bar_interval_s,
        "broker": config.broker.kind,
        "steps": result.steps,
        "bars": result.bars,
        "engine_seconds": round(result.engine_seconds, 3),
        "bars_per_second": round(result.bars / result.engine_seconds, 1)
        if result.engine_seconds > 0
        else None,
        "initial_capital": starting_equity(result, config),
        "final_equity": account.equity if account else None,
        "final_cash": account.cash if account else None,
        "open_positions_at_end": account.open_positions if account else None,
        "constitution_fingerprint": config.build_constitution().fingerprint,
        "trading_state": guardian.state if guardian else None,
        "guardian_worst_drawdown": guardian.worst_drawdown if guardian else None,
        "counters": dict(sorted(counters.items())),
        "notes": notes,
    }

"""The commands on the state a session leaves behind: the constitution and the trading
state, resuming after a halt, the active rules, their history and rollback, the audit log."""

from __future__ import annotations

import argparse
import sys

from sovereign.cli_common import UsageError, check_state_store, named_scope
from sovereign.config import Config, load_config


def _scope(args: argparse.Namespace, config: Config) -> str:
    named = named_scope(args)
    if named:
        return named
    if not config.engine.account:
        raise UsageError("name the account (--account NAME) or the run (--run RUN_ID)")
    return f"account/{config.engine.account}"


def cmd_constitution(args: argparse.Namespace) -> int:
    from contextlib import closing

    from sovereign.memory.state_store import open_state_store
    from sovereign.operations import inspect_state

    config = load_config(args.config)
    check_state_store(config)
    c = config.build_constitution()
    lines = [
        "Constitution (immutable; configuration may only tighten it)",
        f"  {'max_position_size':<26} {c.max_position_size:.2%} of equity",
        f"  {'max_daily_loss':<26} {c.max_daily_loss:.2%} (then no new positions today)",
        f"  {'max_drawdown':<26} {c.max_drawdown:.2%} (then all trading halts)",
        f"  {'min_confidence_for_trade':<26} {c.min_confidence_for_trade:.2f}",
        f"  {'max_rule_changes_per_day':<26} {c.max_rule_changes_per_day}",
        f"  {'max_active_rules':<26} {c.max_active_rules}",
        f"  {'forbidden_modifications':<26} {', '.join(sorted(c.forbidden_modifications))}",
        f"  {'fingerprint (sha256)':<26} {c.fingerprint}",
        "",
        "Trading state",
    ]
    named = getattr(args, "account", None) or getattr(args, "run", None) or config.engine.account
    if named:
        scopes = [_scope(args, config)]
    else:
        with closing(open_state_store(args.state, config.state.redis_url)) as store:
            scopes = [k.removeprefix("guardian/") for k in store.keys("guardian/account/")]
        if not scopes:
            lines.append("  no named account has state yet (--account NAME names one)")
    for scope in scopes:
        g, problem = inspect_state(args.state, config, scope)
        if problem:
            lines.append(f"  {scope}: REFUSED AT START: {problem}")
        if g is None:
            if not problem:
                lines.append(f"  {scope}: no state yet (it starts ACTIVE)")
            continue
        drawdown = 1 - g.last_equity / g.high_water_mark if g.high_water_mark else 0.0
        lines.append(
            f"  {scope}: {g.state}  equity {g.last_equity:,.2f}  high-water mark "
            f"{g.high_water_mark:,.2f}  drawdown {drawdown:.2%}  session "
            f"{g.session_date or '-'}"
        )
        if g.state == "HALTED":
            lines.append(f"      halted: {g.halted_reason}")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    import time as _time

    from sovereign.operations import OperationError, resume_account

    if not args.confirm:
        raise UsageError("resuming trading after a halt needs --confirm (and --reason)")
    if not args.reason or not args.reason.strip():
        raise UsageError("--reason is required: say why trading may resume")
    config = load_config(args.config)
    check_state_store(config)
    scope = _scope(args, config)
    try:
        done = resume_account(
            args.state,
            config,
            scope,
            reason=args.reason,
            operator=_operator(),
            ts=_time.time_ns(),
        )
    except OperationError as exc:
        raise UsageError(str(exc)) from None
    if done.rebuilt:
        sys.stdout.write(
            f"{scope}: what was stored could not be trusted ({done.rebuilt}).\n"
            f"{scope}: {done.state.state} (audit entry {done.audit_seq})"
            + (
                "; the limits are measured from the broker's next account snapshot"
                if not done.state.high_water_mark
                else ""
            )
            + (
                f"; the simulated account starts again from {config.engine.initial_capital:,.2f}"
                if done.sim_account_reset
                else ""
            )
            + f". Reason: {args.reason}\n"
        )
        return 0
    sys.stdout.write(
        f"{scope}: HALTED -> ACTIVE (audit entry {done.audit_seq}). High-water mark reset to "
        f"{done.state.high_water_mark:,.2f}. Reason: {args.reason}\n"
    )
    return 0


def _governance_scope(args: argparse.Namespace, store: object) -> str:
    if getattr(args, "run", None):
        return f"run/{args.run}"
    if getattr(args, "account", None):
        return f"account/{args.account}"
    scopes = store.scopes()  # type: ignore[attr-defined]
    if not scopes:
        raise UsageError(f"no self-modification has been recorded in {args.state} yet")
    return str(scopes[0])


def cmd_rules(args: argparse.Namespace) -> int:
    from sovereign.memory.governance import GovernanceStore

    with GovernanceStore(args.state) as store:
        scope = _governance_scope(args, store)
        book = store.current(scope)
    lines = [f"Active rules of {scope} (rule set v{book.version}, hash {book.hash[:12]})"]
    if not book.rules:
        lines.append("  none")
    for rule in book.rules:
        lines.append(f"  {rule.rule_id:<10} {rule.render()}")
        if rule.provenance:
            lines.append(f"  {'':<10} from {rule.provenance}")
    if book.parameters:
        lines.append("Tuned parameters")
        lines += [f"  {k} = {v:g}" for k, v in sorted(book.parameters.items())]
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    from sovereign.comms.text import modification_lines
    from sovereign.memory.governance import GovernanceStore

    with GovernanceStore(args.state) as store:
        scope = None if args.all else _governance_scope(args, store)
        records = store.history(scope, limit=args.limit, offset=(args.page - 1) * args.limit)
        total = store.count(scope)
    pages = max(1, -(-total // args.limit))
    lines = [
        f"Modifications of {scope or 'every scope'}, newest first "
        f"(page {args.page} of {pages}, {total} in all)"
    ]
    for r in records:
        lines += modification_lines(r)
    if not records:
        lines.append("  none")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    import time as _time

    from sovereign.memory.governance import GovernanceStore, RollbackError

    try:
        modification_id = int(args.id)
    except ValueError:
        raise UsageError(
            f"a modification id is a number (see `sovereign history`), not {args.id!r}"
        ) from None
    with GovernanceStore(args.state) as store:
        try:
            result = store.rollback(
                modification_id, reason=args.reason, by=f"cli:{_operator()}", ts_ns=_time.time_ns()
            )
        except RollbackError as exc:
            raise UsageError(str(exc)) from None
    undone = ", ".join(f"#{i}" for i in result.undone)
    sys.stdout.write(
        f"rolled back #{modification_id} in {result.scope}: rule set v{result.book.version} "
        f"restores the rules from before it ({len(result.book.rules)} active); undone: "
        f"{undone}. A running session adopts it at its next step.\n"
    )
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from sovereign.memory.audit import audit_key_path, governance_path, read_anchor, verify_audit

    # Read-only throughout: verifying must never create, repair or extend what it checks.
    path = governance_path(args.state)
    if (
        not path.exists()
        and read_anchor(args.state) is None
        and not audit_key_path(args.state).exists()
    ):
        raise UsageError(f"no audit log in {args.state}")
    result = verify_audit(args.state)
    if result.ok:
        sys.stdout.write(
            f"audit log intact: {result.entries} entries, hash chain, MACs and anchor verified "
            f"(head {result.head_seq}: {result.head_hash[:16]})\n"
        )
        sys.stdout.write("".join(f"  note: {n}\n" for n in result.notes))
        return 0
    sys.stdout.write(
        f"AUDIT LOG TAMPERED: {len(result.problems)} problem(s) in {result.entries} entries\n"
    )
    sys.stdout.write("".join(f"  {p}\n" for p in result.problems))
    return 1


def _operator() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"

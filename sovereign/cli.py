"""The ``sovereign`` command.

Every command takes ``--config FILE`` (TOML, validated; errors name the field) and
``--state DIR`` (where the SQLite stores live; default ``.sovereign/`` in the working
directory). Exit codes: 0 success, 2 bad usage or configuration, 1 a failure while running.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import urlsplit

from sovereign.cli_parser import build_parser
from sovereign.config import Config, ConfigError, load_config
from sovereign.interrupts import graceful_interrupts
from sovereign.memory.account import AccountRefusedError

if TYPE_CHECKING:
    from sovereign.data.loaders import LoadedData


class UsageError(Exception):
    """Bad arguments: reported on stderr with exit code 2."""


# -- OUTPUT -----------------------------------------------------------------------------


class ProgressBar:
    """A one-line progress bar on a terminal; periodic lines when not a terminal."""

    def __init__(self, stream: TextIO, label: str) -> None:
        self.stream = stream
        self.label = label
        self.tty = stream.isatty()
        self._last = 0.0
        self._last_pct = -10

    def update(self, progress: object) -> None:
        from sovereign.engine import Progress

        assert isinstance(progress, Progress)
        now = time.monotonic()
        done = progress.step == progress.total
        pct = int(100 * progress.step / max(progress.total, 1))
        when = datetime.fromtimestamp(progress.ts / 1e9, tz=UTC).strftime("%Y-%m-%d")
        rate = progress.step / progress.elapsed_s if progress.elapsed_s > 0 else 0.0
        text = (
            f"{self.label} {pct:3d}% {progress.step}/{progress.total} steps  {when}  "
            f"{rate:,.0f} steps/s  {progress.notifications} notes"
        )
        if self.tty:
            if not done and now - self._last < 0.1:
                return
            width = 24
            filled = int(width * progress.step / max(progress.total, 1))
            bar = "#" * filled + "." * (width - filled)
            self.stream.write(f"\r[{bar}] {text}\x1b[K")
            if done:
                self.stream.write("\n")
        else:
            if not done and pct < self._last_pct + 10:
                return
            self._last_pct = pct
            self.stream.write(f"{text}\n")
        self._last = now
        self.stream.flush()


def _console_notifier(stream: TextIO, tty: bool) -> object:
    from sovereign.comms.console import ConsoleNotifier

    return ConsoleNotifier(stream, clear_line=tty)


@contextlib.contextmanager
def _operator_channels(
    config: Config, state_dir: Path, human: TextIO, *, scope: str, telegram: bool
) -> Iterator[tuple[Any, bool]]:
    """The session's notifier (console, plus Telegram when a token is configured) and
    whether daily summaries are wanted. A Telegram that cannot start never stops trading:
    the session goes on with the console and says so."""
    from sovereign.comms.telegram import (
        ChannelFilter,
        FanOut,
        OperatorBot,
        TelegramSettings,
        TelegramSetupError,
    )

    console = ChannelFilter(_console_notifier(human, human.isatty()), config, "console")
    bot = None
    settings = TelegramSettings.from_env(config) if telegram else None
    if settings is not None:
        bot = OperatorBot(settings, state_dir, config, scope=scope)
        try:
            bot.start()
            human.write(
                f"Telegram: operator bot on, {len(settings.allowed_users)} allowed user(s)\n"
            )
        except TelegramSetupError as exc:
            human.write(f"Telegram: not started ({exc}); notifications go to the console\n")
            bot = None
    daily = config.notifications.mode("console", "daily_summary") != "off" or (
        bot is not None and bot.mode("daily_summary") != "off"
    )
    try:
        yield FanOut(console, bot), daily
    finally:
        if bot is not None:
            bot.stop(drain_s=10.0)
            st = bot.stats()
            human.write(
                f"Telegram: {st['sent']} notification(s) sent, "
                f"{st['dropped_queue_full'] + st['dropped_expired']} dropped, "
                f"{st['failed']} refused, {st['denied']} denied command(s)\n"
            )


# -- COMMANDS ---------------------------------------------------------------------------


def _load(args: argparse.Namespace, config: Config) -> LoadedData:
    from sovereign.data.loaders import load_ohlcv

    symbols = [s.strip() for s in args.symbols.split(",") if s.strip()] if args.symbols else None
    try:
        data = load_ohlcv(
            args.data,
            symbols=symbols,
            start=args.start,
            end=args.end,
            split_adjust=config.data.split_adjust,
            splits_file=config.data.splits_file or None,
            seed=config.engine.seed,
        )
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(f"cannot load data {args.data!r}: {exc}") from None
    if data.frame.empty:
        raise UsageError(_why_no_bars(args.data, data))
    return data


def _check_volume(data: LoadedData, config: Config) -> None:
    if not data.has_volume and config.strategy.volume_confirmation:
        raise UsageError(
            f"{data.source} has no volume, so volume confirmation would block every entry; "
            "turn it off explicitly with --no-volume-confirmation or [strategy] "
            "volume_confirmation = false"
        )


def _why_no_bars(source: str, data: LoadedData) -> str:
    """One line on why nothing is left to trade: what validation rejected, or the filters."""
    from sovereign.data.loaders import TIMESTAMP_FORMATS

    v = data.validation
    if v.total_rows == 0:
        return f"cannot load data {source!r}: it has no rows"
    if v.accepted_rows == 0:
        reasons = ", ".join(f"{k}={c:,}" for k, c in v.rejected.items())
        commonest = max(v.rejected, key=lambda k: v.rejected[k])
        example = v.samples.get(commonest, ["?"])[0]
        text = (
            f"cannot load data {source!r}: all {v.total_rows:,} rows were rejected by "
            f"validation ({reasons}; e.g. {example})"
        )
        if "bad_timestamp" in v.rejected:
            text += f"; {TIMESTAMP_FORMATS}"
        return text
    return (
        f"no bars left after the filters (--symbols, --start, --end): {v.accepted_rows:,} "
        f"rows passed validation ({v.rejected_rows:,} rejected)"
    )


def _check_state_store(config: Config) -> None:
    """Reach the configured Redis now, so that one that does not answer is an exit-2 error
    at start rather than a failure of the first actor that writes state, mid-run."""
    url = config.state.redis_url
    if not url:
        return
    import redis

    from sovereign.domain.service_settings import redact_url
    from sovereign.memory.state_store import RedisStateStore

    try:
        RedisStateStore(url).close()
    except (redis.exceptions.RedisError, OSError, ValueError) as exc:
        reason = " ".join(str(exc).split())
        password = urlsplit(url).password
        if password:
            reason = reason.replace(password, "***")
        raise UsageError(
            f"[state] redis_url: no answer from Redis at {redact_url(url)} ({reason}); "
            "is it running, and is the URL right?"
        ) from None


def _with_overrides(args: argparse.Namespace, config: Config) -> Config:
    try:
        return _overridden(args, config)
    except ValueError as exc:  # a bad value given on the command line
        raise UsageError(str(exc)) from None


def _overridden(args: argparse.Namespace, config: Config) -> Config:
    import msgspec

    if getattr(args, "strategy", "baseline") == "breakout":
        from sovereign.config import breakout_preset

        config = breakout_preset(config)

    if getattr(args, "account", None):
        config = msgspec.structs.replace(
            config, engine=msgspec.structs.replace(config.engine, account=args.account)
        )
    if getattr(args, "shards", None):
        config = msgspec.structs.replace(
            config, engine=msgspec.structs.replace(config.engine, shards=args.shards)
        )
    if getattr(args, "address", None):
        config = msgspec.structs.replace(
            config, ray=msgspec.structs.replace(config.ray, address=args.address)
        )
    if getattr(args, "no_volume_confirmation", False):
        config = msgspec.structs.replace(
            config,
            strategy=msgspec.structs.replace(config.strategy, volume_confirmation=False),
        )
    if getattr(args, "no_dashboard", False):
        config = msgspec.structs.replace(
            config, ray=msgspec.structs.replace(config.ray, dashboard=False)
        )
    return config


def _run(args: argparse.Namespace, *, mode: str) -> int:
    from sovereign.report import format_summary_table
    from sovereign.session import run_session

    config = _with_overrides(args, load_config(args.config))
    _check_state_store(config)
    data = _load(args, config)
    _check_volume(data, config)
    human = sys.stderr if args.json else sys.stdout
    human.write(data.describe() + "\n")
    if data.validation.rejected:
        human.write(data.validation.summary() + "\n")
    bar = ProgressBar(sys.stderr, mode)
    from sovereign.session import new_run_id
    from sovereign.specs import state_scope

    run_id = new_run_id(mode)  # type: ignore[arg-type]

    def on_started(engine: object) -> None:
        from sovereign.engine import Engine

        assert isinstance(engine, Engine)
        human.write(
            f"{mode}: {len(data.symbols)} symbols on {len(engine.shard_symbols)} shards, "
            f"{len(engine.feed)} steps, runtime {args.runtime}\n"
        )
        watch(engine)
        url = getattr(engine.runtime, "dashboard_url", None)
        if url:
            human.write(
                f"Ray dashboard: http://{url} (token: `ray get-auth-token`); actors: "
                "RAY_AUTH_MODE=token ray list actors --filter ray_namespace=sovereign\n"
            )
        human.flush()

    interrupts = (
        graceful_interrupts(human, "after this step")
        if mode != "backtest"
        else contextlib.nullcontext(lambda engine: None)
    )
    with (
        interrupts as watch,
        _operator_channels(
            config,
            args.state,
            human,
            scope=state_scope(config, run_id),
            telegram=mode == "paper",
        ) as (notifier, daily),
    ):
        output = run_session(
            config,
            data,
            runtime=args.runtime,
            mode=mode,  # type: ignore[arg-type]
            state_dir=args.state,
            out_dir=args.out,
            run_id=run_id,
            speed=getattr(args, "speed", 0.0),
            max_steps=getattr(args, "max_steps", None),
            on_notification=notifier.notify,
            on_progress=bar.update,
            on_started=on_started,
            daily_summary=daily,
        )
    r = output.result
    human.write(
        f"\n{mode} {r.run_id}: {r.steps} steps, {r.bars} bars in {r.engine_seconds:.2f} s "
        f"({r.bars / max(r.engine_seconds, 1e-9):,.0f} bars/s) on the {r.runtime} runtime\n"
    )
    human.write(format_summary_table(output.metrics) + "\n")
    if output.paths is not None:
        human.write(
            f"report: {output.paths.report_html}\n"
            f"        {output.paths.metrics_json}, {output.paths.trades_csv.name}, "
            f"{output.paths.equity_png.name}\n"
        )
    if args.json:
        sys.stdout.write(json.dumps(output.metrics, sort_keys=True) + "\n")
    return 0


def cmd_backtest(args: argparse.Namespace) -> int:
    return _run(args, mode="backtest")


def _named_scope(args: argparse.Namespace) -> str:
    """The scope named by ``--run`` or ``--account``, or "" when neither is given."""
    if getattr(args, "run", None):
        return f"run/{args.run}"
    if getattr(args, "account", None):
        return f"account/{args.account}"
    return ""


def _scope(args: argparse.Namespace, config: Config) -> str:
    named = _named_scope(args)
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
    _check_state_store(config)
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
    _check_state_store(config)
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


def cmd_eval_selfmod(args: argparse.Namespace) -> int:
    from sovereign.selfmod_eval import evaluate_selfmod, write_eval

    if args.placebo < 0:
        raise UsageError(f"--placebo must be a number of seeds (0 or more), got {args.placebo}")
    config = _with_overrides(args, load_config(args.config))
    human = sys.stderr if args.json else sys.stdout
    results = []
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot write the evaluation to {args.out}: {exc}") from None
    for source in args.data or ["sample"]:
        one = argparse.Namespace(**{**vars(args), "data": source})
        data = _load(one, config)
        _check_volume(data, config)
        human.write(data.describe() + "\n")  # type: ignore[attr-defined]
        human.write("  backtests with self-modification on and off ...\n")
        human.flush()
        results.append(
            evaluate_selfmod(data, config, label=source, placebo=args.placebo, work_dir=args.out)
        )
    json_path, md_path = write_eval(args.out, results)
    human.write(md_path.read_text())
    human.write(f"\nwritten: {json_path}, {md_path}\n")
    if args.json:
        sys.stdout.write(json.dumps(results, sort_keys=True, default=str) + "\n")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from sovereign.regime_eval import evaluate_regimes, write_eval

    config = _with_overrides(args, load_config(args.config))
    data = _load(args, config)
    human = sys.stderr if args.json else sys.stdout
    human.write(data.describe() + "\n")  # type: ignore[attr-defined]
    human.write("running the regime models bar by bar ...\n")
    human.flush()
    result = evaluate_regimes(
        data,  # type: ignore[arg-type]
        config,
        state_dir=args.state,
        backtest=not args.no_backtest,
    )
    json_path, md_path = write_eval(args.out, result)
    human.write(md_path.read_text())
    human.write(f"\nwritten: {json_path}, {md_path}\n")
    if args.json:
        sys.stdout.write(json.dumps(result, sort_keys=True) + "\n")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    import time as _time

    import torch

    from sovereign.core.foundation import FoundationConfig
    from sovereign.training.foundation import save_checkpoint, train_foundation

    torch.set_num_threads(1)
    config = load_config(args.config)
    data = _load(args, config)
    sys.stdout.write(data.describe() + "\n")  # type: ignore[attr-defined]
    start = _time.monotonic()

    def on_step(step: int, losses: dict[str, float]) -> None:
        if step % max(1, args.steps // 20) == 0 or step == args.steps:
            parts = "  ".join(f"{k} {v:.4f}" for k, v in losses.items())
            sys.stdout.write(f"  step {step}/{args.steps}  {parts}\n")
            sys.stdout.flush()

    ckpt = train_foundation(
        data,  # type: ignore[arg-type]
        FoundationConfig(),
        seed=args.seed,
        steps=args.steps,
        on_step=on_step,
    )
    save_checkpoint(args.out, ckpt)
    sys.stdout.write(
        f"trained in {_time.monotonic() - start:.1f} s (seed {args.seed}, {args.steps} steps): "
        f"train loss {ckpt.train_loss:.4f}, validation loss {ckpt.val_loss:.4f}; "
        f"checkpoint written to {args.out}\n"
    )
    return 0


def _operator() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def cmd_paper(args: argparse.Namespace) -> int:
    if args.broker == "sim":
        return _run(args, mode="paper")
    return _run_live(args)


def _live_config(args: argparse.Namespace) -> Config:
    import msgspec

    config = _with_overrides(args, load_config(args.config))
    broker = msgspec.structs.replace(config.broker, kind=args.broker)
    if args.poll_interval is not None:
        broker = msgspec.structs.replace(broker, poll_interval_s=args.poll_interval)
    if args.bar_interval is not None:
        broker = msgspec.structs.replace(broker, bar_interval_s=args.bar_interval)
    ib = config.ib
    if args.ib_host:
        ib = msgspec.structs.replace(ib, host=args.ib_host)
    if args.ib_port:
        ib = msgspec.structs.replace(ib, port=args.ib_port)
    if args.client_id is not None:
        ib = msgspec.structs.replace(
            ib, client_id=args.client_id, data_client_id=args.client_id + 1
        )
    return msgspec.structs.replace(config, broker=broker, ib=ib)


def _run_live(args: argparse.Namespace) -> int:
    from sovereign.report import format_summary_table
    from sovereign.session import run_session
    from sovereign.specs import make_live_feed

    config = _live_config(args)
    _check_state_store(config)
    symbols = (
        [s.strip() for s in args.symbols.split(",") if s.strip()]
        if args.symbols
        else list(config.broker.watchlist)
    )
    if not symbols:
        raise UsageError("a live session needs symbols: --symbols AAPL,MSFT or [broker] watchlist")
    if (
        config.broker.kind in ("ib", "ib+alpaca")
        and config.ib.what_to_show == "MIDPOINT"
        and config.strategy.volume_confirmation
    ):
        raise UsageError(
            "IB paper bars are MIDPOINT bars, which carry no volume: volume confirmation "
            "would block every entry. Turn it off explicitly (--no-volume-confirmation or "
            "[strategy] volume_confirmation = false), or use TRADES data ([ib] what_to_show)"
        )
    human = sys.stdout
    from sovereign.session import with_broker_account

    # The broker names the account whose trading state this session carries on.
    config = with_broker_account(config, args.state)
    try:
        feed = make_live_feed(config, symbols)
    except Exception as exc:
        raise UsageError(f"cannot start the {config.broker.kind} feed: {exc}") from None
    arrival = (
        "streamed"
        if config.broker.feed == "stream"
        else f"polled every {config.broker.poll_interval_s:g} s"
    )
    volume = "on" if config.strategy.volume_confirmation else "OFF (no volume in these bars)"
    human.write(
        f"paper session on {config.broker.kind}: {', '.join(symbols)}; "
        f"{config.broker.bar_interval_s} s bars {arrival}; volume confirmation {volume}"
        " (Ctrl-C ends it and writes the report)\n"
    )
    bar = ProgressBar(sys.stderr, "paper")
    from sovereign.session import new_run_id
    from sovereign.specs import state_scope

    human.write(f"trading state: account {config.engine.account}\n")
    run_id = new_run_id("paper")
    try:
        with (
            # A live step waits for the broker's next bar: the stop comes with it.
            graceful_interrupts(human, "at the next bar") as watch,
            _operator_channels(
                config, args.state, human, scope=state_scope(config, run_id), telegram=True
            ) as (notifier, daily),
        ):
            output = run_session(
                config,
                None,
                runtime=args.runtime,
                mode="paper",
                state_dir=args.state,
                out_dir=args.out,
                run_id=run_id,
                max_steps=args.max_steps,
                on_notification=notifier.notify,
                on_progress=bar.update,
                feed=feed,
                symbols=symbols,
                daily_summary=daily,
                on_started=watch,
            )
    finally:
        feed.close()
    human.write(format_summary_table(output.metrics) + "\n")
    if output.paths is not None:
        human.write(f"report: {output.paths.report_html}\n")
    return 0


def cmd_operator(args: argparse.Namespace) -> int:
    from sovereign.comms.telegram import (
        ALLOWED_ENV,
        TOKEN_ENV,
        OperatorBot,
        TelegramSettings,
        TelegramSetupError,
    )

    config = load_config(args.config)
    settings = TelegramSettings.from_env(config)
    if settings is None:
        raise UsageError(
            f"no bot token: set {TOKEN_ENV} (and {ALLOWED_ENV} or [telegram] allowed_users); "
            "the CLI answers the same questions: sovereign capital|rules|history|readiness"
        )
    if not args.state.exists():
        raise UsageError(f"state directory {args.state} does not exist")
    scope = _named_scope(args)
    bot = OperatorBot(settings, args.state, config, scope=scope)
    if not settings.allowed_users:
        sys.stderr.write(
            f"warning: nobody is on the allowlist ({ALLOWED_ENV} or [telegram] "
            "allowed_users), so every command will be refused\n"
        )
    sys.stdout.write(
        f"operator bot serving {args.state} ({scope or 'latest scope'}) for "
        f"{len(settings.allowed_users)} operator(s); Ctrl-C stops it\n"
    )
    sys.stdout.flush()
    try:
        bot.run_forever()
    except TelegramSetupError as exc:
        raise UsageError(str(exc)) from None
    except KeyboardInterrupt:
        bot.stop()
    return 0


def cmd_ask(args: argparse.Namespace) -> int:
    """The operator commands on the console: the same answers the bot gives."""
    from sovereign.comms.telegram import OperatorBot, TelegramSettings
    from sovereign.config import TelegramConfig

    config = load_config(args.config)
    scope = _named_scope(args)
    settings = TelegramSettings("", "", frozenset(), (), TelegramConfig())
    bot = OperatorBot(settings, args.state, config, scope=scope)
    sys.stdout.write(bot.answer(args.command, " ".join(args.args), 0) + "\n")
    return 0


def cmd_emulate(args: argparse.Namespace) -> int:
    import time as _time

    config = load_config(args.config)
    data = _load(args, config)
    if args.what == "tws":
        from sovereign.testing.tws import TwsEmulator

        emulator: Any = TwsEmulator(data, port=args.port, clock=args.clock, speed=args.speed)  # type: ignore[arg-type]
    else:
        from sovereign.testing.alpaca import AlpacaEmulator

        emulator = AlpacaEmulator(data, port=args.port, clock=args.clock, speed=args.speed)  # type: ignore[arg-type]
    port = emulator.start()
    sys.stdout.write(f"{args.what} emulator on 127.0.0.1:{port} serving {data.source}\n")  # type: ignore[attr-defined]
    if args.what == "alpaca":
        sys.stdout.write(
            f"  export SOVEREIGN_ALPACA_BASE_URL=http://127.0.0.1:{port} "
            f"SOVEREIGN_ALPACA_DATA_URL=http://127.0.0.1:{port} "
            f"SOVEREIGN_ALPACA_STREAM_URL={emulator.stream_url} "
            "APCA_API_KEY_ID=test-key APCA_API_SECRET_KEY=test-secret\n"
        )
    else:
        sys.stdout.write(f"  sovereign paper --broker ib --ib-port {port} --symbols ...\n")
    sys.stdout.write("Ctrl-C stops it.\n")
    sys.stdout.flush()
    try:
        while True:
            _time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        emulator.stop()
    return 0


# -- PARSER -----------------------------------------------------------------------------


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "backtest": cmd_backtest,
    "paper": cmd_paper,
    "constitution": cmd_constitution,
    "resume": cmd_resume,
    "rules": cmd_rules,
    "history": cmd_history,
    "rollback": cmd_rollback,
    "audit": cmd_audit,
    "eval": cmd_eval,
    "eval_selfmod": cmd_eval_selfmod,
    "train": cmd_train,
    "operator": cmd_operator,
    "ask": cmd_ask,
    "emulate": cmd_emulate,
}
"""What each subcommand runs (``cli_parser`` names them)."""


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["bench"]:
        # The benchmark runner has its own parser (it re-runs itself per measurement).
        from sovereign.bench.runner import main as bench_main

        return bench_main(args_list[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(COMMANDS[args.subcommand_fn](args))
    except (ConfigError, UsageError, AccountRefusedError) as exc:
        sys.stderr.write(f"sovereign: error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("sovereign: interrupted\n")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

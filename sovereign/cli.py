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
from typing import Any, TextIO

from sovereign.cli_account import (
    cmd_audit,
    cmd_constitution,
    cmd_history,
    cmd_resume,
    cmd_rollback,
    cmd_rules,
)
from sovereign.cli_common import (
    UsageError,
    check_state_store,
    check_volume,
    load_data,
    named_scope,
    with_overrides,
)
from sovereign.cli_parser import build_parser
from sovereign.config import Config, ConfigError, load_config
from sovereign.interrupts import graceful_interrupts
from sovereign.memory.account import AccountRefusedError

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


def _run(args: argparse.Namespace, *, mode: str) -> int:
    from sovereign.report_format import format_summary_table
    from sovereign.session import run_session

    config = with_overrides(args, load_config(args.config))
    check_state_store(config)
    data = load_data(args, config)
    check_volume(data, config)
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


def cmd_eval_selfmod(args: argparse.Namespace) -> int:
    from sovereign.selfmod_eval import evaluate_selfmod, write_eval

    if args.placebo < 0:
        raise UsageError(f"--placebo must be a number of seeds (0 or more), got {args.placebo}")
    config = with_overrides(args, load_config(args.config))
    human = sys.stderr if args.json else sys.stdout
    results = []
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot write the evaluation to {args.out}: {exc}") from None
    for source in args.data or ["sample"]:
        one = argparse.Namespace(**{**vars(args), "data": source})
        data = load_data(one, config)
        check_volume(data, config)
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

    config = with_overrides(args, load_config(args.config))
    data = load_data(args, config)
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
    data = load_data(args, config)
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


def cmd_paper(args: argparse.Namespace) -> int:
    if args.broker == "sim":
        return _run(args, mode="paper")
    return _run_live(args)


def _live_config(args: argparse.Namespace) -> Config:
    import msgspec

    config = with_overrides(args, load_config(args.config))
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
    from sovereign.report_format import format_summary_table
    from sovereign.session import run_session
    from sovereign.specs import make_live_feed

    config = _live_config(args)
    check_state_store(config)
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
    scope = named_scope(args)
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
    scope = named_scope(args)
    settings = TelegramSettings("", "", frozenset(), (), TelegramConfig())
    bot = OperatorBot(settings, args.state, config, scope=scope)
    sys.stdout.write(bot.answer(args.command, " ".join(args.args), 0) + "\n")
    return 0


def cmd_emulate(args: argparse.Namespace) -> int:
    import time as _time

    config = load_config(args.config)
    data = load_data(args, config)
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
"""What each subcommand runs (``cli_parser`` names them; ``cli_account`` holds the commands
on the state a session leaves behind)."""


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

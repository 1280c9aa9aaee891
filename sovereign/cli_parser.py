"""The command line's grammar: every subcommand, its options and their checks.

The subcommands are named here and run by ``sovereign.cli`` (its ``COMMANDS``), so the
grammar can be read, tested and documented apart from what the commands do.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import sovereign

if TYPE_CHECKING:
    pass


def _whole(lo: int, hi: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number in [lo, hi] (argparse reports a refusal, exit 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
        if value < lo or (hi is not None and value > hi):
            bounds = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {value}")
        return value

    return parse


def _finite(*, positive: bool) -> Callable[[str], float]:
    """An argparse type: a finite number, > 0 or >= 0 (float() alone takes nan and inf)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            bound = "> 0" if positive else ">= 0"
            raise argparse.ArgumentTypeError(f"must be a finite number {bound}, got {text}")
        return value

    return parse


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=None, help="TOML configuration file")
    p.add_argument(
        "--state", type=Path, default=Path(".sovereign"), help="state directory (SQLite stores)"
    )


def _session_args(p: argparse.ArgumentParser, *, runtime: str, out: str) -> None:
    p.add_argument(
        "--data",
        default="sample",
        help="CSV/Parquet file, sample[:daily|hourly|minute], or synthetic:<symbols>x<bars>",
    )
    p.add_argument("--symbols", default=None, help="comma-separated symbols (default: all)")
    p.add_argument("--start", default=None, help="first date (inclusive)")
    p.add_argument("--end", default=None, help="last date (inclusive)")
    p.add_argument("--runtime", choices=("local", "ray"), default=runtime)
    p.add_argument("--address", default=None, help="Ray cluster address (e.g. auto)")
    p.add_argument("--no-dashboard", action="store_true", help="local Ray without dashboard")
    # The same bounds as [engine] shards.
    p.add_argument("--shards", type=_whole(1, 1024), default=None, help="number of shard actors")
    p.add_argument(
        "--strategy",
        choices=("baseline", "breakout"),
        default="baseline",
        help="breakout: the benchmarks' fixed peer-comparable strategy (see README)",
    )
    p.add_argument(
        "--no-volume-confirmation",
        action="store_true",
        help="trade without volume confirmation (data without volume needs it)",
    )
    p.add_argument("--out", type=Path, default=Path(out), help="report directory")
    p.add_argument("--json", action="store_true", help="print the metrics JSON on stdout")
    p.add_argument(
        "--account",
        default=None,
        help="a named account whose trading state persists across sessions",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sovereign",
        description="Sovereign: an autonomous trading system inside an immutable constitution.",
    )
    parser.add_argument("--version", action="version", version=f"sovereign {sovereign.__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_session_commands(sub)
    _add_state_commands(sub)
    _add_eval_commands(sub)
    _add_tool_commands(sub)
    return parser


def _add_session_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The sessions: backtest and paper."""
    bt = sub.add_parser("backtest", help="replay historical data through the actor graph")
    _common(bt)
    _session_args(bt, runtime="local", out="out/backtest")
    bt.set_defaults(subcommand_fn="backtest")

    pp = sub.add_parser("paper", help="a paper-trading session (sim broker on replayed data)")
    _common(pp)
    _session_args(pp, runtime="ray", out="out/paper")
    pp.add_argument(
        "--broker",
        default="sim",
        choices=("sim", "ib", "alpaca", "ib+alpaca"),
        help="sim (replayed data), ib, alpaca, or ib+alpaca (IB failing over to Alpaca)",
    )
    pp.add_argument("--ib-host", default=None)
    pp.add_argument(
        "--ib-port", type=_whole(1, 65_535), default=None, help="7497 TWS paper, 4002 Gateway"
    )
    pp.add_argument("--client-id", type=int, default=None, help="IB client id (data: +1)")
    pp.add_argument(
        "--poll-interval", type=_finite(positive=True), default=None, help="seconds between polls"
    )
    pp.add_argument("--bar-interval", type=_whole(1), default=None, help="bar length, seconds")
    pp.add_argument(
        "--speed",
        type=_finite(positive=False),
        default=0.0,
        help="replay speed as a multiple of real time (0 = as fast as possible)",
    )
    pp.add_argument("--max-steps", type=_whole(1), default=None, help="stop after this many bars")
    pp.set_defaults(subcommand_fn="paper")


def _add_state_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The commands on the state a session leaves behind (``sovereign.cli_account``)."""
    cp = sub.add_parser("constitution", help="show the limits, the fingerprint and trading state")
    _common(cp)
    cp.add_argument("--account", default=None, help="account to show (default: all named)")
    cp.add_argument("--run", default=None, help="a run's own state (sessions without --account)")
    cp.set_defaults(subcommand_fn="constitution")

    rp = sub.add_parser("resume", help="leave HALTED (audited; needs --confirm and --reason)")
    _common(rp)
    rp.add_argument("--account", default=None, help="the halted account")
    rp.add_argument("--run", default=None, help="the halted run (sessions without --account)")
    rp.add_argument("--confirm", action="store_true", help="yes, resume trading")
    rp.add_argument("--reason", default="", help="why trading may resume (audited)")
    rp.set_defaults(subcommand_fn="resume")

    ru = sub.add_parser("rules", help="the active rules and tuned parameters")
    _common(ru)
    ru.add_argument("--account", default=None, help="a named account's rules")
    ru.add_argument("--run", default=None, help="a run's rules (default: the latest scope)")
    ru.set_defaults(subcommand_fn="rules")

    hi = sub.add_parser("history", help="self-modifications, newest first")
    _common(hi)
    hi.add_argument("--account", default=None)
    hi.add_argument("--run", default=None)
    hi.add_argument("--all", action="store_true", help="every scope")
    hi.add_argument("--limit", type=_whole(1), default=20, help="entries per page")
    hi.add_argument("--page", type=_whole(1), default=1)
    hi.set_defaults(subcommand_fn="history")

    rb = sub.add_parser("rollback", help="restore the rule set from before a modification")
    _common(rb)
    rb.add_argument("id", help="the modification id (see `sovereign history`)")
    rb.add_argument("--reason", default="operator rollback", help="why (audited)")
    rb.set_defaults(subcommand_fn="rollback")

    au = sub.add_parser("audit", help="the hash-chained audit log")
    _common(au)
    au.add_argument("action", choices=["verify"])
    au.set_defaults(subcommand_fn="audit")


def _add_eval_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The work on data and models outside a session: eval and train."""
    ev = sub.add_parser("eval", help="evaluate a component on data")
    ev_sub = ev.add_subparsers(dest="what", required=True)
    er = ev_sub.add_parser("regime", help="regime-conditional volatility, drift, flicker")
    _common(er)
    er.add_argument("--data", default="sample")
    er.add_argument("--symbols", default=None)
    er.add_argument("--start", default=None)
    er.add_argument("--end", default=None)
    er.add_argument("--out", type=Path, default=Path("out/regime-eval"))
    er.add_argument("--json", action="store_true")
    er.add_argument("--no-backtest", action="store_true", help="skip the two backtests")
    er.set_defaults(subcommand_fn="eval")
    es = ev_sub.add_parser(
        "selfmod", help="backtests with self-modification on and off, a placebo, PBO and DSR"
    )
    _common(es)
    es.add_argument(
        "--data", action="append", help="a data set (repeat for several; default: sample)"
    )
    es.add_argument("--symbols", default=None)
    es.add_argument("--start", default=None)
    es.add_argument("--end", default=None)
    es.add_argument("--strategy", choices=["baseline", "breakout"], default=None)
    es.add_argument("--no-volume-confirmation", action="store_true")
    es.add_argument("--shards", type=int, default=None)
    es.add_argument("--placebo", type=int, default=0, help="placebo seeds (outcomes permuted)")
    es.add_argument("--out", type=Path, default=Path("out/selfmod-eval"))
    es.add_argument("--json", action="store_true")
    es.set_defaults(subcommand_fn="eval_selfmod")

    tr = sub.add_parser("train", help="train a model")
    tr_sub = tr.add_subparsers(dest="what", required=True)
    tf = tr_sub.add_parser("foundation", help="pretrain the transformer regime model")
    _common(tf)
    tf.add_argument("--data", default="sample")
    tf.add_argument("--symbols", default=None)
    tf.add_argument("--start", default=None)
    tf.add_argument("--end", default=None)
    tf.add_argument("--out", type=Path, required=True, help="checkpoint file to write")
    tf.add_argument("--steps", type=int, default=600)
    tf.add_argument("--seed", type=int, default=7)
    tf.set_defaults(subcommand_fn="train")


def _add_tool_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The operator bot, its commands on the console, the benchmarks and the emulators."""
    op = sub.add_parser("operator", help="the Telegram operator bot on its own, on a state dir")
    _common(op)
    op.add_argument("--account", default=None, help="answer for this named account")
    op.add_argument("--run", default=None, help="answer for this run id")
    op.set_defaults(subcommand_fn="operator")

    ask = sub.add_parser("ask", help="an operator command on the console (as on Telegram)")
    _common(ask)
    ask.add_argument(
        "command", choices=("status", "capital", "constitution", "rules", "history", "readiness")
    )
    ask.add_argument("args", nargs="*", help="e.g. a page number for history")
    ask.add_argument("--account", default=None)
    ask.add_argument("--run", default=None)
    ask.set_defaults(subcommand_fn="ask")

    sub.add_parser("bench", help="benchmarks: sovereign bench --help", add_help=False)

    em = sub.add_parser("emulate", help="run a loopback broker emulator (for demos)")
    em.add_argument("what", choices=("tws", "alpaca"))
    _common(em)
    em.add_argument("--data", default="sample")
    em.add_argument("--symbols", default=None)
    em.add_argument("--start", default=None)
    em.add_argument("--end", default=None)
    em.add_argument("--port", type=int, default=0)
    em.add_argument("--clock", choices=("wall", "manual"), default="wall")
    em.add_argument("--speed", type=float, default=60.0, help="bars advance this much faster")
    em.set_defaults(subcommand_fn="emulate")

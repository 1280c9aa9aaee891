"""What the commands share: their usage error, the data they load and check, the
configuration with the command line's overrides, the state store and the scope they name."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from sovereign.config import Config

if TYPE_CHECKING:
    from sovereign.data.loaders import LoadedData


class UsageError(Exception):
    """Bad arguments: reported on stderr with exit code 2."""


def load_data(args: argparse.Namespace, config: Config) -> LoadedData:
    """The bars of ``--data`` after ``--symbols``, ``--start`` and ``--end``; none is an error."""
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


def check_volume(data: LoadedData, config: Config) -> None:
    """Refuse volume confirmation on data without volume, where it would block every entry."""
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


def check_state_store(config: Config) -> None:
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


def with_overrides(args: argparse.Namespace, config: Config) -> Config:
    """The configuration with the command line's overrides; a bad value is a usage error."""
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


def named_scope(args: argparse.Namespace) -> str:
    """The scope named by ``--run`` or ``--account``, or "" when neither is given."""
    if getattr(args, "run", None):
        return f"run/{args.run}"
    if getattr(args, "account", None):
        return f"account/{args.account}"
    return ""

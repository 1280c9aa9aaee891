"""Typed, validated configuration.

One frozen msgspec Struct per component, each forbidding unknown fields, so a typo in the
TOML file is a startup error naming the field instead of a silently ignored setting. The
file passed with ``--config`` has one table per component (``[engine]``, ``[strategy]``,
``[regime]``, ``[sim]``, ``[risk]``, ``[constitution]``, ``[data]``, ``[ray]``,
``[state]``, ``[selfmod]``, ``[broker]``, ``[ib]``, ``[alpaca]``, ``[telegram]``,
``[notifications]``); every key is
optional and defaults to the value documented on the Struct.
"""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import msgspec

from sovereign.core.constitution import Constitution, ConstitutionError


class ConfigError(ValueError):
    """A configuration file or value is invalid. The message names the field."""


class _Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


def _positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number, got {value!r}")


def _non_negative(name: str, value: float) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be >= 0, got {value!r}")


MAX_APPROVAL_TTL_S = 86_400
"""Longest ``[engine] approval_ttl_s``; it is carried in int64 nanoseconds, so an
unbounded value would overflow the first approval's expiry."""


class EngineConfig(_Section, frozen=True):
    """The actor graph and the session.

    Parameters
    ----------
    shards
        Number of shard actors; symbols are dealt to them in sorted order, round robin.
        Default 2.
    initial_capital
        Starting cash of a backtest or sim paper session, in USD. Default 100,000.
    account
        A named account whose guardian state (and, with the sim broker, simulated account)
        persists across sessions in the state store: a HALTED account stays HALTED until
        ``sovereign resume``. Empty (the default) scopes the state to the run.
    seed
        Seed for anything random in a run. Default 7.
    max_in_flight_steps
        How many steps the driver may have submitted but not yet completed on the Ray
        runtime; bounds memory and latency. Default 16.
    approval_ttl_s
        How long a guardian approval stays valid, in seconds of the session clock.
        Default 300; 1 to 86,400 (a day: an approval older than that is stale for any
        bar length this system trades).
    observer_batch_steps
        In a backtest, the monitor and operator (which only watch: nothing they return
        feeds a later step) receive the output of this many steps in one call, which saves
        two actor calls per step. Paper and live sessions always deliver every step at once.
        Default 16.
    submit_with_next_bars
        In a backtest, the gateway receives a step's approved orders together with the next
        step's bars, in one call: a step is one actor call shorter, and the simulated broker
        fills market orders at the next open either way, so the trades are the same. Paper
        and live sessions always send orders as soon as they are approved. Default true.
    chunk_bars
        In a backtest of a strategy that supports it (``kind = "breakout"`` with a fixed
        quantity) on the simulated broker, the largest number of bar times each actor is
        handed at once, speculatively (``sovereign.core.chunks``): the results are those of
        a replay bar by bar, to the last bit, and any chunk in which anything would differ
        is replayed bar by bar. 0 (the default) sizes chunks from the number of symbols;
        1 turns chunks off. At most 65536.
    """

    shards: int = 2
    initial_capital: float = 100_000.0
    account: str = ""
    seed: int = 7
    max_in_flight_steps: int = 16
    approval_ttl_s: int = 300
    observer_batch_steps: int = 16
    submit_with_next_bars: bool = True
    chunk_bars: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.chunk_bars <= 65_536:
            raise ValueError(f"chunk_bars must be between 0 and 65536, got {self.chunk_bars}")
        if not 1 <= self.shards <= 1024:
            raise ValueError(f"shards must be between 1 and 1024, got {self.shards}")
        _positive("initial_capital", self.initial_capital)
        if self.max_in_flight_steps < 1:
            raise ValueError("max_in_flight_steps must be >= 1")
        if not 1 <= self.approval_ttl_s <= MAX_APPROVAL_TTL_S:
            raise ValueError(
                f"approval_ttl_s must be between 1 and {MAX_APPROVAL_TTL_S} (one day), "
                f"got {self.approval_ttl_s}"
            )
        if not 1 <= self.observer_batch_steps <= 1024:
            raise ValueError(
                f"observer_batch_steps must be between 1 and 1024, got {self.observer_batch_steps}"
            )


class RegimeOverrides(_Section, frozen=True):
    """Strategy parameters for entries made in one regime (unset = the general value)."""

    stop_atr_mult: float | None = None
    target_atr_mult: float | None = None
    max_hold_bars: int | None = None

    def __post_init__(self) -> None:
        for name in ("stop_atr_mult", "target_atr_mult"):
            v = getattr(self, name)
            if v is not None:
                _positive(name, v)
        if self.max_hold_bars is not None and self.max_hold_bars < 1:
            raise ValueError(f"max_hold_bars must be >= 1, got {self.max_hold_bars}")


def _default_per_regime() -> dict[str, RegimeOverrides]:
    return {
        # Wider stops and quicker exits where prices swing, tighter targets in ranges.
        "Volatile": RegimeOverrides(stop_atr_mult=2.0, target_atr_mult=4.0, max_hold_bars=10),
        "Ranging": RegimeOverrides(target_atr_mult=2.0, max_hold_bars=10),
    }


class StrategyConfig(_Section, frozen=True):
    """The baseline strategy of the shards (long-only trend breakout).

    Parameters
    ----------
    atr_period
        Wilder ATR period. Default 14.
    breakout_window
        Entry needs close > the highest high of this many previous bars. Default 20.
    volume_window
        Bars in the volume-percentile window. Default 20.
    volume_threshold
        Minimum volume percentile (0-100) that confirms a breakout. Default 50. Data
        without volume (IB MIDPOINT bars) needs ``volume_confirmation = false``.
    volume_confirmation
        Require volume confirmation. Default true. Turning it off is logged at start.
    stop_atr_mult, target_atr_mult
        Protective stop and take-profit distances in ATRs from the entry fill, with the ATR
        frozen at the signal bar. Defaults 1.5 and 3.0.
    max_hold_bars
        Exit after this many bars in the trade. Default 20.
    exit_on_regime_change
        Exit when the symbol's regime differs from the one at entry. Default true.
    entry_regimes
        Regimes in which entries are allowed. Default ["TrendingUp"].
    sr_swing, sr_memory, sr_band_atr
        Support/resistance score parameters (see ``core.indicators.SupportResistance``).
    entry_timeout_bars
        An entry order not completely filled after this many bars is canceled (its signal
        is stale). Default 1.
    per_regime
        Stop, target and hold for entries made in a given regime (``[strategy.per_regime.
        Volatile]`` in TOML). Default: Volatile stop 2 ATR, target 4 ATR, hold 10 bars;
        Ranging target 2 ATR, hold 10 bars.
    kind
        ``baseline`` (this strategy) or ``breakout``: the fixed peer-comparable strategy of
        the benchmarks (``--strategy breakout`` applies ``breakout_preset``): close above
        the previous ``breakout_window`` highs and volume above their median, simple-mean
        ATR, ``fixed_quantity`` shares, no regimes, no rules.
    fixed_quantity
        Shares per entry when > 0 (still capped by the constitution's position limit);
        0 lets the guardian size by confidence and regime. Default 0.
    """

    atr_period: int = 14
    breakout_window: int = 20
    volume_window: int = 20
    volume_threshold: float = 50.0
    volume_confirmation: bool = True
    stop_atr_mult: float = 1.5
    target_atr_mult: float = 3.0
    max_hold_bars: int = 20
    exit_on_regime_change: bool = True
    entry_regimes: tuple[str, ...] = ("TrendingUp",)
    sr_swing: int = 3
    sr_memory: int = 10
    sr_band_atr: float = 0.5
    entry_timeout_bars: int = 1
    per_regime: dict[str, RegimeOverrides] = msgspec.field(default_factory=_default_per_regime)
    kind: Literal["baseline", "breakout"] = "baseline"
    fixed_quantity: int = 0

    def __post_init__(self) -> None:
        for name in (
            "atr_period",
            "breakout_window",
            "volume_window",
            "max_hold_bars",
            "entry_timeout_bars",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.fixed_quantity < 0:
            raise ValueError(f"fixed_quantity must be >= 0, got {self.fixed_quantity}")
        if not 0 <= self.volume_threshold <= 100:
            raise ValueError(f"volume_threshold must be in [0, 100], got {self.volume_threshold}")
        _positive("stop_atr_mult", self.stop_atr_mult)
        _positive("target_atr_mult", self.target_atr_mult)
        _positive("sr_band_atr", self.sr_band_atr)
        if self.sr_swing < 1 or self.sr_memory < 1:
            raise ValueError("sr_swing and sr_memory must be >= 1")
        from sovereign.messages.market import REGIME_NAMES

        unknown = [r for r in self.entry_regimes if r not in REGIME_NAMES]
        if unknown:
            raise ValueError(f"entry_regimes has unknown regimes {unknown}; known: {REGIME_NAMES}")
        unknown = [r for r in self.per_regime if r not in REGIME_NAMES]
        if unknown:
            raise ValueError(f"per_regime has unknown regimes {unknown}; known: {REGIME_NAMES}")


class RegimeConfig(_Section, frozen=True):
    """Regime detection.

    Parameters
    ----------
    model
        ``blend`` (default): the HMM and the foundation model, their probabilities
        averaged; ``hmm``: the HMM alone; ``baseline``: the rule-based trend/volatility
        classifier; ``none``: no regime detection (every symbol stays Unknown), for
        strategies that do not use regimes, such as ``breakout``. A strategy whose
        ``entry_regimes`` excludes Unknown then never enters.
    hmm_scope
        ``symbol`` (default): one HMM per symbol; ``market``: one HMM on the equal-weight
        index of the whole universe, whose regime every symbol gets.
    hmm_window, hmm_min_bars, hmm_refit_every, hmm_iter
        The HMM is first fitted after ``hmm_min_bars`` bars, then refitted every
        ``hmm_refit_every`` bars on the last ``hmm_window`` bars, with at most ``hmm_iter``
        EM iterations. Defaults 500, 250, 126 (half a year of daily bars), 30.
    foundation_checkpoint
        The foundation model: ``bundled`` (the checkpoint shipped with the package, trained
        on the bundled data), a local file, or empty to use the HMM alone.
    foundation_weight
        The foundation model's share of the blended probabilities. Default 0.35: the HMM
        leads (see ``sovereign/models/README.md`` for how much the foundation model adds).
    min_dwell, strong_probability
        Hysteresis: a new regime must lead for ``min_dwell`` bars in a row, or reach
        ``strong_probability``, before the label changes. Defaults 3 and 0.85.
    fast_span, slow_span, trend_margin, vol_short_span, vol_long_span, volatile_ratio
        The baseline classifier (see ``core.regime.BaselineRegimeClassifier``).
    """

    model: Literal["blend", "hmm", "baseline", "none"] = "blend"
    hmm_scope: Literal["symbol", "market"] = "symbol"
    hmm_window: int = 500
    hmm_min_bars: int = 250
    hmm_refit_every: int = 126
    hmm_iter: int = 30
    foundation_checkpoint: str = "bundled"
    foundation_weight: float = 0.35
    min_dwell: int = 3
    strong_probability: float = 0.85
    fast_span: int = 20
    slow_span: int = 50
    trend_margin: float = 0.01
    vol_short_span: int = 20
    vol_long_span: int = 250
    volatile_ratio: float = 1.6

    def __post_init__(self) -> None:
        if not 1 <= self.fast_span < self.slow_span:
            raise ValueError("fast_span must be >= 1 and below slow_span")
        if not 1 <= self.vol_short_span < self.vol_long_span:
            raise ValueError("vol_short_span must be >= 1 and below vol_long_span")
        _non_negative("trend_margin", self.trend_margin)
        if self.volatile_ratio <= 1:
            raise ValueError(f"volatile_ratio must be > 1, got {self.volatile_ratio}")
        if not 50 <= self.hmm_min_bars <= self.hmm_window:
            raise ValueError("need 50 <= hmm_min_bars <= hmm_window")
        if self.hmm_refit_every < 1 or self.hmm_iter < 1:
            raise ValueError("hmm_refit_every and hmm_iter must be >= 1")
        if not 0 <= self.foundation_weight <= 1:
            raise ValueError(f"foundation_weight must be in [0, 1], got {self.foundation_weight}")
        if self.min_dwell < 1 or not 0.5 < self.strong_probability <= 1:
            raise ValueError("min_dwell must be >= 1 and strong_probability in (0.5, 1]")


class SimConfig(_Section, frozen=True):
    """The simulated broker.

    Parameters
    ----------
    slippage_bps
        Adverse slippage on market fills, in basis points of the fill price. Default 2.
    commission_per_share
        USD per share. Default 0.005 (IBKR Pro fixed pricing).
    commission_min
        Minimum commission per order, USD. Default 1.00 (IBKR Pro fixed).
    commission_max_pct
        Maximum commission as a fraction of the trade value. Default 0.01 (IBKR Pro fixed).
    max_volume_share
        A fill never exceeds this fraction of the bar's volume; the rest carries over to
        the next bar. Default 0.10. Bars with unknown volume are not capped (counted).
    """

    slippage_bps: float = 2.0
    commission_per_share: float = 0.005
    commission_min: float = 1.0
    commission_max_pct: float = 0.01
    max_volume_share: float = 0.10

    def __post_init__(self) -> None:
        _non_negative("slippage_bps", self.slippage_bps)
        _non_negative("commission_per_share", self.commission_per_share)
        _non_negative("commission_min", self.commission_min)
        _non_negative("commission_max_pct", self.commission_max_pct)
        if not 0 < self.max_volume_share <= 1:
            raise ValueError(f"max_volume_share must be in (0, 1], got {self.max_volume_share}")


class RiskConfig(_Section, frozen=True):
    """How the guardian sizes positions inside the constitution's limits.

    Parameters
    ----------
    volatile_scale
        Size multiplier in the Volatile regime. Default 0.5.
    max_gross_exposure
        Refuse entries that would take gross exposure above this multiple of equity.
        Default 1.0 (no leverage).
    entry_limit_buffer
        Entries are marketable limit orders at the decision price times (1 + buffer), sized
        at that limit, so a gap up cannot fill them above what was approved. Default 0.01;
        in (0, 0.5]: positive, because an entry at market could fill anywhere, and at most
        0.5 (the breakout preset's collar), beyond which the limit bounds nothing.
    flatten_on_halt
        On a halt, sell every position at market (working orders are always canceled).
        Default true.
    review_after_losses
        This many consecutive losing trades ask the self-modification engine for a rule
        evaluation. Default 3; at least 1.
    """

    volatile_scale: float = 0.5
    max_gross_exposure: float = 1.0
    entry_limit_buffer: float = 0.01
    flatten_on_halt: bool = True
    review_after_losses: int = 3

    def __post_init__(self) -> None:
        if not 0 < self.volatile_scale <= 1:
            raise ValueError(f"volatile_scale must be in (0, 1], got {self.volatile_scale}")
        if not 0 < self.max_gross_exposure <= 4:
            raise ValueError(f"max_gross_exposure must be in (0, 4], got {self.max_gross_exposure}")
        # Written so that NaN fails too.
        if not 0 < self.entry_limit_buffer <= 0.5:
            raise ValueError(
                f"entry_limit_buffer must be in (0, 0.5], got {self.entry_limit_buffer}"
            )
        if self.review_after_losses < 1:
            raise ValueError(f"review_after_losses must be >= 1, got {self.review_after_losses}")


class DataConfig(_Section, frozen=True):
    """Loading market data.

    Parameters
    ----------
    split_adjust
        ``detect`` finds and removes share splits from raw prices (see
        ``sovereign.data.splits``); ``off`` leaves prices as they are. Default ``detect``.
    splits_file
        A CSV of known splits (``symbol,date,ratio``) used instead of detection.
    """

    split_adjust: Literal["detect", "off"] = "detect"
    splits_file: str = ""


class RayConfig(_Section, frozen=True):
    """The Ray runtime.

    Parameters
    ----------
    address
        Cluster address (``auto`` after ``ray start --head``); empty starts a local
        single-node Ray.
    dashboard
        Start the Ray dashboard with a local Ray (needed by the state API and
        ``ray list actors``). Default true.
    num_cpus
        CPUs for a local Ray; 0 means all. Default 0.
    channel
        Carry the engine's calls to its actors on a step channel: one direct socket per
        actor (a Unix socket on this machine, TCP to another node), opened through Ray
        and authenticated with a key only the driver and its actors hold. A step's calls
        then cost about half a Ray actor ping instead of four to five (BENCHMARKS.md).
        Off, every call is a Ray actor call (and shows as a task in the dashboard).
        Default true.
    """

    address: str = ""
    dashboard: bool = True
    num_cpus: int = 0
    channel: bool = True


class SelfModConfig(_Section, frozen=True):
    """Self-modification: finding weaknesses and deploying rules (no human approval).

    Parameters
    ----------
    enabled
        Run the engine. Default true. Off, the session trades with no rules at all (the
        counterfactual replay of a report uses this).
    min_trades
        A slice of trade memory is tested only with at least this many trades in it and
        outside it. Default 20.
    alpha
        The account's error budget for discoveries: the probability that any look ever
        finds a weakness where there is none is at most this, however many looks are taken
        (each look spends a share of it; ``core.weakness.spending``). Default 0.05.
    look_growth
        A discovery look is taken when trade memory has grown by this factor since the
        last one (looks are few, and each sees much new data). Default 1.5.
    confirm_trades
        A weakness found at a look is proposed only after it holds again on at least this
        many trades inside the slice (and outside it) that closed after it was found.
        Default 20.
    min_new_trades
        The end-of-day analysis (confirmations, and a look if one is due) runs only when
        this many trades have closed since the last one (the losing-streak trigger always
        runs). Default 10.
    max_proposals
        Proposals per analysis. Default 1.
    compare_without_rules
        After a backtest that deployed rules, replay it without self-modification and
        report both, from the first deployment on. Default true.
    """

    enabled: bool = True
    min_trades: int = 20
    alpha: float = 0.05
    look_growth: float = 1.5
    confirm_trades: int = 20
    min_new_trades: int = 10
    max_proposals: int = 1
    compare_without_rules: bool = True

    def __post_init__(self) -> None:
        if self.min_trades < 5:
            raise ValueError(f"min_trades must be >= 5, got {self.min_trades}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if not 1 < self.look_growth <= 10:
            raise ValueError(f"look_growth must be in (1, 10], got {self.look_growth}")
        if self.confirm_trades < 5:
            raise ValueError(f"confirm_trades must be >= 5, got {self.confirm_trades}")
        if self.min_new_trades < 1 or self.max_proposals < 1:
            raise ValueError("min_new_trades and max_proposals must be >= 1")


class BrokerConfig(_Section, frozen=True):
    """Which broker a paper or live session trades through, and how its bars arrive.

    Parameters
    ----------
    kind
        ``sim`` (replayed data, the default), ``ib`` (TWS / IB Gateway), ``alpaca``, or
        ``ib+alpaca`` (IB, failing over to Alpaca).
    failover_after_s
        With ``ib+alpaca``: IB unreachable for this long sends new positions to Alpaca.
        Default 30.
    bar_interval_s
        Bar length of a live session, seconds. Default 60.
    poll_interval_s
        How often bars are polled (IB paper: MIDPOINT history). Default 60.
    watchlist
        The symbols of a live session (``--symbols`` overrides).
    warmup_bars
        History fetched when a live session starts, for the indicators and regimes to warm
        up on (it is not traded). Default 300.
    feed
        ``poll`` (default; what IB paper accounts need: MIDPOINT history polled every
        ``poll_interval_s``) or ``stream`` (live: IB ``keepUpToDate`` bars, Alpaca's data
        stream).
    stream_grace_s
        A streamed bar time is released when every symbol has delivered it, or this many
        seconds after its first bar (for symbols that did not trade). Default 5.
    """

    kind: Literal["sim", "ib", "alpaca", "ib+alpaca"] = "sim"
    failover_after_s: float = 30.0
    bar_interval_s: int = 60
    poll_interval_s: float = 60.0
    watchlist: tuple[str, ...] = ()
    warmup_bars: int = 300
    feed: Literal["poll", "stream"] = "poll"
    stream_grace_s: float = 5.0

    def __post_init__(self) -> None:
        _non_negative("failover_after_s", self.failover_after_s)
        if self.warmup_bars < 1:
            raise ValueError(f"warmup_bars must be >= 1, got {self.warmup_bars}")
        if self.bar_interval_s < 1:
            raise ValueError(f"bar_interval_s must be >= 1, got {self.bar_interval_s}")
        _positive("poll_interval_s", self.poll_interval_s)


class IBConfig(_Section, frozen=True):
    """TWS / IB Gateway. Paper defaults: port 7497 (TWS) or 4002 (IB Gateway).

    ``client_id`` places orders; ``data_client_id`` (a second connection) polls bars.
    ``what_to_show``: MIDPOINT on paper accounts (no TRADES data there; MIDPOINT bars have
    no volume), TRADES live. ``max_requests``: ib_async's throttle (IB allows 45 messages
    a second). ``historical_pacing``: keep bar polls inside IB's pacing rules (at most 60
    requests per 10 minutes, so about 5 symbols polled every minute; the poller waits
    rather than break them). Turn both off only against an emulator.
    ``reconnect_initial_s`` / ``reconnect_max_s``: the reconnect backoff (doubling from the
    first to the second).
    """

    host: str = "127.0.0.1"
    port: int = 7497
    client_id: int = 1
    data_client_id: int = 2
    account: str = ""
    what_to_show: Literal["MIDPOINT", "TRADES"] = "MIDPOINT"
    use_rth: bool = True
    connect_timeout_s: float = 5.0
    max_requests: int = 45
    historical_pacing: bool = True
    reconnect_initial_s: float = 1.0
    reconnect_max_s: float = 60.0

    def __post_init__(self) -> None:
        _positive("reconnect_initial_s", self.reconnect_initial_s)
        if self.reconnect_max_s < self.reconnect_initial_s:
            raise ValueError(
                f"reconnect_max_s ({self.reconnect_max_s}) must be >= reconnect_initial_s "
                f"({self.reconnect_initial_s})"
            )
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be a TCP port, got {self.port}")
        if self.client_id == self.data_client_id:
            raise ValueError("client_id and data_client_id must differ (two connections)")


class AlpacaConfig(_Section, frozen=True):
    """Alpaca. Keys come from the environment (APCA_API_KEY_ID, APCA_API_SECRET_KEY)."""

    paper: bool = True
    feed: Literal["iex", "sip"] = "iex"


class StateConfig(_Section, frozen=True):
    """Where state that must survive restarts lives.

    Parameters
    ----------
    redis_url
        ``redis://[[user]:password@]host[:port][/db]`` (``rediss://`` for TLS, or
        ``unix:///path/to/socket``) to keep the state store in Redis (shared by every
        node of a cluster); empty keeps it in SQLite in the state directory. The form is
        checked at load; whether Redis answers is checked when a command starts.
    """

    redis_url: str = ""

    def __post_init__(self) -> None:
        if self.redis_url:
            problem = redis_url_problem(self.redis_url)
            if problem is not None:
                raise ValueError(f"redis_url {problem}, got {redact_url(self.redis_url)!r}")


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, for messages and logs."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        # Unparsable, so where a password would be is unknown: show only the scheme.
        return url.partition("://")[0] + "://..."
    if password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def redis_url_problem(url: str) -> str | None:
    """What is wrong with the form of a Redis URL (None: nothing), as redis-py reads it."""
    bad_port = "has a bad port (a number from 1 to 65535)"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return bad_port if "port" in str(exc).lower() else f"is not a URL ({exc})"
    if parts.scheme not in ("redis", "rediss", "unix"):
        return "must start with redis://, rediss:// or unix://"
    if parts.scheme == "unix":
        return None if parts.path else "needs the socket path (unix:///path/to/socket)"
    if port == 0:
        return bad_port
    if not parts.hostname:
        return "needs a host (redis://host:port/db)"
    db = parts.path.strip("/")
    if db and not db.isdigit():
        return f"has a database that is not a number ({db!r}; redis://host:port/0)"
    return None


class ConstitutionOverrides(_Section, frozen=True):
    """The ``[constitution]`` table: values may only make a limit stricter."""

    max_position_size: float | None = None
    max_daily_loss: float | None = None
    max_drawdown: float | None = None
    min_confidence_for_trade: float | None = None
    max_rule_changes_per_day: int | None = None
    max_active_rules: int | None = None


NotifyMode = Literal["on", "silent", "off"]

# Every kind of notification the system raises, and how each channel treats it unless
# configured otherwise: "on" (Telegram: with a sound), "silent" (Telegram: delivered
# without a sound; the console prints it like "on"), "off" (not delivered).
NOTIFICATION_KINDS: dict[str, tuple[NotifyMode, NotifyMode]] = {
    # kind: (telegram default, console default)
    "modification_deployed": ("on", "on"),
    "modification_rejected": ("on", "on"),
    "modification_decision": ("silent", "on"),
    "rules_changed": ("on", "on"),
    "rollback": ("on", "on"),
    "rollback_refused": ("on", "on"),
    "trading_state": ("on", "on"),
    "broker_failover": ("on", "on"),
    "broker_failback": ("on", "on"),
    "position_mismatch": ("on", "on"),
    "constitution": ("on", "on"),
    "fill": ("off", "off"),
    "order_rejected": ("silent", "on"),
    "trade_closed": ("silent", "on"),
    "rule_evaluation": ("silent", "on"),
    "regime": ("silent", "on"),
    "session": ("silent", "on"),
    # One a trading day: an equity chart on Telegram; on the console a multi-year replay
    # would print thousands of them.
    "daily_summary": ("on", "off"),
}


class NotificationsConfig(_Section, frozen=True):
    """Per kind of notification, per channel: ``"on"``, ``"silent"`` or ``"off"``.

    ``[notifications.telegram]`` and ``[notifications.console]`` map a kind (see
    ``NOTIFICATION_KINDS``: ``modification_deployed``, ``trading_state``, ``fill``,
    ``daily_summary``, ...) to a mode; kinds not named keep their defaults. An unknown
    kind is an error naming it.
    """

    telegram: dict[str, NotifyMode] = msgspec.field(default_factory=dict)
    console: dict[str, NotifyMode] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        for channel, table in (("telegram", self.telegram), ("console", self.console)):
            unknown = sorted(set(table) - set(NOTIFICATION_KINDS))
            if unknown:
                raise ValueError(
                    f"[notifications.{channel}] unknown kind(s) {unknown}; known kinds: "
                    f"{sorted(NOTIFICATION_KINDS)}"
                )

    def mode(self, channel: Literal["telegram", "console"], kind: str) -> NotifyMode:
        table = self.telegram if channel == "telegram" else self.console
        if kind in table:
            return table[kind]
        default = NOTIFICATION_KINDS.get(kind)
        if default is None:
            return "on"  # a kind added without a default is shown rather than lost
        return default[0] if channel == "telegram" else default[1]

    def wants(self, kind: str) -> bool:
        """Whether any channel delivers ``kind`` (so it is worth producing)."""
        return self.mode("telegram", kind) != "off" or self.mode("console", kind) != "off"


class TelegramConfig(_Section, frozen=True):
    """The operator bot. The token is never configured here: it comes from the
    environment (``SOVEREIGN_TELEGRAM_TOKEN``), as may the allowlist
    (``SOVEREIGN_TELEGRAM_ALLOWED_USERS``, comma-separated user ids, added to
    ``allowed_users``) and the Bot API server (``SOVEREIGN_TELEGRAM_BASE_URL``).

    Parameters
    ----------
    allowed_users
        Telegram user ids that may command the bot, in a private chat only. Deny by
        default: with none, nobody can.
    notify_chats
        Where notifications go; default: each allowed user's private chat.
    queue_size
        Notifications waiting to be sent (during an outage); beyond it the oldest
        info-level one is dropped (counted). Default 500.
    retry_initial_s, retry_max_s
        Send retries back off from the first to the second, doubling. Defaults 1, 60.
    max_age_s
        A notification not delivered within this long is dropped (counted). Default 3600.
    stranger_window_s, stranger_audit_per_window
        Someone not on the allowlist gets one refusal and at most this many audit-log
        entries per window; the rest is only counted. Defaults 600 s, 3.
    history_page_size
        Modifications per ``/history`` page. Default 5.
    """

    allowed_users: tuple[int, ...] = ()
    notify_chats: tuple[int, ...] = ()
    queue_size: int = 500
    retry_initial_s: float = 1.0
    retry_max_s: float = 60.0
    max_age_s: float = 3600.0
    stranger_window_s: float = 600.0
    stranger_audit_per_window: int = 3
    history_page_size: int = 5

    def __post_init__(self) -> None:
        if self.queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {self.queue_size}")
        _positive("retry_initial_s", self.retry_initial_s)
        _positive("retry_max_s", self.retry_max_s)
        _positive("max_age_s", self.max_age_s)
        _positive("stranger_window_s", self.stranger_window_s)
        if self.stranger_audit_per_window < 0:
            raise ValueError("stranger_audit_per_window must be >= 0")
        if not 1 <= self.history_page_size <= 20:
            raise ValueError(f"history_page_size must be 1..20, got {self.history_page_size}")
        if any(u <= 0 for u in self.allowed_users):
            raise ValueError("allowed_users are Telegram user ids (positive integers)")


class Config(_Section, frozen=True):
    """The whole configuration."""

    engine: EngineConfig = msgspec.field(default_factory=EngineConfig)
    strategy: StrategyConfig = msgspec.field(default_factory=StrategyConfig)
    regime: RegimeConfig = msgspec.field(default_factory=RegimeConfig)
    sim: SimConfig = msgspec.field(default_factory=SimConfig)
    risk: RiskConfig = msgspec.field(default_factory=RiskConfig)
    data: DataConfig = msgspec.field(default_factory=DataConfig)
    ray: RayConfig = msgspec.field(default_factory=RayConfig)
    state: StateConfig = msgspec.field(default_factory=StateConfig)
    broker: BrokerConfig = msgspec.field(default_factory=BrokerConfig)
    ib: IBConfig = msgspec.field(default_factory=IBConfig)
    alpaca: AlpacaConfig = msgspec.field(default_factory=AlpacaConfig)
    selfmod: SelfModConfig = msgspec.field(default_factory=SelfModConfig)
    telegram: TelegramConfig = msgspec.field(default_factory=TelegramConfig)
    notifications: NotificationsConfig = msgspec.field(default_factory=NotificationsConfig)
    constitution: ConstitutionOverrides = msgspec.field(default_factory=ConstitutionOverrides)

    def build_constitution(self) -> Constitution:
        """The constitution with this config's (stricter-only) overrides applied."""
        overrides = {
            k: v for k, v in msgspec.structs.asdict(self.constitution).items() if v is not None
        }
        try:
            return Constitution.default().tightened(**overrides)
        except ConstitutionError as exc:
            raise ConfigError(f"[constitution] {exc}") from None


def breakout_preset(config: Config) -> Config:
    """The benchmarks' peer-comparable strategy, through the whole pipeline.

    Long only, 100 shares; entry at the close of bar t when flat and nothing is pending, if
    close[t] > max(high[t-20..t-1]) and volume[t] > median(volume[t-20..t-1]); ATR(14) the
    simple mean of the last 14 true ranges, frozen at the signal bar; stop = fill - 1.5
    ATR, target = fill + 3 ATR; exit when low <= stop, high >= target or 50 bars held. Fills
    at the next bar's open with no slippage, commission or volume cap. The guardian still
    approves every order: entries go out as limit orders with a 50 % collar (so the
    approved notional bounds the fill; they fill at the open like market orders unless a
    bar gaps up by half), and the constitution's limits still apply — hence the large
    default capital, so that 100 shares never reach the 5 % position limit.
    """
    from sovereign.messages.market import REGIME_NAMES

    replace = msgspec.structs.replace
    capital = config.engine.initial_capital
    return replace(
        config,
        engine=replace(
            config.engine, initial_capital=max(capital, 1e9) if capital == 100_000.0 else capital
        ),
        strategy=replace(
            config.strategy,
            kind="breakout",
            fixed_quantity=100,
            breakout_window=20,
            volume_window=20,
            atr_period=14,
            stop_atr_mult=1.5,
            target_atr_mult=3.0,
            max_hold_bars=50,
            exit_on_regime_change=False,
            entry_regimes=tuple(REGIME_NAMES),
            per_regime={},
            entry_timeout_bars=1_000_000,
        ),
        regime=replace(config.regime, model="none"),
        sim=replace(
            config.sim,
            slippage_bps=0.0,
            commission_per_share=0.0,
            commission_min=0.0,
            commission_max_pct=0.0,
            max_volume_share=1.0,
        ),
        risk=replace(config.risk, entry_limit_buffer=0.5),
        selfmod=replace(config.selfmod, enabled=False),
    )


def parse_config(data: dict[str, Any], *, source: str = "config") -> Config:
    """Validate a mapping (as read from TOML) into a Config; errors name the field."""
    selfmod = data.get("selfmod")
    if isinstance(selfmod, dict) and "fdr" in selfmod:
        # Renamed when the loop's statistics changed: say so rather than "unknown field".
        raise ConfigError(
            f"{source}: [selfmod] fdr is no longer a setting: the error rate is now one "
            "budget per account spent across looks, [selfmod] alpha (default 0.05); see "
            "the README's Self-modification section"
        )
    try:
        config = msgspec.convert(data, Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{source}: {_humanise(str(exc))}") from None
    config.build_constitution()  # a looser constitution value is a startup error
    return config


def load_config(path: str | Path | None) -> Config:
    """Read and validate a TOML config file; ``None`` gives the defaults."""
    if path is None:
        return Config()
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {p}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    return parse_config(data, source=str(p))


def _humanise(message: str) -> str:
    # msgspec paths look like `$.engine.shards`; in a TOML file that is [engine] shards.
    return message.replace("`$.", "`").replace("- at `$`", "")

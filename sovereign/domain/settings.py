"""The settings' types: one frozen msgspec Struct per component.

Each forbids unknown fields and validates its own values, so a typo or a bad value in the
TOML file is a startup error naming the field. ``sovereign.config`` reads the file into
these; the core takes them as plain values (it never reads a file).
"""

from __future__ import annotations

import math
from typing import Literal

import msgspec

from sovereign.domain.regimes import REGIME_NAMES


class Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


def require_positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number, got {value!r}")


def require_non_negative(name: str, value: float) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be >= 0, got {value!r}")


MAX_APPROVAL_TTL_S = 86_400
"""Longest ``[engine] approval_ttl_s``; it is carried in int64 nanoseconds, so an
unbounded value would overflow the first approval's expiry."""


class EngineConfig(Section, frozen=True):
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
        require_positive("initial_capital", self.initial_capital)
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


class RegimeOverrides(Section, frozen=True):
    """Strategy parameters for entries made in one regime (unset = the general value)."""

    stop_atr_mult: float | None = None
    target_atr_mult: float | None = None
    max_hold_bars: int | None = None

    def __post_init__(self) -> None:
        for name in ("stop_atr_mult", "target_atr_mult"):
            v = getattr(self, name)
            if v is not None:
                require_positive(name, v)
        if self.max_hold_bars is not None and self.max_hold_bars < 1:
            raise ValueError(f"max_hold_bars must be >= 1, got {self.max_hold_bars}")


def _default_per_regime() -> dict[str, RegimeOverrides]:
    return {
        # Wider stops and quicker exits where prices swing, tighter targets in ranges.
        "Volatile": RegimeOverrides(stop_atr_mult=2.0, target_atr_mult=4.0, max_hold_bars=10),
        "Ranging": RegimeOverrides(target_atr_mult=2.0, max_hold_bars=10),
    }


class StrategyConfig(Section, frozen=True):
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
        Support/resistance score parameters (see ``core.support_resistance.SupportResistance``).
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
        require_positive("stop_atr_mult", self.stop_atr_mult)
        require_positive("target_atr_mult", self.target_atr_mult)
        require_positive("sr_band_atr", self.sr_band_atr)
        if self.sr_swing < 1 or self.sr_memory < 1:
            raise ValueError("sr_swing and sr_memory must be >= 1")
        unknown = [r for r in self.entry_regimes if r not in REGIME_NAMES]
        if unknown:
            raise ValueError(f"entry_regimes has unknown regimes {unknown}; known: {REGIME_NAMES}")
        unknown = [r for r in self.per_regime if r not in REGIME_NAMES]
        if unknown:
            raise ValueError(f"per_regime has unknown regimes {unknown}; known: {REGIME_NAMES}")


class RegimeConfig(Section, frozen=True):
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
        require_non_negative("trend_margin", self.trend_margin)
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


class SimConfig(Section, frozen=True):
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
        require_non_negative("slippage_bps", self.slippage_bps)
        require_non_negative("commission_per_share", self.commission_per_share)
        require_non_negative("commission_min", self.commission_min)
        require_non_negative("commission_max_pct", self.commission_max_pct)
        if not 0 < self.max_volume_share <= 1:
            raise ValueError(f"max_volume_share must be in (0, 1], got {self.max_volume_share}")


class RiskConfig(Section, frozen=True):
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


class DataConfig(Section, frozen=True):
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


class RayConfig(Section, frozen=True):
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


class SelfModConfig(Section, frozen=True):
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
        (each look spends a share of it; ``core.weakness_looks.spending``). Default 0.05.
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
        After a backtest that deployed rules, replay it once more without self-
        modification and report both, from the first deployment on. Default false: the
        replay doubles the backtest's time, and each rule's shadow record (what the trades
        it acted on made, from the same pass) is in the report anyway.
    """

    enabled: bool = True
    min_trades: int = 20
    alpha: float = 0.05
    look_growth: float = 1.5
    confirm_trades: int = 20
    min_new_trades: int = 10
    max_proposals: int = 1
    compare_without_rules: bool = False

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

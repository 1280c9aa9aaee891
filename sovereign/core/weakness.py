"""The weakness analyser: slices of past trades that do measurably worse than the rest.

A slice is a set of closed trades picked out by one rule condition, so every weakness found
is already a rule the learner can propose. Slices come from five dimensions of the entry:

=============  ===========================================  ==================================
dimension      buckets                                      condition
=============  ===========================================  ==================================
regime         each regime of ``REGIME_NAMES`` present      ``RegimeIs(r)``
volume         percentile [0,30) [30,50) [50,70) [70,90)    ``VolumeBelow(30)``,
               and [90,100]                                 ``VolumeAbove(30) & VolumeBelow(50)``,
                                                            ..., ``VolumeAbove(90)``
sr             S/R score 0, 1-2, >=3                        ``SRScoreBelow(1)``,
                                                            ``SRScoreAbove(1) & SRScoreBelow(3)``,
                                                            ``SRScoreAbove(3)``
time           New York minute of the entry bar in 60-      ``TimeOfDayBetween(a, b)``
               minute buckets from 09:30: [09:30,10:30)
               ... [14:30,15:30), [15:30,16:00)
symbol         each symbol present                          ``SymbolIn((s,))``
=============  ===========================================  ==================================

plus every pair of buckets from two different dimensions, whose condition is the flat
``And`` of both (``RegimeIs(Volatile) & VolumeBelow(30)``). A trade with a missing feature
(unknown volume, no S/R score, no entry minute, a regime outside ``REGIME_NAMES``) is in no
bucket of that dimension, though it still counts in the "rest" of every slice. Slice
membership is computed by evaluating the slice's own condition with the rule interpreter,
so a proposed rule fires on exactly the trades it was judged on; the one exception is a
trade without an S/R score (stored as -1), which the analysis leaves out of the S/R buckets
but which ``SRScoreBelow(1)`` would match.

A dimension with fewer than two occupied buckets (daily bars all enter at 09:30, a
single-symbol run) is not informative and yields no slices, and a pair that holds exactly
the same trades as one of its parents is the parent again and is not tested twice.

Statistics. A slice is tested when it holds at least ``min_trades`` trades and at least
``min_trades`` trades are outside it. Each tested slice gets two one-sided tests of "the
slice is worse than the rest":

* expectancy: Welch's t-test on ``return_pct`` (``alternative="less"``); statistic ``t``;
* win rate: Fisher's exact test on wins/losses x slice/rest (``alternative="less"``);
  statistic the sample odds ratio.

Undefined p-values (constant returns) count as 1. Benjamini-Hochberg over every p-value
of the analysis (both tests of every slice, ``m = tests_run``) turns them into q-values,
and a slice is a weakness when one of its tests has ``q <= fdr`` and its mean return is
below the rest's. A pair is dropped when one of its single-dimension parents is a weakness
with a q-value no larger than the pair's: the simpler rule already explains it.

Trades whose ``pnl`` or ``return_pct`` is not finite (a zero-notional entry) are left out
of the analysis. ``counterfactual_pnl`` replays any rule on the recorded trades; see its
docstring for what it can and cannot replay.

Repeated looks (an error budget spent across looks, a candidate confirmed on later trades,
a deployed rule's retirement) are in ``sovereign.core.weakness_looks``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from sovereign.core.codegen import RuleFeatures, interpret
from sovereign.core.weakness_slices import Slice, slice_dimensions, testable_slices
from sovereign.core.weakness_stats import (
    benjamini_hochberg,
    fisher_less,
    mean_or_nan,
    welch_less_many,
)
from sovereign.domain.regimes import REGIME_NAMES
from sovereign.domain.rules import Condition, Rule, ScaleSize, SkipTrade

__all__ = [
    "TradeLike",
    "TradeSample",
    "Weakness",
    "counterfactual_pnl",
    "find_weaknesses",
    "weakness_to_rule",
]

EvidenceValue = float | int | str | bool | None

UNKNOWN_REGIME_CODE = 255
"""The regime code of a trade whose regime is not in ``REGIME_NAMES`` (as while warming up)."""

SCALE_FACTOR = 0.5
"""The size factor proposed for a weak slice that still makes money on average."""


class TradeLike(Protocol):
    """What ``TradeSample.from_records`` reads from a closed trade.

    ``TradeRecord`` and the ``TradeClosed`` message both qualify. An optional ``confidence``
    attribute is read too (NaN when absent).
    """

    @property
    def pnl(self) -> float: ...
    @property
    def return_pct(self) -> float: ...
    @property
    def regime(self) -> str: ...
    @property
    def symbol(self) -> str: ...
    @property
    def entry_ts(self) -> int: ...
    @property
    def exit_ts(self) -> int: ...
    @property
    def features(self) -> Mapping[str, EvidenceValue]: ...


# -- SAMPLE -----------------------------------------------------------------------------


def _float_feature(features: Mapping[str, EvidenceValue], key: str) -> float:
    v = features.get(key)
    if v is None:
        return math.nan
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ValueError(f"feature {key!r} is not a number: {v!r}")
    return float(v)


def _int_feature(features: Mapping[str, EvidenceValue], key: str) -> int:
    x = _float_feature(features, key)
    return int(x) if math.isfinite(x) else -1


@dataclass(frozen=True, slots=True)
class TradeSample:
    """Closed trades as columns, all 1-D arrays of the same length.

    Parameters
    ----------
    pnl
        Net pnl per trade (float).
    return_pct
        Pnl over the entry notional (float).
    win
        ``pnl > 0`` (bool).
    regime
        Regime name at entry (object array of str).
    symbol
        Symbol (object array of str).
    volume_pct
        Volume percentile of the entry bar, NaN when unknown (float).
    sr_score
        Support/resistance score at entry, -1 when unknown (int).
    minute
        New York minute of the day of the entry bar's start, -1 when unknown (int).
    atr_pct
        ATR / close * 100 at entry (the shard's ``atr_pct`` feature), NaN when unknown.
    confidence
        The entry's confidence, NaN when unknown (float).
    entry_ts, exit_ts
        Entry and exit times, ns since the Unix epoch (int).
    """

    pnl: np.ndarray
    return_pct: np.ndarray
    win: np.ndarray
    regime: np.ndarray
    symbol: np.ndarray
    volume_pct: np.ndarray
    sr_score: np.ndarray
    minute: np.ndarray
    atr_pct: np.ndarray
    confidence: np.ndarray
    entry_ts: np.ndarray
    exit_ts: np.ndarray

    def __post_init__(self) -> None:
        lengths = {name: np.shape(getattr(self, name)) for name in self.__dataclass_fields__}
        if len(set(lengths.values())) != 1 or len(next(iter(lengths.values()))) != 1:
            raise ValueError(f"columns must be 1-D and of one length, got {lengths}")

    def __len__(self) -> int:
        return len(self.pnl)

    @classmethod
    def from_records(cls, records: Iterable[TradeLike]) -> TradeSample:
        """Build a sample from closed trades.

        Parameters
        ----------
        records
            Objects with ``pnl``, ``return_pct``, ``regime``, ``symbol``, ``entry_ts``,
            ``exit_ts``, ``features`` and optionally ``confidence``, in any order.

        Returns
        -------
        TradeSample
            One row per record, in the order given.

        Raises
        ------
        ValueError
            If a numeric feature holds something that is not a number.
        """
        rows = list(records)
        pnl = np.array([float(r.pnl) for r in rows], dtype=np.float64)
        feats = [r.features for r in rows]
        return cls(
            pnl=pnl,
            return_pct=np.array([float(r.return_pct) for r in rows], dtype=np.float64),
            win=pnl > 0,
            regime=np.array([str(r.regime) for r in rows], dtype=object),
            symbol=np.array([str(r.symbol) for r in rows], dtype=object),
            volume_pct=np.array([_float_feature(f, "volume_pct") for f in feats], dtype=float),
            sr_score=np.array([_int_feature(f, "sr_score") for f in feats], dtype=np.int64),
            minute=np.array([_int_feature(f, "minute_of_day") for f in feats], dtype=np.int64),
            atr_pct=np.array(
                [_float_feature(f, "atr_pct") for f in feats],
                dtype=float,
            ),
            confidence=np.array(
                [float(getattr(r, "confidence", math.nan)) for r in rows], dtype=float
            ),
            entry_ts=np.array([int(r.entry_ts) for r in rows], dtype=np.int64),
            exit_ts=np.array([int(r.exit_ts) for r in rows], dtype=np.int64),
        )

    def extended(self, records: Iterable[TradeLike]) -> TradeSample:
        """This sample with ``records`` appended (``from_records`` of the new ones only)."""
        more = TradeSample.from_records(records)
        if not len(more):
            return self
        return TradeSample(
            **{
                name: np.concatenate([getattr(self, name), getattr(more, name)])
                for name in self.__dataclass_fields__
            }
        )

    def select(self, mask: np.ndarray) -> TradeSample:
        """Return the trades where ``mask`` (bool, one per trade) is true."""
        return TradeSample(
            **{name: getattr(self, name)[mask] for name in self.__dataclass_fields__}
        )

    def rule_features(self) -> RuleFeatures:
        """Return the features a rule sees for these trades' entries.

        Regimes outside ``REGIME_NAMES`` get code 255. The losing streak at entry is not
        reconstructed and is 0 for every trade, so ``ConsecutiveLossesAbove(n)`` with
        ``n >= 1`` never fires here.
        """
        index = {name: i for i, name in enumerate(REGIME_NAMES)}
        return RuleFeatures(
            regime=np.array(
                [index.get(r, UNKNOWN_REGIME_CODE) for r in self.regime], dtype=np.uint8
            ),
            volume_pct=self.volume_pct,
            sr_score=self.sr_score,
            atr_pct=self.atr_pct,
            minute=self.minute,
            symbol=self.symbol,
            confidence=self.confidence,
            losses=np.zeros(len(self), dtype=np.int64),
        )


# -- RESULT -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Weakness:
    """A slice of trades that does significantly worse than the rest.

    Parameters
    ----------
    condition
        The rule condition that picks out the slice.
    label
        Readable name, e.g. ``"regime=Volatile & volume=[0,30)"``.
    n, rest_n
        Trades inside and outside the slice.
    win_rate, rest_win_rate
        Fraction of trades with pnl > 0.
    expectancy, rest_expectancy
        Mean pnl per trade.
    mean_return, rest_mean_return
        Mean ``return_pct``.
    test
        ``"welch_t"`` or ``"fisher_exact"``: the slice's test with the smaller q-value.
    statistic
        That test's statistic (Welch's t, or the sample odds ratio of winning).
    p_value, q_value
        That test's one-sided p-value and its Benjamini-Hochberg q-value.
    tests_run
        Number of p-values the q-values were adjusted over (two per tested slice).
    slice_pnl, total_pnl
        Summed pnl of the slice and of every analysed trade.
    fdr, min_trades
        The analysis settings that produced this result.
    """

    condition: Condition
    label: str
    n: int
    win_rate: float
    expectancy: float
    mean_return: float
    rest_n: int
    rest_win_rate: float
    rest_expectancy: float
    rest_mean_return: float
    test: Literal["welch_t", "fisher_exact"]
    statistic: float
    p_value: float
    q_value: float
    tests_run: int
    slice_pnl: float
    total_pnl: float
    fdr: float
    min_trades: int


# -- ANALYSIS ---------------------------------------------------------------------------


def _check_settings(min_trades: int, fdr: float, max_results: int) -> None:
    if min_trades < 2:
        raise ValueError(f"min_trades must be at least 2 (a t-test needs two), got {min_trades}")
    if not 0 < fdr <= 1:
        raise ValueError(f"fdr must be in (0, 1], got {fdr}")
    if max_results < 0:
        raise ValueError(f"max_results must be non-negative, got {max_results}")


def find_weaknesses(
    trades: TradeSample, *, min_trades: int = 20, fdr: float = 0.10, max_results: int = 5
) -> list[Weakness]:
    """Find the slices of past trades that do significantly worse than the rest.

    The slices, tests and false-discovery control are described in the module docstring.

    Parameters
    ----------
    trades
        The closed trades to analyse. Trades with a non-finite pnl or return are ignored.
    min_trades
        Minimum trades inside a slice, and outside it, for the slice to be tested.
    fdr
        The false discovery rate: a test counts when its q-value is at most this.
    max_results
        At most this many weaknesses are returned.

    Returns
    -------
    list[Weakness]
        Sorted by q-value, then by how far the slice's mean return falls below the rest's
        (largest gap first), then by label. Empty when nothing is significant or there are
        fewer than ``2 * min_trades`` usable trades.

    Raises
    ------
    ValueError
        If ``min_trades < 2``, ``fdr`` is outside (0, 1] or ``max_results < 0``.
    """
    _check_settings(min_trades, fdr, max_results)
    trades = trades.select(np.isfinite(trades.pnl) & np.isfinite(trades.return_pct))
    n = len(trades)
    if n < 2 * min_trades:
        return []
    dims = slice_dimensions(trades.regime, trades.sr_score, trades.symbol, trades.rule_features())
    slices = testable_slices(dims, n, min_trades)
    if not slices:
        return []

    welch, fisher = _slice_tests(trades, slices)
    k = len(slices)
    q = benjamini_hochberg(np.array([p for _, p in welch] + [p for _, p in fisher]))
    total_pnl = float(trades.pnl.sum())

    found: dict[int, Weakness] = {}
    for i, s in enumerate(slices):
        inside, outside = trades.return_pct[s.mask], trades.return_pct[~s.mask]
        mean_in, mean_out = mean_or_nan(inside), mean_or_nan(outside)
        if not (min(q[i], q[k + i]) <= fdr and mean_in < mean_out):
            continue
        use_welch = q[i] <= q[k + i]
        statistic, p_value = welch[i] if use_welch else fisher[i]
        pnl_in, pnl_out = trades.pnl[s.mask], trades.pnl[~s.mask]
        found[i] = Weakness(
            condition=s.condition,
            label=s.label,
            n=len(inside),
            win_rate=float(trades.win[s.mask].mean()),
            expectancy=mean_or_nan(pnl_in),
            mean_return=mean_in,
            rest_n=len(outside),
            rest_win_rate=float(trades.win[~s.mask].mean()),
            rest_expectancy=mean_or_nan(pnl_out),
            rest_mean_return=mean_out,
            test="welch_t" if use_welch else "fisher_exact",
            statistic=statistic,
            p_value=p_value,
            q_value=float(q[i] if use_welch else q[k + i]),
            tests_run=2 * k,
            slice_pnl=float(pnl_in.sum()),
            total_pnl=total_pnl,
            fdr=fdr,
            min_trades=min_trades,
        )

    kept = _unexplained(found, slices)
    kept.sort(key=lambda w: (w.q_value, w.mean_return - w.rest_mean_return, w.label))
    return kept[:max_results]


def _slice_tests(
    trades: TradeSample, slices: list[Slice]
) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """Welch's t and Fisher's exact test of every slice against the rest: (statistic, p)."""
    masks = np.stack([s.mask for s in slices]).astype(np.float64)
    welch = welch_less_many(trades.return_pct, masks)
    wins_total = int(trades.win.sum())
    n = len(trades)
    fisher = []
    for s in slices:
        n_in, wins_in = int(s.mask.sum()), int(trades.win[s.mask].sum())
        fisher.append(fisher_less(wins_in, n_in, wins_total - wins_in, n - n_in))
    return welch, fisher


def _unexplained(found: dict[int, Weakness], slices: list[Slice]) -> list[Weakness]:
    """The weaknesses found, less the pairs a single-dimension parent explains as well:
    a parent that is a weakness with a q-value no larger than the pair's."""
    single_q = {slices[i].key: w.q_value for i, w in found.items() if slices[i].key is not None}
    return [
        w
        for i, w in found.items()
        if not any(single_q.get(p, math.inf) <= w.q_value for p in slices[i].parents)
    ]


# -- PROPOSALS --------------------------------------------------------------------------


def _json_float(x: float) -> float | None:
    # Infinite odds ratios and undefined statistics have no JSON number.
    return float(x) if math.isfinite(x) else None


def weakness_to_rule(
    w: Weakness, *, rule_id: str, created_ts: int, provenance: str
) -> tuple[Rule, dict[str, EvidenceValue]]:
    """Turn a weakness into a proposed rule and the evidence for it.

    A slice that loses money on average (negative expectancy) is skipped; one that still
    makes money but less than the rest has its size halved.

    Parameters
    ----------
    w
        A result of ``find_weaknesses``.
    rule_id, created_ts, provenance
        The proposed rule's identity, creation time (ns) and origin.

    Returns
    -------
    tuple[Rule, dict[str, EvidenceValue]]
        The rule, and its evidence: the slice and rest statistics, the test, the analysis
        settings, ``actual_pnl`` (the analysed trades' total), ``counterfactual_pnl`` (that
        total had the rule been active: without the slice's pnl for ``SkipTrade``, with
        half of it for ``ScaleSize(0.5)``), ``counterfactual_delta`` and ``label``. The
        counterfactual replays the recorded pnl only and ignores path effects: the capital
        and position slots a skipped trade would have freed, and the trades that would then
        have been taken instead. Non-finite numbers are given as None.
    """
    if w.expectancy < 0:
        action: SkipTrade | ScaleSize = SkipTrade(
            f"weak slice: {w.label} (n={w.n}, win {w.win_rate:.0%}, q={w.q_value:.2g})"
        )
        counterfactual = w.total_pnl - w.slice_pnl
    else:
        action = ScaleSize(SCALE_FACTOR)
        counterfactual = w.total_pnl - (1.0 - SCALE_FACTOR) * w.slice_pnl
    rule = Rule(
        rule_id=rule_id,
        condition=w.condition,
        action=action,
        provenance=provenance,
        created_ts=created_ts,
    )
    evidence: dict[str, EvidenceValue] = {
        "label": w.label,
        "n": w.n,
        "win_rate": _json_float(w.win_rate),
        "expectancy": _json_float(w.expectancy),
        "mean_return": _json_float(w.mean_return),
        "rest_win_rate": _json_float(w.rest_win_rate),
        "rest_expectancy": _json_float(w.rest_expectancy),
        "test": w.test,
        "statistic": _json_float(w.statistic),
        "p_value": _json_float(w.p_value),
        "q_value": _json_float(w.q_value),
        "tests_run": w.tests_run,
        "fdr": w.fdr,
        "min_trades": w.min_trades,
        "actual_pnl": _json_float(w.total_pnl),
        "counterfactual_pnl": _json_float(counterfactual),
        "counterfactual_delta": _json_float(counterfactual - w.total_pnl),
    }
    return rule, evidence


def counterfactual_pnl(trades: TradeSample, rule: Rule) -> float:
    """Return the trades' total pnl had ``rule`` been active when they were entered.

    The rule is evaluated with ``sovereign.core.codegen.interpret`` on the trades' entry
    features (``TradeSample.rule_features``: no losing streak is reconstructed). Only
    entry-time effects can be replayed from recorded trades: ``SkipTrade`` removes a
    trade's pnl, ``ScaleSize`` multiplies it (commissions are assumed to scale with size,
    and share rounding is ignored), and ``RequireConfidence`` removes trades whose recorded
    confidence is below the minimum. ``AdjustStop``, ``AdjustTarget`` and ``MaxHold``
    would change the exit, which needs the price path, so they leave pnl unchanged. Path
    effects such as freed capital are ignored, and trades with a non-finite pnl count as 0.

    Parameters
    ----------
    trades
        The recorded trades.
    rule
        Any rule.

    Returns
    -------
    float
        The counterfactual total pnl.
    """
    effects = interpret([rule], trades.rule_features())
    kept = ~effects.skip
    with np.errstate(invalid="ignore"):
        kept &= ~(trades.confidence < effects.min_confidence)
    pnl = np.where(kept, trades.pnl * effects.scale, 0.0)
    return float(pnl[np.isfinite(pnl)].sum())

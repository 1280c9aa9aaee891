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

Repeated looks. The self-modification engine analyses its trades again and again as they
accumulate. Each look's Benjamini-Hochberg level is a share of one error budget ``alpha``
per account, spent across looks (``spending``: look ``k`` gets ``alpha * 6 / (pi^2 k^2)``,
which sums to ``alpha`` over all looks). Under the global null (no slice differs) a look
finds anything with probability at most its level, so the probability that any look ever
finds a false weakness is at most ``alpha``, however many looks there are (a union bound:
it needs no independence between looks). A weakness found at a look is then only a
*candidate*: it is confirmed on the trades that closed after it was found
(``confirm_weakness``: the same one-sided tests on the new trades alone, at
the account's ``alpha``), once, when enough of them have accumulated; a candidate that
does not hold on new data is dropped. A weakness whose rule was retired is a candidate
again only if the trades since the retirement show it too, at the look's level.

Retirement. A deployed rule is looked at again on its own record since its deployment
(``retirement_test``: the trades it prevented, followed by the shards' shadow book, against
the trades it kept), with the same spending of a budget ``alpha`` across its own looks,
and retired (or, for a size cut, relaxed towards 1) when the record rejects that it still
helps by the lower 95 % bound of the effect it was confirmed with.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
from scipy import stats

from sovereign.core.codegen import RuleFeatures, eval_condition, interpret
from sovereign.domain.regimes import REGIME_NAMES
from sovereign.domain.rules import (
    And,
    Condition,
    RegimeIs,
    Rule,
    ScaleSize,
    SkipTrade,
    SRScoreAbove,
    SRScoreBelow,
    SymbolIn,
    TimeOfDayBetween,
    VolumeAbove,
    VolumeBelow,
)

__all__ = [
    "CONFIRM_LEVEL",
    "Confirmation",
    "RetirementTest",
    "TradeLike",
    "TradeSample",
    "Weakness",
    "benjamini_hochberg",
    "confirm_weakness",
    "counterfactual_pnl",
    "find_weaknesses",
    "retirement_test",
    "spending",
    "weakness_to_rule",
]

CONFIRM_LEVEL = 0.05
"""The default level of the one look at a candidate's new trades (``confirm_weakness``);
the engine uses the account's ``alpha``."""

EvidenceValue = float | int | str | bool | None

UNKNOWN_REGIME_CODE = 255
"""The regime code of a trade whose regime is not in ``REGIME_NAMES`` (as while warming up)."""

_VOLUME_EDGES = (0, 30, 50, 70, 90, 100)
_SESSION_OPEN_MINUTE = 570  # 09:30 New York
_SESSION_CLOSE_MINUTE = 960  # 16:00 New York
_TIME_BUCKET_MINUTES = 60
# A mean-return gap this small relative to the returns themselves is floating-point noise.
_ROUNDING_GAP = 1e-12
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


# -- STATISTICS -------------------------------------------------------------------------


def benjamini_hochberg(p_values: np.ndarray) -> np.ndarray:
    """Return Benjamini-Hochberg q-values.

    With the p-values sorted ascending, ``q_(i) = min over j >= i of p_(j) * m / j``
    (ranks from 1), capped at 1, returned in the input order. Rejecting every hypothesis
    with ``q <= alpha`` keeps the expected false discovery rate at or below ``alpha`` for
    independent or positively dependent tests.

    Parameters
    ----------
    p_values
        1-D p-values in [0, 1]. NaN counts as 1: an undefined test is no evidence.

    Returns
    -------
    np.ndarray
        The q-values (float), same shape as the input.
    """
    p = np.asarray(p_values, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"p-values must be 1-D, got shape {p.shape}")
    p = np.where(np.isnan(p), 1.0, p)
    m = len(p)
    if m == 0:
        return p
    order = np.argsort(p, kind="stable")
    scaled = p[order] * m / np.arange(1, m + 1)
    q_sorted = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
    q = np.empty(m)
    q[order] = q_sorted
    return q


def _welch_less(inside: np.ndarray, outside: np.ndarray) -> tuple[float, float]:
    # With (near-)constant returns the two means differ only by rounding, and the variances
    # are rounding noise too, so scipy would call a 1e-18 gap hugely significant.
    scale = max(float(np.max(np.abs(inside))), float(np.max(np.abs(outside))))
    if abs(float(np.mean(inside)) - float(np.mean(outside))) <= _ROUNDING_GAP * scale:
        return math.nan, 1.0
    # Scipy warns about precision loss on nearly constant data; a NaN p-value is handled
    # below, so the warning is noise here.
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.ttest_ind(inside, outside, equal_var=False, alternative="less")
    p = float(res.pvalue)
    return float(res.statistic), (p if math.isfinite(p) else 1.0)


def _welch_less_many(returns: np.ndarray, masks: np.ndarray) -> list[tuple[float, float]]:
    """``_welch_less`` for many slices at once: the statistics for every slice in a few
    array operations and one vectorised t-distribution call (scipy's per-call overhead
    was most of an analysis)."""
    x = returns
    n_in = masks.sum(axis=1).astype(np.float64)
    n_out = x.size - n_in
    s_in = masks @ x
    ss_in = masks @ (x * x)
    total, total_sq = float(x.sum()), float((x * x).sum())
    with np.errstate(all="ignore"):
        m_in, m_out = s_in / n_in, (total - s_in) / n_out
        v_in = (ss_in - n_in * m_in * m_in) / (n_in - 1)
        v_out = ((total_sq - ss_in) - n_out * m_out * m_out) / (n_out - 1)
        v_in, v_out = np.maximum(v_in, 0.0), np.maximum(v_out, 0.0)
        a, b = v_in / n_in, v_out / n_out
        t = (m_in - m_out) / np.sqrt(a + b)
        df = (a + b) ** 2 / (a * a / (n_in - 1) + b * b / (n_out - 1))
        p = stats.t.cdf(t, df)
    scale = float(np.max(np.abs(x))) if x.size else 0.0
    out: list[tuple[float, float]] = []
    for i in range(masks.shape[0]):
        # Near-constant returns: the means differ by rounding only (see _welch_less).
        if abs(m_in[i] - m_out[i]) <= _ROUNDING_GAP * scale or not math.isfinite(p[i]):
            out.append((math.nan, 1.0))
        else:
            out.append((float(t[i]), float(p[i])))
    return out


def _fisher_less(wins_in: int, n_in: int, wins_out: int, n_out: int) -> tuple[float, float]:
    table = [[wins_in, n_in - wins_in], [wins_out, n_out - wins_out]]
    with np.errstate(all="ignore"):
        res = stats.fisher_exact(table, alternative="less")
    p = float(res.pvalue)
    return float(res.statistic), (min(p, 1.0) if math.isfinite(p) else 1.0)


# -- SLICES -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Bucket:
    condition: Condition
    label: str


@dataclass(frozen=True, slots=True)
class _Dimension:
    buckets: tuple[_Bucket, ...]
    codes: np.ndarray  # index of each trade's bucket, -1 when in none


@dataclass(frozen=True, slots=True)
class _Slice:
    condition: Condition
    label: str
    mask: np.ndarray
    parents: tuple[tuple[int, int], ...]  # (dimension, bucket) of each parent; () if single
    key: tuple[int, int] | None  # (dimension, bucket) of a single-dimension slice


def _and(a: Condition, b: Condition) -> Condition:
    items_a = a.items if isinstance(a, And) else (a,)
    items_b = b.items if isinstance(b, And) else (b,)
    return And((*items_a, *items_b))


def _clock(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def _volume_buckets() -> list[_Bucket]:
    out: list[_Bucket] = []
    pairs = list(itertools.pairwise(_VOLUME_EDGES))
    for i, (lo, hi) in enumerate(pairs):
        if i == 0:
            out.append(_Bucket(VolumeBelow(hi), f"volume=[{lo},{hi})"))
        elif i == len(pairs) - 1:
            out.append(_Bucket(VolumeAbove(lo), f"volume=[{lo},{hi}]"))
        else:
            cond = And((VolumeAbove(lo), VolumeBelow(hi)))
            out.append(_Bucket(cond, f"volume=[{lo},{hi})"))
    return out


def _time_buckets() -> list[_Bucket]:
    out: list[_Bucket] = []
    starts = range(_SESSION_OPEN_MINUTE, _SESSION_CLOSE_MINUTE, _TIME_BUCKET_MINUTES)
    for a in starts:
        b = min(a + _TIME_BUCKET_MINUTES, _SESSION_CLOSE_MINUTE)
        out.append(_Bucket(TimeOfDayBetween(a, b), f"time={_clock(a)}-{_clock(b)}"))
    return out


def _dimensions(trades: TradeSample, features: RuleFeatures) -> list[_Dimension]:
    present = set(trades.regime.tolist())
    sr_buckets = [
        _Bucket(SRScoreBelow(1), "sr=0"),
        _Bucket(And((SRScoreAbove(1), SRScoreBelow(3))), "sr=1-2"),
        _Bucket(SRScoreAbove(3), "sr>=3"),
    ]
    specs: list[tuple[list[_Bucket], np.ndarray | None]] = [
        ([_Bucket(RegimeIs(r), f"regime={r}") for r in REGIME_NAMES if r in present], None),
        (_volume_buckets(), None),
        # A missing score is stored as -1, which SRScoreBelow(1) would take for a zero.
        (sr_buckets, trades.sr_score < 0),
        (_time_buckets(), None),
        ([_Bucket(SymbolIn((s,)), f"symbol={s}") for s in sorted(set(trades.symbol))], None),
    ]
    out: list[_Dimension] = []
    for buckets, excluded in specs:
        codes = np.full(len(trades), -1, dtype=np.int64)
        for k, bucket in enumerate(buckets):
            codes[eval_condition(bucket.condition, features)] = k
        if excluded is not None:
            codes[excluded] = -1
        # One occupied bucket (or none) splits nothing.
        if len(np.unique(codes[codes >= 0])) >= 2:
            out.append(_Dimension(tuple(buckets), codes))
    return out


def _slices(dims: list[_Dimension], n: int, min_trades: int) -> list[_Slice]:
    def eligible(count: int) -> bool:
        return count >= min_trades and n - count >= min_trades

    out: list[_Slice] = []
    single_counts: list[np.ndarray] = []
    for d, dim in enumerate(dims):
        counts = np.bincount(dim.codes[dim.codes >= 0], minlength=len(dim.buckets))
        single_counts.append(counts)
        for k, bucket in enumerate(dim.buckets):
            if eligible(int(counts[k])):
                out.append(_Slice(bucket.condition, bucket.label, dim.codes == k, (), (d, k)))
    for (d1, a), (d2, b) in itertools.combinations(enumerate(dims), 2):
        both = (a.codes >= 0) & (b.codes >= 0)
        width = len(b.buckets)
        counts = np.bincount(
            a.codes[both] * width + b.codes[both], minlength=len(a.buckets) * width
        )
        for idx in np.flatnonzero(counts).tolist():
            i, j = divmod(idx, width)
            count = int(counts[idx])
            if not eligible(count):
                continue
            if count in (single_counts[d1][i], single_counts[d2][j]):
                continue  # the same trades as a parent: nothing new to test
            ba, bb = a.buckets[i], b.buckets[j]
            out.append(
                _Slice(
                    _and(ba.condition, bb.condition),
                    f"{ba.label} & {bb.label}",
                    (a.codes == i) & (b.codes == j),
                    ((d1, i), (d2, j)),
                    None,
                )
            )
    return out


# -- ANALYSIS ---------------------------------------------------------------------------


def _check_settings(min_trades: int, fdr: float, max_results: int) -> None:
    if min_trades < 2:
        raise ValueError(f"min_trades must be at least 2 (a t-test needs two), got {min_trades}")
    if not 0 < fdr <= 1:
        raise ValueError(f"fdr must be in (0, 1], got {fdr}")
    if max_results < 0:
        raise ValueError(f"max_results must be non-negative, got {max_results}")


def _mean(x: np.ndarray) -> float:
    return float(np.mean(x)) if len(x) else math.nan


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
    slices = _slices(_dimensions(trades, trades.rule_features()), n, min_trades)
    if not slices:
        return []

    masks = np.stack([s.mask for s in slices]).astype(np.float64)
    welch = _welch_less_many(trades.return_pct, masks)
    wins_total = int(trades.win.sum())
    fisher = []
    for s in slices:
        n_in, wins_in = int(s.mask.sum()), int(trades.win[s.mask].sum())
        fisher.append(_fisher_less(wins_in, n_in, wins_total - wins_in, n - n_in))
    k = len(slices)
    q = benjamini_hochberg(np.array([p for _, p in welch] + [p for _, p in fisher]))
    total_pnl = float(trades.pnl.sum())

    found: dict[int, Weakness] = {}
    for i, s in enumerate(slices):
        inside, outside = trades.return_pct[s.mask], trades.return_pct[~s.mask]
        mean_in, mean_out = _mean(inside), _mean(outside)
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
            expectancy=_mean(pnl_in),
            mean_return=mean_in,
            rest_n=len(outside),
            rest_win_rate=float(trades.win[~s.mask].mean()),
            rest_expectancy=_mean(pnl_out),
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

    single_q = {slices[i].key: w.q_value for i, w in found.items() if slices[i].key is not None}
    kept = [
        w
        for i, w in found.items()
        if not any(single_q.get(p, math.inf) <= w.q_value for p in slices[i].parents)
    ]
    kept.sort(key=lambda w: (w.q_value, w.mean_return - w.rest_mean_return, w.label))
    return kept[:max_results]


# -- REPEATED LOOKS -----------------------------------------------------------------------


def spending(look: int, alpha: float) -> float:
    """The share of the error budget ``alpha`` that look number ``look`` (from 1) may spend:
    ``alpha * 6 / (pi^2 look^2)``. The shares sum to ``alpha`` over all looks."""
    if look < 1:
        raise ValueError(f"looks are numbered from 1, got {look}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    return alpha * 6.0 / (math.pi**2 * look * look)


@dataclass(frozen=True, slots=True)
class Confirmation:
    """The look at a candidate's new trades: whether it still holds, and the figures."""

    holds: bool
    n: int
    rest_n: int
    mean_return: float
    rest_mean_return: float
    p_value: float
    test: str
    se: float = math.nan  # standard error of the difference of the two means


def confirm_weakness(
    new_trades: TradeSample, condition: Condition, *, level: float = CONFIRM_LEVEL
) -> Confirmation:
    """Whether a candidate weakness holds on trades it was not found on.

    The slice is ``condition`` evaluated on ``new_trades`` (which closed after the
    candidate was found); it holds when its mean return is below the rest's and one of the
    two one-sided tests of the analysis (Welch's t on returns, Fisher's exact on wins) has
    ``p <= level / 2`` (the two tests share the level). The caller looks once."""
    trades = new_trades.select(np.isfinite(new_trades.pnl) & np.isfinite(new_trades.return_pct))
    mask = eval_condition(condition, trades.rule_features())
    inside, outside = trades.return_pct[mask], trades.return_pct[~mask]
    n_in, n_out = int(mask.sum()), int((~mask).sum())
    if n_in < 2 or n_out < 2:
        return Confirmation(False, n_in, n_out, _mean(inside), _mean(outside), 1.0, "none")
    _, p_welch = _welch_less(inside, outside)
    wins_in = int(trades.win[mask].sum())
    _, p_fisher = _fisher_less(wins_in, n_in, int(trades.win[~mask].sum()), n_out)
    test, p = ("welch_t", p_welch) if p_welch <= p_fisher else ("fisher_exact", p_fisher)
    # Two tests, the smaller p: each at half the level (Bonferroni), so the look as a
    # whole is at ``level``.
    holds = p <= level / 2 and _mean(inside) < _mean(outside)
    se = math.sqrt(float(np.var(inside, ddof=1)) / n_in + float(np.var(outside, ddof=1)) / n_out)
    return Confirmation(holds, n_in, n_out, _mean(inside), _mean(outside), p, test, se)


@dataclass(frozen=True, slots=True)
class RetirementTest:
    """Whether a rule's record says it no longer earns its place (``retirement_test``)."""

    n: int
    kept_n: int
    mean_return: float
    kept_mean_return: float
    margin: float
    statistic: float
    p_value: float


def retirement_test(prevented: np.ndarray, kept: np.ndarray, *, margin: float) -> RetirementTest:
    """A one-sided Welch t-test of a deployed rule's record since its deployment.

    ``prevented`` are the returns of the trades the rule acted on (its shadow trades for a
    skip, its scaled trades for a size cut), ``kept`` those of the trades it left alone.
    The null hypothesis is that the rule still helps by at least ``margin`` (the prevented
    trades return at least ``margin`` less than the kept ones on average); it is rejected,
    and the rule retired, on evidence that ``mean(prevented) + margin > mean(kept)``. With
    ``margin`` the lower 95 % bound of the effect measured when the rule was confirmed, a
    weakness that disappears is retired once its record is long enough, and one that
    stays is retired with a probability of at most the level the test is run at."""
    prevented = prevented[np.isfinite(prevented)]
    kept = kept[np.isfinite(kept)]
    n, k = int(prevented.size), int(kept.size)
    if n < 2 or k < 2:
        return RetirementTest(n, k, _mean(prevented), _mean(kept), margin, math.nan, 1.0)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.ttest_ind(prevented + margin, kept, equal_var=False, alternative="greater")
    p = float(res.pvalue)
    return RetirementTest(
        n,
        k,
        _mean(prevented),
        _mean(kept),
        margin,
        float(res.statistic),
        p if math.isfinite(p) else 1.0,
    )


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

"""The slices of the weakness analyser: the buckets of each dimension of a trade's entry,
the dimensions that split a set of trades, and the single and paired slices worth testing.
The ``sovereign.core.weakness`` docstring describes them."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from sovereign.core.codegen import RuleFeatures, eval_condition
from sovereign.domain.regimes import REGIME_NAMES
from sovereign.domain.rules import (
    And,
    Condition,
    RegimeIs,
    SRScoreAbove,
    SRScoreBelow,
    SymbolIn,
    TimeOfDayBetween,
    VolumeAbove,
    VolumeBelow,
)

__all__ = ["Dimension", "Slice", "slice_dimensions", "testable_slices"]

_VOLUME_EDGES = (0, 30, 50, 70, 90, 100)
_SESSION_OPEN_MINUTE = 570  # 09:30 New York
_SESSION_CLOSE_MINUTE = 960  # 16:00 New York
_TIME_BUCKET_MINUTES = 60


@dataclass(frozen=True, slots=True)
class _Bucket:
    condition: Condition
    label: str


@dataclass(frozen=True, slots=True)
class Dimension:
    buckets: tuple[_Bucket, ...]
    codes: np.ndarray  # index of each trade's bucket, -1 when in none


@dataclass(frozen=True, slots=True)
class Slice:
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


def slice_dimensions(
    regime: np.ndarray, sr_score: np.ndarray, symbol: np.ndarray, features: RuleFeatures
) -> list[Dimension]:
    """The dimensions that split the trades (by their regime names, S/R scores, symbols
    and rule features): each with its buckets and every trade's bucket in it."""
    present = set(regime.tolist())
    sr_buckets = [
        _Bucket(SRScoreBelow(1), "sr=0"),
        _Bucket(And((SRScoreAbove(1), SRScoreBelow(3))), "sr=1-2"),
        _Bucket(SRScoreAbove(3), "sr>=3"),
    ]
    specs: list[tuple[list[_Bucket], np.ndarray | None]] = [
        ([_Bucket(RegimeIs(r), f"regime={r}") for r in REGIME_NAMES if r in present], None),
        (_volume_buckets(), None),
        # A missing score is stored as -1, which SRScoreBelow(1) would take for a zero.
        (sr_buckets, sr_score < 0),
        (_time_buckets(), None),
        ([_Bucket(SymbolIn((s,)), f"symbol={s}") for s in sorted(set(symbol))], None),
    ]
    out: list[Dimension] = []
    for buckets, excluded in specs:
        codes = np.full(len(regime), -1, dtype=np.int64)
        for k, bucket in enumerate(buckets):
            codes[eval_condition(bucket.condition, features)] = k
        if excluded is not None:
            codes[excluded] = -1
        # One occupied bucket (or none) splits nothing.
        if len(np.unique(codes[codes >= 0])) >= 2:
            out.append(Dimension(tuple(buckets), codes))
    return out


def testable_slices(dims: list[Dimension], n: int, min_trades: int) -> list[Slice]:
    """Every single-dimension bucket and pair of buckets with at least ``min_trades`` of
    the ``n`` trades inside and outside it, except pairs that hold a parent's trades."""

    def eligible(count: int) -> bool:
        return count >= min_trades and n - count >= min_trades

    out: list[Slice] = []
    single_counts: list[np.ndarray] = []
    for d, dim in enumerate(dims):
        counts = np.bincount(dim.codes[dim.codes >= 0], minlength=len(dim.buckets))
        single_counts.append(counts)
        for k, bucket in enumerate(dim.buckets):
            if eligible(int(counts[k])):
                out.append(Slice(bucket.condition, bucket.label, dim.codes == k, (), (d, k)))
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
                Slice(
                    _and(ba.condition, bb.condition),
                    f"{ba.label} & {bb.label}",
                    (a.codes == i) & (b.codes == j),
                    ((d1, i), (d2, j)),
                    None,
                )
            )
    return out

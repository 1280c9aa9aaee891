"""``block`` (K bar times at once) against ``update`` (one at a time): the same values,
readiness and state, bit for bit, whatever the split into blocks and whichever symbols sit
a block out. A speculative chunk of a backtest computes its indicators with ``block`` and a
bar-by-bar replay with ``update``, and their trades must be byte-identical."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from sovereign.core.indicators import (
    ATR,
    RollingExtreme,
    RollingMedian,
    SimpleATR,
    VolumePercentile,
)
from sovereign.core.support_resistance import SupportResistance


def panel(seed: int, t: int, n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    # Prices on a 0.1 grid and volumes in hundreds: ties, for the percentile and swings.
    close = np.round(50 + np.cumsum(rng.normal(0, 1, (t, n)), axis=0), 1)
    return {
        "high": close + np.round(rng.uniform(0, 1, (t, n)), 1),
        "low": close - np.round(rng.uniform(0, 1, (t, n)), 1),
        "close": close,
        "volume": rng.integers(1, 9, (t, n)).astype(np.float64) * 100,
        "atr": np.abs(rng.normal(1, 0.3, (t, n))),
    }


BUILDERS: dict[str, tuple[Callable[[int], object], tuple[str, ...]]] = {
    "wilder": (lambda n: ATR(n, period=4), ("high", "low", "close")),
    "simple": (lambda n: SimpleATR(n, period=4), ("high", "low", "close")),
    "max": (lambda n: RollingExtreme(n, window=5), ("high",)),
    "min": (lambda n: RollingExtreme(n, window=3, kind="min"), ("low",)),
    "median": (lambda n: RollingMedian(n, window=4), ("volume",)),
    "median-odd": (lambda n: RollingMedian(n, window=5), ("volume",)),
    "percentile": (lambda n: VolumePercentile(n, window=6), ("volume",)),
    "sr": (lambda n: SupportResistance(n, swing=2, memory=4), ("high", "low", "close", "atr")),
}


def state(indicator: object) -> str:
    return repr({k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in _fields(indicator)})


def _fields(indicator: object) -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    for k, v in sorted(vars(indicator).items()):
        if k in ("_reduce", "_scratch"):
            continue
        if hasattr(v, "__slots__") and hasattr(v, "buf"):  # a ring: its buffer and counts
            out.append((k, (v.buf.tolist(), v.count.tolist())))
        else:
            out.append((k, v))
    return out


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(sorted(BUILDERS)),
    seed=st.integers(0, 10_000),
    n=st.integers(1, 5),
    t=st.integers(1, 60),
    cuts=st.lists(st.floats(0, 1), max_size=5),
    absent=st.lists(st.booleans(), min_size=8, max_size=8),
    need=st.booleans(),
)
def test_a_block_is_its_bars_one_at_a_time(name, seed, n, t, cuts, absent, need) -> None:
    build, inputs = BUILDERS[name]
    p = panel(seed, t, n)
    one, many = build(n), build(n)
    edges = sorted({0, t, *(int(c * t) for c in cuts)})
    for b, (lo, hi) in enumerate(itertools.pairwise(edges)):
        # Some symbols sit a block out (no bars at all in it): both keep them as they were.
        present = np.ones(n, dtype=bool)
        present[[j for j in range(n) if absent[(b + j) % len(absent)]]] = False
        rows = [p[x][lo:hi] for x in inputs]
        want_v, want_r = [], []
        for k in range(hi - lo):
            one.update(present, *(r[k] for r in rows))
            want_v.append(one.value.copy())
            want_r.append(one.ready.copy())
        wanted = None
        if need and name in ("median", "median-odd", "percentile", "max", "min"):
            wanted = np.random.default_rng(seed + b).random((hi - lo, n)) < 0.5
            got_v, got_r = many.block(present, *rows, need=wanted)
        else:
            got_v, got_r = many.block(present, *rows)
        want_v, want_r = np.array(want_v), np.array(want_r)
        np.testing.assert_array_equal(got_r, want_r)
        if wanted is None:
            np.testing.assert_array_equal(got_v, want_v)  # NaN-aware, exact
        else:
            # Values asked for, and every symbol's last one (the indicator's state).
            wanted[-1] = True
            wanted &= present
            np.testing.assert_array_equal(got_v[wanted], want_v[wanted])
            assert np.isnan(got_v[~wanted & present[None] & got_r]).all()
        assert state(many) == state(one)


def test_an_empty_block_changes_nothing() -> None:
    for build, inputs in BUILDERS.values():
        ind = build(3)
        before = state(ind)
        v, r = ind.block(np.ones(3, bool), *(np.zeros((0, 3)) for _ in inputs))
        assert v.shape == r.shape == (0, 3)
        assert state(ind) == before

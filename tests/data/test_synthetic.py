"""Tests for the synthetic regime-switching bar generator."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

import sovereign  # noqa: F401  (pins threads before numpy does any work)
from sovereign.data import SyntheticBars, generate, validate_ohlcv
from sovereign.data.synthetic import REGIME_NAMES

ARRAYS = ("open", "high", "low", "close", "volume", "regimes")


@pytest.fixture(scope="module")
def bars() -> SyntheticBars:
    return generate(40, 5000, seed=3)


def log_returns(b: SyntheticBars) -> np.ndarray:
    return np.diff(np.log(b.close), axis=0)


def test_generate_is_deterministic_by_seed() -> None:
    a, b, c = generate(5, 800, seed=11), generate(5, 800, seed=11), generate(5, 800, seed=12)
    for name in (*ARRAYS, "ts"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.close, c.close)
    assert not np.array_equal(a.regimes, c.regimes)


def test_generate_shapes_dtypes_and_clock() -> None:
    b = generate(3, 100, seed=0, start="2024-03-01T15:00:00Z", interval_s=300, base_price=50.0)
    assert b.ts.shape == (100,) and b.ts.dtype == np.int64
    assert b.ts[0] == pd.Timestamp("2024-03-01T15:00:00Z").value
    assert set(np.diff(b.ts).tolist()) == {300 * 1_000_000_000}
    assert b.symbols == ["S0000", "S0001", "S0002"]
    for name in ARRAYS:
        arr = getattr(b, name)
        assert arr.shape == (100, 3)
        assert arr.dtype == (np.uint8 if name == "regimes" else np.float64)
    assert set(np.unique(b.regimes)) <= {0, 1, 2, 3}
    # Symbols start near base_price (lognormal spread, sd 0.25 in log).
    assert np.all((b.open[0] > 50.0 / 3) & (b.open[0] < 50.0 * 3))
    assert generate(2000, 1).symbols[-1] == "S1999"
    assert generate(12_000, 1).symbols[-1] == "S11999"


def test_generate_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        generate(0, 10)
    with pytest.raises(ValueError):
        generate(1, 10, interval_s=0)
    with pytest.raises(ValueError):
        generate(1, 10, base_price=-1.0)


def test_every_row_passes_validation(bars: SyntheticBars) -> None:
    frame = bars.to_frame()
    out, report = validate_ohlcv(frame)

    assert report.rejected == {} and report.info == {}
    assert report.accepted_rows == 40 * 5000
    pd.testing.assert_frame_equal(out, frame)  # to_frame is already sorted by (ts, symbol)
    assert (bars.high >= np.maximum(bars.open, bars.close)).all()
    assert (bars.low <= np.minimum(bars.open, bars.close)).all()
    assert (bars.low > 0).all() and (bars.volume >= 0).all()


def test_to_frame_layout(bars: SyntheticBars) -> None:
    f = bars.to_frame()
    assert list(f.columns) == ["ts", "symbol", "open", "high", "low", "close", "volume"]
    assert f["symbol"].iloc[:3].tolist() == ["S0000", "S0001", "S0002"]
    row = f.iloc[41]  # second bar of S0001
    assert row["ts"] == bars.ts[1]
    assert row["close"] == bars.close[1, 1]


def test_volatility_clusters(bars: SyntheticBars) -> None:
    r = np.abs(log_returns(bars))
    acf1 = [np.corrcoef(r[1:, j], r[:-1, j])[0, 1] for j in range(r.shape[1])]
    assert np.median(acf1) > 0.15
    # Shuffled in time the clustering disappears, so the statistic is not an artefact.
    shuffled = np.random.default_rng(0).permutation(r[:, 0])
    assert abs(np.corrcoef(shuffled[1:], shuffled[:-1])[0, 1]) < 0.05


def test_volume_correlates_with_absolute_return(bars: SyntheticBars) -> None:
    r = np.abs(log_returns(bars))
    v = np.log(bars.volume[1:])
    corr = [np.corrcoef(r[:, j], v[:, j])[0, 1] for j in range(r.shape[1])]
    assert np.median(corr) > 0.3


def test_volatile_regime_has_markedly_higher_realised_vol(bars: SyntheticBars) -> None:
    r = log_returns(bars)
    regime = bars.regimes[1:]
    vol = {name: r[regime == k].std() for k, name in enumerate(REGIME_NAMES)}
    calm = max(vol["TrendingUp"], vol["TrendingDown"], vol["Ranging"])
    assert vol["Volatile"] > 2.0 * calm
    # Trends drift in their direction.
    assert r[regime == 0].mean() > 0 > r[regime == 1].mean()


def test_regimes_are_sticky(bars: SyntheticBars) -> None:
    switches = (np.diff(bars.regimes.astype(np.int8), axis=0) != 0).sum()
    mean_dwell = bars.regimes.size / (switches + bars.regimes.shape[1])
    assert 150 < mean_dwell < 600
    shares = np.bincount(bars.regimes.ravel(), minlength=4) / bars.regimes.size
    assert shares.min() > 0.1


def test_generate_scales() -> None:
    start = time.perf_counter()
    wide = generate(2000, 2000, seed=1)
    long = generate(1, 1_000_000, seed=1)
    elapsed = time.perf_counter() - start

    assert wide.close.shape == (2000, 2000) and long.close.shape == (1_000_000, 1)
    assert np.isfinite(long.close).all() and (long.close > 0).all()
    assert elapsed < 15.0, f"generation took {elapsed:.1f}s"

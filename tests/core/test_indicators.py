"""Streaming indicators against hand-computed values and independent batch references."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from sovereign.core.indicator_series import (
    atr_series,
    sr_score_series,
    volume_percentile_series,
)
from sovereign.core.indicators import (
    ATR,
    EMA,
    RollingExtreme,
    RollingMedian,
    VolumePercentile,
)
from sovereign.core.support_resistance import SupportResistance

N_SYMBOLS = 5
N_STEPS = 300


def random_panel(seed: int) -> dict[str, np.ndarray]:
    """Build a (T, N) panel of OHLCV random walks with a random bar mask.

    Prices are rounded to 0.1 so ties occur, which exercises the strict swing and
    percentile tie rules. Masked-out cells hold NaN, so a leak of masked input would show.
    """
    rng = np.random.default_rng(seed)
    close = np.round(100.0 + np.cumsum(rng.normal(0.0, 1.0, (N_STEPS, N_SYMBOLS)), axis=0), 1)
    high = close + np.round(rng.uniform(0.0, 1.5, close.shape), 1)
    low = close - np.round(rng.uniform(0.0, 1.5, close.shape), 1)
    volume = rng.integers(1, 30, close.shape).astype(np.float64) * 100.0
    mask = rng.random(close.shape) < 0.7
    mask[:, 0] = True  # one symbol never misses a bar
    mask[rng.random(N_STEPS) < 0.1] = True  # some steps where every symbol has a bar
    panel = {"high": high, "low": low, "close": close, "volume": volume}
    for name, values in panel.items():
        panel[name] = np.where(mask, values, np.nan)
    panel["mask"] = mask
    return panel


def run_stream(
    indicator: ATR | EMA | RollingExtreme | RollingMedian | VolumePercentile | SupportResistance,
    mask: np.ndarray,
    *inputs: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Feed a (T, N) panel through a streaming indicator; return (value, ready) per step."""
    values = np.empty(mask.shape)
    ready = np.empty(mask.shape, dtype=bool)
    for t in range(mask.shape[0]):
        indicator.update(mask[t], *(x[t] for x in inputs))
        values[t] = indicator.value
        ready[t] = indicator.ready
    return values, ready


def assert_matches_per_symbol(
    values: np.ndarray,
    ready: np.ndarray,
    mask: np.ndarray,
    reference: Callable[[int, np.ndarray], np.ndarray],
) -> None:
    """Check a streamed (T, N) result against a per-symbol reference on that symbol's bars.

    Between bars, a symbol must keep the value and readiness of its last bar.
    """
    np.testing.assert_array_equal(ready, ~np.isnan(values))
    for i in range(mask.shape[1]):
        bars = np.flatnonzero(mask[:, i])
        expected = np.asarray(reference(i, bars), dtype=np.float64)
        np.testing.assert_allclose(values[bars, i], expected, rtol=1e-10, atol=1e-12)
        held = ~mask[:, i] & (np.cumsum(mask[:, i]) > 0)
        last_bar = np.maximum.accumulate(np.where(mask[:, i], np.arange(mask.shape[0]), 0))
        np.testing.assert_array_equal(values[held, i], values[last_bar[held], i])


# -- ATR --


def wilder_atr_loop(
    high: np.ndarray, low: np.ndarray, close: np.ndarray, period: int
) -> list[float]:
    """Wilder's ATR written as the textbook loop, independent of the module's code."""
    trs: list[float] = []
    out: list[float] = []
    atr = float("nan")
    for t in range(len(high)):
        tr = high[t] - low[t]
        if t > 0:
            tr = max(high[t], close[t - 1]) - min(low[t], close[t - 1])
        trs.append(tr)
        if len(trs) == period:
            atr = sum(trs) / period
        elif len(trs) > period:
            atr = (atr * (period - 1) + tr) / period
        out.append(atr)
    return out


def test_atr_hand_computed_period_3() -> None:
    high = np.array([10.0, 11.0, 10.5, 12.0, 11.0, 9.0])
    low = np.array([8.0, 9.5, 9.0, 10.0, 8.0, 8.5])
    close = np.array([9.0, 10.0, 9.5, 11.5, 8.5, 8.8])
    # TR0 = 10 - 8 = 2 (first bar, no previous close)
    # TR1 = max(11, 9) - min(9.5, 9) = 11 - 9 = 2
    # TR2 = max(10.5, 10) - min(9, 10) = 10.5 - 9 = 1.5
    # TR3 = max(12, 9.5) - min(10, 9.5) = 12 - 9.5 = 2.5      (gap up)
    # TR4 = max(11, 11.5) - min(8, 11.5) = 11.5 - 8 = 3.5     (gap down)
    # TR5 = max(9, 8.5) - min(8.5, 8.5) = 9 - 8.5 = 0.5
    expected_tr = [2.0, 2.0, 1.5, 2.5, 3.5, 0.5]
    # ATR2 = (2 + 2 + 1.5) / 3 = 11/6
    # ATR3 = (11/6 * 2 + 2.5) / 3 = 37/18
    # ATR4 = (37/18 * 2 + 3.5) / 3 = 137/54
    # ATR5 = (137/54 * 2 + 0.5) / 3 = 301/162
    expected_atr = [np.nan, np.nan, 11 / 6, 37 / 18, 137 / 54, 301 / 162]

    atr = ATR(1, period=3)
    got_atr, got_tr = [], []
    for t in range(6):
        atr.update(np.array([True]), high[t : t + 1], low[t : t + 1], close[t : t + 1])
        got_atr.append(atr.value[0])
        got_tr.append(atr.tr[0])
        assert atr.ready[0] == (t >= 2)

    np.testing.assert_allclose(got_tr, expected_tr)
    np.testing.assert_allclose(got_atr, expected_atr, rtol=1e-12)
    np.testing.assert_allclose(atr_series(high, low, close, period=3), expected_atr, rtol=1e-12)


def test_atr_masked_symbol_keeps_state() -> None:
    atr = ATR(2, period=2)
    high, low, close = np.array([10.0, 20.0]), np.array([9.0, 18.0]), np.array([9.5, 19.0])
    atr.update(np.array([True, True]), high, low, close)
    atr.update(np.array([True, True]), high, low, close)
    before = (atr.value.copy(), atr.tr.copy())
    # Symbol 1 has no bar: its garbage inputs must be ignored.
    atr.update(np.array([True, False]), np.array([12.0, 1e9]), np.array([9.0, -1e9]), close)
    assert atr.value[1] == before[0][1]
    assert atr.tr[1] == before[1][1]
    assert atr.value[0] != before[0][0]


def test_atr_matches_wilder_loop_on_random_masked_panel() -> None:
    p = random_panel(1)
    period = 5
    values, ready = run_stream(ATR(N_SYMBOLS, period), p["mask"], p["high"], p["low"], p["close"])

    def reference(i: int, bars: np.ndarray) -> list[float]:
        return wilder_atr_loop(p["high"][bars, i], p["low"][bars, i], p["close"][bars, i], period)

    assert_matches_per_symbol(values, ready, p["mask"], reference)


def test_atr_series_matches_wilder_loop() -> None:
    p = random_panel(2)
    high, low, close = p["high"][:, 0], p["low"][:, 0], p["close"][:, 0]
    expected = wilder_atr_loop(high, low, close, 14)
    got = atr_series(pd.Series(high), pd.Series(low), pd.Series(close), 14)
    assert isinstance(got, pd.Series)
    np.testing.assert_allclose(got.to_numpy(), expected, rtol=1e-10)


def test_atr_nan_price_counts_as_no_bar_and_reset_clears() -> None:
    atr = ATR(1, period=1)
    one = np.array([True])
    atr.update(one, np.array([10.0]), np.array([8.0]), np.array([9.0]))
    assert atr.value[0] == 2.0
    atr.update(one, np.array([np.nan]), np.array([8.0]), np.array([9.0]))
    assert atr.value[0] == 2.0
    atr.update(one, np.array([10.0]), np.array([8.0]), np.array([np.nan]))
    assert atr.value[0] == 2.0
    # The previous close is still 9 from the first bar: TR = 12 - min(11, 9) = 3.
    atr.update(one, np.array([12.0]), np.array([11.0]), np.array([11.5]))
    assert atr.value[0] == 3.0
    atr.reset()
    assert not atr.ready.any()
    assert np.isnan(atr.value).all()
    assert np.isnan(atr.tr).all()


# -- VOLUME PERCENTILE --


@pytest.mark.parametrize(
    ("volumes", "expected"),
    [
        ([10, 20, 30, 40, 25], 50.0),  # 2 below of 4 -> 100 * 2 / 4
        ([10, 20, 20, 40, 20], 50.0),  # 1 below + 2 ties * 0.5 -> 100 * 2 / 4
        ([10, 20, 30, 40, 50], 100.0),
        ([10, 20, 30, 40, 5], 0.0),
        ([10, 20, 30, 40, 40], 87.5),  # 3 below + 0.5 -> 100 * 3.5 / 4
    ],
)
def test_volume_percentile_hand_computed(volumes: list[int], expected: float) -> None:
    vp = VolumePercentile(1, window=4)
    for v in volumes[:-1]:
        vp.update(np.array([True]), np.array([float(v)]))
        assert not vp.ready[0]
    vp.update(np.array([True]), np.array([float(volumes[-1])]))
    assert vp.ready[0]
    assert vp.value[0] == expected


def test_volume_percentile_nan_volume_is_unknown_and_not_pushed() -> None:
    vp = VolumePercentile(1, window=2)
    one = np.array([True])
    for v in (10.0, 20.0, 15.0):
        vp.update(one, np.array([v]))
    assert vp.value[0] == 50.0  # 15 among [10, 20]
    vp.update(one, np.array([np.nan]))
    assert np.isnan(vp.value[0])
    assert not vp.ready[0]
    # The window is still [20, 15]: a pushed NaN would have made this differ.
    vp.update(one, np.array([17.0]))
    assert vp.value[0] == 50.0


def test_volume_percentile_matches_pandas_rolling_on_random_masked_panel() -> None:
    p = random_panel(3)
    window = 8
    volume = p["volume"].copy()
    unknown = np.random.default_rng(4).random(volume.shape) < 0.05
    volume[unknown & p["mask"]] = np.nan
    values, ready = run_stream(VolumePercentile(N_SYMBOLS, window), p["mask"], volume)

    def rank_of_last(a: np.ndarray) -> float:
        prev, cur = a[:-1], a[-1]
        return 100.0 * ((prev < cur).sum() + 0.5 * (prev == cur).sum()) / window

    def reference(i: int, bars: np.ndarray) -> np.ndarray:
        s = pd.Series(volume[bars, i])
        known = s.dropna()
        expected = known.rolling(window + 1).apply(rank_of_last, raw=True).reindex(s.index)
        np.testing.assert_allclose(volume_percentile_series(volume[bars, i], window), expected)
        return expected.to_numpy()

    assert_matches_per_symbol(values, ready, p["mask"], reference)
    assert np.isnan(values[unknown & p["mask"]]).all()


# -- ROLLING WINDOWS --


@pytest.mark.parametrize(
    ("make", "pandas_stat"),
    [
        (lambda n: RollingExtreme(n, 7, "max"), lambda r: r.max()),
        (lambda n: RollingExtreme(n, 7, "min"), lambda r: r.min()),
        (lambda n: RollingMedian(n, 7), lambda r: r.median()),
        (lambda n: RollingMedian(n, 6), lambda r: r.median()),
    ],
    ids=["max", "min", "median-odd", "median-even"],
)
def test_rolling_window_matches_pandas_shifted_on_random_masked_panel(
    make: Callable[[int], RollingExtreme | RollingMedian],
    pandas_stat: Callable[[pd.core.window.Rolling], pd.Series],
) -> None:
    p = random_panel(5)
    indicator = make(N_SYMBOLS)
    values, ready = run_stream(indicator, p["mask"], p["high"])

    def reference(i: int, bars: np.ndarray) -> np.ndarray:
        series = pd.Series(p["high"][bars, i])
        return pandas_stat(series.rolling(indicator.window)).shift(1).to_numpy()

    assert_matches_per_symbol(values, ready, p["mask"], reference)


def test_rolling_extreme_excludes_current_bar() -> None:
    rx = RollingExtreme(1, window=3, kind="max")
    one = np.array([True])
    for x in (1.0, 5.0, 2.0):
        rx.update(one, np.array([x]))
    rx.update(one, np.array([9.0]))
    assert rx.value[0] == 5.0  # max of [1, 5, 2], not 9
    rx.update(one, np.array([0.0]))
    assert rx.value[0] == 9.0
    with pytest.raises(ValueError, match="kind"):
        RollingExtreme(1, kind="mean")  # type: ignore[arg-type]


# -- EMA --


def test_ema_matches_pandas_ewm_on_random_masked_panel() -> None:
    p = random_panel(6)
    span = 10
    values, ready = run_stream(EMA(N_SYMBOLS, span), p["mask"], p["close"])

    def reference(i: int, bars: np.ndarray) -> np.ndarray:
        ewm = pd.Series(p["close"][bars, i]).ewm(span=span, adjust=False).mean().to_numpy(copy=True)
        ewm[: span - 1] = np.nan
        return ewm

    assert_matches_per_symbol(values, ready, p["mask"], reference)


def test_ema_seeded_with_first_value() -> None:
    ema = EMA(1, span=3)  # alpha = 0.5
    one = np.array([True])
    for x, expected_state in ((4.0, 4.0), (8.0, 6.0), (2.0, 4.0)):
        ema.update(one, np.array([x]))
        assert ema._ema[0] == expected_state
    assert ema.ready[0]
    assert ema.value[0] == 4.0
    ema.update(one, np.array([np.nan]))  # a NaN input counts as no bar
    assert ema.value[0] == 4.0


# -- SUPPORT / RESISTANCE --

# A double top with swing = 2:
#   swing high 12.0 at bar 2 (highs 10, 11, [12], 11, 10), confirmed at bar 4
#   swing low   9.0 at bar 4 (lows 11, 10, [9], 10, 11.2), confirmed at bar 6
#   swing high 12.2 at bar 6 (highs 10, 11, [12.2], 11, 10), confirmed at bar 8
#   swing low   9.0 at bar 8 (lows 11.2, 10, [9], 10, 10.9), confirmed at bar 10
# With ATR = 1 and band_atr = 0.5, a level counts when it is within 0.5 of the close:
#   bar 6:  close 11.9, levels [12, 9]           -> |12 - 11.9| = 0.1           -> 1
#   bar 10: close 11.8, levels [12, 9, 12.2, 9]  -> 0.2 and 0.4 (the 9s: 2.8)   -> 2
# No other bar has a close within 0.5 of a confirmed level.
SR_HIGH = np.array([10.0, 11.0, 12.0, 11.0, 10.0, 11.0, 12.2, 11.0, 10.0, 11.0, 11.9])
SR_LOW = SR_HIGH - 1.0
SR_CLOSE = np.array([9.7, 10.7, 11.7, 10.7, 9.7, 10.7, 11.9, 10.7, 9.7, 10.7, 11.8])
SR_EXPECTED = [0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2]


def stream_sr_single(sr: SupportResistance, atr: np.ndarray) -> list[int]:
    scores = []
    for t in range(SR_HIGH.size):
        sr.update(
            np.array([True]),
            SR_HIGH[t : t + 1],
            SR_LOW[t : t + 1],
            SR_CLOSE[t : t + 1],
            atr[t : t + 1],
        )
        scores.append(int(sr.score[0]))
    return scores


def test_sr_double_top_hand_computed() -> None:
    atr = np.ones(SR_HIGH.size)
    sr = SupportResistance(1, swing=2, memory=10, band_atr=0.5)
    assert stream_sr_single(sr, atr) == SR_EXPECTED
    assert sr.score.dtype == np.int16
    assert sr.value[0] == 2.0
    batch = sr_score_series(SR_HIGH, SR_LOW, SR_CLOSE, atr, swing=2, memory=10, band_atr=0.5)
    np.testing.assert_array_equal(batch, SR_EXPECTED)


def test_sr_band_edge_is_inclusive() -> None:
    # The last close at 11.5 is exactly 0.5 below the level 12.0 (counted) and 0.7 below
    # 12.2 (not counted).
    close = SR_CLOSE.copy()
    close[-1] = 11.5
    score = sr_score_series(SR_HIGH, SR_LOW, close, np.ones(close.size), swing=2, band_atr=0.5)
    assert score[-1] == 1
    sr = SupportResistance(1, swing=2, band_atr=0.5)
    for t in range(close.size):
        cols = (x[t : t + 1] for x in (SR_HIGH, SR_LOW, close, np.ones(close.size)))
        sr.update(np.array([True]), *cols)
    assert sr.score[0] == 1


def test_sr_memory_evicts_oldest_level() -> None:
    # With memory 2, the first 12.0 and 9.0 are gone by bar 10; only 12.2 is near 11.8.
    sr = SupportResistance(1, swing=2, memory=2, band_atr=0.5)
    assert stream_sr_single(sr, np.ones(SR_HIGH.size))[-1] == 1


def test_sr_nan_atr_scores_zero_and_not_ready_but_tracks_swings() -> None:
    atr = np.ones(SR_HIGH.size)
    atr[:8] = np.nan
    sr = SupportResistance(1, swing=2, memory=10, band_atr=0.5)
    scores = stream_sr_single(sr, atr)
    assert scores == [0] * 8 + SR_EXPECTED[8:]
    # The last score counts the levels confirmed while the ATR was still unknown.
    assert scores[-1] == 2
    # An infinite ATR is not a usable band either: it would count every level.
    one = np.array([True])
    sr.update(one, np.array([11.0]), np.array([10.0]), np.array([10.5]), np.array([np.inf]))
    assert sr.score[0] == 0 and not sr.ready[0] and np.isnan(sr.value[0])
    sr.reset()
    assert not sr.ready.any() and not sr.score.any()


def test_sr_score_has_no_look_ahead() -> None:
    p = random_panel(7)
    high, low, close = p["high"][:, 0], p["low"][:, 0], p["close"][:, 0]
    atr = atr_series(high, low, close, 5)
    full = sr_score_series(high, low, close, atr, swing=3, memory=6, band_atr=0.7)
    assert np.nanmax(full) >= 1  # the check is vacuous on an all-zero score
    for cut in (20, 57, 123, 250):
        prefix = sr_score_series(
            high[:cut], low[:cut], close[:cut], atr[:cut], swing=3, memory=6, band_atr=0.7
        )
        np.testing.assert_array_equal(prefix, full[:cut])
        # The streaming score at a bar is fixed when it is emitted, so appending
        # later bars cannot change it either.
        sr = SupportResistance(1, swing=3, memory=6, band_atr=0.7)
        for t in range(cut):
            args = (x[t : t + 1] for x in (high, low, close, atr))
            sr.update(np.array([True]), *args)
        np.testing.assert_array_equal(sr.value[0], full[cut - 1])


def test_sr_streaming_matches_batch_on_random_masked_panel() -> None:
    p = random_panel(8)
    swing, memory, band = 2, 5, 1.0
    atr = np.full(p["mask"].shape, np.nan)
    for i in range(N_SYMBOLS):
        bars = np.flatnonzero(p["mask"][:, i])
        atr[bars, i] = atr_series(p["high"][bars, i], p["low"][bars, i], p["close"][bars, i], 5)
    sr = SupportResistance(N_SYMBOLS, swing=swing, memory=memory, band_atr=band)
    values, ready = run_stream(sr, p["mask"], p["high"], p["low"], p["close"], atr)

    def reference(i: int, bars: np.ndarray) -> np.ndarray:
        cols = (p[name][bars, i] for name in ("high", "low", "close"))
        return sr_score_series(*cols, atr[bars, i], swing=swing, memory=memory, band_atr=band)

    assert_matches_per_symbol(values, ready, p["mask"], reference)
    assert np.nanmax(values) >= 2  # clustered levels occur, so counting is exercised


@pytest.mark.parametrize(
    "build",
    [
        lambda: ATR(2, period=0),
        lambda: EMA(2, span=0),
        lambda: VolumePercentile(2, window=0),
        lambda: RollingMedian(-1),
        lambda: SupportResistance(2, swing=0),
        lambda: SupportResistance(2, band_atr=-1.0),
    ],
)
def test_invalid_parameters_raise(build: Callable[[], object]) -> None:
    with pytest.raises(ValueError):
        build()

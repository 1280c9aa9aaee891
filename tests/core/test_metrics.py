"""Performance metrics against hand-computed values, and on degenerate inputs."""

from __future__ import annotations

import json
import math

import msgspec
import numpy as np
import pytest

from sovereign.core.metrics import PerformanceMetrics, compute_metrics, infer_periods_per_year

NS = 1_000_000_000
DAY_NS = 86_400 * NS
YEAR_NS = int(365.25 * DAY_NS)
T0 = 1_704_205_800 * NS  # 2024-01-02 14:30 UTC

NO_TRADES = {
    "trade_pnl": np.array([]),
    "trade_bars_held": np.array([]),
    "trade_duration_s": np.array([]),
}


def tiny_run(**overrides: object) -> PerformanceMetrics:
    """Four quarterly steps from 100: +10 %, -10 %, +10 %, +10 %, and five trades.

    The steps are a quarter of a year apart, and the first one starts a quarter before
    ``ts[0]`` (from the initial capital), so the run spans exactly one year.
    """
    quarter = YEAR_NS // 4
    kwargs: dict[str, object] = {
        "ts": T0 + quarter * np.arange(4, dtype=np.int64),
        "equity": np.array([110.0, 99.0, 108.9, 119.79]),
        "trade_pnl": np.array([10.0, -5.0, 0.0, 15.0, -5.0]),
        "trade_bars_held": np.array([1, 2, 3, 4, 5]),
        "trade_duration_s": np.array([60.0, 120.0, 180.0, 240.0, 300.0]),
        "exposure": np.array([55.0, 99.0, 0.0, 119.79]),
        "periods_per_year": 4.0,
        "initial_capital": 100.0,
    }
    kwargs.update(overrides)
    return compute_metrics(**kwargs)  # type: ignore[arg-type]


def test_trade_statistics_hand_computed() -> None:
    m = tiny_run()
    assert m.total_trades == 5
    assert m.win_rate == pytest.approx(2 / 5)  # 10 and 15 win; the 0.0 trade is no win
    assert m.profit_factor == pytest.approx(25 / 10)  # (10 + 15) / (5 + 5)
    assert m.expectancy == pytest.approx(15 / 5)
    assert m.avg_win == pytest.approx(12.5)
    assert m.avg_loss == pytest.approx(-5.0)
    assert m.best_trade == 15.0
    assert m.worst_trade == -5.0
    assert m.avg_trade_duration == pytest.approx(3.0)
    assert m.avg_trade_duration_s == pytest.approx(180.0)


def test_curve_statistics_hand_computed() -> None:
    m = tiny_run()
    # Returns r = [0.1, -0.1, 0.1, 0.1]; mean 0.05.
    # std(ddof=1) = sqrt((0.05^2 * 3 + 0.15^2) / 3) = sqrt(0.03 / 3) = 0.1
    # Sharpe = 0.05 / 0.1 * sqrt(4) = 1.0; volatility = 0.1 * sqrt(4) = 0.2
    assert m.sharpe == pytest.approx(1.0)
    assert m.volatility == pytest.approx(0.2)
    # Downside deviation = sqrt(mean([0, 0.01, 0, 0])) = 0.05 -> 0.05 / 0.05 * 2 = 2.0
    assert m.sortino == pytest.approx(2.0)
    # Curve 100, 110, 99, 108.9, 119.79: the trough 99 is 10 % under the 110 peak and
    # stays under water for two steps (99 and 108.9).
    assert m.max_drawdown == pytest.approx(0.1)
    assert m.max_drawdown_duration_steps == 2
    assert m.total_pnl == pytest.approx(19.79)
    assert m.total_return == pytest.approx(0.1979)
    # Exactly one year: CAGR equals the total return.
    assert m.cagr == pytest.approx(0.1979)
    # Exposure / equity = [0.5, 1.0, 0.0, 1.0]
    assert m.exposure == pytest.approx(0.625)
    assert m.periods_per_year == 4.0


def test_initial_capital_is_the_first_peak() -> None:
    # Without the initial capital of 200, the curve never falls below its first point.
    ts = T0 + DAY_NS * np.arange(3, dtype=np.int64)
    equity = np.array([100.0, 120.0, 150.0])
    with_capital = compute_metrics(ts=ts, equity=equity, initial_capital=200.0, **NO_TRADES)
    without = compute_metrics(ts=ts, equity=equity, **NO_TRADES)
    assert with_capital.max_drawdown == pytest.approx(0.5)
    assert with_capital.max_drawdown_duration_steps == 3
    assert with_capital.total_pnl == pytest.approx(-50.0)
    assert without.max_drawdown == 0.0
    assert without.total_pnl == pytest.approx(50.0)
    assert without.total_return == pytest.approx(0.5)


def test_drawdown_duration_is_the_longest_underwater_stretch() -> None:
    # Under water at steps 1-2 (a stretch of 2) and 4-6 (a stretch of 3). The deepest
    # point is 90 against the peak of 100.
    equity = np.array([100.0, 90.0, 95.0, 101.0, 99.0, 98.0, 97.0, 102.0])
    ts = T0 + DAY_NS * np.arange(equity.size, dtype=np.int64)
    m = compute_metrics(ts=ts, equity=equity, **NO_TRADES)
    assert m.max_drawdown_duration_steps == 3
    assert m.max_drawdown == pytest.approx(0.1)


def test_cagr_over_two_years_without_initial_capital() -> None:
    # equity[0] is the base at ts[0], so the span is ts[-1] - ts[0] with no extra step.
    ts = T0 + np.array([0, YEAR_NS, 2 * YEAR_NS], dtype=np.int64)
    m = compute_metrics(ts=ts, equity=np.array([100.0, 110.0, 121.0]), **NO_TRADES)
    assert m.cagr == pytest.approx(0.1)
    assert m.total_return == pytest.approx(0.21)


def test_profit_factor_none_without_losing_trades() -> None:
    m = tiny_run(
        trade_pnl=np.array([1.0, 0.0, 2.0]),
        trade_bars_held=np.array([1, 1, 1]),
        trade_duration_s=np.array([1.0, 1.0, 1.0]),
    )
    assert m.profit_factor is None
    assert m.avg_loss is None
    assert m.win_rate == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    ("spacing_s", "expected"),
    [
        (86_400, 252.0),
        (21_600, 252.0),  # 6 h already counts as daily
        (3_600, 252.0 * 6.5),
        (300, 252.0 * 78),
        (60, 252.0 * 390),
    ],
)
def test_periods_per_year_inferred_from_spacing(spacing_s: int, expected: float) -> None:
    ts = T0 + spacing_s * NS * np.arange(50, dtype=np.int64)
    assert infer_periods_per_year(ts) == pytest.approx(expected)
    m = compute_metrics(ts=ts, equity=np.full(50, 100.0), **NO_TRADES)
    assert m.periods_per_year == pytest.approx(expected)


def test_periods_per_year_uses_median_spacing_across_gaps() -> None:
    # Weekdays only: one 3-day gap per week must not change the daily answer.
    days = np.array([d for d in range(70) if d % 7 not in (5, 6)], dtype=np.int64)
    assert infer_periods_per_year(T0 + DAY_NS * days) == 252.0
    # Minute bars over three sessions with overnight gaps stay at 390 bars per day.
    minutes = np.concatenate([DAY_NS * d + 60 * NS * np.arange(390) for d in range(3)])
    assert infer_periods_per_year(T0 + minutes) == pytest.approx(252.0 * 390)


def test_sharpe_scales_with_inferred_periods() -> None:
    rng = np.random.default_rng(0)
    equity = 100.0 * np.cumprod(1.0 + rng.normal(0.001, 0.01, 200))
    daily = compute_metrics(
        ts=T0 + DAY_NS * np.arange(200, dtype=np.int64), equity=equity, **NO_TRADES
    )
    minute = compute_metrics(
        ts=T0 + 60 * NS * np.arange(200, dtype=np.int64), equity=equity, **NO_TRADES
    )
    assert daily.sharpe is not None and minute.sharpe is not None
    assert minute.sharpe / daily.sharpe == pytest.approx(math.sqrt(390))


def assert_json_safe(m: PerformanceMetrics) -> None:
    as_dict = m.to_dict()
    json.dumps(as_dict, allow_nan=False)
    assert set(as_dict) == set(m.__struct_fields__)
    for value in as_dict.values():
        assert value is None or math.isfinite(value)


@pytest.mark.parametrize(
    "case",
    [
        {"ts": np.array([], dtype=np.int64), "equity": np.array([])},
        {"ts": np.array([], dtype=np.int64), "equity": np.array([]), "initial_capital": 1e5},
        {"ts": np.array([T0]), "equity": np.array([100.0])},
        {"ts": np.array([T0]), "equity": np.array([101.0]), "initial_capital": 100.0},
        {"ts": T0 + DAY_NS * np.arange(30), "equity": np.full(30, 100.0)},
        {"ts": np.full(3, T0), "equity": np.array([100.0, 90.0, 95.0])},  # zero spacing
        {"ts": T0 + DAY_NS * np.arange(3), "equity": np.array([100.0, 0.0, 5.0])},  # wiped out
        {"ts": T0 + DAY_NS * np.arange(3), "equity": np.array([1.0, 2.0, 4.0])},  # all up
        {"ts": T0 + NS * np.arange(2), "equity": np.array([1.0, 1e6])},  # overflowing CAGR
    ],
    ids=[
        "empty",
        "empty-capital",
        "single",
        "single-capital",
        "constant",
        "same-ts",
        "to-zero",
        "no-down",
        "huge-cagr",
    ],
)
def test_degenerate_inputs_are_finite_or_none(case: dict[str, object]) -> None:
    m = compute_metrics(**case, **NO_TRADES)  # type: ignore[arg-type]
    assert_json_safe(m)
    assert m.total_trades == 0
    assert m.win_rate == 0.0
    assert m.expectancy == 0.0
    assert m.profit_factor is None
    assert m.best_trade is None and m.worst_trade is None
    assert m.max_drawdown >= 0.0


def test_degenerate_specifics() -> None:
    flat = compute_metrics(ts=T0 + DAY_NS * np.arange(30), equity=np.full(30, 100.0), **NO_TRADES)
    assert flat.sharpe is None and flat.sortino is None
    assert flat.volatility == 0.0
    assert flat.max_drawdown == 0.0 and flat.total_pnl == 0.0 and flat.cagr == 0.0

    single = compute_metrics(ts=np.array([T0]), equity=np.array([100.0]), **NO_TRADES)
    assert single.sharpe is None and single.volatility is None and single.cagr is None
    assert single.periods_per_year == 252.0

    wiped = compute_metrics(
        ts=T0 + DAY_NS * np.arange(3),
        equity=np.array([100.0, 0.0, 5.0]),
        exposure=np.array([50.0, 0.0, 5.0]),
        **NO_TRADES,
    )
    assert wiped.exposure == pytest.approx(0.75)  # the step with no equity is left out
    assert wiped.max_drawdown == pytest.approx(1.0)
    assert wiped.cagr == pytest.approx(-1.0)  # 5 % left after two days
    # The step from zero equity has no return, so only -100 % is left: one return.
    assert wiped.sharpe is None
    assert wiped.sortino == pytest.approx(-1.0 * math.sqrt(252.0))

    no_exposure = tiny_run(exposure=None)
    assert no_exposure.exposure is None


def test_to_dict_replaces_non_finite() -> None:
    m = msgspec.structs.replace(tiny_run(), sharpe=float("inf"), sortino=float("nan"))
    as_dict = m.to_dict()
    assert as_dict["sharpe"] is None and as_dict["sortino"] is None
    assert as_dict["win_rate"] == pytest.approx(0.4)
    json.dumps(as_dict, allow_nan=False)


@pytest.mark.parametrize(
    "overrides",
    [
        {"equity": np.array([110.0, 99.0, 108.9])},
        {"equity": np.array([110.0, np.nan, 108.9, 119.79])},
        {"trade_bars_held": np.array([1, 2])},
        {"exposure": np.array([1.0])},
        {"periods_per_year": 0.0},
    ],
    ids=["equity-length", "equity-nan", "trade-length", "exposure-length", "zero-periods"],
)
def test_corrupt_inputs_raise(overrides: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        tiny_run(**overrides)


def test_metrics_struct_is_frozen() -> None:
    m = tiny_run()
    with pytest.raises(AttributeError):
        m.sharpe = 2.0  # type: ignore[misc]

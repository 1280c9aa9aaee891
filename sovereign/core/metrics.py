"""Performance metrics of an equity curve and its closed trades.

Conventions:

- ``equity[i]`` is the equity after step ``i``, stamped ``ts[i]`` (ns, UTC). The curve
  starts after the first step. When ``initial_capital`` is given, it is the equity before
  ``ts[0]``, so it is the base of the first return and the first peak for drawdown.
  Otherwise ``equity[0]`` is the base.
- Returns are simple per-step returns of that curve. A step whose previous equity is not
  positive has no defined return and is left out.
- Sharpe is ``mean(r) / std(r, ddof=1) * sqrt(periods_per_year)``, with a zero
  risk-free rate. Sortino is ``mean(r) / dd * sqrt(periods_per_year)``, where the downside
  deviation ``dd = sqrt(mean(min(r, 0)^2))`` is taken over all periods. Volatility is
  ``std(r, ddof=1) * sqrt(periods_per_year)``.
- When ``periods_per_year`` is None, it is inferred from the median spacing of ``ts``.
  A spacing of 6 h or more counts as daily and gives 252. Anything shorter gives
  ``252 * 23400 / spacing_s``, the number of regular-session bars in a year. With fewer
  than two timestamps, 252 is used.
- CAGR is ``(final / initial) ** (1 / years) - 1``, where
  ``years = span / 365.25 days``. The span is ``ts[-1] - ts[0]``, plus one median spacing
  when ``initial_capital`` is given, because the curve then starts one step before
  ``ts[0]``. CAGR is None when ``years <= 0``, and it is -1 when the final equity is not
  positive.
- Max drawdown is ``max_t (1 - equity_t / running_max_t)``, a positive fraction such as
  0.12 for 12 %. Its duration is the longest run of consecutive steps spent below the
  running peak.
- Degenerate inputs (no steps, a single step, constant equity, no trades) never raise and
  never produce NaN. A statistic that is undefined is None, for example Sharpe of a
  constant curve or profit factor without a losing trade. Mismatched lengths or
  non-finite inputs are corrupt data and raise `ValueError`.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec
import numpy as np

__all__ = ["PerformanceMetrics", "compute_metrics", "infer_periods_per_year"]

NS_PER_S = 1_000_000_000
SECONDS_PER_YEAR = 365.25 * 86_400.0
TRADING_DAYS_PER_YEAR = 252.0
REGULAR_SESSION_S = 23_400.0
DAILY_SPACING_S = 6 * 3_600.0
# Per-step return dispersion below this is floating-point noise, not risk; dividing by
# it would report a meaningless ratio of 1e14.
_MIN_DISPERSION = 1e-12


class PerformanceMetrics(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Summary statistics of a run. The module docstring gives the conventions.

    Parameters
    ----------
    total_trades
        Number of closed trades.
    win_rate
        Fraction of trades with pnl > 0. It is 0.0 without trades.
    profit_factor
        Gross profit / gross loss. It is None when no trade lost money.
    sharpe, sortino
        Annualised ratios with a zero risk-free rate. They are None when undefined.
    max_drawdown
        Largest peak-to-trough fall of equity, as a positive fraction.
    max_drawdown_duration_steps
        Longest run of consecutive steps below the running peak.
    avg_trade_duration
        Mean bars held per trade. It is 0.0 without trades.
    avg_trade_duration_s
        Mean seconds held per trade. It is 0.0 without trades.
    total_pnl
        Final equity minus initial capital.
    total_return
        ``final / initial - 1``. It is None when the initial equity is not positive.
    cagr
        Compound annual growth rate. It is None when the run spans no time.
    exposure
        Mean of gross exposure / equity over the steps. It is None when no exposure was
        given.
    expectancy
        Mean pnl per trade. It is 0.0 without trades.
    avg_win, avg_loss
        Mean pnl of the winning and of the losing trades (``avg_loss`` is negative). They
        are None when there are none.
    best_trade, worst_trade
        Largest and smallest trade pnl. They are None without trades.
    volatility
        Annualised standard deviation of the returns. It is None with fewer than two
        returns.
    periods_per_year
        The number of periods per year used to annualise, given or inferred.
    """

    total_trades: int
    win_rate: float
    profit_factor: float | None
    sharpe: float | None
    sortino: float | None
    max_drawdown: float
    max_drawdown_duration_steps: int
    avg_trade_duration: float
    avg_trade_duration_s: float
    total_pnl: float
    total_return: float | None
    cagr: float | None
    exposure: float | None
    expectancy: float
    avg_win: float | None
    avg_loss: float | None
    best_trade: float | None
    worst_trade: float | None
    volatility: float | None
    periods_per_year: float

    def to_dict(self) -> dict[str, Any]:
        """Return the metrics as a JSON-safe dict, with None for any non-finite number."""
        out = msgspec.structs.asdict(self)
        for key, value in out.items():
            if isinstance(value, float) and not math.isfinite(value):
                out[key] = None
        return out


def infer_periods_per_year(ts: np.ndarray) -> float:
    """Infer the number of steps per year from the median spacing of ``ts``.

    Parameters
    ----------
    ts
        Step timestamps in ns.

    Returns
    -------
    float
        252 for daily-like spacing (6 h or more) and ``252 * 23400 / spacing_s`` for
        intraday bars. It is also 252 when fewer than two timestamps exist or the
        spacing is not positive.
    """
    spacing_s = _median_spacing_s(np.asarray(ts, dtype=np.int64))
    if spacing_s <= 0.0 or spacing_s >= DAILY_SPACING_S:
        return TRADING_DAYS_PER_YEAR
    return TRADING_DAYS_PER_YEAR * (REGULAR_SESSION_S / spacing_s)


def compute_metrics(
    *,
    ts: np.ndarray,
    equity: np.ndarray,
    trade_pnl: np.ndarray,
    trade_bars_held: np.ndarray,
    trade_duration_s: np.ndarray,
    exposure: np.ndarray | None = None,
    periods_per_year: float | None = None,
    initial_capital: float | None = None,
) -> PerformanceMetrics:
    """Compute the performance metrics of a run.

    Parameters
    ----------
    ts
        Step timestamps (int64 ns), one per step.
    equity
        Equity after each step (float64), aligned with ``ts``.
    trade_pnl, trade_bars_held, trade_duration_s
        Per closed trade: realised pnl, bars held and seconds held.
    exposure
        Gross exposure per step, aligned with ``ts``. It is optional.
    periods_per_year
        Steps per year for annualisation. When None, it is inferred from ``ts``.
    initial_capital
        Equity before the first step. When None, ``equity[0]`` is used.

    Returns
    -------
    PerformanceMetrics

    Raises
    ------
    ValueError
        If the lengths do not match or an input is not finite.
    """
    ts_arr, eq, pnl, bars, held_s = _validated_arrays(
        ts, equity, trade_pnl, trade_bars_held, trade_duration_s
    )
    if periods_per_year is None:
        periods_per_year = infer_periods_per_year(ts_arr)
    elif not (math.isfinite(periods_per_year) and periods_per_year > 0):
        raise ValueError(f"periods_per_year must be positive, got {periods_per_year!r}")
    if initial_capital is not None and not math.isfinite(initial_capital):
        raise ValueError(f"initial_capital must be finite, got {initial_capital!r}")

    curve = eq if initial_capital is None else np.concatenate(([initial_capital], eq))
    initial = float(curve[0]) if curve.size else 0.0
    final = float(curve[-1]) if curve.size else 0.0
    prev = curve[:-1]
    positive = prev > 0.0
    returns = curve[1:][positive] / prev[positive] - 1.0

    sharpe, sortino, volatility = _risk_ratios(returns, math.sqrt(periods_per_year))
    max_dd, max_dd_steps = _drawdown(curve)
    years = _span_years(ts_arr, starts_before_ts0=initial_capital is not None)

    exposure_fraction = None if exposure is None else _exposure_fraction(exposure, eq)

    if not curve.size:
        total_return: float | None = 0.0  # nothing happened
    else:
        total_return = final / initial - 1.0 if initial > 0.0 else None
    return PerformanceMetrics(
        **_trade_statistics(pnl, bars, held_s),
        sharpe=_finite_or_none(sharpe),
        sortino=_finite_or_none(sortino),
        max_drawdown=max_dd,
        max_drawdown_duration_steps=max_dd_steps,
        total_pnl=final - initial,
        total_return=total_return,
        cagr=_cagr(initial, final, years),
        exposure=_finite_or_none(exposure_fraction),
        volatility=_finite_or_none(volatility),
        periods_per_year=float(periods_per_year),
    )


def _validated_arrays(
    ts: np.ndarray,
    equity: np.ndarray,
    trade_pnl: np.ndarray,
    trade_bars_held: np.ndarray,
    trade_duration_s: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return the step and trade arrays as numpy arrays, raising on corrupt data."""
    ts_arr = np.asarray(ts, dtype=np.int64)
    eq = _finite("equity", equity)
    pnl = _finite("trade_pnl", trade_pnl)
    bars = _finite("trade_bars_held", trade_bars_held)
    held_s = _finite("trade_duration_s", trade_duration_s)
    if ts_arr.shape != eq.shape:
        raise ValueError(f"ts has {ts_arr.size} steps but equity has {eq.size}")
    if not pnl.size == bars.size == held_s.size:
        raise ValueError(
            f"trade arrays differ in length: pnl {pnl.size}, bars_held {bars.size}, "
            f"duration_s {held_s.size}"
        )
    return ts_arr, eq, pnl, bars, held_s


def _exposure_fraction(exposure: np.ndarray, eq: np.ndarray) -> float | None:
    """Mean gross exposure / equity over the funded steps; None when none is funded."""
    gross = _finite("exposure", exposure)
    if gross.shape != eq.shape:
        raise ValueError(f"exposure has {gross.size} steps but equity has {eq.size}")
    funded = eq > 0.0
    if funded.any():
        return float(np.mean(gross[funded] / eq[funded]))
    return None


def _trade_statistics(pnl: np.ndarray, bars: np.ndarray, held_s: np.ndarray) -> dict[str, Any]:
    """The per-trade fields of `PerformanceMetrics`, keyed by field name."""
    wins, losses = pnl[pnl > 0.0], pnl[pnl < 0.0]
    gross_loss = float(-losses.sum())
    has_trades = pnl.size > 0
    return {
        "total_trades": int(pnl.size),
        "win_rate": wins.size / pnl.size if has_trades else 0.0,
        "profit_factor": float(wins.sum()) / gross_loss if gross_loss > 0.0 else None,
        "avg_trade_duration": float(bars.mean()) if has_trades else 0.0,
        "avg_trade_duration_s": float(held_s.mean()) if has_trades else 0.0,
        "expectancy": float(pnl.mean()) if has_trades else 0.0,
        "avg_win": float(wins.mean()) if wins.size else None,
        "avg_loss": float(losses.mean()) if losses.size else None,
        "best_trade": float(pnl.max()) if has_trades else None,
        "worst_trade": float(pnl.min()) if has_trades else None,
    }


def _finite(name: str, values: np.ndarray) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains non-finite values")
    return arr


def _finite_or_none(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def _risk_ratios(
    returns: np.ndarray, annualiser: float
) -> tuple[float | None, float | None, float | None]:
    # Sharpe, Sortino and volatility, each None when undefined.
    sharpe = sortino = volatility = None
    if returns.size == 0:
        return sharpe, sortino, volatility
    mean = float(returns.mean())
    if returns.size >= 2:
        std = float(returns.std(ddof=1))
        volatility = std * annualiser
        if std > _MIN_DISPERSION:
            sharpe = mean / std * annualiser
    downside = math.sqrt(float(np.mean(np.minimum(returns, 0.0) ** 2)))
    if downside > _MIN_DISPERSION:
        sortino = mean / downside * annualiser
    return sharpe, sortino, volatility


def _median_spacing_s(ts: np.ndarray) -> float:
    if ts.size < 2:
        return 0.0
    return float(np.median(np.diff(ts))) / NS_PER_S


def _drawdown(curve: np.ndarray) -> tuple[float, int]:
    if curve.size == 0:
        return 0.0, 0
    peak = np.maximum.accumulate(curve)
    # Drawdown is undefined against a peak that is not positive.
    has_peak = peak > 0.0
    drawdown = np.zeros_like(curve)
    np.divide(curve, peak, out=drawdown, where=has_peak)
    drawdown = np.where(has_peak, 1.0 - drawdown, 0.0)
    underwater = (curve < peak).astype(np.int8)
    edges = np.flatnonzero(np.diff(np.concatenate(([0], underwater, [0]))))
    longest = int((edges[1::2] - edges[::2]).max()) if edges.size else 0
    return max(float(drawdown.max()), 0.0), longest


def _span_years(ts: np.ndarray, *, starts_before_ts0: bool) -> float:
    """Years the curve spans; one more median spacing when it starts before ``ts[0]``."""
    span_ns = float(ts[-1] - ts[0]) if ts.size else 0.0
    if starts_before_ts0:
        span_ns += _median_spacing_s(ts) * NS_PER_S
    return span_ns / NS_PER_S / SECONDS_PER_YEAR


def _cagr(initial: float, final: float, years: float) -> float | None:
    if years <= 0.0 or initial <= 0.0:
        return None
    if final <= 0.0:
        return -1.0
    # Exp of a log ratio overflows to inf rather than raising, so short runs yield None.
    with np.errstate(over="ignore"):
        growth = float(np.exp(math.log(final / initial) / years))
    return _finite_or_none(growth - 1.0)

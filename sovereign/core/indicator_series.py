"""Batch references for the streaming indicators, over the bars of one symbol.

Each ``*_series`` function is the batch twin of a streaming class in
`sovereign.core.indicators` and follows its conventions. They are for tests and research
and favour clarity over speed.
"""

from __future__ import annotations

from collections import deque
from typing import TypeVar

import numpy as np
import pandas as pd

from sovereign.core.indicators import _check_size

__all__ = [
    "atr_series",
    "sr_score_series",
    "volume_percentile_series",
]

ArrayOrSeries = TypeVar("ArrayOrSeries", np.ndarray, pd.Series)


def _as_float_array(x: np.ndarray | pd.Series) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"expected a 1-D series, got shape {arr.shape}")
    return arr


def _like(result: np.ndarray, template: ArrayOrSeries) -> ArrayOrSeries:
    if isinstance(template, pd.Series):
        return pd.Series(result, index=template.index, name=template.name)
    return result


def atr_series(
    high: ArrayOrSeries, low: ArrayOrSeries, close: ArrayOrSeries, period: int = 14
) -> ArrayOrSeries:
    """Compute Wilder's ATR over one symbol's bars; the batch twin of `ATR`.

    Rows with a NaN price are skipped as if absent and come out as NaN.

    Parameters
    ----------
    high, low, close
        One symbol's prices in time order.
    period
        Smoothing period.

    Returns
    -------
    np.ndarray or pd.Series
        ATR per row (a Series with the index of ``high`` when given Series), NaN until
        ``period`` true ranges have been seen.
    """
    _check_size("period", period, 1)
    h, lo, c = _as_float_array(high), _as_float_array(low), _as_float_array(close)
    out = np.full(h.shape, np.nan)
    valid = np.isfinite(h + lo + c)
    h, lo, c = h[valid], lo[valid], c[valid]
    if h.size >= period:
        prev = np.concatenate(([np.nan], c[:-1]))
        tr = np.fmax(h, prev) - np.fmin(lo, prev)
        # Seeding the recursion with the simple mean makes an alpha = 1/period EWM
        # exactly Wilder's smoothing.
        seeded = np.concatenate(([tr[:period].mean()], tr[period:]))
        smooth = pd.Series(seeded).ewm(alpha=1.0 / period, adjust=False).mean().to_numpy()
        atr = np.full(h.size, np.nan)
        atr[period - 1 :] = smooth
        out[valid] = atr
    return _like(out, high)


def volume_percentile_series(volume: ArrayOrSeries, window: int = 20) -> ArrayOrSeries:
    """Compute the percentile rank of each volume among the previous ``window`` known volumes.

    This is the batch twin of `VolumePercentile`. NaN volumes give NaN and are left
    out of later windows.

    Parameters
    ----------
    volume
        One symbol's volumes in time order.
    window
        Number of previous volumes.

    Returns
    -------
    np.ndarray or pd.Series
        Percentile rank in 0..100, NaN until ``window`` previous volumes exist.
    """
    _check_size("window", window, 1)
    v = _as_float_array(volume)
    out = np.full(v.shape, np.nan)
    known = np.flatnonzero(~np.isnan(v))
    vals = v[known]
    if vals.size > window:
        prev = np.lib.stride_tricks.sliding_window_view(vals[:-1], window)
        cur = vals[window:, None]
        below = (prev < cur).sum(axis=1)
        tied = (prev == cur).sum(axis=1)
        out[known[window:]] = 100.0 * (below + 0.5 * tied) / window
    return _like(out, volume)


def sr_score_series(
    high: ArrayOrSeries,
    low: ArrayOrSeries,
    close: ArrayOrSeries,
    atr: ArrayOrSeries,
    swing: int = 3,
    memory: int = 10,
    band_atr: float = 0.5,
) -> ArrayOrSeries:
    """Compute the support/resistance score over one symbol's bars.

    This is the batch twin of `SupportResistance`, which gives the definition. Rows with
    a NaN high or low are skipped as if absent. Swings are found as "greater than every
    other bar in the window", a different formulation from the streaming class, and the
    memory is a plain deque, so the function can serve as an independent reference.

    Parameters
    ----------
    high, low, close, atr
        One symbol's prices and ATR in time order.
    swing, memory, band_atr
        As for `SupportResistance`.

    Returns
    -------
    np.ndarray or pd.Series
        The score as float64, NaN where the close or ATR is NaN or the row was skipped.
    """
    _check_size("swing", swing, 1)
    _check_size("memory", memory, 1)
    h, lo = _as_float_array(high), _as_float_array(low)
    c, a = _as_float_array(close), _as_float_array(atr)
    out = np.full(h.shape, np.nan)
    rows = np.flatnonzero(np.isfinite(h + lo))
    h, lo, c, a = h[rows], lo[rows], c[rows], a[rows]
    width = 2 * swing + 1
    # Row k of each window view covers bars k .. k + 2 * swing: its centre is bar
    # k + swing, which is confirmed at bar k + 2 * swing.
    swing_high = np.zeros(h.size, dtype=bool)
    swing_low = np.zeros(h.size, dtype=bool)
    if h.size >= width:
        h_win = np.lib.stride_tricks.sliding_window_view(h, width)
        lo_win = np.lib.stride_tricks.sliding_window_view(lo, width)
        centre = slice(swing, h.size - swing)
        swing_high[centre] = h[centre] > np.delete(h_win, swing, axis=1).max(axis=1)
        swing_low[centre] = lo[centre] < np.delete(lo_win, swing, axis=1).min(axis=1)
    levels: deque[float] = deque(maxlen=memory)
    for t in range(h.size):
        j = t - swing
        if j >= 0 and swing_high[j]:
            levels.append(float(h[j]))
        if j >= 0 and swing_low[j]:
            levels.append(float(lo[j]))
        if np.isfinite(c[t]) and np.isfinite(a[t]):
            band = band_atr * a[t]
            out[rows[t]] = sum(1 for level in levels if abs(level - c[t]) <= band)
    return _like(out, high)

"""Streaming technical indicators, vectorised across the symbols of a shard.

A shard steps all of its N symbols through one bar time at once, so each indicator keeps
its state in arrays of length N (a structure of arrays). ``update`` is called once per bar
time with float64 inputs of length N and a boolean ``mask`` that is True where the symbol
has a bar at that time. Rows where the mask is False are left exactly as they were.
Symbols can therefore advance at different rates, and the rolling windows keep a push
count for each symbol.

These conventions hold for every indicator:

- ``value`` is a float64 array of length N and ``ready`` is a bool array. ``value`` is NaN
  wherever ``ready`` is False, and the invariant ``ready == ~isnan(value)`` always holds.
- A masked-in row whose price inputs are NaN counts as having no bar, so its state does
  not change. `VolumePercentile` and `SupportResistance` document their own NaN rules.
- Rolling windows exclude the current bar. The statistic is taken over the previous
  ``window`` values, and only then is the current value pushed. That is what breakout
  rules such as ``close > max(high[t-20..t-1])`` need.
- ``reset()`` puts the indicator back in its freshly constructed state.

Each step costs a fixed handful of numpy operations; there is no Python loop over symbols.

``block`` is the same indicator over a block of K consecutive bar times at once (inputs
(K, N)) for the symbols in ``present``, each of which has a bar at every one of them (the
others have none and are left as they were): it returns each bar's ``value`` and ``ready``
as (K, N) and leaves the indicator as K updates would. It is the one definition of the
rolling windows and of the simple ATR: ``update`` is ``block`` on a block of one, so a
speculative chunk of a backtest (``core.chunks``) and a bar-by-bar replay compute every
value with the same arithmetic, to the last bit. Wilder's ATR and the support/resistance
score (``core.support_resistance``) are recursions: their ``block`` runs ``update`` bar
after bar.

The batch references over the bars of one symbol, the ``*_series`` functions, live in
`sovereign.core.indicator_series`.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = [
    "ATR",
    "EMA",
    "RollingExtreme",
    "RollingMedian",
    "VolumePercentile",
]


def _check_size(name: str, value: int, minimum: int) -> None:
    if int(value) != value or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _columns(present: np.ndarray) -> slice | np.ndarray:
    """The columns of ``present``: all of them as a slice (no gathers), else their indices."""
    return slice(None) if present.all() else np.flatnonzero(present)


def _as_read(indicator: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
    """K rows of the indicator's ``value`` and ``ready`` as they read now (a block's
    answer for the symbols without bars, which keep them)."""
    if k == 1:
        return indicator.value[None].copy(), indicator.ready[None].copy()
    return np.repeat(indicator.value[None], k, axis=0), np.repeat(indicator.ready[None], k, axis=0)


def _bar_after_bar(
    indicator: Any, present: np.ndarray, *inputs: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``block`` for a recursion: ``update`` at each of the K bar times in turn."""
    k = inputs[0].shape[0]
    value, ready = _as_read(indicator, k)
    for t in range(k):
        indicator.update(present, *(x[t] for x in inputs))  # type: ignore[arg-type]
        value[t] = indicator.value
        ready[t] = indicator.ready
    return value, ready


class _Ring:
    # Ring buffers holding the last ``width`` values pushed for each of n columns. Masks
    # let symbols push at different rates, so each column keeps its own push count, and
    # its next write slot is ``count % width``. The layout is (width, n), window-major:
    # numpy reduces over a short leading axis several times faster than over a short
    # trailing one, so a statistic is cheaper to take over all n columns and then index
    # than to take over gathered rows. Slots start as ``fill``. Callers either read only
    # full windows or rely on NaN never matching.

    __slots__ = ("buf", "count", "fill", "width")

    def __init__(self, n: int, width: int, fill: float = np.nan):
        self.width = width
        self.fill = fill
        self.buf = np.full((width, n), fill, dtype=np.float64)
        self.count = np.zeros(n, dtype=np.intp)

    def reset(self) -> None:
        self.buf.fill(self.fill)
        self.count.fill(0)

    def push(self, rows: np.ndarray, values: np.ndarray) -> None:
        # ``rows`` must not repeat: a repeated row would be written and counted once.
        self.buf[self.count[rows] % self.width, rows] = values
        self.count[rows] += 1


class ATR:
    """Wilder's Average True Range.

    The true range of a bar is ``max(high, prev_close) - min(low, prev_close)``. A
    symbol's first bar has no previous close, so its true range is ``high - low``. The
    first ATR is the simple mean of the first ``period`` true ranges, and after that
    ``ATR_t = (ATR_{t-1} * (period - 1) + TR_t) / period``.

    Parameters
    ----------
    n
        Number of symbols.
    period
        Smoothing period. Default 14.

    Attributes
    ----------
    value : np.ndarray
        ATR per symbol, NaN until ``period`` true ranges have been seen.
    ready : np.ndarray
        True where ``value`` is defined.
    tr : np.ndarray
        The last true range per symbol, NaN before the symbol's first bar.
    """

    def __init__(self, n: int, period: int = 14) -> None:
        _check_size("n", n, 0)
        _check_size("period", period, 1)
        self.n = n
        self.period = period
        self.value = np.full(n, np.nan)
        self.ready = np.zeros(n, dtype=bool)
        self.tr = np.full(n, np.nan)
        self._prev_close = np.full(n, np.nan)
        self._count = np.zeros(n, dtype=np.int64)
        self._state = np.zeros(n)
        self._scratch = np.zeros(n)

    def reset(self) -> None:
        """Forget all history."""
        self.value.fill(np.nan)
        self.ready.fill(False)
        self.tr.fill(np.nan)
        self._prev_close.fill(np.nan)
        self._count.fill(0)
        self._state.fill(0.0)

    def update(
        self, mask: np.ndarray, high: np.ndarray, low: np.ndarray, close: np.ndarray
    ) -> None:
        """Advance by one bar time.

        Parameters
        ----------
        mask
            True where the symbol has a bar. Rows with a NaN price count as no bar.
        high, low, close
            The bar's prices, float64 of length N.
        """
        valid = mask & np.isfinite(high + low + close)
        # fmax/fmin skip the NaN previous close, so a first bar's range is high - low.
        tr = np.fmax(high, self._prev_close) - np.fmin(low, self._prev_close)
        np.copyto(self.tr, tr, where=valid)
        self._count += valid
        # One recursion, state += (tr - state) / min(count, period), covers both phases.
        # Up to ``period`` bars it is a running mean, so at ``period`` it equals the SMA
        # seed. After that it is Wilder's (state * (period - 1) + tr) / period.
        tr -= self._state
        np.divide(tr, np.minimum(self._count, self.period), out=self._scratch, where=valid)
        np.add(self._state, self._scratch, out=self._state, where=valid)
        np.copyto(self._prev_close, close, where=valid)
        np.greater_equal(self._count, self.period, out=self.ready)
        # Readiness never reverts, so rows that are not ready still hold their initial NaN.
        np.copyto(self.value, self._state, where=self.ready)

    def block(
        self, present: np.ndarray, high: np.ndarray, low: np.ndarray, close: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """``update`` at each of K bar times ((K, N) inputs): ``value`` and ``ready`` after
        each, (K, N). A recursion, so bar after bar."""
        return _bar_after_bar(self, present, high, low, close)


class SimpleATR:
    """Average True Range as the simple mean of the last ``period`` true ranges.

    The true range is ``max(high, prev_close) - min(low, prev_close)`` (``high - low`` on a
    symbol's first bar); ``value`` at a bar is the mean of that bar's true range and the
    ``period - 1`` before it. This is the breakout strategy's ATR (the peers' common
    definition), where Wilder's smoothing would make the comparison inexact.

    The window is kept oldest first and summed strictly in that order (``cumsum``, which is
    sequential by definition, where ``sum`` may pair terms differently with the array's
    layout): a chunked replay computes the same sums as whole columns
    (``window_sums``) and must get the same ATR, to the last bit, whatever the number of
    symbols.
    """

    def __init__(self, n: int, period: int = 14) -> None:
        _check_size("n", n, 0)
        _check_size("period", period, 1)
        self.n = n
        self.period = period
        self.value = np.full(n, np.nan)
        self.ready = np.zeros(n, dtype=bool)
        self.tr = np.full(n, np.nan)
        self.prev_close = np.full(n, np.nan)
        # The last ``period`` true ranges, oldest first (zeros until filled), and how many
        # each symbol has had.
        self.window = np.zeros((period, n))
        self.count = np.zeros(n, dtype=np.intp)

    def reset(self) -> None:
        self.value.fill(np.nan)
        self.ready.fill(False)
        self.tr.fill(np.nan)
        self.prev_close.fill(np.nan)
        self.window.fill(0.0)
        self.count.fill(0)

    def update(
        self, mask: np.ndarray, high: np.ndarray, low: np.ndarray, close: np.ndarray
    ) -> None:
        valid = mask & np.isfinite(high + low + close)
        self.block(valid, high[None], low[None], close[None])

    def block(
        self, present: np.ndarray, high: np.ndarray, low: np.ndarray, close: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ATR at each of K bar times ((K, N) inputs; see the module doc)."""
        k = high.shape[0]
        value, ready = _as_read(self, k)
        p = _columns(present)
        c = close[:, p]
        if k == 0 or c.size == 0:
            return value, ready
        prev = np.concatenate([self.prev_close[p][None], c[:-1]])
        # fmax/fmin skip the NaN previous close, so a first bar's range is high - low.
        tr = np.fmax(high[:, p], prev) - np.fmin(low[:, p], prev)
        history = np.concatenate([self.window[1:, p], tr])
        # Summed from the window each time (not a running sum, which drifts over millions
        # of bars and would move stops by a rounding error).
        now = (self.count[p][None] + np.arange(1, k + 1)[:, None]) >= self.period
        mean = np.where(now, window_sums(history, self.period) / self.period, np.nan)
        value[:, p], ready[:, p] = mean, now
        self.window[:, p] = history[-self.period :]
        self.count[p] += k
        self.prev_close[p] = c[-1]
        self.tr[p] = tr[-1]
        self.value[p], self.ready[p] = mean[-1], now[-1]
        return value, ready


def window_sums(x: np.ndarray, width: int) -> np.ndarray:
    """Sums of ``width`` consecutive rows of ``x`` (rows are time), each summed oldest
    first, one addition at a time: row ``t`` of the result is
    ``(...((x[t] + x[t+1]) + x[t+2]) ... ) + x[t+width-1]``, exactly what ``cumsum`` over
    a window gives. ``x`` has ``T >= width`` rows; the result has ``T - width + 1``."""
    k = x.shape[0] - width + 1
    if k <= 0:
        return np.zeros((0, *x.shape[1:]))
    if k == 1:
        # One window (the bar path): cumsum adds its rows in the same order, in one call.
        return x.cumsum(axis=0)[-1:]
    acc = x[:k].copy()
    for j in range(1, width):
        acc += x[j : j + k]
    return acc


class EMA:
    """Exponential moving average with ``alpha = 2 / (span + 1)``.

    It is seeded with a symbol's first value and then follows
    ``ema_t = ema_{t-1} + alpha * (x_t - ema_{t-1})``, which is pandas
    ``ewm(span=span, adjust=False)``. It is ready after ``span`` values.

    Parameters
    ----------
    n
        Number of symbols.
    span
        Span of the average.
    """

    def __init__(self, n: int, span: int) -> None:
        _check_size("n", n, 0)
        _check_size("span", span, 1)
        self.n = n
        self.span = span
        self.alpha = 2.0 / (span + 1.0)
        self.value = np.full(n, np.nan)
        self.ready = np.zeros(n, dtype=bool)
        self._ema = np.full(n, np.nan)
        self._count = np.zeros(n, dtype=np.int64)

    def reset(self) -> None:
        """Forget all history."""
        self.value.fill(np.nan)
        self.ready.fill(False)
        self._ema.fill(np.nan)
        self._count.fill(0)

    def update(self, mask: np.ndarray, x: np.ndarray) -> None:
        """Advance by one bar time; rows with ``mask`` False or ``x`` NaN keep their state."""
        valid = mask & ~np.isnan(x)
        stepped = self._ema + self.alpha * (x - self._ema)
        np.copyto(self._ema, np.where(self._count == 0, x, stepped), where=valid)
        self._count += valid
        np.greater_equal(self._count, self.span, out=self.ready)
        # Readiness never reverts, so rows that are not ready still hold their initial NaN.
        np.copyto(self.value, self._ema, where=self.ready)


class _PreviousWindow:
    # Shared machinery for statistics of the previous ``window`` values of each symbol:
    # compute on the window as it stands, then push the current value.

    def __init__(self, n: int, window: int = 20) -> None:
        _check_size("n", n, 0)
        _check_size("window", window, 1)
        self.n = n
        self.window = window
        self.value = np.full(n, np.nan)
        self.ready = np.zeros(n, dtype=bool)
        # Each symbol's last ``window`` values, oldest first (NaN before its first ones),
        # and how many it has had.
        self.history = np.full((window, n), np.nan)
        self.count = np.zeros(n, dtype=np.intp)

    def reset(self) -> None:
        """Forget all history."""
        self.value.fill(np.nan)
        self.ready.fill(False)
        self.history.fill(np.nan)
        self.count.fill(0)

    def update(self, mask: np.ndarray, x: np.ndarray) -> None:
        """Advance by one bar time; rows with ``mask`` False or ``x`` NaN keep their state."""
        self.block(mask & ~np.isnan(x), x[None])

    def block(
        self, present: np.ndarray, x: np.ndarray, need: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The statistic at each of K bar times (``x`` is (K, N); see the module doc).

        ``need`` (K, N), optional: the bars whose value is wanted; the others read NaN
        (a statistic that is dear to take everywhere, such as the median, is then taken
        only where a strategy looks at it). The last bar's is always taken: it is the
        indicator's ``value`` afterwards."""
        k = x.shape[0]
        value, ready = _as_read(self, k)
        p = _columns(present)
        xs = x[:, p]
        if k == 0 or xs.size == 0:
            return value, ready
        w = self.window
        history = np.concatenate([self.history[:, p], xs])
        now = (self.count[p][None] + np.arange(k)[:, None]) >= w
        with np.errstate(invalid="ignore"):
            if need is None:
                # (K, m, window) views of the history; a bar at a time (the bar path),
                # the one window as such (the same values, without the view's overhead).
                if k == 1:
                    windows = history[:w].T[None]
                else:
                    windows = sliding_window_view(history, w, axis=0)[:k]
                stat = self._statistic(windows, xs)
            else:
                stat = np.full(xs.shape, np.nan)
                wanted = need[:, p] & now
                wanted[-1] = True
                t, j = np.nonzero(wanted)
                windows = history[t[:, None] + np.arange(w)[None, :], j[:, None]]
                stat[t, j] = self._statistic(windows, xs[t, j])
        mean = np.where(now, stat, np.nan)
        value[:, p], ready[:, p] = mean, now
        self.history[:, p] = history[-w:]
        self.count[p] += k
        self.value[p], self.ready[p] = mean[-1], now[-1]
        return value, ready

    def _statistic(self, windows: np.ndarray, x: np.ndarray) -> np.ndarray:
        # ``windows`` is (..., window), oldest first, and ``x`` (...) the value after each
        # window; one statistic per window.
        raise NotImplementedError


class RollingExtreme(_PreviousWindow):
    """Maximum or minimum of the previous ``window`` values, excluding the current one.

    ``value`` at a bar is the extreme of the ``window`` values before that bar. It equals
    pandas ``x.rolling(window).max().shift(1)`` on one symbol's bars.

    Parameters
    ----------
    n
        Number of symbols.
    window
        Number of previous values. Default 20.
    kind
        ``"max"`` or ``"min"``. Default ``"max"``.
    """

    def __init__(self, n: int, window: int = 20, kind: Literal["max", "min"] = "max") -> None:
        if kind not in ("max", "min"):
            raise ValueError(f"kind must be 'max' or 'min', got {kind!r}")
        super().__init__(n, window)
        self.kind = kind
        self._reduce = np.max if kind == "max" else np.min

    def _statistic(self, windows: np.ndarray, x: np.ndarray) -> np.ndarray:
        return self._reduce(windows, axis=-1)


class RollingMedian(_PreviousWindow):
    """Median of the previous ``window`` values, excluding the current one.

    It equals pandas ``x.rolling(window).median().shift(1)`` on one symbol's bars.

    Parameters
    ----------
    n
        Number of symbols.
    window
        Number of previous values. Default 20.
    """

    def _statistic(self, windows: np.ndarray, x: np.ndarray) -> np.ndarray:
        # A full sort of these short windows costs half of np.median and a third of
        # np.partition, whose introselect branches badly on fresh data.
        ordered = np.sort(windows, axis=-1)
        mid = self.window // 2
        if self.window % 2:
            return ordered[..., mid]
        return 0.5 * (ordered[..., mid - 1] + ordered[..., mid])


class VolumePercentile(_PreviousWindow):
    """Percentile rank (0..100) of the current volume among the previous ``window`` volumes.

    ``pct = 100 * (count(prev < v) + 0.5 * count(prev == v)) / window``, in which ties
    count half. The current bar is not part of ``prev``. The indicator is ready once
    ``window`` previous volumes exist.

    An unknown (NaN) volume on a masked-in row makes ``value`` NaN and ``ready`` False for
    that bar, and the NaN is not pushed into the window. Some sources, such as IB MIDPOINT
    bars, carry no volume.

    Parameters
    ----------
    n
        Number of symbols.
    window
        Number of previous volumes. Default 20.
    """

    def update(self, mask: np.ndarray, volume: np.ndarray) -> None:
        """Advance by one bar time with the bar volumes (NaN where unknown)."""
        unknown = np.isnan(volume)
        blank = mask & unknown
        if blank.any():
            self.value[blank] = np.nan
            self.ready[blank] = False
        self.block(mask & ~unknown, volume[None])

    def _statistic(self, windows: np.ndarray, x: np.ndarray) -> np.ndarray:
        below = (windows < x[..., None]).sum(axis=-1)
        tied = (windows == x[..., None]).sum(axis=-1)
        return (below + 0.5 * tied) * (100.0 / self.window)

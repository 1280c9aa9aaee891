"""Seeded, regime-switching synthetic OHLCV minute bars for benchmarks and scale tests.

Model, per symbol and independently across symbols:

* **Regimes.** A sticky Markov chain over TrendingUp (0), TrendingDown (1), Ranging (2)
  and Volatile (3). Each regime lasts a geometric number of bars with mean
  :data:`MEAN_DWELL_BARS`, then jumps to one of the other three at random. Sampling the
  dwell times directly is the same chain, and lets the whole path be drawn in bulk.
* **Returns.** ``r[t] = drift[regime] * sigma + sigma * vol[regime] * sqrt(g[t]) * z[t]``
  with ``z`` standard normal, ``sigma`` the symbol's base per-bar volatility, trends
  drifting by ±:data:`TREND_DRIFT` sigma per bar, and Volatile at 3x the base volatility.
* **Volatility clustering.** ``g`` is a unit-mean GARCH(1,1) multiplier,
  ``g[t] = (1 - a - b) + (a * z[t-1]**2 + b) * g[t-1]``. That is a linear recursion with
  random coefficients, so it is solved in closed form block by block (products and sums
  of the coefficients) instead of one Python step per bar.
* **Bars.** ``open = previous close * exp(gap)`` with a gap of a tenth of the current
  volatility; ``close = open * exp(r)``; high and low extend beyond the open/close
  range by exponential amounts scaled by the current volatility. Prices are built in log
  space, so they are always positive, and high >= max(open, close) >= min(open, close)
  >= low holds exactly, so every row passes validation.
* **Volume.** Lognormal around a per-symbol level; its log mean rises one-for-one with
  the log of the current volatility and with the size of the bar's shock, so volume
  clusters with volatility and correlates with ``|return|``.

Bars are consecutive (no session gaps or overnight breaks).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

__all__ = [
    "MEAN_DWELL_BARS",
    "REGIME_NAMES",
    "REGIME_VOL",
    "SyntheticBars",
    "generate",
]

REGIME_NAMES: tuple[str, ...] = ("TrendingUp", "TrendingDown", "Ranging", "Volatile")
MEAN_DWELL_BARS = 300
TREND_DRIFT = 0.15
REGIME_DRIFT = np.array([TREND_DRIFT, -TREND_DRIFT, 0.0, 0.0])
REGIME_VOL = np.array([1.0, 1.2, 0.6, 3.0])
BASE_SIGMA = 0.001  # per 1-minute bar, about 30% a year over 390-bar sessions
GARCH_ALPHA = 0.06
GARCH_BETA = 0.92
GAP_SCALE = 0.1
WICK_SCALE = 0.5
BASE_VOLUME = 20_000.0
# Block length of the GARCH solve. Within a block the running product of coefficients
# stays between exp(-0.08 * 256) and moderate highs, far from float64 under/overflow.
_BLOCK = 256


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class SyntheticBars:
    """Synthetic bars in wide layout: one row per timestamp, one column per symbol.

    Parameters
    ----------
    ts
        Bar starts, int64 ns UTC, shape (T,), shared by all symbols.
    symbols
        Names ``S0000``, ``S0001``, ... (N of them, sorted).
    open, high, low, close, volume
        float64 arrays of shape (T, N).
    regimes
        uint8 (T, N): the true regime of each bar (indices into :data:`REGIME_NAMES`).
    """

    ts: np.ndarray
    symbols: list[str]
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    regimes: np.ndarray

    def to_frame(self) -> pd.DataFrame:
        """Return the loader's long format (``ts, symbol, open, high, low, close,
        volume``), sorted by ``(ts, symbol)``."""
        n_bars, n_symbols = self.close.shape
        codes = np.tile(np.arange(n_symbols), n_bars)
        names = np.asarray(self.symbols, dtype=object)
        return pd.DataFrame(
            {
                "ts": np.repeat(self.ts, n_symbols),
                "symbol": pd.Series(names[codes], dtype="str"),
                "open": self.open.ravel(),
                "high": self.high.ravel(),
                "low": self.low.ravel(),
                "close": self.close.ravel(),
                "volume": self.volume.ravel(),
            }
        )


def _regime_path(rng: np.random.Generator, n_bars: int, n_symbols: int) -> np.ndarray:
    """Draw (T, N) regime labels from geometric dwell times."""
    n_seg = int(np.ceil(2 * n_bars / MEAN_DWELL_BARS)) + 8
    dwell = rng.geometric(1 / MEAN_DWELL_BARS, size=(n_symbols, n_seg))
    # Rarely the draws fall short of n_bars; extend until every symbol is covered.
    while (dwell.sum(axis=1) < n_bars).any():
        dwell = np.hstack([dwell, rng.geometric(1 / MEAN_DWELL_BARS, size=(n_symbols, n_seg))])
    n_seg = dwell.shape[1]
    first = rng.integers(0, 4, size=(n_symbols, 1))
    jumps = rng.integers(1, 4, size=(n_symbols, n_seg - 1))
    labels = (np.hstack([first, first + np.cumsum(jumps, axis=1)]) % 4).astype(np.uint8)
    ends = np.minimum(np.cumsum(dwell, axis=1), n_bars)
    lengths = np.diff(ends, axis=1, prepend=0)
    path = np.repeat(labels.ravel(), lengths.ravel()).reshape(n_symbols, n_bars)
    return np.ascontiguousarray(path.T)


def _garch_multiplier(z: np.ndarray) -> np.ndarray:
    """Solve ``g[t] = c + (a z[t-1]^2 + b) g[t-1]``, ``g[0] = 1``, over axis 0."""
    n_bars = z.shape[0]
    g = np.empty_like(z)
    g[0] = 1.0
    c = 1.0 - GARCH_ALPHA - GARCH_BETA
    g_prev = g[0]
    for start in range(1, n_bars, _BLOCK):
        stop = min(start + _BLOCK, n_bars)
        coef = GARCH_ALPHA * z[start - 1 : stop - 1] ** 2 + GARCH_BETA
        # g[t] = P[t] * (g_prev + c * sum_{j<=t} 1/P[j]) with P the running product.
        prod = np.exp(np.cumsum(np.log(coef), axis=0))
        block = prod * (g_prev + c * np.cumsum(1.0 / prod, axis=0))
        g[start:stop] = block
        g_prev = block[-1]
    return g


def _check_arguments(n_symbols: int, n_bars: int, interval_s: int, base_price: float) -> None:
    """Refuse sizes or an ``interval_s`` below 1 and a ``base_price`` that is not positive."""
    if n_symbols < 1 or n_bars < 1:
        raise ValueError(f"n_symbols and n_bars must be >= 1, got {n_symbols}, {n_bars}")
    if interval_s < 1:
        raise ValueError(f"interval_s must be >= 1, got {interval_s}")
    if not base_price > 0:
        raise ValueError(f"base_price must be positive, got {base_price}")


def _bar_starts(start: str, n_bars: int, interval_s: int) -> np.ndarray:
    """Consecutive bar starts (int64 ns UTC) from ``start`` (ISO; naive means UTC)."""
    t0 = pd.Timestamp(start)
    t0 = t0.tz_localize("UTC") if t0.tzinfo is None else t0.tz_convert("UTC")
    return t0.as_unit("ns").value + np.arange(n_bars, dtype=np.int64) * (interval_s * 1_000_000_000)


def _per_bar_drift(
    drift: dict[str, float | tuple[float, int, int]], regimes: np.ndarray, names: list[str]
) -> np.ndarray:
    """(T, N) drift in base volatilities: the regimes' own, with the planted ones applied."""
    n_bars = regimes.shape[0]
    per_bar = REGIME_DRIFT[regimes]
    for name, spec in drift.items():
        value, first, end = spec if isinstance(spec, tuple) else (spec, 0, n_bars)
        if not 0 <= first < end:
            raise ValueError(f"the drift of {name} needs 0 <= first bar < end bar")
        window = np.zeros(n_bars, dtype=bool)
        window[first:end] = True
        if name in REGIME_NAMES:
            per_bar = np.where(
                window[:, None] & (regimes == REGIME_NAMES.index(name)), value, per_bar
            )
        elif name in names:
            per_bar[window, names.index(name)] += value
        else:
            raise ValueError(f"drift names a regime or a symbol, not {name!r}")
    return per_bar


def _bars(
    rng: np.random.Generator,
    ret: np.ndarray,
    vol: np.ndarray,
    z: np.ndarray,
    sigma: np.ndarray,
    log_p0: np.ndarray,
    log_v0: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Open, high, low, close and volume from the returns (prices built in log space)."""
    shape = z.shape
    gap = GAP_SCALE * vol * rng.standard_normal(shape)
    log_close = log_p0 + np.cumsum(gap + ret, axis=0)
    log_open = log_close - ret
    close = np.exp(log_close)
    open_ = np.exp(log_open)
    top = np.maximum(open_, close)
    bottom = np.minimum(open_, close)
    # The maximum/minimum guard against exp rounding, so the OHLC invariant is exact.
    high = np.maximum(top * np.exp(WICK_SCALE * vol * rng.standard_exponential(shape)), top)
    low = np.minimum(bottom * np.exp(-WICK_SCALE * vol * rng.standard_exponential(shape)), bottom)

    log_volume = (
        log_v0 + np.log(vol / sigma) + 0.4 * (np.abs(z) - 0.8) + 0.3 * rng.standard_normal(shape)
    )
    volume = np.round(np.exp(log_volume))
    return open_, high, low, close, volume


def generate(
    n_symbols: int,
    n_bars: int,
    *,
    seed: int = 0,
    start: str = "2024-01-02T14:30:00Z",
    interval_s: int = 60,
    base_price: float = 100.0,
    drift: dict[str, float | tuple[float, int, int]] | None = None,
) -> SyntheticBars:
    """Generate regime-switching OHLCV bars.

    Parameters
    ----------
    n_symbols
        Number of independent symbols N.
    n_bars
        Number of bars T per symbol.
    seed
        Seed of the PCG64 generator; the same arguments always give the same bars.
    start
        Start of the first bar (ISO; naive means UTC).
    interval_s
        Bar length in seconds; bars are consecutive.
    base_price
        Typical first price; each symbol starts at ``base_price`` times a lognormal
        factor (sd 0.25 in log) so symbols differ in level.
    drift
        Per-bar drift, in units of the symbol's base volatility: of a named regime, in
        place of :data:`REGIME_DRIFT`, or of a named symbol (``S0003``), added to its
        regimes' drift. A planted edge or weakness: ``{"S0003": -0.3}`` makes whatever
        is bought in that symbol lose on average. ``(drift, first, end)`` applies it to
        bars ``first <= bar < end`` only: a weakness that comes or goes.

    Returns
    -------
    SyntheticBars
        Wide arrays plus the true regime labels.

    Raises
    ------
    ValueError
        If a size or ``interval_s`` is below 1 or ``base_price`` is not positive.
    """
    _check_arguments(n_symbols, n_bars, interval_s, base_price)
    ts = _bar_starts(start, n_bars, interval_s)

    rng = np.random.Generator(np.random.PCG64(seed))
    shape = (n_bars, n_symbols)
    sigma = BASE_SIGMA * np.exp(0.3 * rng.standard_normal(n_symbols))
    log_p0 = np.log(base_price) + 0.25 * rng.standard_normal(n_symbols)
    log_v0 = np.log(BASE_VOLUME) + 0.5 * rng.standard_normal(n_symbols)
    regimes = _regime_path(rng, n_bars, n_symbols)
    z = rng.standard_normal(shape)

    vol = sigma * REGIME_VOL[regimes] * np.sqrt(_garch_multiplier(z))
    width = max(4, len(str(n_symbols - 1)))
    names = [f"S{i:0{width}d}" for i in range(n_symbols)]
    per_bar = _per_bar_drift(drift or {}, regimes, names)
    ret = per_bar * sigma + vol * z
    open_, high, low, close, volume = _bars(rng, ret, vol, z, sigma, log_p0, log_v0)

    return SyntheticBars(
        ts=ts,
        symbols=names,
        open=open_,
        high=high,
        low=low,
        close=close,
        volume=volume,
        regimes=regimes,
    )

"""Regime classification.

``BaselineRegimeClassifier`` is an honest rule-based baseline — trend from two EMAs of the
close, volatility from short- versus long-run EWMA variance of log returns — that stands
in until the HMM and the foundation model arrive. Per symbol, after each bar:

* ``Volatile``     if sqrt(var_short / var_long) > ``volatile_ratio``; otherwise
* ``TrendingUp``   if ema_fast / ema_slow - 1 >  ``trend_margin``;
* ``TrendingDown`` if ema_fast / ema_slow - 1 < -``trend_margin``;
* ``Ranging``      otherwise.

A symbol is ``Unknown`` (code 255) until it has ``slow_span`` bars. The probabilities are a
margin-based confidence, not a calibrated posterior: the label gets
0.25 + 0.75 * tanh(distance past its threshold, in units of the threshold) and the rest is
shared equally. It uses only bars up to and including the current one (no look-ahead).
"""

from __future__ import annotations

import numpy as np

from sovereign.config import RegimeConfig
from sovereign.messages.market import REGIME_NAMES, REGIME_UNKNOWN

TRENDING_UP, TRENDING_DOWN, RANGING, VOLATILE = range(4)


class BaselineRegimeClassifier:
    """Streaming, vectorised across the symbols of one universe."""

    name = "baseline-trend-vol"

    def __init__(self, n: int, config: RegimeConfig) -> None:
        self.n = n
        self.config = config
        self._a_fast = 2.0 / (config.fast_span + 1)
        self._a_slow = 2.0 / (config.slow_span + 1)
        self._a_vs = 2.0 / (config.vol_short_span + 1)
        self._a_vl = 2.0 / (config.vol_long_span + 1)
        self.reset()

    def reset(self) -> None:
        n = self.n
        self.count = np.zeros(n, dtype=np.int64)
        self.prev_close = np.full(n, np.nan)
        self.ema_fast = np.full(n, np.nan)
        self.ema_slow = np.full(n, np.nan)
        self.var_short = np.zeros(n)
        self.var_long = np.zeros(n)
        self.codes = np.full(n, REGIME_UNKNOWN, dtype=np.uint8)
        self.probabilities = np.full((n, len(REGIME_NAMES)), 0.25, dtype=np.float32)

    def update(self, mask: np.ndarray, close: np.ndarray) -> None:
        """Consume one bar time; symbols where ``mask`` is False keep their state."""
        if not mask.any():
            return
        c = self.config
        first = mask & (self.count == 0)
        later = mask & (self.count > 0)
        self.ema_fast[first] = close[first]
        self.ema_slow[first] = close[first]
        if later.any():
            x = close[later]
            r = np.log(x / self.prev_close[later])
            r2 = r * r
            self.ema_fast[later] += self._a_fast * (x - self.ema_fast[later])
            self.ema_slow[later] += self._a_slow * (x - self.ema_slow[later])
            self.var_short[later] += self._a_vs * (r2 - self.var_short[later])
            self.var_long[later] += self._a_vl * (r2 - self.var_long[later])
        self.prev_close[mask] = close[mask]
        self.count[mask] += 1
        self._classify(mask & (self.count >= c.slow_span))

    def _classify(self, ready: np.ndarray) -> None:
        if not ready.any():
            return
        c = self.config
        spread = self.ema_fast[ready] / self.ema_slow[ready] - 1.0
        # The variances start at zero; dividing by the weight they have accumulated
        # (bias correction) turns them into proper averages of the returns seen so far.
        k = (self.count[ready] - 1).astype(np.float64)
        var_s = self.var_short[ready] / (1.0 - (1.0 - self._a_vs) ** k)
        var_l = self.var_long[ready] / (1.0 - (1.0 - self._a_vl) ** k)
        with np.errstate(divide="ignore", invalid="ignore"):
            vol_ratio = np.sqrt(var_s / var_l)
        vol_ratio = np.nan_to_num(vol_ratio, nan=1.0, posinf=c.volatile_ratio * 2)
        margin = max(c.trend_margin, 1e-12)
        codes = np.where(
            vol_ratio > c.volatile_ratio,
            VOLATILE,
            np.where(
                spread > margin, TRENDING_UP, np.where(spread < -margin, TRENDING_DOWN, RANGING)
            ),
        ).astype(np.uint8)
        distance = np.select(
            [codes == VOLATILE, codes == TRENDING_UP, codes == TRENDING_DOWN],
            [
                (vol_ratio - c.volatile_ratio) / (c.volatile_ratio - 1.0),
                (spread - margin) / margin,
                (-spread - margin) / margin,
            ],
            default=(margin - np.abs(spread)) / margin,
        )
        top = 0.25 + 0.75 * np.tanh(np.maximum(distance, 0.0))
        probs = np.repeat(((1.0 - top) / 3.0)[:, None], len(REGIME_NAMES), axis=1)
        probs[np.arange(len(codes)), codes] = top
        self.codes[ready] = codes
        self.probabilities[ready] = probs.astype(np.float32)

    def market_regime(self) -> str:
        """The most common known label across the universe (ties go to the lower code)."""
        known = self.codes[self.codes != REGIME_UNKNOWN]
        if known.size == 0:
            return "Unknown"
        return REGIME_NAMES[int(np.bincount(known, minlength=len(REGIME_NAMES)).argmax())]

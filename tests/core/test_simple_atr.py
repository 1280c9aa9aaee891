"""SimpleATR: the mean of the last 14 true ranges, per symbol, whichever path updates it."""

from __future__ import annotations

import numpy as np
import pandas as pd

from sovereign.core.indicators import SimpleATR


def expected(high: np.ndarray, low: np.ndarray, close: np.ndarray, period: int) -> np.ndarray:
    prev = pd.Series(close).shift(1)
    tr = np.fmax(high, prev) - np.fmin(low, prev)
    return pd.Series(tr).rolling(period).mean().to_numpy()


def test_full_and_masked_updates_match_the_definition() -> None:
    rng = np.random.default_rng(3)
    t, n, period = 200, 4, 14
    close = 100 + rng.normal(0, 1, (t, n)).cumsum(axis=0)
    high = close + rng.uniform(0, 2, (t, n))
    low = close - rng.uniform(0, 2, (t, n))
    # Symbol 3 skips every third bar: the masked path; the others take the full path
    # whenever symbol 3 trades too.
    present = np.ones((t, n), dtype=bool)
    present[::3, 3] = False
    atr = SimpleATR(n, period)
    got = np.full((t, n), np.nan)
    for i in range(t):
        atr.update(present[i], high[i], low[i], close[i])
        got[i] = atr.value
    for j in range(n):
        rows = np.flatnonzero(present[:, j])
        want = expected(high[rows, j], low[rows, j], close[rows, j], period)
        np.testing.assert_allclose(got[rows, j], want, rtol=1e-12, equal_nan=True)

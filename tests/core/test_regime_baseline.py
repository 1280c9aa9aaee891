"""The baseline trend/volatility regime classifier."""

from __future__ import annotations

import numpy as np

from sovereign.config import RegimeConfig
from sovereign.core.regime import (
    RANGING,
    TRENDING_DOWN,
    TRENDING_UP,
    VOLATILE,
    BaselineRegimeClassifier,
)
from sovereign.messages import REGIME_UNKNOWN

CFG = RegimeConfig(fast_span=5, slow_span=20, vol_short_span=5, vol_long_span=50)


def feed(model: BaselineRegimeClassifier, closes: np.ndarray) -> np.ndarray:
    """Feed a (T, N) close matrix; return the (T, N) codes after each bar."""
    out = np.empty(closes.shape, dtype=np.uint8)
    for t in range(closes.shape[0]):
        model.update(np.ones(closes.shape[1], dtype=bool), closes[t])
        out[t] = model.codes
    return out


def test_unknown_until_warm_then_classifies_trend_range_and_volatility() -> None:
    rng = np.random.default_rng(1)
    t = 200
    up = 100 * np.exp(np.cumsum(np.full(t, 0.004) + rng.normal(0, 0.002, t)))
    down = 100 * np.exp(np.cumsum(np.full(t, -0.004) + rng.normal(0, 0.002, t)))
    flat = 100 * np.exp(rng.normal(0, 0.0005, t))
    # Volatile means "much more volatile than this symbol's own long-run normal": a calm
    # history, then a burst.
    calm_then_wild = np.concatenate([rng.normal(0, 0.002, 170), rng.normal(0, 0.03, 30)])
    wild = 100 * np.exp(np.cumsum(calm_then_wild))
    cfg = RegimeConfig(fast_span=5, slow_span=20, vol_short_span=5, vol_long_span=250)
    codes = feed(BaselineRegimeClassifier(4, cfg), np.stack([up, down, flat, wild], axis=1))
    assert (codes[: cfg.slow_span - 1] == REGIME_UNKNOWN).all()
    assert codes[-1, 0] == TRENDING_UP
    assert codes[-1, 1] == TRENDING_DOWN
    assert codes[-1, 2] == RANGING
    assert (codes[:170, 3] == VOLATILE).mean() < 0.1
    assert (codes[172:, 3] == VOLATILE).mean() > 0.8


def test_masked_symbols_keep_their_state() -> None:
    m = BaselineRegimeClassifier(2, CFG)
    closes = 100 * np.exp(np.cumsum(np.full(30, 0.01)))
    for c in closes:
        m.update(np.array([True, False]), np.array([c, np.nan]))
    assert m.codes[0] == TRENDING_UP
    assert m.codes[1] == REGIME_UNKNOWN
    assert m.count[1] == 0


def test_label_at_t_does_not_depend_on_later_bars() -> None:
    rng = np.random.default_rng(2)
    closes = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, (120, 3)), axis=0))
    full = feed(BaselineRegimeClassifier(3, CFG), closes)
    prefix = feed(BaselineRegimeClassifier(3, CFG), closes[:70])
    np.testing.assert_array_equal(full[:70], prefix)


def test_probabilities_are_a_distribution_peaked_on_the_label() -> None:
    rng = np.random.default_rng(3)
    closes = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, (100, 5)), axis=0))
    m = BaselineRegimeClassifier(5, CFG)
    feed(m, closes)
    np.testing.assert_allclose(m.probabilities.sum(axis=1), 1.0, atol=1e-6)
    assert (m.probabilities.argmax(axis=1) == m.codes).all()

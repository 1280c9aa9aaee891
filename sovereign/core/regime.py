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

import math

import numpy as np

from sovereign.core.hmm_fit import HmmParams, fit_hmm, fit_hmms
from sovereign.domain.regimes import REGIME_NAMES, REGIME_UNKNOWN
from sovereign.domain.settings import RegimeConfig

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


# -- HIDDEN MARKOV MODEL -----------------------------------------------------------------
#
# Features, per symbol and bar, all causal:
#   r      log return of the close
#   lvol   log of the realised volatility: sqrt of an EWMA (span 20, bias-corrected) of r^2
#   trend  (EMA_10 - EMA_40 of the log close) / realised volatility: the trend in vol units
# They are standardised with the mean and standard deviation of the window the model is
# fitted on (kept with the model), then a 4-state diagonal Gaussian HMM is fitted
# (hmmlearn, Baum-Welch).
#
# State -> name mapping, applied after every fit so that state i always means regime i:
#   Volatile      the state with the highest mean lvol;
#   TrendingUp    of the other three, the highest mean trend;
#   TrendingDown  of the remaining two, the lowest mean trend;
#   Ranging       the last one.
# Refits start from the previous parameters (translated into the new window's scale), so
# the fitted states move continuously and the mapping by their means does not switch
# labels from one refit to the next.
#
# Online filtering is the forward recursion only, alpha_t ∝ (alpha_{t-1} A) * b(x_t):
# the probability at t uses bars up to t and never changes when later bars arrive (no
# smoothing). A refit at bar t uses bars up to t-1 and re-runs the forward recursion over
# its window with the new parameters, so alpha_t is consistent with the model in force.

_HMM_FEATURES = 3
_FILTER_SLICE = 256
"""Symbols filtered together after a refit (a block is symbols x window x 4 x 3 floats)."""
_LOG_2PI = math.log(2.0 * math.pi)


def emission_logprob(p: HmmParams, x_raw: np.ndarray) -> np.ndarray:
    """log b_k(x) for raw feature rows (T, F) -> (T, K)."""
    x = (x_raw - p.feature_mean) / p.feature_std
    diff = x[:, None, :] - p.means[None, :, :]
    return -0.5 * (
        _HMM_FEATURES * _LOG_2PI
        + np.log(p.variances).sum(axis=1)[None, :]
        + (diff * diff / p.variances[None, :, :]).sum(axis=2)
    )


def forward_filter(p: HmmParams, x_raw: np.ndarray) -> np.ndarray:
    """Filtered state probabilities for every row (the forward recursion only)."""
    logb = emission_logprob(p, x_raw)
    out = np.empty_like(logb)
    alpha = p.startprob
    for t in range(len(logb)):
        alpha = _forward_step(alpha if t == 0 else alpha @ p.transmat, logb[t])
        out[t] = alpha
    return out


def _forward_step(prior: np.ndarray, logb: np.ndarray) -> np.ndarray:
    w = prior * np.exp(logb - logb.max(axis=-1, keepdims=True))
    s = w.sum(axis=-1, keepdims=True)
    return np.where(s > 0, w / np.where(s > 0, s, 1.0), 1.0 / w.shape[-1])


class HmmFeatureState:
    """The HMM features of N symbols, updated bar by bar."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.count = np.zeros(n, dtype=np.int64)
        self.prev_close = np.full(n, np.nan)
        self.ewma_r2 = np.zeros(n)
        self.ema_fast = np.full(n, np.nan)
        self.ema_slow = np.full(n, np.nan)
        self._a_vol = 2.0 / 21.0
        self._a_fast = 2.0 / 11.0
        self._a_slow = 2.0 / 41.0

    def update(self, mask: np.ndarray, close: np.ndarray) -> np.ndarray:
        """Features (N, 3) for this bar; rows of symbols not ready are NaN."""
        out = np.full((self.n, _HMM_FEATURES), np.nan)
        first = mask & (self.count == 0)
        later = mask & (self.count > 0)
        logc = np.log(np.where(mask, close, 1.0))
        self.ema_fast[first] = logc[first]
        self.ema_slow[first] = logc[first]
        if later.any():
            r = logc[later] - np.log(self.prev_close[later])
            self.ewma_r2[later] += self._a_vol * (r * r - self.ewma_r2[later])
            self.ema_fast[later] += self._a_fast * (logc[later] - self.ema_fast[later])
            self.ema_slow[later] += self._a_slow * (logc[later] - self.ema_slow[later])
            k = self.count[later].astype(np.float64)  # returns seen including this one
            var = self.ewma_r2[later] / (1.0 - (1.0 - self._a_vol) ** k)
            vol = np.sqrt(np.maximum(var, 1e-12))
            rows = np.flatnonzero(later)
            out[rows, 0] = r
            out[rows, 1] = np.log(vol)
            out[rows, 2] = (self.ema_fast[later] - self.ema_slow[later]) / vol
        self.prev_close[mask] = close[mask]
        self.count[mask] += 1
        return out


class HmmRegimeModel:
    """One HMM per symbol, fitted on a rolling window and filtered online.

    ``probabilities`` (N, 4) are the filtered state probabilities in regime-code order;
    ``ready`` marks symbols with a fitted model.
    """

    name = "hmm"

    def __init__(
        self,
        n: int,
        *,
        window: int = 500,
        min_bars: int = 250,
        refit_every: int = 126,
        n_iter: int = 30,
        seed: int = 7,
    ) -> None:
        if not 50 <= min_bars <= window:
            raise ValueError("need 50 <= min_bars <= window")
        self.n = n
        self.window = window
        self.min_bars = min_bars
        self.refit_every = refit_every
        self.n_iter = n_iter
        self.seed = seed
        self.features = HmmFeatureState(n)
        # A ring per symbol: bar j of a symbol's history sits at j mod window.
        self.history = np.full((n, window, _HMM_FEATURES), np.nan)
        self.pushed = np.zeros(n, dtype=np.int64)
        self.filled = np.zeros(n, dtype=np.int64)
        self.since_fit = np.zeros(n, dtype=np.int64)
        self.params: list[HmmParams | None] = [None] * n
        k = len(REGIME_NAMES)
        self.alpha = np.full((n, k), 0.25)
        self.ready = np.zeros(n, dtype=bool)
        self.fits = 0
        self.failed_fits = 0
        self.retry_at = np.zeros(n, dtype=np.int64)  # no first fit before this many bars
        # Every symbol's model in stacked arrays, so that a bar is one vectorised forward
        # step for all the symbols that have one (a Python loop per symbol cost ~70 µs a
        # symbol-bar, most of a default backtest's time).
        self._startprob = np.full((n, k), 1.0 / k)
        self._transmat = np.tile(np.eye(k), (n, 1, 1))
        self._means = np.zeros((n, k, _HMM_FEATURES))
        self._variances = np.ones((n, k, _HMM_FEATURES))
        self._log_norm = np.zeros((n, k))  # F log 2π + Σ log σ², per state
        self._feature_mean = np.zeros((n, _HMM_FEATURES))
        self._feature_std = np.ones((n, _HMM_FEATURES))

    @property
    def probabilities(self) -> np.ndarray:
        return self.alpha

    def update(self, mask: np.ndarray, close: np.ndarray) -> None:
        x = self.features.update(mask, close)
        valid = mask & ~np.isnan(x).any(axis=1)
        step = valid & self.ready
        # Refits on bars up to the previous one; then this bar's forward step.
        self._fit(np.flatnonzero(step & (self.since_fit >= self.refit_every)))
        idx = np.flatnonzero(step)
        if idx.size:
            self._forward(idx, x[idx])
        rows = np.flatnonzero(valid)
        self._push(rows, x[rows])
        self.since_fit[rows] += 1
        # First fits: the window ends with this bar, which is filtered as part of it.
        first = (
            valid & ~self.ready & (self.filled >= self.min_bars) & (self.pushed >= self.retry_at)
        )
        self._fit(np.flatnonzero(first))

    def _logb(self, idx: np.ndarray, x_raw: np.ndarray) -> np.ndarray:
        """log b_k(x) of raw feature rows (m, ..., F) under the models of ``idx`` (m,): the
        arithmetic of :func:`emission_logprob`, each row under its own model."""
        extra = (slice(None),) + (None,) * (x_raw.ndim - 2)
        x = (x_raw - self._feature_mean[idx][extra]) / self._feature_std[idx][extra]
        diff = x[..., None, :] - self._means[idx][extra]
        return -0.5 * (
            self._log_norm[idx][extra] + (diff * diff / self._variances[idx][extra]).sum(axis=-1)
        )

    def _forward(self, idx: np.ndarray, x_raw: np.ndarray) -> None:
        """One forward step for the symbols ``idx``, each with its own model."""
        prior = np.einsum("nk,nkj->nj", self.alpha[idx], self._transmat[idx])
        self.alpha[idx] = _forward_step(prior, self._logb(idx, x_raw))

    def _push(self, rows: np.ndarray, x: np.ndarray) -> None:
        if rows.size == 0:
            return
        self.history[rows, self.pushed[rows] % self.window] = x
        self.pushed[rows] += 1
        self.filled[rows] = np.minimum(self.filled[rows] + 1, self.window)

    def _window(self, i: int) -> np.ndarray:
        """Symbol i's last ``filled`` feature rows, oldest first."""
        start = self.pushed[i] - self.filled[i]
        return self.history[i, (start + np.arange(self.filled[i])) % self.window]

    def _fit(self, rows: np.ndarray) -> None:
        """Refit the models of ``rows`` on their windows, then filter each window forward
        under its new model (all rows at once: one step of the recursion per bar of the
        longest window) so that each alpha is consistent with the model in force."""
        if rows.size == 0:
            return
        fitted: list[int] = []
        windows: list[np.ndarray] = []
        data = {i: self._window(i) for i in rows.tolist()}
        # This bar's fits run together (one batched EM; first fits from hmmlearn's own
        # initialisation); a fit the batch could not make goes through hmmlearn alone.
        batched = fit_hmms(
            list(data.values()),
            [self.params[i] for i in data],
            seed=self.seed,
            n_iter=self.n_iter,
        )
        by_row = dict(zip(data, batched, strict=True))
        for i in rows.tolist():
            try:
                params = by_row.get(i) or fit_hmm(
                    data[i], seed=self.seed, n_iter=self.n_iter, previous=self.params[i]
                )
            except ValueError:
                # A first fit that failed twice (a refit keeps its model): the symbol stays
                # unlabelled and tries again ``refit_every`` bars later, alone.
                self.failed_fits += 1
                self.retry_at[i] = self.pushed[i] + self.refit_every
                continue
            fitted.append(i)
            windows.append(data[i])
            self.params[i] = params
            self._startprob[i] = params.startprob
            self._transmat[i] = params.transmat
            self._means[i] = params.means
            self._variances[i] = params.variances
            self._log_norm[i] = _HMM_FEATURES * _LOG_2PI + np.log(params.variances).sum(axis=1)
            self._feature_mean[i] = params.feature_mean
            self._feature_std[i] = params.feature_std
        done = np.array(fitted, dtype=np.int64)
        self.fits += done.size
        self.since_fit[done] = 0
        self.ready[done] = True
        # The forward passes a few hundred symbols at a time: a block is (m, L, K, F).
        for at in range(0, done.size, _FILTER_SLICE):
            self._filter(done[at : at + _FILTER_SLICE], windows[at : at + _FILTER_SLICE])

    def _filter(self, rows: np.ndarray, windows: list[np.ndarray]) -> None:
        """Each window filtered forward under its symbol's model, all at once: the windows
        right-aligned in one block, row r starting at ``start[r]``."""
        lengths = np.array([len(w) for w in windows])
        longest = int(lengths.max())
        block = np.zeros((rows.size, longest, _HMM_FEATURES))
        for r, w in enumerate(windows):
            block[r, longest - len(w) :] = w
        start = longest - lengths
        logb = self._logb(rows, block)  # (m, L, K)
        alpha = self._startprob[rows].copy()
        for t in range(int(start.min()), longest):
            live = start <= t
            prior = np.where(
                (start == t)[:, None],
                self._startprob[rows],
                np.einsum("nk,nkj->nj", alpha, self._transmat[rows]),
            )
            alpha[live] = _forward_step(prior[live], logb[live, t])
        self.alpha[rows] = alpha


class Hysteresis:
    """Labels that do not flicker: a new regime must lead for ``min_dwell`` consecutive
    bars, or be at least ``strong`` probable, before the label changes."""

    def __init__(self, n: int, *, min_dwell: int = 3, strong: float = 0.85) -> None:
        self.min_dwell = min_dwell
        self.strong = strong
        self.codes = np.full(n, REGIME_UNKNOWN, dtype=np.uint8)
        self._candidate = np.full(n, REGIME_UNKNOWN, dtype=np.uint8)
        self._run = np.zeros(n, dtype=np.int64)

    def update(self, mask: np.ndarray, probs: np.ndarray, ready: np.ndarray) -> np.ndarray:
        live = mask & ready
        if not live.any():
            return self.codes
        top = probs.argmax(axis=1).astype(np.uint8)
        best = probs[np.arange(len(top)), top]
        unknown = live & (self.codes == REGIME_UNKNOWN)
        self.codes[unknown] = top[unknown]
        same = live & (top == self.codes)
        self._run[same] = 0
        differ = live & ~same & ~unknown
        continuing = differ & (top == self._candidate)
        self._run[continuing] += 1
        fresh = differ & ~continuing
        self._candidate[fresh] = top[fresh]
        self._run[fresh] = 1
        switch = differ & ((self._run >= self.min_dwell) | (best >= self.strong))
        self.codes[switch] = top[switch]
        self._run[switch] = 0
        return self.codes

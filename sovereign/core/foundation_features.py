"""The causal bar features the foundation model reads, in batch and streaming form.

`sovereign.core.foundation` describes the features and their standardisation; this module
computes them, so the model, its checkpoints and its streaming inference stay apart from
the feature arithmetic.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = [
    "FEATURE_NAMES",
    "N_FEATURES",
    "FeatureState",
    "feature_matrix",
    "standardize",
]

FEATURE_NAMES: tuple[str, ...] = ("log_return", "log_vol", "log_volume_rel", "volume_known")
N_FEATURES = len(FEATURE_NAMES)

VAR_FLOOR = 1e-12
# Columns of the raw feature matrix, by name, for readability below.
RET_COLUMN, LOGVOL_COLUMN, VOLREL_COLUMN, KNOWN_COLUMN = range(N_FEATURES)


def _ewm_adjusted(x: np.ndarray, span: int) -> np.ndarray:
    # pandas' adjust=True EWMA is exactly the bias-corrected recursion FeatureState runs.
    return pd.Series(x).ewm(span=span, adjust=True).mean().to_numpy(dtype=np.float64)


def feature_matrix(
    close: np.ndarray,
    volume: np.ndarray | None = None,
    *,
    vol_span: int = 20,
    volume_span: int = 20,
) -> np.ndarray:
    """Compute the raw causal features of one symbol's bars.

    Parameters
    ----------
    close
        Closes in bar order, shape (T,). Bars whose close is not a positive finite number
        are skipped: their row is NaN and they do not advance the state.
    volume
        Volumes, shape (T,); NaN or negative means unknown. None means all unknown.
    vol_span, volume_span
        EWMA spans (see :class:`~sovereign.core.foundation.FoundationConfig`).

    Returns
    -------
    np.ndarray
        float64 (T, N_FEATURES) in the order of :data:`FEATURE_NAMES`. ``log_vol`` is
        NaN on the first valid bar. Row t depends only on bars 0..t.
    """
    close = np.asarray(close, dtype=np.float64)
    t_len = close.shape[0]
    volume = np.full(t_len, np.nan) if volume is None else np.asarray(volume, dtype=np.float64)
    if volume.shape != close.shape:
        raise ValueError(f"close {close.shape} and volume {volume.shape} differ in shape")
    out = np.full((t_len, N_FEATURES), np.nan)
    with np.errstate(invalid="ignore"):
        idx = np.flatnonzero(np.isfinite(close) & (close > 0))
    if idx.size == 0:
        return out
    c = close[idx]
    k = idx.size
    ret = np.zeros(k)
    ret[1:] = np.log(c[1:] / c[:-1])
    log_vol = np.full(k, np.nan)
    if k > 1:
        log_vol[1:] = 0.5 * np.log(_ewm_adjusted(ret[1:] ** 2, vol_span) + VAR_FLOOR)
    v = volume[idx]
    with np.errstate(invalid="ignore"):
        known = np.isfinite(v) & (v >= 0)
    rel = np.zeros(k)
    u = np.log1p(v[known])
    if u.size > 1:
        # Relative to the average BEFORE this bar: a spike should read as a surprise.
        rel_known = np.zeros(u.size)
        rel_known[1:] = u[1:] - _ewm_adjusted(u, volume_span)[:-1]
        rel[known] = rel_known
    out[idx] = np.column_stack([ret, log_vol, rel, known.astype(np.float64)])
    return out


class FeatureState:
    """Streaming :func:`feature_matrix` for N symbols at once.

    Parameters
    ----------
    n
        Number of symbols.
    vol_span, volume_span
        EWMA spans (see :class:`~sovereign.core.foundation.FoundationConfig`).
    """

    def __init__(self, n: int, *, vol_span: int = 20, volume_span: int = 20) -> None:
        self.n = n
        self._decay_vol = 1.0 - 2.0 / (vol_span + 1)
        self._decay_volume = 1.0 - 2.0 / (volume_span + 1)
        self.reset()

    def reset(self) -> None:
        """Forget every bar seen."""
        n = self.n
        self.count = np.zeros(n, dtype=np.int64)
        self.prev_close = np.full(n, np.nan)
        # Bias-corrected EWMAs are sum / weight, each decayed then incremented.
        self._var_sum = np.zeros(n)
        self._var_weight = np.zeros(n)
        self.volume_count = np.zeros(n, dtype=np.int64)
        self._volume_sum = np.zeros(n)
        self._volume_weight = np.zeros(n)

    def update(
        self, mask: np.ndarray, close: np.ndarray, volume: np.ndarray | None = None
    ) -> np.ndarray:
        """Consume one bar time and return the raw features of the symbols that moved.

        Parameters
        ----------
        mask
            bool (N,): True where the symbol has a bar now. A masked-in symbol whose
            close is not a positive finite number is treated as masked out.
        close
            float64 (N,).
        volume
            float64 (N,); NaN or negative means unknown. None means all unknown.

        Returns
        -------
        np.ndarray
            float64 (N, N_FEATURES); rows of symbols that did not advance are NaN.
        """
        close = np.asarray(close, dtype=np.float64)
        out = np.full((self.n, N_FEATURES), np.nan)
        with np.errstate(invalid="ignore"):
            rows = np.asarray(mask, dtype=bool) & np.isfinite(close) & (close > 0)
        if not rows.any():
            return out
        volume = np.full(self.n, np.nan) if volume is None else np.asarray(volume, dtype=np.float64)
        later = rows & (self.count > 0)
        ret = np.zeros(self.n)
        ret[later] = np.log(close[later] / self.prev_close[later])
        self._var_sum[later] = self._decay_vol * self._var_sum[later] + ret[later] ** 2
        self._var_weight[later] = self._decay_vol * self._var_weight[later] + 1.0
        log_vol = np.full(self.n, np.nan)
        log_vol[later] = 0.5 * np.log(self._var_sum[later] / self._var_weight[later] + VAR_FLOOR)

        with np.errstate(invalid="ignore"):
            known = rows & np.isfinite(volume) & (volume >= 0)
        u = np.zeros(self.n)
        u[known] = np.log1p(volume[known])
        rel = np.zeros(self.n)
        seen = known & (self.volume_count > 0)
        rel[seen] = u[seen] - self._volume_sum[seen] / self._volume_weight[seen]
        self._volume_sum[known] = self._decay_volume * self._volume_sum[known] + u[known]
        self._volume_weight[known] = self._decay_volume * self._volume_weight[known] + 1.0
        self.volume_count[known] += 1

        self.prev_close[rows] = close[rows]
        self.count[rows] += 1
        out[rows, RET_COLUMN] = ret[rows]
        out[rows, LOGVOL_COLUMN] = log_vol[rows]
        out[rows, VOLREL_COLUMN] = rel[rows]
        out[rows, KNOWN_COLUMN] = known[rows]
        return out


def standardize(raw: np.ndarray, mean: np.ndarray, std: np.ndarray, clip: float) -> np.ndarray:
    """Standardise raw features with fixed statistics.

    Parameters
    ----------
    raw
        (..., N_FEATURES) raw features from :func:`feature_matrix` or
        :class:`FeatureState`.
    mean, std
        (N_FEATURES,) statistics measured at training time (the flag has mean 0, std 1).
    clip
        Bound on the absolute standardised value.

    Returns
    -------
    np.ndarray
        float32, same shape; undefined values become 0 and ``log_volume_rel`` is 0 where
        the volume is unknown.
    """
    z = np.clip((raw - mean) / std, -clip, clip)
    z = np.nan_to_num(z, nan=0.0)
    z[..., VOLREL_COLUMN] = np.where(raw[..., KNOWN_COLUMN] > 0, z[..., VOLREL_COLUMN], 0.0)
    return z.astype(np.float32)

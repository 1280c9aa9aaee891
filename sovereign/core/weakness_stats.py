"""The statistics of the weakness analyser: its one-sided tests of "the slice is worse
than the rest" and the Benjamini-Hochberg false-discovery control over them."""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import stats

__all__ = ["benjamini_hochberg", "fisher_less", "mean_or_nan", "welch_less", "welch_less_many"]

# A mean-return gap this small relative to the returns themselves is floating-point noise.
_ROUNDING_GAP = 1e-12


def mean_or_nan(x: np.ndarray) -> float:
    """The mean of ``x``; NaN when it is empty."""
    return float(np.mean(x)) if len(x) else math.nan


def benjamini_hochberg(p_values: np.ndarray) -> np.ndarray:
    """Return Benjamini-Hochberg q-values.

    With the p-values sorted ascending, ``q_(i) = min over j >= i of p_(j) * m / j``
    (ranks from 1), capped at 1, returned in the input order. Rejecting every hypothesis
    with ``q <= alpha`` keeps the expected false discovery rate at or below ``alpha`` for
    independent or positively dependent tests.

    Parameters
    ----------
    p_values
        1-D p-values in [0, 1]. NaN counts as 1: an undefined test is no evidence.

    Returns
    -------
    np.ndarray
        The q-values (float), same shape as the input.
    """
    p = np.asarray(p_values, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"p-values must be 1-D, got shape {p.shape}")
    p = np.where(np.isnan(p), 1.0, p)
    m = len(p)
    if m == 0:
        return p
    order = np.argsort(p, kind="stable")
    scaled = p[order] * m / np.arange(1, m + 1)
    q_sorted = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
    q = np.empty(m)
    q[order] = q_sorted
    return q


def welch_less(inside: np.ndarray, outside: np.ndarray) -> tuple[float, float]:
    # With (near-)constant returns the two means differ only by rounding, and the variances
    # are rounding noise too, so scipy would call a 1e-18 gap hugely significant.
    scale = max(float(np.max(np.abs(inside))), float(np.max(np.abs(outside))))
    if abs(float(np.mean(inside)) - float(np.mean(outside))) <= _ROUNDING_GAP * scale:
        return math.nan, 1.0
    # Scipy warns about precision loss on nearly constant data; a NaN p-value is handled
    # below, so the warning is noise here.
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.ttest_ind(inside, outside, equal_var=False, alternative="less")
    p = float(res.pvalue)
    return float(res.statistic), (p if math.isfinite(p) else 1.0)


def welch_less_many(returns: np.ndarray, masks: np.ndarray) -> list[tuple[float, float]]:
    """``welch_less`` for many slices at once: the statistics for every slice in a few
    array operations and one vectorised t-distribution call (scipy's per-call overhead
    was most of an analysis)."""
    x = returns
    n_in = masks.sum(axis=1).astype(np.float64)
    n_out = x.size - n_in
    s_in = masks @ x
    ss_in = masks @ (x * x)
    total, total_sq = float(x.sum()), float((x * x).sum())
    with np.errstate(all="ignore"):
        m_in, m_out = s_in / n_in, (total - s_in) / n_out
        v_in = (ss_in - n_in * m_in * m_in) / (n_in - 1)
        v_out = ((total_sq - ss_in) - n_out * m_out * m_out) / (n_out - 1)
        v_in, v_out = np.maximum(v_in, 0.0), np.maximum(v_out, 0.0)
        a, b = v_in / n_in, v_out / n_out
        t = (m_in - m_out) / np.sqrt(a + b)
        df = (a + b) ** 2 / (a * a / (n_in - 1) + b * b / (n_out - 1))
        p = stats.t.cdf(t, df)
    scale = float(np.max(np.abs(x))) if x.size else 0.0
    out: list[tuple[float, float]] = []
    for i in range(masks.shape[0]):
        # Near-constant returns: the means differ by rounding only (see welch_less).
        if abs(m_in[i] - m_out[i]) <= _ROUNDING_GAP * scale or not math.isfinite(p[i]):
            out.append((math.nan, 1.0))
        else:
            out.append((float(t[i]), float(p[i])))
    return out


def fisher_less(wins_in: int, n_in: int, wins_out: int, n_out: int) -> tuple[float, float]:
    table = [[wins_in, n_in - wins_in], [wins_out, n_out - wins_out]]
    with np.errstate(all="ignore"):
        res = stats.fisher_exact(table, alternative="less")
    p = float(res.pvalue)
    return float(res.statistic), (min(p, 1.0) if math.isfinite(p) else 1.0)

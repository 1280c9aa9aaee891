"""Row checks for bars that arrive at run time."""

from __future__ import annotations

import numpy as np


def clean_rows(
    o: np.ndarray, h: np.ndarray, lo: np.ndarray, c: np.ndarray, v: np.ndarray
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Vectorised row checks of a batch: a boolean ``good`` mask and one mask per reason.

    The feed validates data when it loads it; this is the shard's own gate for bars that
    arrive from anywhere else (live feeds, other actors), so a bad bar never reaches the
    indicators.
    """
    with np.errstate(invalid="ignore"):
        nan_price = ~(np.isfinite(o) & np.isfinite(h) & np.isfinite(lo) & np.isfinite(c))
        nonpositive = ~nan_price & ((o <= 0) | (h <= 0) | (lo <= 0) | (c <= 0))
        high_lt_low = ~nan_price & (h < lo)
        outside = ~nan_price & ((o < lo) | (o > h) | (c < lo) | (c > h))
        negative_volume = v < 0
    reasons = {
        "nan_price": nan_price,
        "nonpositive_price": nonpositive,
        "high_lt_low": high_lt_low,
        "open_or_close_outside_range": outside & ~high_lt_low,
        "negative_volume": negative_volume,
    }
    bad = nan_price | nonpositive | high_lt_low | outside | negative_volume
    return ~bad, reasons

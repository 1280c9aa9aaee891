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
        # The usual case first, in one pass: every comparison with a NaN is False, and a
        # finite high bounds the rest, so these rows are exactly the ones that pass below.
        good = np.isfinite(h) & (lo > 0) & (lo <= h) & (o >= lo) & (o <= h) & (c >= lo) & (c <= h)
        good &= ~(v < 0)
        if good.all():
            return good, {}
        nan_price = ~(np.isfinite(o) & np.isfinite(h) & np.isfinite(lo) & np.isfinite(c))
        bad = nan_price.copy()
        nonpositive = ~bad & ((o <= 0) | (h <= 0) | (lo <= 0) | (c <= 0))
        bad |= nonpositive
        high_lt_low = ~bad & (h < lo)
        bad |= high_lt_low
        outside = ~bad & ((o < lo) | (o > h) | (c < lo) | (c > h))
        bad |= outside
        negative_volume = ~bad & (v < 0)
        bad |= negative_volume
    # Each bad row is counted once, under the first reason that applies.
    reasons = {
        "nan_price": nan_price,
        "nonpositive_price": nonpositive,
        "high_lt_low": high_lt_low,
        "open_or_close_outside_range": outside,
        "negative_volume": negative_volume,
    }
    return ~bad, reasons

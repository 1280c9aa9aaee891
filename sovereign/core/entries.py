"""The strategies' entry signals, each written once over a block of bar times.

Every function takes (K, N) arrays (K bar times of N symbols) and answers (K, N): the bar
path calls it with K = 1 (``core.signals``), a speculative chunk with the chunk's bars
(``core.chunks``). Whether a symbol may act on its signal (flat, nothing pending) is the
caller's: bar by bar that is the trade book's state, in a chunk the walk from trade to
trade.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def breakout_signal(
    ready: np.ndarray,
    close: np.ndarray,
    prior_high: np.ndarray,
    volume: np.ndarray,
    volume_median: np.ndarray,
) -> np.ndarray:
    """The breakout preset's entry: a close above the previous ``breakout_window`` highs on
    volume above their median, once the ATR and both windows are ``ready``. A NaN median
    (not taken at that bar) never signals."""
    with np.errstate(invalid="ignore"):
        return ready & (close > prior_high) & (volume > volume_median)


@dataclass(frozen=True, slots=True)
class BaselineSignal:
    """The baseline strategy's entry conditions at each bar and symbol (K, n)."""

    fire: np.ndarray  # bool: every condition holds (whether the symbol is flat aside)
    # bool: every condition but the volume holds, and the volume percentile is unknown
    # (the strategy counts these: an entry blocked for want of volume data)
    no_volume: np.ndarray
    strength: np.ndarray  # the breakout's strength in ATRs, clipped to [0, 1]
    confidence: np.ndarray  # ``transparent_confidence`` of the entry


def baseline_signal(
    *,
    ready: np.ndarray,
    regime: np.ndarray,
    entry_codes: np.ndarray,
    close: np.ndarray,
    prior_high: np.ndarray,
    atr: np.ndarray,
    volume_pct: np.ndarray,
    volume_ready: np.ndarray,
    sr_score: np.ndarray,
    volume_confirmation: bool,
    volume_threshold: float,
) -> BaselineSignal:
    """The baseline strategy's entry (``core.signals``' module doc): the indicators
    ``ready``, the symbol's regime one of ``entry_codes``, a close above the previous
    highs and, with volume confirmation, a known volume percentile at or above the
    threshold; and its confidence."""
    with np.errstate(invalid="ignore"):
        in_regime = (regime[..., None] == entry_codes).any(axis=-1)
        base = ready & in_regime & (close > prior_high)
        if not base.any():  # the usual bar: nothing to size, nothing to count
            nothing = np.zeros(close.shape)
            return BaselineSignal(base, base, nothing, nothing)
        if volume_confirmation:
            known = volume_ready & ~np.isnan(volume_pct)
            no_volume = base & ~known
            fire = base & known & (volume_pct >= volume_threshold)
            volume_term = np.where(np.isnan(volume_pct), 50.0, volume_pct)
        else:
            no_volume = np.zeros_like(base)
            fire = base
            volume_term = np.full(close.shape, 50.0)
        strength = np.clip(np.where(atr > 0, (close - prior_high) / atr, 0.0), 0.0, 1.0)
    confidence = transparent_confidence(strength, volume_term, sr_score.astype(np.int64))
    return BaselineSignal(fire, no_volume, strength, confidence)


def transparent_confidence(
    strength: np.ndarray, volume_pct: np.ndarray, sr: np.ndarray
) -> np.ndarray:
    """The entry's confidence until the learner calibrates it (``core.signals``' formula)."""
    return np.clip(
        0.30 + 0.30 * strength + 0.25 * volume_pct / 100.0 + 0.15 * (1.0 - np.minimum(sr, 4) / 4.0),
        0.0,
        1.0,
    )


Features = dict[str, float | int | str | bool | None]


def entry_features(
    atr: float,
    close: float,
    volume_pct: float,
    sr: int,
    strength: float,
    regime_probability: float | None,
    minute: int,
    weekday: int,
    size_scale: float,
    rules_version: int,
    acted: tuple[str, ...] = (),
) -> Features:
    """What a baseline entry records of its signal bar (its trade's ``features``): the
    bar path's and a chunk's entries alike."""
    return {
        "atr": atr,
        "atr_pct": atr / close * 100.0,
        "volume_pct": None if np.isnan(volume_pct) else volume_pct,
        "sr_score": sr,
        "breakout_strength": strength,
        "regime_probability": regime_probability,
        "minute_of_day": minute,
        "day_of_week": weekday,
        "size_scale": size_scale,
        "rules_version": rules_version,
        **({"rules_acting": ",".join(acted)} if acted else {}),
    }


def breakout_features(atr: float, close: float) -> Features:
    """What a breakout-preset entry records of its signal bar (bar path and chunk alike)."""
    return {"atr": atr, "atr_pct": atr / close * 100.0}

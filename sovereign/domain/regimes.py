"""Regime names and their codes."""

from __future__ import annotations

from typing import Literal

REGIME_NAMES: tuple[str, ...] = ("TrendingUp", "TrendingDown", "Ranging", "Volatile")
"""Regime labels, indexed by their code. Code 255 means "not yet known" (warm-up)."""
REGIME_UNKNOWN = 255

RegimeName = Literal["TrendingUp", "TrendingDown", "Ranging", "Volatile", "Unknown"]


def regime_name(code: int) -> str:
    """Name of a regime code; ``Unknown`` for the warm-up code or anything out of range."""
    return REGIME_NAMES[code] if 0 <= code < len(REGIME_NAMES) else "Unknown"

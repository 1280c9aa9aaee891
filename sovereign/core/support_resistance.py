"""The support/resistance score, vectorised across the symbols of a shard.

It follows the conventions of the streaming indicators (``core.indicators``): one
``update`` per bar time for all N symbols with a ``mask``, ``value``/``ready`` arrays of
length N, ``block`` for K bar times at once (a recursion: bar after bar).
"""

from __future__ import annotations

import numpy as np

from sovereign.core.indicators import _bar_after_bar, _check_size, _Ring

__all__ = ["SupportResistance"]


class SupportResistance:
    """Integer support/resistance score: how many remembered swing levels sit near the close.

    A swing high at bar ``j`` is a high that is the strict maximum of the highs in
    ``[j - swing, j + swing]``, and a swing low is a low that is the strict minimum of the
    lows in that range. Ties disqualify a bar. A swing is only known (confirmed) at bar
    ``j + swing``, so there is no look-ahead. Each symbol remembers its last ``memory``
    confirmed levels, highs and lows together, oldest evicted first. When a bar is both
    a swing high and a swing low, the high is remembered first.

    The score at bar ``t`` is the number of remembered levels ``L``, including any
    confirmed at ``t``, with ``|L - close_t| <= band_atr * ATR_t``. A score of 0 means
    clear air, and 3 or more means a clustered, well-tested level.

    A masked-in row with a NaN high or low counts as no bar. A row with a bar but a
    non-finite close or ATR still updates the swing state, but it has score 0 and is not
    ready.

    Parameters
    ----------
    n
        Number of symbols.
    swing
        Bars on each side of a swing point. Default 3.
    memory
        Number of swing levels remembered per symbol. Default 10.
    band_atr
        Half-width of the band around the close, in ATRs. Default 0.5.

    Attributes
    ----------
    value : np.ndarray
        The score as float64, NaN where not ready.
    score : np.ndarray
        The score as int16, 0 where not ready.
    ready : np.ndarray
        True where the score was computed with a finite close and ATR.
    """

    def __init__(self, n: int, swing: int = 3, memory: int = 10, band_atr: float = 0.5) -> None:
        _check_size("n", n, 0)
        _check_size("swing", swing, 1)
        _check_size("memory", memory, 1)
        if not band_atr >= 0.0:
            raise ValueError(f"band_atr must be >= 0, got {band_atr!r}")
        self.n = n
        self.swing = swing
        self.memory = memory
        self.band_atr = float(band_atr)
        self.value = np.full(n, np.nan)
        self.score = np.zeros(n, dtype=np.int16)
        self.ready = np.zeros(n, dtype=bool)
        # Highs sit in columns [0, n) and negated lows in [n, 2n) of one buffer, so a
        # single strict-maximum test finds both kinds of swing.
        self._swings = _Ring(2 * n, 2 * swing + 1)
        # Empty slots stay NaN and never fall inside a band, so scoring ignores the count.
        self._levels = _Ring(n, memory)
        self._columns = np.arange(2 * n)

    def reset(self) -> None:
        """Forget all history."""
        self.value.fill(np.nan)
        self.score.fill(0)
        self.ready.fill(False)
        self._swings.reset()
        self._levels.reset()

    def update(
        self,
        mask: np.ndarray,
        high: np.ndarray,
        low: np.ndarray,
        close: np.ndarray,
        atr: np.ndarray,
    ) -> None:
        """Advance by one bar time.

        Parameters
        ----------
        mask
            True where the symbol has a bar.
        high, low, close
            The bar's prices, float64 of length N.
        atr
            The ATR at this bar, for example `ATR.value`, NaN where unknown.
        """
        rows = np.flatnonzero(mask & np.isfinite(high + low))
        if rows.size == 0:
            return
        swings = self._swings
        both = np.concatenate((rows, rows + self.n))
        swings.push(both, np.concatenate((high[rows], -low[rows])))
        # Bar j = t - swing sits ``swing`` slots behind the newest. The test runs over all
        # columns, and only those in ``both`` are used.
        centre = swings.buf[(swings.count - (1 + self.swing)) % swings.width, self._columns]
        # The centre is counted against itself, so exactly one hit means it is strictly
        # above every other bar in the window.
        strict = (swings.buf >= centre).sum(axis=0)[both] == 1
        strict &= swings.count[both] >= swings.width
        # Two pushes, highs first, because one symbol can confirm both kinds at once.
        is_high, is_low = strict[: rows.size], strict[rows.size :]
        if is_high.any():
            self._levels.push(rows[is_high], centre[rows[is_high]])
        if is_low.any():
            self._levels.push(rows[is_low], -centre[rows[is_low] + self.n])

        band = self.band_atr * atr
        hits = (np.abs(self._levels.buf - close) <= band).sum(axis=0)[rows]
        scored = np.isfinite(close[rows]) & np.isfinite(band[rows])
        hits[~scored] = 0
        self.score[rows] = hits
        self.value[rows] = np.where(scored, hits, np.nan)
        self.ready[rows] = scored

    def block(
        self,
        present: np.ndarray,
        high: np.ndarray,
        low: np.ndarray,
        close: np.ndarray,
        atr: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``update`` at each of K bar times ((K, N) inputs, ``atr`` each bar's): the
        score as ``value`` and ``ready`` after each, (K, N). A recursion (swings are
        confirmed and remembered in turn), so bar after bar."""
        return _bar_after_bar(self, present, high, low, close, atr)

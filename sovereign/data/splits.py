"""Stock-split detection and back-adjustment of raw OHLCV prices.

Raw (unadjusted) price files show a 2:1 split as a -50% overnight "crash". Left alone,
that teaches every model downstream that a stock can halve overnight on quiet volume.
Split events come either from a splits file (``symbol,date,ratio``) or from detection.

Detection heuristic
-------------------
For each symbol and bar ``t`` (in time order, ``t-1`` being the symbol's previous bar),
with ``k`` one of the candidate ratios 2, 3, 4, 5, 10, 1.5 (forward splits) or 1/2, 1/3,
1/4, 1/5, 1/10 (reverse splits), a split of ratio ``k`` starting at bar ``t`` is reported
when all three hold:

1. the gap is a clean split: ``open[t] / close[t-1]`` is within ±4% of ``1/k``;
2. the day finishes near that level: ``close[t] / close[t-1]`` is within ±15% of ``1/k``;
3. there is no volume surge: ``volume[t] / median(volume[t-20 .. t-1]) < max(3, 1.5*k)``.
   Real crashes trade several times their usual volume; a split day does not (the
   allowance ``1.5*k`` covers vendors whose volume is not split-adjusted). When the
   day's volume is unknown (NaN) or fewer than 5 earlier bars have a known volume, the
   check is skipped and the event's evidence says so.

The open-gap test is tight because a split re-prices the opening auction mechanically;
the close test is loose because the stock still trades for a whole session afterwards.
On the bundled daily file the three real 2:1 splits have open ratios 0.4988, 0.5021
and 0.5097 and volume ratios 0.55-1.31, while the AAPL crash of 2000-09-29 has an open
ratio of 0.5269 (5.4% off 1/2) and a 22x volume surge, so it fails two tests and is
left alone. On intraday data the same rule runs bar to bar; an opening bar's usual
volume spike can then hide a split, so pass a splits file for intraday sources.

Adjustment
----------
``adjust_for_splits`` divides open/high/low/close of every bar before an event by its
ratio (the product of ratios when several events follow a bar), so history is expressed
at today's share count, as vendors' "adjusted" series are. Volume is multiplied by the
ratio only when the raw volume looks unadjusted: see :func:`volume_ratio_around`.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import msgspec
import numpy as np
import pandas as pd

from sovereign.data.validation import BAD_TS, format_ts, parse_timestamps

__all__ = [
    "CANDIDATE_RATIOS",
    "SplitEvent",
    "adjust_for_splits",
    "annotate_volume",
    "detect_splits",
    "load_splits_file",
    "volume_is_unadjusted",
    "volume_ratio_around",
]

CANDIDATE_RATIOS: tuple[float, ...] = (
    2.0,
    3.0,
    4.0,
    5.0,
    10.0,
    1.5,
    1 / 2,
    1 / 3,
    1 / 4,
    1 / 5,
    0.1,
)
OPEN_TOLERANCE = 0.04
CLOSE_TOLERANCE = 0.15
SURGE_LOOKBACK = 20
MIN_VOLUME_BARS = 5
VOLUME_WINDOW = 20
_MIN_LOG_GAP = min(abs(math.log(k)) for k in CANDIDATE_RATIOS) + math.log(1 - OPEN_TOLERANCE)
# Fraction of the way from 1 to k (in log space) the after/before volume ratio must reach
# before volume is treated as unadjusted. The plain midpoint (0.5) is too eager: volume
# often rises after a split, and the bundled AAPL 2000-06-21 split, whose volume IS
# adjusted, measures 0.505 of the way to 2. Wrongly doubling a volume history is worse
# than missing an unadjusted one, so demand three quarters of the way.
VOLUME_UNADJUSTED_FRACTION = 0.75


class SplitEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One stock split.

    Parameters
    ----------
    symbol
        The ticker.
    ts
        Bar start (int64 ns UTC) of the first bar at the new price level.
    ratio
        New shares per old share: 2.0 for a 2:1 split, 0.5 for a 1:2 reverse split.
        Prices before ``ts`` are divided by it.
    source
        ``"detected"`` by :func:`detect_splits` or ``"file"`` from a splits file.
    evidence
        Human-readable reason: the measured ratios, or the file and line.
    """

    symbol: str
    ts: int
    ratio: float
    source: Literal["detected", "file"]
    evidence: str

    def __str__(self) -> str:
        return f"{self.symbol} {format_ts(self.ts)[:10]} x{self.ratio:g} ({self.source})"


# -- DETECTION --


def _by_symbol(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return row order sorted by (symbol, ts), the sorted symbol codes and symbol names."""
    codes, names = pd.factorize(df["symbol"], sort=True)
    ts = df["ts"].to_numpy(dtype=np.int64)
    order = np.lexsort((ts, codes))
    return order, codes[order], np.asarray(names, dtype=object)


def _prior_volume_median(
    vol: np.ndarray, codes: np.ndarray, pos: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Median and count of known volumes in the previous bars of the same symbol."""
    offsets = np.arange(-SURGE_LOOKBACK, 0)
    idx = pos[:, None] + offsets[None, :]
    valid = idx >= 0
    idx_c = np.clip(idx, 0, None)
    valid &= codes[idx_c] == codes[pos][:, None]
    window = np.where(valid, vol[idx_c], np.nan)
    count = np.isfinite(window).sum(axis=1)
    med = np.full(pos.size, np.nan)
    enough = count > 0
    if enough.any():
        med[enough] = np.nanmedian(window[enough], axis=1)
    return med, count


def detect_splits(df: pd.DataFrame) -> list[SplitEvent]:
    """Detect stock splits in raw OHLCV bars.

    Parameters
    ----------
    df
        A validated frame (see :func:`sovereign.data.validation.validate_ohlcv`).

    Returns
    -------
    list[SplitEvent]
        Detected events sorted by (ts, symbol); see the module docstring for the rule.
    """
    if len(df) < 2:
        return []
    order, codes, names = _by_symbol(df)
    ts = df["ts"].to_numpy(dtype=np.int64)[order]
    opn = df["open"].to_numpy(dtype=np.float64)[order]
    close = df["close"].to_numpy(dtype=np.float64)[order]
    vol = df["volume"].to_numpy(dtype=np.float64)[order]

    pos = np.arange(1, len(ts))
    pos = pos[codes[pos] == codes[pos - 1]]
    prev_close = close[pos - 1]
    open_ratio = opn[pos] / prev_close
    close_ratio = close[pos] / prev_close

    # Cheap prefilter: no candidate band comes within _MIN_LOG_GAP of an unchanged open,
    # so ordinary bars never reach the (rows x candidates) comparison below.
    near = np.abs(np.log(open_ratio)) >= _MIN_LOG_GAP
    pos, open_ratio, close_ratio = pos[near], open_ratio[near], close_ratio[near]
    ks = np.asarray(CANDIDATE_RATIOS)
    # Open bands of the candidates do not overlap, so the nearest k in log space is the
    # only one that can pass the open test.
    dist = np.abs(np.log(open_ratio[:, None] * ks[None, :]))
    best = ks[np.argmin(dist, axis=1)]
    hit = (np.abs(open_ratio * best - 1) <= OPEN_TOLERANCE) & (
        np.abs(close_ratio * best - 1) <= CLOSE_TOLERANCE
    )
    if not hit.any():
        return []
    pos, best = pos[hit], best[hit]
    open_ratio, close_ratio = open_ratio[hit], close_ratio[hit]
    med, count = _prior_volume_median(vol, codes, pos)

    events: list[SplitEvent] = []
    for p, k, ro, rc, m, cnt in zip(pos, best, open_ratio, close_ratio, med, count, strict=True):
        limit = max(3.0, 1.5 * k)
        base = f"open/prev_close={ro:.4f} close/prev_close={rc:.4f} (1/k={1 / k:.4f})"
        v = vol[p]
        if np.isnan(v):
            note = "volume unknown: surge check skipped"
        elif cnt < MIN_VOLUME_BARS or not m > 0:
            note = f"{cnt} earlier bars with volume, median {m:g}: surge check skipped"
        else:
            surge = v / m
            if surge >= limit:
                continue
            note = f"volume {surge:.2f}x the {SURGE_LOOKBACK}-bar median (limit {limit:g}x)"
        events.append(
            SplitEvent(
                symbol=str(names[codes[p]]),
                ts=int(ts[p]),
                ratio=float(k),
                source="detected",
                evidence=f"{base}; {note}",
            )
        )
    events.sort(key=lambda e: (e.ts, e.symbol))
    return events


# -- SPLITS FILE --


def _parse_ratio(text: str) -> float:
    text = text.strip()
    if ":" in text:
        new, old = text.split(":", 1)
        ratio = float(new) / float(old)
    else:
        ratio = float(text)
    if not math.isfinite(ratio) or ratio <= 0 or ratio == 1:
        raise ValueError(f"ratio {text!r} is not a split (must be positive, finite and not 1)")
    return ratio


def load_splits_file(path: str | Path) -> list[SplitEvent]:
    """Read split events from a CSV file.

    Parameters
    ----------
    path
        CSV with the header ``symbol,date,ratio``. ``date`` is ``YYYY-MM-DD`` (the event
        starts with that day's 09:30 New York session open) or an ISO timestamp of the
        first bar at the new price level (naive times are UTC). ``ratio`` is new shares
        per old share: ``2``, ``2:1``, ``1.5``, ``3:2``, ``0.1`` or ``1:10``. Blank lines
        and lines starting with ``#`` are ignored.

    Returns
    -------
    list[SplitEvent]
        Events with ``source="file"``, sorted by (ts, symbol).

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        On a wrong header or a bad row, naming the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"splits file not found: {path}")
    events: list[SplitEvent] = []
    with path.open(newline="", encoding="utf-8") as fh:
        rows = [
            (n, row)
            for n, row in enumerate(csv.reader(fh), start=1)
            if row and any(cell.strip() for cell in row) and not row[0].lstrip().startswith("#")
        ]
    if not rows or [c.strip().lower() for c in rows[0][1]] != ["symbol", "date", "ratio"]:
        got = ",".join(rows[0][1]) if rows else "<empty file>"
        raise ValueError(f"{path}: line 1: expected header 'symbol,date,ratio', got {got!r}")
    for line, row in rows[1:]:
        where = f"{path}: line {line}"
        if len(row) != 3:
            raise ValueError(f"{where}: expected 3 fields (symbol,date,ratio), got {len(row)}")
        symbol, date, ratio_text = (cell.strip() for cell in row)
        if not symbol:
            raise ValueError(f"{where}: empty symbol")
        ts, _ = parse_timestamps(pd.Series([date], dtype="str"))
        if ts[0] == BAD_TS:
            raise ValueError(f"{where}: cannot parse date {date!r} (use YYYY-MM-DD or ISO)")
        try:
            ratio = _parse_ratio(ratio_text)
        except (ValueError, ZeroDivisionError) as exc:
            raise ValueError(f"{where}: bad ratio {ratio_text!r}: {exc}") from None
        events.append(
            SplitEvent(
                symbol=symbol,
                ts=int(ts[0]),
                ratio=ratio,
                source="file",
                evidence=f"{path.name}:{line}",
            )
        )
    events.sort(key=lambda e: (e.ts, e.symbol))
    return events


# -- ADJUSTMENT --


def volume_ratio_around(ts: np.ndarray, volume: np.ndarray, event_ts: int) -> float:
    """Median volume of the bars from ``event_ts`` on over the median of the bars before.

    Parameters
    ----------
    ts, volume
        One symbol's bars, sorted by ``ts``.
    event_ts
        Start of the first bar at the new price level.

    Returns
    -------
    float
        The after/before ratio over :data:`VOLUME_WINDOW` bars each side, or NaN when
        either side has fewer than :data:`MIN_VOLUME_BARS` known volumes or a zero median.
    """
    i = int(np.searchsorted(ts, event_ts, side="left"))
    before = volume[max(0, i - VOLUME_WINDOW) : i]
    after = volume[i : i + VOLUME_WINDOW]
    before = before[np.isfinite(before)]
    after = after[np.isfinite(after)]
    if before.size < MIN_VOLUME_BARS or after.size < MIN_VOLUME_BARS:
        return float("nan")
    b, a = float(np.median(before)), float(np.median(after))
    if b <= 0 or a <= 0:
        return float("nan")
    return a / b


def volume_is_unadjusted(volume_ratio: float, split_ratio: float) -> bool:
    """Decide whether raw volume around a split is unadjusted (shares not restated).

    An unadjusted volume series jumps by the split ratio at the event; an adjusted one
    does not. The decision needs the after/before ratio to be at least
    :data:`VOLUME_UNADJUSTED_FRACTION` of the way from 1 to ``split_ratio`` in log
    space; an unknown ratio (NaN) is taken as adjusted, which is the vendors' norm.
    """
    if not math.isfinite(volume_ratio) or volume_ratio <= 0:
        return False
    return math.log(volume_ratio) / math.log(split_ratio) >= VOLUME_UNADJUSTED_FRACTION


def _events_by_symbol(
    df: pd.DataFrame, events: Sequence[SplitEvent]
) -> list[tuple[np.ndarray, list[SplitEvent]]]:
    """Pair each symbol's row positions (sorted by ts) with its events (sorted by ts)."""
    groups = df.groupby("symbol", sort=False).indices
    ts_all = df["ts"].to_numpy(dtype=np.int64)
    by_symbol: dict[str, list[SplitEvent]] = {}
    for ev in events:
        by_symbol.setdefault(ev.symbol, []).append(ev)
    pairs = []
    for symbol, evs in by_symbol.items():
        rows = groups.get(symbol)
        if rows is not None:
            rows = rows[np.argsort(ts_all[rows], kind="stable")]
            pairs.append((rows, sorted(evs, key=lambda e: e.ts)))
    return pairs


def annotate_volume(df: pd.DataFrame, events: Sequence[SplitEvent]) -> list[SplitEvent]:
    """Append the volume decision of :func:`adjust_for_splits` to each event's evidence.

    Events for symbols not in ``df`` are dropped, because nothing was adjusted for them.
    """
    ts_all = df["ts"].to_numpy(dtype=np.int64)
    vol_all = df["volume"].to_numpy(dtype=np.float64)
    out: list[SplitEvent] = []
    for rows, evs in _events_by_symbol(df, events):
        for ev in evs:
            vr = volume_ratio_around(ts_all[rows], vol_all[rows], ev.ts)
            if volume_is_unadjusted(vr, ev.ratio):
                note = f"volume after/before {vr:.2f}: unadjusted, multiplied by {ev.ratio:g}"
            elif math.isfinite(vr):
                note = f"volume after/before {vr:.2f}: already adjusted, left as is"
            else:
                note = "too little volume around the event to judge: left as is"
            out.append(msgspec.structs.replace(ev, evidence=f"{ev.evidence}; {note}"))
    out.sort(key=lambda e: (e.ts, e.symbol))
    return out


def adjust_for_splits(df: pd.DataFrame, events: Sequence[SplitEvent]) -> pd.DataFrame:
    """Back-adjust prices (and, where needed, volumes) for split events.

    Parameters
    ----------
    df
        A validated frame (columns ``ts, symbol, open, high, low, close, volume``).
    events
        Split events; events for symbols not in ``df`` are ignored.

    Returns
    -------
    pd.DataFrame
        A new frame in the same row order. For every event, open/high/low/close of the
        symbol's bars with ``ts < event.ts`` are divided by ``event.ratio`` (products
        over several events). Volume of those bars is multiplied by the ratio only when
        :func:`volume_is_unadjusted` judges the raw volume around that event unadjusted.
    """
    out = df.copy()
    if not events or out.empty:
        return out
    ts_all = out["ts"].to_numpy(dtype=np.int64)
    vol_all = out["volume"].to_numpy(dtype=np.float64)
    price_factor = np.ones(len(out))
    volume_factor = np.ones(len(out))
    for rows, evs in _events_by_symbol(out, events):
        ts, vol = ts_all[rows], vol_all[rows]
        ev_ts = np.array([e.ts for e in evs], dtype=np.int64)
        ratios = np.array([e.ratio for e in evs])
        vol_ratios = np.array(
            [
                e.ratio
                if volume_is_unadjusted(volume_ratio_around(ts, vol, e.ts), e.ratio)
                else 1.0
                for e in evs
            ]
        )
        # suffix[j] is the product of the ratios of events j..; a bar preceded by j events
        # is divided by it.
        suffix = np.append(np.cumprod(ratios[::-1])[::-1], 1.0)
        vol_suffix = np.append(np.cumprod(vol_ratios[::-1])[::-1], 1.0)
        n_before = np.searchsorted(ev_ts, ts, side="right")
        price_factor[rows] = suffix[n_before]
        volume_factor[rows] = vol_suffix[n_before]
    for col in ("open", "high", "low", "close"):
        out[col] = out[col].to_numpy(dtype=np.float64) / price_factor
    out["volume"] = vol_all * volume_factor
    return out

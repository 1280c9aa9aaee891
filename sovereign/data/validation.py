"""Row-level validation of OHLCV bars, and the timestamp contract every loader follows.

A validated frame has the columns ``ts`` (int64 ns since the Unix epoch, UTC, the bar
START), ``symbol`` (str), ``open``, ``high``, ``low``, ``close`` and ``volume`` (float64;
a NaN volume means "unknown"). A timestamp that could not be parsed is carried as
:data:`BAD_TS`, the int64 minimum, which is also what ``NaT`` becomes when a datetime64
column is viewed as int64, so either form of "no timestamp" is rejected the same way.

Validation never fixes a row: it either accepts it unchanged or rejects it under exactly
one reason, the first that matches in :data:`REJECT_REASONS` order, and keeps a few
rendered examples per reason so a human can see what was dropped.
"""

from __future__ import annotations

import re

import msgspec
import numpy as np
import pandas as pd

__all__ = [
    "BAD_TS",
    "DAILY_INTERVAL_S",
    "INFO_COUNTERS",
    "MAX_SYMBOL_BYTES",
    "OHLCV_COLUMNS",
    "REJECT_REASONS",
    "ValidationReport",
    "format_ts",
    "parse_timestamps",
    "session_open_ns",
    "validate_ohlcv",
]

BAD_TS: int = int(np.iinfo(np.int64).min)
"""Sentinel for a timestamp that could not be parsed (equal to ``NaT`` viewed as int64)."""

OHLCV_COLUMNS: tuple[str, ...] = ("ts", "symbol", "open", "high", "low", "close", "volume")

DAILY_INTERVAL_S: int = 23_400
"""Length of a daily bar: the 09:30-16:00 New York regular session."""

REJECT_REASONS: tuple[str, ...] = (
    "bad_timestamp",
    "missing_symbol",
    "symbol_too_long",
    "bad_symbol",
    "nan_price",
    "nonpositive_price",
    "high_lt_low",
    "open_outside_range",
    "close_outside_range",
    "negative_volume",
    "infinite_volume",
    "duplicate_timestamp",
    "out_of_order_timestamp",
    "price_spike",
)
"""Rejection reasons in the order they are tested; a row counts under the first match."""

SPIKE_MIN_MOVE: float = float(np.log(2.0))
"""A quarantined spike at least doubles or halves the close of the bar before it, and
moves back by as much at the bar after it. Real one-bar reversals of 20-30 % happen in
crises (bank stocks in January 2009); a doubling or halving undone at the next bar is a
bad print (a decimal shift, a broken trade)."""
SPIKE_SIGMAS: float = 10.0
"""... and both moves exceed this many robust standard deviations of the symbol's bar-to-
bar log returns (1.4826 x their median absolute value over the file)."""

INFO_COUNTERS: tuple[str, ...] = ("volume_missing",)

MAX_SYMBOL_BYTES: int = 32
"""Longest accepted symbol, in bytes. Real tickers (``BRK.B``, ``EURUSD=X``, ``7203.T``)
are far shorter; symbols travel between actors as fixed-width byte columns, so one
runaway cell would otherwise widen every bar message of the run (or exceed the wire
format's limit)."""

# ASCII letters and digits, the punctuation tickers use across venues and vendors
# (BRK.B, BRK-B, BRK/B, ^GSPC, ES=F, M&M.NS, EUR/USD) and single inner spaces (IB writes
# class shares as "BRK B"). Nothing a CSV, an HTML report or a terminal would mangle, and
# no leading or trailing space, which would make " AAPL" a second, distinct AAPL.
_SYMBOL_RE = re.compile(r"[A-Za-z0-9._/^=+:&-]+(?: [A-Za-z0-9._/^=+:&-]+)*")

MAX_SAMPLES = 5

_NEW_YORK = "America/New_York"
_SESSION_OPEN = pd.Timedelta(hours=9, minutes=30)
# Bounds of int64 nanoseconds; a typo such as year 0202 must become a bad row, not a crash.
_MIN_NS_TS = pd.Timestamp("1678-01-01")
_MAX_NS_TS = pd.Timestamp("2261-12-31")


class ValidationReport(msgspec.Struct, frozen=True, kw_only=True):
    """What validation accepted and rejected.

    Parameters
    ----------
    total_rows
        Rows in the input.
    accepted_rows
        Rows in the output frame.
    rejected
        Rejected rows per reason (see :data:`REJECT_REASONS`); only reasons with a count
        above zero appear.
    info
        Informational counters for accepted rows (``volume_missing``: NaN volume); only
        counters above zero appear.
    samples
        Up to five rendered example rows per rejection reason or info counter. ``row N``
        is the 0-based position in the input frame (for a CSV read by the loader, data
        line N, i.e. file line N + 2).
    """

    total_rows: int
    accepted_rows: int
    rejected: dict[str, int]
    info: dict[str, int]
    samples: dict[str, list[str]]

    @property
    def rejected_rows(self) -> int:
        """Total number of rejected rows."""
        return self.total_rows - self.accepted_rows

    def summary(self) -> str:
        """Return a readable multi-line summary with the counts and example rows."""
        lines = [
            f"validated {self.total_rows:,} rows: {self.accepted_rows:,} accepted, "
            f"{self.rejected_rows:,} rejected"
        ]
        for reason, count in self.rejected.items():
            lines.append(f"  rejected {reason}: {count:,}")
            lines.extend(f"    {s}" for s in self.samples.get(reason, []))
        for name, count in self.info.items():
            lines.append(f"  info {name}: {count:,}")
            lines.extend(f"    {s}" for s in self.samples.get(name, []))
        return "\n".join(lines)


# -- TIMESTAMPS --


def format_ts(ts: int) -> str:
    """Render an int64 ns UTC timestamp as ``YYYY-MM-DDTHH:MM:SSZ`` (``NaT`` if bad)."""
    if ts == BAD_TS:
        return "NaT"
    return pd.Timestamp(ts, unit="ns", tz="UTC").strftime("%Y-%m-%dT%H:%M:%SZ")


def session_open_ns(dates: pd.DatetimeIndex) -> np.ndarray:
    """Return 09:30 America/New_York on each (naive, midnight) date as int64 ns UTC.

    09:30 never falls in a daylight-saving transition (those happen at 02:00), so the
    localisation is never ambiguous or non-existent.
    """
    local = (pd.DatetimeIndex(dates) + _SESSION_OPEN).tz_localize(_NEW_YORK)
    return local.tz_convert("UTC").as_unit("ns").asi8.copy()


def _to_ns(idx: pd.DatetimeIndex) -> np.ndarray:
    """Convert a (tz-naive UTC) DatetimeIndex of any unit to int64 ns, out-of-range → BAD_TS."""
    idx = idx.where((idx >= _MIN_NS_TS) & (idx <= _MAX_NS_TS))
    return idx.as_unit("ns").asi8.copy()


def _parse_strings(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    if len(values) == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=bool)
    # Timestamps repeat across symbols, so parse each distinct string once.
    codes, uniques = pd.factorize(values)
    text = pd.Series(np.asarray(uniques, dtype=object), dtype="str").str.strip()
    ns = np.full(len(text), BAD_TS, dtype=np.int64)
    is_date = np.zeros(len(text), dtype=bool)

    date_like = (text.str.len() == 10).to_numpy(dtype=bool, na_value=False)
    if date_like.any():
        parsed = pd.to_datetime(text[date_like], format="%Y-%m-%d", errors="coerce")
        ok = parsed.notna().to_numpy()
        idx = np.flatnonzero(date_like)[ok]
        dates = pd.DatetimeIndex(parsed[ok])
        in_range = (dates >= _MIN_NS_TS) & (dates <= _MAX_NS_TS)
        ns[idx[in_range]] = session_open_ns(dates[in_range])
        is_date[idx[in_range]] = True
    rest = ~date_like
    if rest.any():
        # utc=True converts offsets to UTC and localises naive values as UTC.
        parsed = pd.to_datetime(text[rest], format="ISO8601", utc=True, errors="coerce")
        ns[rest] = _to_ns(pd.DatetimeIndex(parsed).tz_localize(None))

    ns_full = np.where(codes >= 0, ns[np.maximum(codes, 0)], BAD_TS)
    date_full = (codes >= 0) & is_date[np.maximum(codes, 0)]
    return ns_full.astype(np.int64), date_full


def parse_timestamps(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Parse a column of bar timestamps into int64 ns UTC bar starts.

    Parameters
    ----------
    values
        Strings, datetime64 (naive or tz-aware), ``datetime.date`` objects or integers.

        * ``YYYY-MM-DD`` strings and ``datetime.date`` values are daily bars; the bar
          starts at 09:30 America/New_York on that date.
        * ISO 8601 strings with ``Z`` or an offset are intraday bar starts, converted to
          UTC. Naive ISO strings with a time of day are taken to be UTC already.
        * A tz-aware datetime64 column is converted to UTC. A naive datetime64 column is
          taken as daily dates when every value is exactly midnight, else as UTC times.
        * Integers are ns since the Unix epoch, UTC.

    Returns
    -------
    tuple[np.ndarray, np.ndarray]
        ``ts`` (int64 ns, :data:`BAD_TS` where a value could not be parsed) and
        ``is_date`` (bool, True where the value was a date-only daily bar).
    """
    n = len(values)
    dtype = values.dtype
    if isinstance(dtype, pd.DatetimeTZDtype):
        idx = pd.DatetimeIndex(values).tz_convert("UTC").tz_localize(None)
        return _to_ns(idx), np.zeros(n, dtype=bool)
    if pd.api.types.is_datetime64_dtype(dtype):
        idx = pd.DatetimeIndex(values)
        valid = idx.notna()
        if valid.any() and (idx[valid] == idx[valid].normalize()).all():
            ns = np.full(n, BAD_TS, dtype=np.int64)
            dates = idx[valid]
            in_range = (dates >= _MIN_NS_TS) & (dates <= _MAX_NS_TS)
            pos = np.flatnonzero(valid)[in_range]
            ns[pos] = session_open_ns(dates[in_range])
            is_date = np.zeros(n, dtype=bool)
            is_date[pos] = True
            return ns, is_date
        return _to_ns(idx), np.zeros(n, dtype=bool)
    if pd.api.types.is_integer_dtype(dtype):
        ints = values.astype("Int64")
        return ints.fillna(BAD_TS).to_numpy(dtype=np.int64), np.zeros(n, dtype=bool)
    # datetime.date objects (pyarrow date32 columns) render as YYYY-MM-DD, so they
    # take the daily path along with strings.
    return _parse_strings(values.astype("str"))


def _ts_column(col: pd.Series) -> np.ndarray:
    """Return the ``ts`` column as int64 ns with :data:`BAD_TS` for NaT/NA."""
    if isinstance(col.dtype, pd.DatetimeTZDtype):
        return _to_ns(pd.DatetimeIndex(col).tz_convert("UTC").tz_localize(None))
    if pd.api.types.is_datetime64_dtype(col.dtype):
        return _to_ns(pd.DatetimeIndex(col))
    if col.hasnans:
        return col.astype("Int64").fillna(BAD_TS).to_numpy(dtype=np.int64)
    return col.to_numpy(dtype=np.int64)


# -- VALIDATION --


def _render_row(
    i: int, sym: str, ts: str, o: float, h: float, lo: float, c: float, v: float
) -> str:
    def num(x: float) -> str:
        if np.isfinite(x) and x == int(x) and abs(x) < 1e15:
            return str(int(x))
        return f"{x:.6g}"

    return f"row {i} {sym} {ts} o={num(o)} h={num(h)} l={num(lo)} c={num(c)} v={num(v)}"


def _shown_ts(ts: int, written: object) -> str:
    """A timestamp as a sample line shows it; an unparsable one with the text it came from."""
    if ts != BAD_TS or written is None or (not isinstance(written, str) and pd.isna(written)):
        return format_ts(ts)
    text = ascii(str(written))
    return f"NaT from {text[:40]}{'...' if len(text) > 40 else ''}"


def _order_checks(ts: np.ndarray, codes: np.ndarray, reason: np.ndarray) -> None:
    """Mark duplicate and out-of-order rows among those still accepted, in place.

    A row is accepted by order when its ts exceeds every earlier accepted ts of its
    symbol. Rejected rows never exceed that running maximum, so the running maximum over
    all candidate rows equals the last accepted ts, and a groupby cummax finds it.
    """
    cand = np.flatnonzero(reason == 0)
    if cand.size == 0:
        return
    c_ts = pd.Series(ts[cand])
    c_codes = codes[cand]
    running_max = c_ts.groupby(c_codes).cummax()
    prev_max = running_max.groupby(c_codes).shift(1, fill_value=BAD_TS).to_numpy(np.int64)
    has_prev = prev_max != BAD_TS
    bad = has_prev & (c_ts.to_numpy() <= prev_max)
    if not bad.any():
        return
    # A rejected row's (symbol, ts) can only match an accepted row that came earlier,
    # because every later accepted row has a larger ts; so membership is enough.
    acc = ~bad
    bad_ts = c_ts.to_numpy()[bad]
    bad_codes = c_codes[bad]
    acc_ts = c_ts.to_numpy()[acc]
    near = np.isin(acc_ts, bad_ts)
    accepted_keys = pd.MultiIndex.from_arrays([c_codes[acc][near], acc_ts[near]])
    is_dup = pd.MultiIndex.from_arrays([bad_codes, bad_ts]).isin(accepted_keys)
    bad_rows = cand[bad]
    dup_code = REJECT_REASONS.index("duplicate_timestamp") + 1
    ooo_code = REJECT_REASONS.index("out_of_order_timestamp") + 1
    reason[bad_rows] = np.where(is_dup, dup_code, ooo_code)


def _spike_checks(ts: np.ndarray, codes: np.ndarray, close: np.ndarray, reason: np.ndarray) -> None:
    """Quarantine bars whose price jumps far beyond the symbol's usual moves and comes
    straight back at the next bar (a bad print, e.g. a price x1000 with consistent OHLC):
    trading on it, or marking positions to it, would set a phantom peak. A jump that
    stays (a real gap, a split left unadjusted) is kept; the split detector sees it."""
    rows = np.flatnonzero(reason == 0)
    if rows.size < 3:
        return
    rows = rows[np.lexsort((ts[rows], codes[rows]))]
    sym = codes[rows]
    logc = np.log(close[rows])
    step = np.diff(logc)
    same = sym[1:] == sym[:-1]
    up, back = step[:-1], step[1:]
    middle = same[:-1] & same[1:]
    candidate = (
        middle
        & (np.abs(up) > SPIKE_MIN_MOVE)
        & (np.abs(back) > SPIKE_MIN_MOVE)
        & (np.sign(up) != np.sign(back))
        & (np.abs(up + back) < 0.5 * np.abs(up))
    )
    if not candidate.any():
        return
    # The symbol's robust scale of moves, from its other moves: without the suspects'
    # own legs (a short series would otherwise be scaled by its spike).
    usual = same.copy()
    legs = np.flatnonzero(candidate)
    usual[legs] = usual[legs + 1] = False
    scale = pd.Series(np.abs(step[usual])).groupby(sym[1:][usual]).median() * 1.4826
    sigma = scale.reindex(sym[1:-1]).to_numpy(dtype=np.float64)
    sigma = np.where(np.isfinite(sigma), sigma, 0.0)
    far = (np.abs(up) > SPIKE_SIGMAS * sigma) & (np.abs(back) > SPIKE_SIGMAS * sigma)
    spikes = rows[1:-1][candidate & far]
    reason[spikes] = REJECT_REASONS.index("price_spike") + 1


def _symbol_codes(col: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Factorize symbols in sorted order; missing or blank symbols get code -1."""
    codes, uniques = pd.factorize(col, sort=True)
    names = np.array([str(u) for u in uniques], dtype=object)
    blank = np.array([not n.strip() for n in names], dtype=bool)
    if blank.any():
        codes = np.where((codes >= 0) & blank[np.maximum(codes, 0)], -1, codes)
    return codes.astype(np.int64), names


def _symbol_problems(names: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per distinct symbol: too long (bytes), and outside the accepted character set."""
    too_long = np.array([len(n.encode()) > MAX_SYMBOL_BYTES for n in names], dtype=bool)
    bad = np.array([_SYMBOL_RE.fullmatch(n) is None for n in names], dtype=bool)
    return too_long, bad


def _shown_symbol(name: str) -> str:
    """A symbol as a sample line shows it: printable, and cut short when it is long."""
    shown = name if _SYMBOL_RE.fullmatch(name) else ascii(name)
    if len(shown) > MAX_SYMBOL_BYTES + 8:
        shown = f"{shown[:MAX_SYMBOL_BYTES]}...({len(name.encode())} bytes)"
    return shown


def validate_ohlcv(
    df: pd.DataFrame, *, ts_text: pd.Series | None = None
) -> tuple[pd.DataFrame, ValidationReport]:
    """Validate OHLCV rows and return the accepted rows with a report of the rest.

    Parameters
    ----------
    df
        Columns ``ts`` (int64 ns UTC; :data:`BAD_TS` or ``NaT`` for an unparsable
        timestamp; datetime64 columns are also accepted), ``symbol`` (str), ``open``,
        ``high``, ``low``, ``close`` and ``volume`` (float64; NaN volume means unknown).
        Other columns are ignored. Row order is the file order used by the duplicate and
        out-of-order checks.
    ts_text
        The timestamps as the source wrote them, row for row: a sample of a row whose
        timestamp could not be parsed shows that text (``NaT from '01/31/2020'``).

    Returns
    -------
    tuple[pd.DataFrame, ValidationReport]
        The accepted rows with the columns of :data:`OHLCV_COLUMNS`, sorted by
        ``(ts, symbol)`` and with a fresh index, and the report.

    Raises
    ------
    ValueError
        If a required column is missing.

    Notes
    -----
    Each rejected row counts under the first matching reason of :data:`REJECT_REASONS`:
    unparsable timestamp; missing or blank symbol; a symbol longer than
    :data:`MAX_SYMBOL_BYTES` bytes; a symbol with other characters than ASCII letters,
    digits, ``. - _ / ^ = + : &`` and single inner spaces (a leading or trailing space
    included); NaN or infinite open/high/low/close;
    a price <= 0; high < low; open or close outside [low, high]; volume < 0; volume
    +inf; the same (symbol, ts) as an already accepted row; a ts earlier than the last
    accepted ts of that symbol (in input order); a price spike: among the accepted bars of
    a symbol in time order, a close at least double or half the one before it (and
    :data:`SPIKE_SIGMAS` robust standard deviations away) that comes back at least half
    way at the bar after it (quarantined: never traded, never marked). A NaN volume is
    accepted and counted under ``info["volume_missing"]``.
    """
    missing = [c for c in OHLCV_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"OHLCV frame is missing column(s): {', '.join(missing)}")
    n = len(df)
    ts = _ts_column(df["ts"])
    codes, names = _symbol_codes(df["symbol"])
    ohlcv = tuple(df[k].to_numpy(dtype=np.float64) for k in OHLCV_COLUMNS[2:])
    reason = _reject_reasons(ts, codes, names, ohlcv)
    rejected, info, samples = _tally(reason, ts, codes, names, ohlcv, ts_text)
    rows = _accepted_rows(reason, ts, codes)
    o, h, lo, c, v = ohlcv
    frame = pd.DataFrame(
        {
            "ts": ts[rows],
            "symbol": pd.Series(names[codes[rows]], dtype="str"),
            "open": o[rows],
            "high": h[rows],
            "low": lo[rows],
            "close": c[rows],
            "volume": v[rows],
        }
    )
    report = ValidationReport(
        total_rows=n,
        accepted_rows=int(rows.size),
        rejected=rejected,
        info=info,
        samples=samples,
    )
    return frame, report


def _reject_reasons(
    ts: np.ndarray, codes: np.ndarray, names: np.ndarray, ohlcv: tuple[np.ndarray, ...]
) -> np.ndarray:
    """Each row's rejection reason: 0 if accepted, i+1 for ``REJECT_REASONS[i]``."""
    o, h, lo, c, v = ohlcv
    # 0 means accepted so far; reason i+1 means REJECT_REASONS[i].
    reason = np.zeros(len(ts), dtype=np.int8)

    def mark(name: str, mask: np.ndarray) -> None:
        reason[(reason == 0) & mask] = REJECT_REASONS.index(name) + 1

    mark("bad_timestamp", ts == BAD_TS)
    mark("missing_symbol", codes < 0)
    too_long, bad_symbol = _symbol_problems(names)
    if too_long.any() or bad_symbol.any():
        known = np.maximum(codes, 0)
        mark("symbol_too_long", (codes >= 0) & too_long[known])
        mark("bad_symbol", (codes >= 0) & bad_symbol[known])
    finite = np.isfinite(o) & np.isfinite(h) & np.isfinite(lo) & np.isfinite(c)
    mark("nan_price", ~finite)
    # NaN compares False, and NaN rows are already marked, so no masking is needed here.
    mark("nonpositive_price", (o <= 0) | (h <= 0) | (lo <= 0) | (c <= 0))
    mark("high_lt_low", h < lo)
    mark("open_outside_range", (o < lo) | (o > h))
    mark("close_outside_range", (c < lo) | (c > h))
    mark("negative_volume", v < 0)
    mark("infinite_volume", v == np.inf)
    _order_checks(ts, codes, reason)
    _spike_checks(ts, codes, c, reason)
    return reason


def _tally(
    reason: np.ndarray,
    ts: np.ndarray,
    codes: np.ndarray,
    names: np.ndarray,
    ohlcv: tuple[np.ndarray, ...],
    ts_text: pd.Series | None,
) -> tuple[dict[str, int], dict[str, int], dict[str, list[str]]]:
    """The report's rejected counts, info counters and sample rows."""
    o, h, lo, c, v = ohlcv
    accepted = reason == 0
    rejected: dict[str, int] = {}
    samples: dict[str, list[str]] = {}
    counts = np.bincount(reason, minlength=len(REJECT_REASONS) + 1)

    def render(rows: np.ndarray) -> list[str]:
        return [
            _render_row(
                int(i),
                _shown_symbol(names[codes[i]]) if codes[i] >= 0 else "<missing>",
                _shown_ts(int(ts[i]), None if ts_text is None else ts_text.iloc[i]),
                o[i],
                h[i],
                lo[i],
                c[i],
                v[i],
            )
            for i in rows[:MAX_SAMPLES]
        ]

    for k, name in enumerate(REJECT_REASONS, start=1):
        if counts[k]:
            rejected[name] = int(counts[k])
            samples[name] = render(np.flatnonzero(reason == k)[:MAX_SAMPLES])
    info: dict[str, int] = {}
    vol_missing = accepted & np.isnan(v)
    if vol_missing.any():
        info["volume_missing"] = int(vol_missing.sum())
        samples["volume_missing"] = render(np.flatnonzero(vol_missing)[:MAX_SAMPLES])
    return rejected, info, samples


def _accepted_rows(reason: np.ndarray, ts: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Positions of the accepted rows in ``(ts, symbol)`` order."""
    rows = np.flatnonzero(reason == 0)
    a_ts, a_codes = ts[rows], codes[rows]
    # Files usually arrive sorted; skip the sort when they do.
    if a_ts.size > 1:
        d_ts = np.diff(a_ts)
        already = bool(np.all((d_ts > 0) | ((d_ts == 0) & (np.diff(a_codes) > 0))))
        if not already:
            rows = rows[np.lexsort((a_codes, a_ts))]
    return rows

"""Load OHLCV bars from CSV, gzip CSV or Parquet files, or from the bundled samples.

The pipeline is read → parse timestamps → validate → split-adjust → filter, and the
result is a :class:`LoadedData` whose frame is sorted by ``(ts, symbol)``. Every bar's
``ts`` is its START in int64 ns UTC, so daily and intraday data line up on one clock.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv

from sovereign.data.bundled import SAMPLES, sample_path
from sovereign.data.splits import (
    SplitEvent,
    adjust_for_splits,
    annotate_volume,
    detect_splits,
    load_splits_file,
)
from sovereign.data.validation import (
    BAD_TS,
    DAILY_INTERVAL_S,
    ValidationReport,
    format_ts,
    parse_timestamps,
    validate_ohlcv,
)

__all__ = ["FILE_COLUMNS", "TIMESTAMP_FORMATS", "LoadedData", "load_ohlcv"]

FILE_COLUMNS: tuple[str, ...] = ("timestamp", "symbol", "open", "high", "low", "close", "volume")
TIMESTAMP_FORMATS = (
    "timestamps must be YYYY-MM-DD (a daily bar) or ISO 8601 such as 2024-01-31T14:30:00Z "
    "(a bar start, UTC unless it carries an offset); integer epochs are not accepted"
)
"""What a file's timestamps may look like, for messages about ones that are not."""
_NUMERIC = FILE_COLUMNS[2:]
_NS_PER_S = 1_000_000_000
_NEW_YORK = "America/New_York"


@dataclasses.dataclass(frozen=True, slots=True)
class LoadedData:
    """Validated, split-adjusted OHLCV bars and how they were obtained.

    Parameters
    ----------
    frame
        Columns ``ts`` (int64 ns UTC, bar start), ``symbol`` (str), ``open``, ``high``,
        ``low``, ``close``, ``volume`` (float64, NaN = unknown), sorted by
        ``(ts, symbol)`` with a fresh index. Treat it as read-only.
    interval_s
        Bar length in seconds: 23400 for daily bars, otherwise the most common gap
        between consecutive bars of a symbol (0 when unknown: no parsable timestamps,
        or no symbol with two bars).
    validation
        What validation accepted and rejected (on the whole source, before filters).
    splits
        Split events applied to the returned symbols, with the volume decision appended
        to each event's evidence.
    source
        The ``source`` argument as given (a path or ``"sample:<name>"``).
    """

    frame: pd.DataFrame
    interval_s: int
    validation: ValidationReport
    splits: list[SplitEvent]
    source: str
    close_only: bool = False

    @property
    def has_volume(self) -> bool:
        """Whether any bar carries a volume (close-only and MIDPOINT data do not)."""
        return bool(self.frame["volume"].notna().any())

    @property
    def symbols(self) -> list[str]:
        """Sorted distinct symbols."""
        return sorted(self.frame["symbol"].unique().tolist())

    @property
    def timestamps(self) -> np.ndarray:
        """Sorted distinct bar starts (int64 ns UTC)."""
        return np.unique(self.frame["ts"].to_numpy(dtype=np.int64))

    def describe(self) -> str:
        """Return a few human-readable lines about the data."""
        n = len(self.frame)
        syms = self.symbols
        lines = [f"source: {self.source}", f"rows: {n:,}"]
        shown = ", ".join(syms[:10]) + (f", ... (+{len(syms) - 10})" if len(syms) > 10 else "")
        lines.append(f"symbols: {len(syms)} ({shown})")
        if n:
            ts = self.frame["ts"].to_numpy(dtype=np.int64)
            lines.append(f"range: {format_ts(int(ts.min()))} .. {format_ts(int(ts.max()))}")
        kind = " (daily session)" if self.interval_s == DAILY_INTERVAL_S else ""
        lines.append(f"interval: {self.interval_s} s{kind}")
        v = self.validation
        rejected = ", ".join(f"{k}={c:,}" for k, c in v.rejected.items()) or "none"
        lines.append(
            f"validation: {v.total_rows:,} rows read, {v.rejected_rows:,} rejected ({rejected})"
        )
        applied = ", ".join(str(e) for e in self.splits) or "none"
        lines.append(f"splits applied: {applied}")
        if self.close_only or (n and not self.has_volume):
            lines.append(
                "split detection: not run (it needs the open and the volume to tell a split "
                "from a crash); use an adjusted source or a splits file"
            )
        if self.close_only:
            lines.append(
                "close-only source: open, high and low are set to the close; every bar is a "
                "single price"
            )
        if n and not self.has_volume:
            lines.append("volume: none in this source (volume confirmation cannot work on it)")
        return "\n".join(lines)


# -- READING --


def _resolve(source: str | Path) -> tuple[Path, str]:
    text = str(source)
    if isinstance(source, str) and (text == "sample" or text.startswith("sample:")):
        name = text.partition(":")[2] or "daily"
        if name not in SAMPLES:
            raise ValueError(
                f"unknown sample {text!r}; use one of "
                + ", ".join(f"'sample:{k}'" for k in sorted(SAMPLES))
            )
        return sample_path(name), f"sample:{name}"
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"OHLCV source not found: {path} (no such file)")
    return path, text


def _read_csv(path: Path) -> pd.DataFrame:
    # Symbols stay strings and never become null: a ticker such as "NA" is real.
    types = {"timestamp": pa.string(), "symbol": pa.string()}
    try:
        table = pa_csv.read_csv(
            path,
            convert_options=pa_csv.ConvertOptions(
                column_types={**types, **dict.fromkeys(_NUMERIC, pa.float64())},
                strings_can_be_null=False,
            ),
        )
        return table.to_pandas()
    except pa.ArrowInvalid:
        pass
    # Some numeric cell is not a number. Read everything as text and let those cells
    # become NaN, so validation rejects the row instead of the whole file failing.
    try:
        table = pa_csv.read_csv(
            path,
            convert_options=pa_csv.ConvertOptions(
                column_types=dict.fromkeys(FILE_COLUMNS, pa.string()),
                strings_can_be_null=False,
            ),
        )
    except pa.ArrowInvalid as exc:
        raise ValueError(f"{path}: cannot read as CSV: {exc}") from None
    df = table.to_pandas()
    for col in _NUMERIC:
        if col in df.columns:
            df[col] = pd.to_numeric(df[col].str.strip(), errors="coerce")
    return df


def _read(path: Path) -> pd.DataFrame:
    name = path.name.lower()
    if not name.endswith((".parquet", ".csv", ".csv.gz")):
        raise ValueError(f"unsupported file type: {path} (expected .csv, .csv.gz or .parquet)")
    try:
        df = pd.read_parquet(path) if name.endswith(".parquet") else _read_csv(path)
    except (pa.ArrowException, OSError) as exc:
        # A truncated gzip stream, a file that is not what its name says, a damaged
        # Parquet footer: the file as a whole is unusable, unlike a bad row.
        reason = " ".join(str(exc).split())
        raise ValueError(f"{path}: cannot read as {_kind(name)}: {reason}") from None
    df.columns = [str(c).strip().lower() for c in df.columns]
    # Two columns that both claim to be, say, the close leave no way to tell which is
    # meant; names are compared as matched (trimmed, case-insensitive).
    names = df.columns.tolist()
    repeated = [c for c in (*FILE_COLUMNS, "ts") if names.count(c) > 1]
    if repeated:
        raise ValueError(f"{path}: duplicate column(s): {', '.join(repeated)}")
    if "timestamp" not in df.columns and "ts" in df.columns:
        # A saved LoadedData.frame (or SyntheticBars.to_frame()) names it ts, in int64 ns.
        df = df.rename(columns={"ts": "timestamp"})
    missing = [c for c in FILE_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s): {', '.join(missing)}")
    # A parquet file may carry a stored index; row positions are what validation reports.
    return df.reset_index(drop=True)


def _kind(name: str) -> str:
    if name.endswith(".parquet"):
        return "Parquet"
    return "gzip-compressed CSV" if name.endswith(".gz") else "CSV"


# -- PIPELINE --


def _interval_s(frame: pd.DataFrame, daily: bool) -> int:
    if daily:
        return DAILY_INTERVAL_S
    if len(frame) < 2:
        # Unknown: no bars, or a single intraday bar.
        return 0
    codes, _ = pd.factorize(frame["symbol"])
    ts = frame["ts"].to_numpy(dtype=np.int64)
    order = np.lexsort((ts, codes))
    codes, ts = codes[order], ts[order]
    gaps = np.diff(ts)[codes[1:] == codes[:-1]]
    gaps = gaps[gaps > 0]
    if gaps.size == 0:
        return 0
    values, counts = np.unique(gaps, return_counts=True)
    # np.unique sorts, so ties resolve to the shortest gap.
    return int(values[np.argmax(counts)] // _NS_PER_S)


def _bound_ns(text: str, *, end: bool) -> int:
    """Convert an inclusive ``start``/``end`` filter to a ts bound in ns UTC.

    A date is a New York calendar day (the trading day), so ``end="2024-01-02"`` keeps
    every bar that starts before midnight New York at the end of that day.
    """
    ts, is_date = parse_timestamps(pd.Series([text], dtype="str"))
    if ts[0] == BAD_TS:
        kind = "end" if end else "start"
        raise ValueError(f"cannot parse {kind}={text!r}; use YYYY-MM-DD or an ISO timestamp")
    if not is_date[0]:
        return int(ts[0])
    day = pd.Timestamp(text.strip())
    if end:
        day += pd.Timedelta(days=1)
    # New York midnight is never inside a DST transition (those happen at 02:00).
    midnight = int(day.tz_localize(_NEW_YORK).tz_convert("UTC").as_unit("ns").value)
    return midnight - 1 if end else midnight


def _numeric(col: pd.Series) -> np.ndarray:
    """Return a column as float64; cells that are not numbers become NaN."""
    if pd.api.types.is_numeric_dtype(col.dtype) and not pd.api.types.is_bool_dtype(col.dtype):
        return col.to_numpy(dtype=np.float64, na_value=np.nan)
    return pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def load_synthetic(spec: str, *, seed: int = 0) -> LoadedData:
    """Generated bars: ``synthetic:<symbols>x<bars>[:crash=<bar>[@<fraction>]][:drift=...]``.

    One-minute regime-switching bars from :func:`sovereign.data.synthetic.generate`,
    validated like any other source, for scale tests and benchmarks. ``crash=300@0.3``
    makes every symbol gap down 30 % at the open of bar 300 (the default fraction) and
    stay there: a market crash, for testing the kill switches. ``drift=S0003@-0.3`` adds
    that per-bar drift (in base volatilities) to a symbol, ``drift=Volatile@-0.3`` sets a
    regime's: a planted weakness, for testing self-modification; ``drift=Volatile@-1@0-8000``
    only on bars 0 to 7,999 (a weakness that goes away).
    """
    from sovereign.data.synthetic import generate

    parts = spec.split(":")
    usage = (
        "synthetic data is 'synthetic:<symbols>x<bars>[:crash=<bar>[@<fraction>]]"
        "[:drift=<regime or symbol>@<drift>[@<first>-<end bar>]]', e.g. synthetic:100x10000; got "
        f"{spec!r}"
    )
    drift: dict[str, float | tuple[float, int, int]] = {}
    try:
        n_symbols, n_bars = (int(x) for x in parts[1].lower().split("x"))
        crash_bar, crash_size = None, 0.30
        for option in parts[2:]:
            name, _, value = option.partition("=")
            if name == "crash":
                bar, _, size = value.partition("@")
                crash_bar, crash_size = int(bar), float(size) if size else 0.30
            elif name == "drift":
                where, _, rest = value.partition("@")
                amount, _, window = rest.partition("@")
                if not where or not -1 <= float(amount) <= 1:
                    raise ValueError(option)
                if window:
                    first, _, end = window.partition("-")
                    drift[where] = (float(amount), int(first), int(end))
                else:
                    drift[where] = float(amount)
            else:
                raise ValueError(option)
    except (ValueError, IndexError):
        raise ValueError(usage) from None
    if n_symbols < 1 or n_bars < 2:
        raise ValueError(f"{spec!r}: need at least 1 symbol and 2 bars")
    try:
        bars = generate(n_symbols, n_bars, seed=seed, drift=drift)
    except ValueError as exc:
        raise ValueError(f"{spec!r}: {exc}") from None
    if crash_bar is not None:
        if not (0 < crash_bar < n_bars and 0 < crash_size < 1):
            raise ValueError(f"{spec!r}: the crash bar must be inside the data, size in (0, 1)")
        for column in (bars.open, bars.high, bars.low, bars.close):
            column[crash_bar:] *= 1.0 - crash_size
    frame, report = validate_ohlcv(bars.to_frame())
    return LoadedData(
        frame=frame,
        interval_s=int(bars.ts[1] - bars.ts[0]) // 1_000_000_000,
        validation=report,
        splits=[],
        source=f"synthetic {n_symbols}x{n_bars} seed={seed}"
        + (f", {crash_size:.0%} crash at bar {crash_bar}" if crash_bar is not None else "")
        + "".join(
            f", {r} drift {d:+g}"
            if isinstance(d, float)
            else f", {r} drift {d[0]:+g} on bars {d[1]}-{d[2]}"
            for r, d in sorted(drift.items())
        ),
    )


def load_ohlcv(
    source: str | Path,
    *,
    symbols: Sequence[str] | None = None,
    start: str | None = None,
    end: str | None = None,
    split_adjust: Literal["detect", "off"] = "detect",
    splits_file: str | Path | None = None,
    seed: int = 0,
) -> LoadedData:
    """Load, validate and split-adjust OHLCV bars.

    Parameters
    ----------
    source
        A ``.csv``, ``.csv.gz`` or ``.parquet`` file with the columns ``timestamp, symbol,
        open, high, low, close, volume`` (header names are matched case-insensitively;
        an int64 ns ``ts`` column may stand in for ``timestamp``, so a saved
        ``LoadedData.frame`` loads back),
        or a bundled sample: ``"sample"`` / ``"sample:daily"`` (AAPL, FB, GOOG, IBM, MSFT
        daily, raw prices), ``"sample:hourly"`` or ``"sample:minute"`` (AAPL), or
        generated bars ``"synthetic:<symbols>x<bars>"`` (see :func:`load_synthetic`).
    symbols
        Keep only these symbols (a bare string is one symbol). Every one must be present
        after validation.
    start, end
        Inclusive filters on the bar start: ``YYYY-MM-DD`` (a New York calendar day) or
        an ISO timestamp (naive = UTC).
    split_adjust
        ``"detect"`` finds splits with :func:`sovereign.data.splits.detect_splits`;
        ``"off"`` leaves prices raw. Ignored when ``splits_file`` is given.
    splits_file
        CSV of known splits (``symbol,date,ratio``); its events replace detection.

    Returns
    -------
    LoadedData
        The bars and their provenance.

    Raises
    ------
    FileNotFoundError
        If the source or splits file does not exist.
    ValueError
        On missing or duplicate columns, a file that cannot be read as its type (a
        truncated gzip stream, a damaged Parquet file), an unknown sample, an unsupported
        file type, a file mixing
        date-only and intraday timestamps, unparsable filters, ``start > end``, or
        requested symbols that are not in the data.
    seed
        Seed of the generator for ``synthetic:`` sources.

    Notes
    -----
    Timestamps: ``YYYY-MM-DD`` is a daily bar that starts at 09:30 America/New_York on
    that date and lasts 23400 s; an ISO timestamp with ``Z`` or an offset is an intraday
    bar start; a naive timestamp with a time of day is taken to be UTC. Integer epochs
    in a CSV are not accepted: their unit is a guess (a 12-digit ``YYYYMMDDHHMM`` is also a
    plausible epoch in milliseconds), so they are rejected as bad timestamps. Unparsable
    timestamps and non-numeric prices are not fatal: those rows are rejected by
    validation and counted in ``validation`` (``row N`` in its samples is data line N of
    the file, 0-based). A non-numeric volume cell counts as unknown volume.
    """
    if split_adjust not in ("detect", "off"):
        raise ValueError(f"split_adjust must be 'detect' or 'off', got {split_adjust!r}")
    if isinstance(source, str) and source.startswith("synthetic"):
        data = load_synthetic(source, seed=seed)
        return _filtered(data, symbols, start, end)
    path, label = _resolve(source)
    lo, hi = _bounds(start, end)
    return _load_file(
        path,
        label,
        symbols=symbols,
        lo=lo,
        hi=hi,
        split_adjust=split_adjust,
        splits_file=splits_file,
    )


def _bounds(start: str | None, end: str | None) -> tuple[int | None, int | None]:
    """The ts bounds of the inclusive ``start``/``end`` filters (None where not given)."""
    lo = _bound_ns(start, end=False) if start is not None else None
    hi = _bound_ns(end, end=True) if end is not None else None
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(f"start={start!r} is after end={end!r}")
    return lo, hi


def _read_validated(path: Path) -> tuple[pd.DataFrame, ValidationReport, bool, bool]:
    """Read a file and validate its rows; also say whether it is daily and close-only."""
    raw = _read(path)
    close_only = _is_close_only(raw)
    if close_only:
        # A close-only file (its open, high and low columns are empty): each bar is the
        # single price it has. Said in describe(), never silent.
        raw = raw.assign(open=raw["close"], high=raw["close"], low=raw["close"])
    ts, is_date = parse_timestamps(raw["timestamp"])
    parsed_dates = is_date[ts != BAD_TS]
    daily = bool(parsed_dates.size and parsed_dates.all())
    if parsed_dates.any() and not daily:
        raise ValueError(f"{path}: mixes date-only (daily) and intraday timestamps; split the file")
    frame, report = validate_ohlcv(
        pd.DataFrame(
            {
                "ts": ts,
                "symbol": raw["symbol"],
                **{c: _numeric(raw[c]) for c in _NUMERIC},
            }
        ),
        ts_text=raw["timestamp"],
    )
    return frame, report, daily, close_only


def _load_file(
    path: Path,
    label: str,
    *,
    symbols: Sequence[str] | None,
    lo: int | None,
    hi: int | None,
    split_adjust: Literal["detect", "off"],
    splits_file: str | Path | None,
) -> LoadedData:
    """Load a file source once the arguments are checked: validate, split-adjust, filter."""
    file_events = load_splits_file(splits_file) if splits_file is not None else None
    frame, report, daily, close_only = _read_validated(path)
    interval = _interval_s(frame, daily)

    if file_events is not None:
        events = file_events
    elif split_adjust == "detect" and not close_only and frame["volume"].notna().any():
        events = detect_splits(frame)
    else:
        events = []
    applied = annotate_volume(frame, events)
    frame = adjust_for_splits(frame, events)

    keep = np.ones(len(frame), dtype=bool)
    if symbols is not None:
        # A bare string is one symbol, not a sequence of one-letter symbols.
        wanted = [symbols] if isinstance(symbols, str) else list(dict.fromkeys(symbols))
        present = set(frame["symbol"].unique().tolist())
        absent = [s for s in wanted if s not in present]
        if absent:
            raise ValueError(f"symbol(s) not in {label}: {', '.join(absent)}")
        keep &= frame["symbol"].isin(wanted).to_numpy()
        applied = [e for e in applied if e.symbol in wanted]
    ts_col = frame["ts"].to_numpy(dtype=np.int64)
    if lo is not None:
        keep &= ts_col >= lo
    if hi is not None:
        keep &= ts_col <= hi
    if not keep.all():
        frame = frame[keep].reset_index(drop=True)
    return LoadedData(
        frame=frame,
        interval_s=interval,
        validation=report,
        splits=applied,
        source=label,
        close_only=close_only,
    )


def _is_close_only(raw: pd.DataFrame) -> bool:
    empty = [raw[c].isna().all() for c in ("open", "high", "low")]
    return bool(len(raw)) and all(empty) and bool(raw["close"].notna().any())


def _filtered(
    data: LoadedData, symbols: Sequence[str] | None, start: str | None, end: str | None
) -> LoadedData:
    frame = data.frame
    keep = np.ones(len(frame), dtype=bool)
    if symbols is not None:
        wanted = [symbols] if isinstance(symbols, str) else list(symbols)
        absent = sorted(set(wanted) - set(frame["symbol"].unique().tolist()))
        if absent:
            raise ValueError(f"symbol(s) not in {data.source}: {', '.join(absent)}")
        keep &= frame["symbol"].isin(wanted).to_numpy()
    ts_col = frame["ts"].to_numpy(dtype=np.int64)
    if start is not None:
        keep &= ts_col >= _bound_ns(start, end=False)
    if end is not None:
        keep &= ts_col <= _bound_ns(end, end=True)
    if keep.all():
        return data
    return dataclasses.replace(data, frame=frame[keep].reset_index(drop=True))

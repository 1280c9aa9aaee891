"""The end-of-run report: metrics, trades, an equity chart and one self-contained HTML page.

Everything written here is a pure function of the inputs. ``trades.csv`` in particular
leaves out the run id and shard and fixes its row order and number formats, so the same
replay gives a byte-identical file on every runtime and shard layout, and two runs can be
compared with ``cmp``. The chart is drawn by ``sovereign.report_chart``, the page by
``sovereign.report_html``, and values are shown as ``sovereign.report_format`` says.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sovereign.report_chart import equity_png, selfmod_markers
from sovereign.report_format import json_safe, unsigned_zero
from sovereign.report_html import html_page, selfmod_section

TRADE_COLUMNS: tuple[str, ...] = (
    "trade_id",
    "symbol",
    "side",
    "quantity",
    "entry_time",
    "exit_time",
    "entry_price",
    "exit_price",
    "pnl",
    "commission",
    "return_pct",
    "bars_held",
    "exit_reason",
    "regime",
    "confidence",
)
"""The columns of ``trades.csv``, in order."""

_SOURCE_COLUMNS: tuple[str, ...] = tuple(
    {"entry_time": "entry_ts", "exit_time": "exit_ts"}.get(c, c) for c in TRADE_COLUMNS
)
_INT_COLUMNS = frozenset({"quantity", "bars_held", "entry_ts", "exit_ts"})
_FLOAT_COLUMNS = frozenset(
    {"entry_price", "exit_price", "pnl", "commission", "return_pct", "confidence"}
)
CSV_DECIMALS = 6
"""Decimals of every float in ``trades.csv``."""


@dataclass(frozen=True, slots=True)
class ReportPaths:
    """The files written by :func:`write_report`."""

    metrics_json: Path
    trades_csv: Path
    equity_png: Path
    report_html: Path


def write_report(
    out_dir: str | Path,
    *,
    title: str,
    metrics: dict[str, object],
    trades: pd.DataFrame,
    ts: np.ndarray,
    equity: np.ndarray,
    meta: dict[str, object],
    selfmod: dict[str, Any] | None = None,
) -> ReportPaths:
    """Write the report of one backtest or paper session.

    Each file is written to a temporary name and renamed into place, so a crash never
    leaves a half-written report behind.

    Parameters
    ----------
    out_dir
        Directory to write into; created if missing. Existing report files are replaced.
    title
        Shown on the chart and the HTML page.
    metrics
        Summary metrics (``total_return``, ``win_rate``, ``sharpe``, ...). Fractions are
        shown as percentages and money with two decimals, chosen by key
        (:data:`~sovereign.report_format.FRACTION_KEYS`,
        :data:`~sovereign.report_format.MONEY_KEYS`).
    trades
        Closed trades, one row per trade, with at least the columns of ``trades.csv``
        except that times come as ``entry_ts`` and ``exit_ts`` (ns, UTC); other columns
        (``run_id``, ``shard``, features) are ignored. May be empty, with any columns.
    ts
        Step times, ns since the Unix epoch (UTC), ``int64``.
    equity
        Account equity at each step, ``float64``, the same length as ``ts``.
    meta
        Facts about the run (run id, runtime, data source, symbols, period, bars, ...),
        shown as given; ``meta["notes"]``, a list of strings, becomes the validation and
        notes section.
    selfmod
        The self-modification record, when there is one: ``modifications`` (a list of
        dicts with ``id``, ``time``, ``status``, ``summary``, ``evidence``) and
        ``comparison`` (``from``, ``with_rules`` and ``without_rules`` metric dicts).
        It goes into ``metrics.json`` under ``self_modification`` and gets its own
        section in the HTML page.

    Returns
    -------
    ReportPaths
        ``metrics.json``, ``trades.csv``, ``equity.png`` and ``report.html`` in ``out_dir``.
    """
    if "meta" in metrics:
        raise ValueError("metrics must not have a 'meta' key; pass it as meta")
    ts_ns, equity_values = _curve(ts, equity)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = ReportPaths(
        metrics_json=out / "metrics.json",
        trades_csv=out / "trades.csv",
        equity_png=out / "equity.png",
        report_html=out / "report.html",
    )
    rows = _trade_rows(trades)

    document = json_safe(
        {**metrics, "meta": meta, **({"self_modification": selfmod} if selfmod else {})}
    )
    text = json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False)
    _write_atomic(paths.metrics_json, (text + "\n").encode())
    _write_atomic(paths.trades_csv, _trades_csv(rows))
    png = equity_png(ts_ns, equity_values, title, markers=selfmod_markers(selfmod))
    _write_atomic(paths.equity_png, png)
    page = html_page(title=title, metrics=metrics, meta=meta, rows=rows, png=png)
    if selfmod:
        page = page.replace("</main>", selfmod_section(selfmod) + "\n</main>", 1)
    _write_atomic(paths.report_html, page.encode())
    return paths


# -- INPUTS --


def _curve(ts: np.ndarray, equity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    times = np.asarray(ts)
    if times.dtype.kind == "M":
        times = times.astype("datetime64[ns]").view(np.int64)
    times = times.astype(np.int64, copy=False)
    values = np.asarray(equity, dtype=np.float64)
    if times.ndim != 1 or values.ndim != 1 or len(times) != len(values):
        raise ValueError(
            f"ts and equity must be 1-D and of equal length, got shapes {times.shape} and "
            f"{values.shape}"
        )
    return times, values


def _trade_rows(trades: pd.DataFrame) -> list[dict[str, Any]]:
    """Trades as plain Python values in report order, each with its CSV row."""
    if len(trades) == 0:
        return []
    missing = [c for c in _SOURCE_COLUMNS if c not in trades.columns]
    if missing:
        raise ValueError(f"trades frame lacks columns {missing}")
    columns = {c: trades[c].tolist() for c in _SOURCE_COLUMNS}
    iso = {
        "entry_time": _iso_utc(trades["entry_ts"].to_numpy()),
        "exit_time": _iso_utc(trades["exit_ts"].to_numpy()),
    }
    rows: list[dict[str, Any]] = []
    for i in range(len(trades)):
        row: dict[str, Any] = {}
        for column in _SOURCE_COLUMNS:
            value = columns[column][i]
            if column in _INT_COLUMNS:
                row[column] = int(value)
            elif column in _FLOAT_COLUMNS:
                row[column] = float(value)
            else:
                row[column] = str(value)
        row["entry_time"] = iso["entry_time"][i]
        row["exit_time"] = iso["exit_time"][i]
        row["csv"] = tuple(_csv_cell(c, row[c]) for c in TRADE_COLUMNS)
        rows.append(row)
    # The whole formatted row is the last tie-break, so the order never depends on the
    # order the trades arrived in (which differs between shard layouts).
    rows.sort(key=lambda r: (r["exit_ts"], r["symbol"], r["trade_id"], r["csv"]))
    return rows


def _iso_utc(ns: np.ndarray) -> list[str]:
    seconds = np.asarray(ns, dtype=np.int64).astype("datetime64[ns]").astype("datetime64[s]")
    return [f"{s}Z" for s in np.datetime_as_string(seconds, unit="s")]


def _csv_cell(column: str, value: Any) -> str:
    if column in _FLOAT_COLUMNS:
        if math.isnan(value):
            return ""
        text = f"{value:.{CSV_DECIMALS}f}"
        # A value that rounds to zero can carry either sign depending on summation order,
        # which differs between runtimes; one zero keeps the files identical.
        return unsigned_zero(text)
    return str(value)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# -- CSV --


def _trades_csv(rows: Sequence[dict[str, Any]]) -> bytes:
    buffer = io.StringIO(newline="")
    # "\n" rather than csv's default "\r\n", so the file is the same on every platform.
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(TRADE_COLUMNS)
    writer.writerows(row["csv"] for row in rows)
    return buffer.getvalue().encode()

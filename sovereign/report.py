"""The end-of-run report: metrics, trades, an equity chart and one self-contained HTML page.

Everything written here is a pure function of the inputs. ``trades.csv`` in particular
leaves out the run id and shard and fixes its row order and number formats, so the same
replay gives a byte-identical file on every runtime and shard layout, and two runs can be
compared with ``cmp``.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import html
import io
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pandas as pd

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
LAST_TRADES = 50
"""Trades listed in the HTML report."""

FRACTION_KEYS = frozenset(
    {"win_rate", "max_drawdown", "total_return", "cagr", "exposure", "volatility", "return_pct"}
)
"""Metrics that are fractions and are shown as percentages (also any key ending in
``_rate``, ``_return``, ``_pct``, ``_drawdown`` or ``_exposure``)."""
_FRACTION_SUFFIXES = ("_rate", "_return", "_pct", "_drawdown", "_exposure")

MONEY_KEYS = frozenset(
    {
        "pnl",
        "initial_capital",
        "final_equity",
        "peak_equity",
        "gross_profit",
        "gross_loss",
        "commission",
        "commissions",
        "avg_win",
        "avg_loss",
        "largest_win",
        "largest_loss",
        "expectancy",
        "cash",
        "equity",
    }
)
"""Metrics in account currency, shown with two decimals (also any key ending in ``_pnl``,
``_equity``, ``_capital``, ``_cash``, ``_profit``, ``_commission`` or ``_commissions``)."""
_MONEY_SUFFIXES = (
    "_pnl",
    "_equity",
    "_capital",
    "_cash",
    "_profit",
    "_commission",
    "_commissions",
)

_MISSING = "—"
_LABEL_WORDS = {"cagr": "CAGR", "pnl": "P&L", "id": "ID", "atr": "ATR", "utc": "UTC"}


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
        (:data:`FRACTION_KEYS`, :data:`MONEY_KEYS`).
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

    document = _json_safe(
        {**metrics, "meta": meta, **({"self_modification": selfmod} if selfmod else {})}
    )
    text = json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False)
    _write_atomic(paths.metrics_json, (text + "\n").encode())
    _write_atomic(paths.trades_csv, _trades_csv(rows))
    png = _equity_png(ts_ns, equity_values, title, markers=_selfmod_markers(selfmod))
    _write_atomic(paths.equity_png, png)
    page = _html_page(title=title, metrics=metrics, meta=meta, rows=rows, png=png)
    if selfmod:
        page = page.replace("</main>", _selfmod_section(selfmod) + "\n</main>", 1)
    _write_atomic(paths.report_html, page.encode())
    return paths


def format_metric(key: str, value: object) -> str:
    """Format one metric for people.

    Parameters
    ----------
    key
        The metric name; it decides whether a number is a fraction, money or plain.
    value
        The value.

    Returns
    -------
    str
        Fractions as percentages with two decimals, money with two decimals and
        thousands separators, other floats with up to four decimals, None and NaN as
        ``—``.
    """
    if value is None:
        return _MISSING
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, int | float | np.integer | np.floating):
        number = float(value)
        if math.isnan(number):
            return _MISSING
        if math.isinf(number):
            return "∞" if number > 0 else "-∞"
        if _is_fraction(key):
            return _unsigned_zero(f"{number * 100:,.2f}%")
        if _is_money(key):
            return _unsigned_zero(f"{number:,.2f}")
        if isinstance(value, int | np.integer):
            return f"{int(value):,}"
        return _trim(f"{number:,.4f}")
    if isinstance(value, str | bytes):
        return _text(value)
    return json.dumps(_json_safe(value), ensure_ascii=False, sort_keys=True)


def _is_fraction(key: str) -> bool:
    return key in FRACTION_KEYS or key.endswith(_FRACTION_SUFFIXES)


def _is_money(key: str) -> bool:
    return key in MONEY_KEYS or key.endswith(_MONEY_SUFFIXES)


def format_summary_table(metrics: dict[str, object]) -> str:
    """Return the metrics as an aligned two-column plain-text table for the terminal.

    Parameters
    ----------
    metrics
        As for :func:`write_report`. Mappings and sequences (per-symbol breakdowns and
        the like) are left out; they belong in the report files.

    Returns
    -------
    str
        One line per metric in the given order, under a header, without a trailing
        newline.
    """
    rows = [
        (key, format_metric(key, value))
        for key, value in metrics.items()
        if not isinstance(value, Mapping | list | tuple | set | frozenset | np.ndarray)
    ]
    key_width = max([len("metric"), *(len(k) for k, _ in rows)])
    value_width = max([len("value"), *(len(v) for _, v in rows)])
    lines = [
        f"{'metric':<{key_width}}  {'value':>{value_width}}",
        f"{'-' * key_width}  {'-' * value_width}",
    ]
    lines.extend(f"{key:<{key_width}}  {value:>{value_width}}" for key, value in rows)
    return "\n".join(lines)


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
        return _unsigned_zero(text)
    return str(value)


def _unsigned_zero(text: str) -> str:
    # "-0.000000" (a tiny negative rounded away) reads as zero.
    if text.startswith("-") and not text[1:].strip("0.,%"):
        return text[1:]
    return text


def _json_safe(value: object) -> Any:
    if value is None or isinstance(value, str | bool):
        return value
    if isinstance(value, bytes):
        return _text(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return _json_safe(value.tolist())
    if isinstance(value, set | frozenset):
        return [_json_safe(v) for v in sorted(value, key=str)]
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, np.datetime64):
        return str(value)
    if isinstance(value, msgspec.Struct):
        return _json_safe(msgspec.to_builtins(value))
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


# -- CHART --


def _selfmod_markers(selfmod: Mapping[str, Any] | None) -> list[tuple[int, str, str]]:
    """The deployments, retirements and relaxations of a run: (time, label, colour)."""
    out: list[tuple[int, str, str]] = []
    for m in (selfmod or {}).get("modifications") or []:
        if m.get("status") not in ("AutoDeployed", "RolledBack"):
            continue
        summary = str(m.get("summary", ""))
        verb, _, rest = summary.partition(" ")
        rule_id = rest.split(":")[0].split()[0] if rest else ""
        colour = {"add": "#1e8449", "remove": "#ca6f1e", "replace": "#7d3c98"}.get(verb, "#555555")
        try:
            ts = int(pd.Timestamp(str(m.get("time"))).value)
        except ValueError:
            continue
        out.append((ts, f"{verb} {rule_id}", colour))
    return out


def _equity_png(
    ts_ns: np.ndarray,
    equity: np.ndarray,
    title: str,
    *,
    markers: Sequence[tuple[int, str, str]] = (),
) -> bytes:
    # Imported here: matplotlib is slow to import and only the report needs it. The
    # object-oriented API with an Agg canvas never touches pyplot's global state or a
    # display.
    from matplotlib import dates as mdates
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, PercentFormatter

    fig = Figure(figsize=(12, 7), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax_equity, ax_drawdown = fig.subplots(
        2, 1, sharex=True, gridspec_kw={"height_ratios": (3, 1.2)}
    )
    # Unescaped "$" pairs would be parsed as mathtext, and can fail to parse.
    fig.suptitle(title.replace("$", r"\$"), fontsize=15, fontweight="bold")

    if len(equity):
        x = ts_ns.astype("datetime64[ns]")
        drawdown = _drawdown(equity) * 100.0
        ax_equity.plot(x, equity, color="#1f5fa8", linewidth=1.4, marker="o" if len(x) == 1 else "")
        ax_drawdown.fill_between(x, drawdown, 0.0, color="#c0392b", alpha=0.35, linewidth=0)
        ax_drawdown.plot(x, drawdown, color="#c0392b", linewidth=0.9)
        trough = int(np.nanargmin(drawdown)) if np.isfinite(drawdown).any() else 0
        if drawdown[trough] < 0:
            ax_drawdown.annotate(
                f"max {drawdown[trough]:.1f}%",
                xy=(x[trough], drawdown[trough]),
                xytext=(6, 4),
                textcoords="offset points",
                fontsize=9,
                color="#7b241c",
            )
        # Self-modification's timeline: each deployment (green), retirement (orange) and
        # relaxation (purple) where it happened on the curve.
        for when, label, colour in markers:
            at = np.datetime64(when, "ns")
            for ax in (ax_equity, ax_drawdown):
                ax.axvline(at, color=colour, linewidth=0.9, linestyle="--", alpha=0.8)
            ax_equity.annotate(
                label,
                xy=(at, 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(3, -12),
                textcoords="offset points",
                fontsize=8,
                color=colour,
                rotation=90,
                va="top",
            )
        locator = mdates.AutoDateLocator()
        ax_drawdown.xaxis.set_major_locator(locator)
        ax_drawdown.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    else:
        ax_equity.text(
            0.5, 0.5, "No equity data", ha="center", va="center", transform=ax_equity.transAxes
        )

    ax_equity.set_ylabel("Equity")
    ax_equity.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:,.0f}"))
    ax_drawdown.set_ylabel("Drawdown")
    ax_drawdown.yaxis.set_major_formatter(PercentFormatter(xmax=100.0, decimals=1))
    ax_drawdown.set_xlabel("Time (UTC)")
    for ax in (ax_equity, ax_drawdown):
        ax.grid(True, color="#dddddd", linewidth=0.7)
        ax.tick_params(labelsize=10)
        ax.spines[["top", "right"]].set_visible(False)

    buffer = io.BytesIO()
    # No "Software" stamp, so the image depends only on the data and the renderer.
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _drawdown(equity: np.ndarray) -> np.ndarray:
    """Fractional drawdown from the running peak (0 or negative)."""
    peak = np.fmax.accumulate(equity)
    with np.errstate(divide="ignore", invalid="ignore"):
        drawdown = np.where(peak > 0, equity / peak - 1.0, 0.0)
    return np.minimum(drawdown, 0.0)


# -- HTML --

_CSS = """
:root { color-scheme: light; }
body { margin: 0; background: #f4f5f7; color: #1d2733;
  font: 14px/1.45 -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; }
main { max-width: 1240px; margin: 0 auto; padding: 24px 20px 48px; }
h1 { font-size: 26px; margin: 0 0 18px; }
h2 { font-size: 17px; margin: 0 0 10px; }
section { background: #fff; border: 1px solid #dde1e6; border-radius: 6px;
  padding: 16px 18px; margin: 0 0 18px; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(360px, 1fr)); gap: 18px; }
.grid > section { margin: 0; }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
th, td { padding: 4px 10px; border-bottom: 1px solid #eceef1; text-align: left;
  white-space: nowrap; }
th { background: #f7f8fa; font-weight: 600; }
td.num, th.num { text-align: right; }
table.kv th { width: 40%; background: none; font-weight: 500; color: #4a5664; }
.scroll { overflow-x: auto; }
.pos { color: #1e7d32; }
.neg { color: #b3261e; }
.muted { color: #6b7785; }
img { max-width: 100%; height: auto; display: block; }
ul.notes { margin: 0; padding-left: 20px; }
"""


def _html_page(
    *,
    title: str,
    metrics: Mapping[str, object],
    meta: Mapping[str, object],
    rows: Sequence[dict[str, Any]],
    png: bytes,
) -> str:
    esc = _esc
    image = base64.b64encode(png).decode("ascii")
    meta_rows = [(_label(k), _meta_value(k, v)) for k, v in meta.items() if k != "notes"]
    metric_rows = [(_label(k), format_metric(k, v)) for k, v in metrics.items()]
    note_list = _notes(meta.get("notes"))

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        "<main>",
        f"<h1>{esc(title)}</h1>",
        '<div class="grid">',
        f"<section><h2>Run</h2>{_kv_table(meta_rows)}</section>",
        f"<section><h2>Metrics</h2>{_kv_table(metric_rows)}</section>",
        "</div>",
        "<section><h2>Equity and drawdown</h2>",
        f'<img src="data:image/png;base64,{image}" width="1200" height="700" '
        f'alt="{esc(title)}: equity and drawdown">',
        "</section>",
        _trades_section(rows),
        '<div class="grid">',
        f"<section><h2>By symbol</h2>{_group_table(rows, 'symbol', 'Symbol')}</section>",
        "<section><h2>By exit reason</h2>"
        f"{_group_table(rows, 'exit_reason', 'Exit reason')}</section>",
        "</div>",
    ]
    if note_list:
        items = "".join(f"<li>{esc(n)}</li>" for n in note_list)
        parts.append(
            f'<section><h2>Validation and notes</h2><ul class="notes">{items}</ul></section>'
        )
    parts += ["</main>", "</body>", "</html>", ""]
    return "\n".join(parts)


def _selfmod_section(selfmod: Mapping[str, Any]) -> str:
    esc = _esc
    parts = ["<section><h2>Self-modification</h2>"]
    mods = list(selfmod.get("modifications") or [])
    if mods:
        head = _thead(
            [
                ("#", True),
                ("Time", False),
                ("Status", False),
                ("Change", False),
                ("Evidence", False),
            ]
        )
        body = "".join(
            _tr(
                [
                    (str(m.get("id", "")), "num"),
                    (str(m.get("time", "")), ""),
                    (str(m.get("status", "")), ""),
                    (str(m.get("summary", "")), ""),
                    (str(m.get("evidence", "")), ""),
                ]
            )
            for m in mods
        )
        parts.append(f"<table>{head}<tbody>{body}</tbody></table>")
    else:
        parts.append("<p>No modification was proposed in this run.</p>")
    rules = list(selfmod.get("rules") or [])
    if rules:
        parts.append(
            "<h3>Each rule's record after its deployment</h3><p>The trades it acted on are "
            "its shadow record: the trades it skipped, followed on the real bars with the "
            "broker's fill model, or the part of a trade a size cut did not buy. Its effect "
            "is what they made, with the sign turned (positive: it saved money).</p>"
        )
        head = _thead(
            [
                ("Rule", False),
                ("Deployed", False),
                ("Retired", False),
                ("Acted on", True),
                ("Their P&L", True),
                ("Kept", True),
                ("Their P&L", True),
                ("Effect", True),
            ]
        )
        body = "".join(
            _tr(
                [
                    (str(r.get("rule", "")), ""),
                    (str(r.get("deployed", ""))[:19], ""),
                    (str(r.get("retired") or "")[:19], ""),
                    (str(r.get("acted_on", "")), "num"),
                    (format_metric("total_pnl", r.get("acted_pnl")), "num"),
                    (str(r.get("kept", "")), "num"),
                    (format_metric("total_pnl", r.get("kept_pnl")), "num"),
                    (format_metric("total_pnl", r.get("effect")), "num"),
                ]
            )
            for r in rules
        )
        parts.append(f"<table>{head}<tbody>{body}</tbody></table>")
    comparison = selfmod.get("comparison")
    if comparison:
        with_rules = comparison.get("with_rules") or {}
        without = comparison.get("without_rules") or {}
        parts.append(
            f"<h3>From the first deployment ({esc(str(comparison.get('from', '')))}) to the "
            "end: this run, and the same period replayed without self-modification</h3>"
        )
        head = _thead([("Metric", False), ("With the rules", True), ("Without", True)])
        body = "".join(
            _tr(
                [
                    (_label(k), ""),
                    (format_metric(k, with_rules.get(k)), "num"),
                    (format_metric(k, without.get(k)), "num"),
                ]
            )
            for k in with_rules
            if not isinstance(with_rules.get(k), Mapping | list)
        )
        parts.append(f"<table>{head}<tbody>{body}</tbody></table>")
    parts.append("</section>")
    return "".join(parts)


def _trades_section(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return '<section><h2>Trades</h2><p class="muted">No trades.</p></section>'
    shown = rows[-LAST_TRADES:]
    headers = (
        ("Exit (UTC)", False),
        ("Entry (UTC)", False),
        ("Symbol", False),
        ("Side", False),
        ("Qty", True),
        ("Entry", True),
        ("Exit", True),
        ("P&L", True),
        ("Return", True),
        ("Commission", True),
        ("Bars", True),
        ("Exit reason", False),
        ("Regime", False),
        ("Confidence", True),
        ("Trade", False),
    )
    body = []
    for r in shown:
        cells = (
            (r["exit_time"], ""),
            (r["entry_time"], ""),
            (r["symbol"], ""),
            (r["side"], ""),
            (f"{r['quantity']:,}", "num"),
            (_price(r["entry_price"]), "num"),
            (_price(r["exit_price"]), "num"),
            (format_metric("pnl", r["pnl"]), f"num {_sign_class(r['pnl'])}"),
            (format_metric("return_pct", r["return_pct"]), f"num {_sign_class(r['pnl'])}"),
            (format_metric("commission", r["commission"]), "num"),
            (f"{r['bars_held']:,}", "num"),
            (r["exit_reason"], ""),
            (r["regime"], ""),
            (
                _trim(f"{r['confidence']:.3f}") if math.isfinite(r["confidence"]) else _MISSING,
                "num",
            ),
            (r["trade_id"], "muted"),
        )
        body.append(_tr(cells))
    caption = (
        f"Last {len(shown)} of {len(rows):,} trades, oldest first."
        if len(rows) > len(shown)
        else f"All {len(rows):,} trades, oldest first."
    )
    return (
        f'<section><h2>Trades</h2><p class="muted">{_esc(caption)}</p>'
        f'<div class="scroll"><table>{_thead(headers)}<tbody>{"".join(body)}</tbody></table>'
        "</div></section>"
    )


def _group_table(rows: Sequence[dict[str, Any]], key: str, heading: str) -> str:
    if not rows:
        return '<p class="muted">No trades.</p>'
    groups: dict[str, list[float]] = {}
    for r in rows:
        groups.setdefault(r[key], []).append(r["pnl"])
    summary = []
    for name, pnls in groups.items():
        wins = sum(1 for p in pnls if p > 0)
        total = math.fsum(p for p in pnls if not math.isnan(p))
        summary.append((name, len(pnls), wins / len(pnls), total))
    summary.sort(key=lambda s: (-s[3], s[0]))
    headers = ((heading, False), ("Trades", True), ("Win rate", True), ("Total P&L", True))
    body = "".join(
        _tr(
            (
                (name, ""),
                (f"{count:,}", "num"),
                (format_metric("win_rate", win_rate), "num"),
                (format_metric("pnl", total), f"num {_sign_class(total)}"),
            )
        )
        for name, count, win_rate, total in summary
    )
    return f'<div class="scroll"><table>{_thead(headers)}<tbody>{body}</tbody></table></div>'


def _kv_table(rows: Sequence[tuple[str, str]]) -> str:
    if not rows:
        return f'<p class="muted">{_MISSING}</p>'
    body = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in rows)
    return f'<table class="kv"><tbody>{body}</tbody></table>'


def _thead(headers: Sequence[tuple[str, bool]]) -> str:
    cells = "".join(
        f'<th class="num">{_esc(h)}</th>' if numeric else f"<th>{_esc(h)}</th>"
        for h, numeric in headers
    )
    return f"<thead><tr>{cells}</tr></thead>"


def _tr(cells: Sequence[tuple[str, str]]) -> str:
    tds = "".join(
        f'<td class="{css.strip()}">{_esc(text)}</td>' if css.strip() else f"<td>{_esc(text)}</td>"
        for text, css in cells
    )
    return f"<tr>{tds}</tr>"


def _meta_value(key: str, value: object) -> str:
    if isinstance(value, list | tuple | set | frozenset | np.ndarray):
        items = sorted(value, key=str) if isinstance(value, set | frozenset) else list(value)
        if not items:
            return _MISSING
        head = ", ".join(format_metric(key, v) for v in items[:25])
        return head if len(items) <= 25 else f"{head} … (+{len(items) - 25:,} more)"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={format_metric(str(k), v)}" for k, v in value.items()) or _MISSING
    return format_metric(key, value)


def _notes(notes: object) -> list[str]:
    if notes is None:
        return []
    if isinstance(notes, str | bytes) or not isinstance(notes, Iterable):
        return [_text(notes)]
    return [_text(n) for n in notes]


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _label(key: str) -> str:
    words = [_LABEL_WORDS.get(w, w) for w in str(key).split("_") if w]
    text = " ".join(words)
    return text[:1].upper() + text[1:]


def _price(value: float) -> str:
    if not math.isfinite(value):
        return _MISSING
    # Sub-dollar stocks trade in 1/100 of a cent.
    return f"{value:,.2f}" if abs(value) >= 1 else f"{value:.4f}"


def _sign_class(value: float) -> str:
    if value > 0:
        return "pos"
    if value < 0:
        return "neg"
    return ""


def _trim(text: str) -> str:
    return text.rstrip("0").rstrip(".") if "." in text else text


def _esc(text: str) -> str:
    return html.escape(text, quote=True)

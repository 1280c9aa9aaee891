"""The report's HTML page: one self-contained file, the chart inlined as a data URI."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from sovereign.report_format import MISSING, as_text, format_metric, trim_zeros

LAST_TRADES = 50
"""Trades listed in the HTML report."""
_LABEL_WORDS = {"cagr": "CAGR", "pnl": "P&L", "id": "ID", "atr": "ATR", "utc": "UTC"}

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


def html_page(
    *,
    title: str,
    metrics: Mapping[str, object],
    meta: Mapping[str, object],
    rows: Sequence[dict[str, Any]],
    png: bytes,
) -> str:
    """The whole page but self-modification's section, which goes in before ``</main>``."""
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


def selfmod_section(selfmod: Mapping[str, Any]) -> str:
    """The self-modification section: the modifications, each rule's record, the comparison."""
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
        parts.append(_rules_record(rules))
    comparison = selfmod.get("comparison")
    if comparison:
        parts.append(_selfmod_comparison(comparison))
    parts.append("</section>")
    return "".join(parts)


def _rules_record(rules: Sequence[Mapping[str, Any]]) -> str:
    """Each deployed rule's shadow record: what the trades it acted on made, and its effect."""
    intro = (
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
    return f"{intro}<table>{head}<tbody>{body}</tbody></table>"


def _selfmod_comparison(comparison: Mapping[str, Any]) -> str:
    """The run from the first deployment on, beside the same period without the rules."""
    with_rules = comparison.get("with_rules") or {}
    without = comparison.get("without_rules") or {}
    title = (
        f"<h3>From the first deployment ({_esc(str(comparison.get('from', '')))}) to the "
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
    return f"{title}<table>{head}<tbody>{body}</tbody></table>"


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
                trim_zeros(f"{r['confidence']:.3f}") if math.isfinite(r["confidence"]) else MISSING,
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
        return f'<p class="muted">{MISSING}</p>'
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
            return MISSING
        head = ", ".join(format_metric(key, v) for v in items[:25])
        return head if len(items) <= 25 else f"{head} … (+{len(items) - 25:,} more)"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={format_metric(str(k), v)}" for k, v in value.items()) or MISSING
    return format_metric(key, value)


def _notes(notes: object) -> list[str]:
    if notes is None:
        return []
    if isinstance(notes, str | bytes) or not isinstance(notes, Iterable):
        return [as_text(notes)]
    return [as_text(n) for n in notes]


def _label(key: str) -> str:
    words = [_LABEL_WORDS.get(w, w) for w in str(key).split("_") if w]
    text = " ".join(words)
    return text[:1].upper() + text[1:]


def _price(value: float) -> str:
    if not math.isfinite(value):
        return MISSING
    # Sub-dollar stocks trade in 1/100 of a cent.
    return f"{value:,.2f}" if abs(value) >= 1 else f"{value:.4f}"


def _sign_class(value: float) -> str:
    if value > 0:
        return "pos"
    if value < 0:
        return "neg"
    return ""


def _esc(text: str) -> str:
    return html.escape(text, quote=True)

"""How the report shows values: metrics for people, and plain values for JSON.

The number formats here are part of the report's files (``metrics.json``, ``report.html``)
and of the terminal summary, so they are fixed: the same values always read the same.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Mapping
from typing import Any

import msgspec
import numpy as np

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


MISSING = "—"
"""Shown for a missing value (None, NaN, an empty list)."""


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
        return MISSING
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, int | float | np.integer | np.floating):
        number = float(value)
        if math.isnan(number):
            return MISSING
        if math.isinf(number):
            return "∞" if number > 0 else "-∞"
        if _is_fraction(key):
            return unsigned_zero(f"{number * 100:,.2f}%")
        if _is_money(key):
            return unsigned_zero(f"{number:,.2f}")
        if isinstance(value, int | np.integer):
            return f"{int(value):,}"
        return trim_zeros(f"{number:,.4f}")
    if isinstance(value, str | bytes):
        return as_text(value)
    return json.dumps(json_safe(value), ensure_ascii=False, sort_keys=True)


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


def unsigned_zero(text: str) -> str:
    # "-0.000000" (a tiny negative rounded away) reads as zero.
    if text.startswith("-") and not text[1:].strip("0.,%"):
        return text[1:]
    return text


def json_safe(value: object) -> Any:
    if value is None or isinstance(value, str | bool):
        return value
    if isinstance(value, bytes):
        return as_text(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, set | frozenset):
        return [json_safe(v) for v in sorted(value, key=str)]
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, np.datetime64):
        return str(value)
    if isinstance(value, msgspec.Struct):
        return json_safe(msgspec.to_builtins(value))
    return str(value)


def as_text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def trim_zeros(text: str) -> str:
    return text.rstrip("0").rstrip(".") if "." in text else text

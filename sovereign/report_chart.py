"""The report's chart: equity and drawdown, with self-modification's timeline on it."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd


def selfmod_markers(selfmod: Mapping[str, Any] | None) -> list[tuple[int, str, str]]:
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


def equity_png(
    ts_ns: np.ndarray,
    equity: np.ndarray,
    title: str,
    *,
    markers: Sequence[tuple[int, str, str]] = (),
) -> bytes:
    """Equity over drawdown, with the ``markers`` (time, label, colour) as dashed lines."""
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

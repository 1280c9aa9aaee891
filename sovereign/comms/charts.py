"""Small charts that go out with notifications, drawn off-screen into PNG bytes.

Pure functions of their inputs: a notifier (Telegram, say) decides whether and how to send
the bytes.
"""

from __future__ import annotations

import io

import numpy as np

_LINE = "#1f5fa8"
_SHADE = "#f0b429"


def render_equity_png(
    ts_ns: np.ndarray,
    equity: np.ndarray,
    *,
    title: str,
    highlight_from_ns: int | None = None,
) -> bytes:
    """Draw an equity curve as an 800x350 PNG and return its bytes.

    Parameters
    ----------
    ts_ns
        Point times, ns since the Unix epoch (UTC); one-dimensional.
    equity
        Equity at each time; the same length as ``ts_ns``.
    title
        Drawn above the chart, verbatim (a ``$`` is not taken as mathtext).
    highlight_from_ns
        If given, the span from this time to the last point is shaded (the current day).

    Raises
    ------
    ValueError
        If there are no points, or the two arrays do not match.
    """
    ts = np.asarray(ts_ns)
    values = np.asarray(equity, dtype=np.float64)
    if ts.ndim != 1 or values.ndim != 1 or len(ts) != len(values):
        raise ValueError(
            f"equity chart needs two 1-D arrays of equal length, got shapes {ts.shape} "
            f"and {values.shape}"
        )
    if len(values) == 0:
        raise ValueError("cannot draw an equity chart with no points")

    # Imported here: matplotlib is slow to import and most processes never draw. As in the
    # report, the object-oriented API on an Agg canvas never touches pyplot's global figure
    # registry or a display, so the figure is freed with its last reference when this
    # returns: there is nothing to close and nothing leaks across calls.
    from matplotlib import dates as mdates
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    fig = Figure(figsize=(8, 3.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.set_title(title.replace("$", r"\$"), fontsize=11, loc="left")

    x = ts.astype(np.int64).astype("datetime64[ns]")
    # A single point draws no line: give it a marker so the chart is not empty.
    ax.plot(x, values, color=_LINE, linewidth=1.3, marker="o" if len(x) == 1 else "")
    if x[0] == x[-1]:
        # matplotlib widens a zero-width date range to years; an hour either side reads better.
        hour = np.timedelta64(1, "h")
        ax.set_xlim(x[0] - hour, x[-1] + hour)

    if highlight_from_ns is not None:
        start = np.datetime64(int(highlight_from_ns), "ns")
        if start < x[-1]:
            ax.axvspan(start, x[-1], color=_SHADE, alpha=0.18, linewidth=0)
        else:
            # The day has one point so far (or starts after it): a span would have no width.
            ax.axvline(start, color=_SHADE, linewidth=1.5)

    # Explicit UTC, so the axis does not depend on matplotlib's configured timezone.
    locator = mdates.AutoDateLocator(tz=mdates.UTC)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=mdates.UTC))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:,.0f}"))
    ax.set_xlabel("Time (UTC)", fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(True, color="#dddddd", linewidth=0.7)
    ax.spines[["top", "right"]].set_visible(False)

    buffer = io.BytesIO()
    # No "Software" stamp, so the image depends only on the data and the renderer.
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()

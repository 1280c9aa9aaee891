"""Notification charts: PNG bytes for any non-empty series, a clear error for an empty one."""

from __future__ import annotations

import numpy as np
import pytest

from sovereign.comms.charts import render_equity_png

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MIN = 60 * 1_000_000_000
T0 = 1_704_205_800 * 1_000_000_000  # 2024-01-02 14:30 UTC


def _png_size(png: bytes) -> tuple[int, int]:
    # The IHDR chunk comes first: width and height are big-endian at bytes 16..24.
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def test_render_equity_png_many_points_is_a_small_png() -> None:
    ts = T0 + np.arange(500, dtype=np.int64) * MIN
    equity = 100_000.0 + np.cumsum(np.sin(np.arange(500) / 20.0)) * 10
    png = render_equity_png(ts, equity, title="daily $ summary", highlight_from_ns=int(ts[300]))
    assert png.startswith(PNG_SIGNATURE)
    assert _png_size(png) == (800, 350)


def test_render_equity_png_is_deterministic() -> None:
    ts = T0 + np.arange(10, dtype=np.int64) * MIN
    equity = np.linspace(100_000.0, 101_000.0, 10)
    assert render_equity_png(ts, equity, title="t") == render_equity_png(ts, equity, title="t")


@pytest.mark.parametrize("highlight", [None, T0, T0 + MIN])
def test_render_equity_png_one_point_works(highlight: int | None) -> None:
    png = render_equity_png(
        np.array([T0]), np.array([100_000.0]), title="one", highlight_from_ns=highlight
    )
    assert png.startswith(PNG_SIGNATURE)


def test_render_equity_png_no_points_raises_value_error() -> None:
    with pytest.raises(ValueError, match="no points"):
        render_equity_png(np.array([], dtype=np.int64), np.array([]), title="empty")


def test_render_equity_png_mismatched_lengths_raise_value_error() -> None:
    with pytest.raises(ValueError, match="equal length"):
        render_equity_png(np.array([T0, T0 + MIN]), np.array([1.0]), title="bad")


def test_render_equity_png_leaves_no_figure_open() -> None:
    plt = pytest.importorskip("matplotlib.pyplot")
    before = plt.get_fignums()
    render_equity_png(np.array([T0, T0 + MIN]), np.array([1.0, 2.0]), title="t")
    assert plt.get_fignums() == before

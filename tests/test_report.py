"""The end-of-run report, written into a temporary directory."""

from __future__ import annotations

import csv
import json
import math
import re
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sovereign.report import TRADE_COLUMNS, ReportPaths, write_report
from sovereign.report_format import format_metric, format_summary_table

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DAY_NS = 86_400 * 1_000_000_000
T0 = 1_704_205_800 * 1_000_000_000  # 2024-01-02T14:30:00Z

METRICS: dict[str, object] = {
    "total_return": 0.1234,
    "cagr": None,
    "win_rate": 0.5,
    "max_drawdown": -0.0825,
    "sharpe": 1.234567,
    "profit_factor": float("nan"),
    "final_equity": 112_345.678,
    "trades": 4,
    "per_symbol": {"AAPL": 2, "MSFT": 1},
}
META: dict[str, object] = {
    "run_id": "run-42",
    "runtime": "local",
    "data_source": "bundled sample",
    "symbols": ["AAPL", "MSFT", "NVDA"],
    "period": "2024-01-02 .. 2024-03-01",
    "bars": 60,
    "notes": ["no look-ahead: <checked>", "fills at next open"],
}


def equity_curve(steps: int = 60) -> tuple[np.ndarray, np.ndarray]:
    ts = T0 + np.arange(steps, dtype=np.int64) * DAY_NS
    rng = np.random.default_rng(7)
    equity = 100_000.0 * np.exp(np.cumsum(rng.normal(0.001, 0.01, steps)))
    return ts, equity


def trades_frame() -> pd.DataFrame:
    # Deliberately out of order, with extra columns the report must ignore, and two trades
    # that exit together (the symbol breaks the tie).
    return pd.DataFrame(
        {
            "run_id": ["run-42"] * 4,
            "shard": [1, 0, 0, 1],
            "trade_id": ["t3", "t1", "t2", "t4"],
            "symbol": ["NVDA", "MSFT", "AAPL", "AAPL"],
            "side": ["LONG", "SHORT", "LONG", "LONG"],
            "quantity": [5, 10, 20, 15],
            "entry_ts": [T0 + 3 * DAY_NS, T0, T0 + DAY_NS, T0 + 8 * DAY_NS],
            "exit_ts": [T0 + 9 * DAY_NS, T0 + 4 * DAY_NS, T0 + 4 * DAY_NS, T0 + 12 * DAY_NS],
            "entry_price": [480.125, 370.5, 185.25, 190.0],
            "exit_price": [495.0, 375.0, 188.0, 186.5],
            "pnl": [74.375, -45.0, 55.0, -1e-9],
            "commission": [1.0, 1.0, 1.0, 1.0],
            "return_pct": [0.031, -0.0121, 0.0148, -0.0184],
            "bars_held": [6, 4, 3, 4],
            "exit_reason": ["take_profit", "stop", "take_profit", "regime_change"],
            "regime": ["TrendingUp", "Volatile", "TrendingUp", "Ranging"],
            "confidence": [0.71, 0.55, 0.62, float("nan")],
            "f_atr": [3.2, 2.1, 1.4, 1.5],
        }
    )


def report(out_dir: Path, trades: pd.DataFrame | None = None) -> ReportPaths:
    ts, equity = equity_curve()
    return write_report(
        out_dir,
        title="Backtest <sample> & friends",
        metrics=METRICS,
        trades=trades_frame() if trades is None else trades,
        ts=ts,
        equity=equity,
        meta=META,
    )


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> ReportPaths:
    return report(tmp_path_factory.mktemp("report") / "out")


def test_write_report_writes_four_files(written: ReportPaths) -> None:
    for path in (written.metrics_json, written.trades_csv, written.equity_png, written.report_html):
        assert path.is_file()
        assert path.stat().st_size > 0
    assert sorted(p.name for p in written.metrics_json.parent.iterdir()) == [
        "equity.png",
        "metrics.json",
        "report.html",
        "trades.csv",
    ]


def test_metrics_json_is_strict_sorted_json_with_meta(written: ReportPaths) -> None:
    text = written.metrics_json.read_text()
    assert "NaN" not in text and "Infinity" not in text

    def refuse(constant: str) -> None:
        raise AssertionError(f"non-standard JSON constant {constant}")

    document = json.loads(text, parse_constant=refuse)
    assert list(document) == sorted(document)
    assert document["profit_factor"] is None
    assert document["cagr"] is None
    assert document["total_return"] == 0.1234
    assert document["meta"]["run_id"] == "run-42"
    assert document["meta"]["symbols"] == ["AAPL", "MSFT", "NVDA"]


def test_metrics_json_converts_numpy_values(tmp_path: Path) -> None:
    ts, equity = equity_curve(5)
    paths = write_report(
        tmp_path,
        title="t",
        metrics={"trades": np.int64(3), "sharpe": np.float64(np.inf), "ok": np.bool_(True)},
        trades=pd.DataFrame(),
        ts=ts,
        equity=equity,
        meta={"weights": np.array([0.5, np.nan]), "tags": {"b", "a"}},
    )
    document = json.loads(paths.metrics_json.read_text())
    assert document == {
        "ok": True,
        "sharpe": None,
        "trades": 3,
        "meta": {"tags": ["a", "b"], "weights": [0.5, None]},
    }


def test_trades_csv_is_ordered_formatted_and_without_run_details(written: ReportPaths) -> None:
    with written.trades_csv.open(newline="") as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == TRADE_COLUMNS
    body = [dict(zip(rows[0], row, strict=True)) for row in rows[1:]]
    assert [r["trade_id"] for r in body] == ["t2", "t1", "t3", "t4"]
    first = body[0]
    assert first["entry_time"] == "2024-01-03T14:30:00Z"
    assert first["exit_time"] == "2024-01-06T14:30:00Z"
    assert first["entry_price"] == "185.250000"
    assert first["quantity"] == "20"
    assert body[3]["pnl"] == "0.000000"  # a rounding-sized loss is not "-0.000000"
    assert body[3]["confidence"] == ""  # NaN
    iso = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
    assert all(iso.match(r["entry_time"]) and iso.match(r["exit_time"]) for r in body)
    raw = written.trades_csv.read_bytes()
    assert b"run-42" not in raw and b"\r\n" not in raw


def test_trades_csv_is_byte_identical_across_runs_and_input_orders(tmp_path: Path) -> None:
    first = report(tmp_path / "a")
    shuffled = trades_frame().sample(frac=1.0, random_state=3).reset_index(drop=True)
    shuffled["shard"] = 0  # another shard layout
    shuffled["run_id"] = "run-other-runtime"
    second = report(tmp_path / "b", shuffled)
    assert first.trades_csv.read_bytes() == second.trades_csv.read_bytes()
    assert first.metrics_json.read_bytes() == second.metrics_json.read_bytes()


def test_trades_missing_a_column_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="regime"):
        report(tmp_path, trades_frame().drop(columns=["regime"]))


def test_equity_png_is_a_1200_by_700_png(written: ReportPaths) -> None:
    data = written.equity_png.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1200, 700)


def test_report_html_is_self_contained(written: ReportPaths) -> None:
    page = written.report_html.read_text()
    assert "data:image/png;base64," in page
    assert "<script" not in page
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page)
    # Text is escaped.
    assert "Backtest &lt;sample&gt; &amp; friends" in page
    assert "<sample>" not in page
    # Metrics, formatted.
    assert "12.34%" in page  # total_return
    assert "50.00%" in page  # win_rate
    assert "-8.25%" in page  # max_drawdown
    assert "112,345.68" in page  # final_equity
    assert "1.2346" in page  # sharpe
    assert ">—<" in page  # None / NaN
    # Meta, trades, summaries and notes.
    assert "run-42" in page and "bundled sample" in page and "AAPL, MSFT, NVDA" in page
    assert "regime_change" in page and "2024-01-14T14:30:00Z" in page
    assert "By symbol" in page and "By exit reason" in page
    assert "no look-ahead: &lt;checked&gt;" in page


def test_report_html_embeds_the_chart_written_to_disk(written: ReportPaths) -> None:
    import base64

    page = written.report_html.read_text()
    encoded = re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    assert encoded is not None
    assert base64.b64decode(encoded.group(1)) == written.equity_png.read_bytes()


def test_report_html_lists_only_the_last_trades(tmp_path: Path) -> None:
    base = trades_frame().iloc[[0]]
    many = pd.concat([base] * 60, ignore_index=True)
    many["trade_id"] = [f"t{i:03d}" for i in range(60)]
    many["exit_ts"] = T0 + np.arange(60, dtype=np.int64) * DAY_NS
    page = report(tmp_path, many).report_html.read_text()
    assert "Last 50 of 60 trades" in page
    assert "t009" not in page and "t010" in page and "t059" in page


@pytest.mark.parametrize(
    "trades", [pd.DataFrame(), pd.DataFrame(columns=[*TRADE_COLUMNS, "entry_ts", "exit_ts"])]
)
def test_empty_trades_write_a_header_only_csv(tmp_path: Path, trades: pd.DataFrame) -> None:
    paths = report(tmp_path, trades)
    assert paths.trades_csv.read_text() == ",".join(TRADE_COLUMNS) + "\n"
    assert "No trades." in paths.report_html.read_text()


def test_empty_equity_still_draws_a_chart(tmp_path: Path) -> None:
    paths = write_report(
        tmp_path,
        title="empty",
        metrics={},
        trades=pd.DataFrame(),
        ts=np.array([], dtype=np.int64),
        equity=np.array([], dtype=np.float64),
        meta={},
    )
    assert paths.equity_png.read_bytes()[:8] == PNG_SIGNATURE
    assert json.loads(paths.metrics_json.read_text()) == {"meta": {}}


def test_dollar_signs_in_the_title_are_not_mathtext(tmp_path: Path) -> None:
    title = "Costs $1 & $x_{ $"  # unbalanced mathtext if taken literally
    paths = write_report(
        tmp_path,
        title=title,
        metrics={},
        trades=pd.DataFrame(),
        ts=np.arange(3, dtype=np.int64) * DAY_NS,
        equity=np.ones(3),
        meta={},
    )
    assert "Costs $1 &amp; $x_{ $" in paths.report_html.read_text()


def test_mismatched_curve_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="equal length"):
        write_report(
            tmp_path,
            title="bad",
            metrics={},
            trades=pd.DataFrame(),
            ts=np.arange(3, dtype=np.int64),
            equity=np.ones(2),
            meta={},
        )


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("win_rate", 0.5, "50.00%"),
        ("hit_rate", 0.125, "12.50%"),
        ("max_drawdown", -0.1, "-10.00%"),
        ("final_equity", 1234567.891, "1,234,567.89"),
        ("net_pnl", -0.001, "0.00"),
        ("sharpe", 1.5, "1.5"),
        ("trades", 1200, "1,200"),
        ("cagr", None, "—"),
        ("sortino", float("nan"), "—"),
        ("profit_factor", float("inf"), "∞"),
        ("halted", False, "no"),
        ("mode", "backtest", "backtest"),
    ],
)
def test_format_metric(key: str, value: object, expected: str) -> None:
    assert format_metric(key, value) == expected


def test_format_summary_table_aligns_columns() -> None:
    table = format_summary_table(METRICS)
    lines = table.splitlines()
    assert lines[0].split() == ["metric", "value"]
    assert len({len(line) for line in lines}) == 1  # every line padded to one width
    rows = {line.split()[0]: line.split()[-1] for line in lines[2:]}
    assert rows["total_return"] == "12.34%"
    assert rows["final_equity"] == "112,345.68"
    assert rows["cagr"] == "—"
    assert "per_symbol" not in rows  # breakdowns belong in the report files
    assert not table.endswith("\n")
    assert math.isfinite(float(rows["sharpe"]))

"""The ``sovereign`` command as users run it: real subprocesses, real files, real Ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import gcs_address

METRIC_KEYS = {
    "win_rate",
    "profit_factor",
    "sharpe",
    "sortino",
    "max_drawdown",
    "avg_trade_duration",
    "total_trades",
    "total_pnl",
}


def sovereign(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sovereign", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
    )


def test_backtest_json_prints_the_metrics_and_writes_the_report(tmp_path: Path) -> None:
    p = sovereign(
        "backtest",
        "--data",
        "sample",
        "--symbols",
        "AAPL,MSFT",
        "--start",
        "2004-01-01",
        "--end",
        "2010-12-31",
        "--runtime",
        "local",
        "--out",
        "rep",
        "--json",
        cwd=tmp_path,
    )
    assert p.returncode == 0, p.stderr
    metrics = json.loads(p.stdout)
    assert metrics.keys() >= METRIC_KEYS
    assert 0 <= metrics["win_rate"] <= 1 and 0 <= metrics["max_drawdown"] < 1
    assert metrics["total_trades"] > 0
    for name in ("metrics.json", "trades.csv", "equity.png", "report.html"):
        assert (tmp_path / "rep" / name).exists()
    # The default state directory is .sovereign/ in the working directory.
    assert list((tmp_path / ".sovereign" / "trade_memory").glob("shard-*.sqlite"))
    assert "100%" in p.stderr  # the progress bar


def test_looser_constitution_in_config_is_a_startup_error(tmp_path: Path) -> None:
    cfg = tmp_path / "loose.toml"
    cfg.write_text("[constitution]\nmax_position_size = 0.10\n")
    p = sovereign("backtest", "--config", str(cfg), "--out", "rep", cwd=tmp_path)
    assert p.returncode == 2
    assert "max_position_size = 0.1 would loosen the constitution" in p.stderr
    assert "at most 0.05" in p.stderr
    assert not (tmp_path / "rep").exists()


@pytest.mark.parametrize(
    ("toml", "needle"),
    [
        ("[engine]\nshards = 0\n", "shards must be between 1 and 1024"),
        ("[engine]\nshardz = 2\n", "unknown field `shardz`"),
        ("[sim]\nslippage_bps = 'lots'\n", "Expected `float`, got `str` - at `sim.slippage_bps`"),
        ("[strategy\n", "not valid TOML"),
    ],
)
def test_bad_config_values_name_the_field(tmp_path: Path, toml: str, needle: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(toml)
    p = sovereign("backtest", "--config", str(cfg), cwd=tmp_path)
    assert p.returncode == 2
    assert needle in p.stderr


def test_csv_with_bad_rows_loads_the_good_ones_and_reports_the_bad(tmp_path: Path) -> None:
    rows = ["timestamp,symbol,open,high,low,close,volume"]
    price = 100.0
    for day in range(1, 29):
        price *= 1.01
        rows.append(f"2024-02-{day:02d},AAA,{price},{price * 1.01},{price * 0.99},{price},1000")
    rows += [
        "2024-03-01,AAA,,101,99,100,1000",  # NaN price
        "2024-03-04,AAA,-5,101,99,100,1000",  # non-positive
        "2024-03-05,AAA,100,99,101,100,1000",  # high < low
        "2024-03-06,AAA,100,101,99,100,-3",  # negative volume
        "2024-02-10,AAA,100,101,99,100,1000",  # duplicate time
        "2024-01-15,AAA,100,101,99,100,1000",  # out of order
    ]
    (tmp_path / "bars.csv").write_text("\n".join(rows) + "\n")
    p = sovereign("backtest", "--data", "bars.csv", "--out", "rep", "--shards", "1", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "34 rows: 28 accepted, 6 rejected" in p.stdout
    for reason in (
        "nan_price",
        "nonpositive_price",
        "high_lt_low",
        "negative_volume",
        "duplicate_timestamp",
        "out_of_order_timestamp",
    ):
        assert reason in p.stdout
    report = (tmp_path / "rep" / "report.html").read_text()
    assert "nan_price" in report


def test_missing_data_file_is_a_clear_usage_error(tmp_path: Path) -> None:
    p = sovereign("backtest", "--data", "nope.csv", cwd=tmp_path)
    assert p.returncode == 2
    assert "nope.csv" in p.stderr


@pytest.mark.ray
def test_paper_session_on_ray_lists_named_actors_while_running(tmp_path: Path, ray_session) -> None:
    """The README's main job, connected to a running Ray with --address (as after
    `ray start --head`, where `--address auto` finds it)."""
    from ray.util.state import list_actors

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sovereign",
            "paper",
            "--broker",
            "sim",
            "--runtime",
            "ray",
            "--address",
            "auto",
            "--max-steps",
            "300",
            "--speed",
            "5000000",
            "--out",
            "paper",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
    )
    expected = {
        "sovereign/shard/0",
        "sovereign/shard/1",
        "sovereign/regime/0",
        "sovereign/guardian/0",
        "sovereign/gateway/0",
        "sovereign/monitor/0",
        "sovereign/operator/0",
    }
    seen: set[str] = set()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and not expected <= seen:
        alive = list_actors(
            address=gcs_address(),
            filters=[("state", "=", "ALIVE")],
            raise_on_missing_output=False,
        )
        seen |= {a.name for a in alive if a.ray_namespace == "sovereign"}
        time.sleep(0.5)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert expected <= seen, f"saw only {sorted(seen)}"
    assert "paper" in out and "steps" in out
    assert "session paper-" in out  # console notifications
    assert (tmp_path / "paper" / "report.html").exists()
    assert json.loads((tmp_path / "paper" / "metrics.json").read_text())["meta"]["runtime"] == "ray"


def test_data_without_volume_needs_volume_confirmation_turned_off_explicitly(
    tmp_path: Path,
) -> None:
    p = sovereign("backtest", "--data", "sample:sp500", "--end", "1991-12-31", cwd=tmp_path)
    assert p.returncode == 2
    assert "has no volume" in p.stderr and "--no-volume-confirmation" in p.stderr
    ok = sovereign(
        "backtest",
        "--data",
        "sample:sp500",
        "--end",
        "1991-12-31",
        "--no-volume-confirmation",
        "--out",
        "rep",
        cwd=tmp_path,
    )
    assert ok.returncode == 0, ok.stderr
    assert "close-only source" in ok.stdout

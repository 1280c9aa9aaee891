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
        ("[risk]\nentry_limit_buffer = inf\n", "entry_limit_buffer must be in (0, 0.5], got inf"),
        ("[risk]\nentry_limit_buffer = nan\n", "entry_limit_buffer must be in (0, 0.5], got nan"),
        ("[risk]\nentry_limit_buffer = -0.01\n", "entry_limit_buffer must be in (0, 0.5]"),
        ("[risk]\nentry_limit_buffer = 1e300\n", "entry_limit_buffer must be in (0, 0.5]"),
        ("[risk]\nentry_limit_buffer = 0.0\n", "entry_limit_buffer must be in (0, 0.5]"),
        ("[risk]\nreview_after_losses = 0\n", "review_after_losses must be >= 1, got 0"),
        (
            "[engine]\napproval_ttl_s = 100000000000000000000\n",
            "approval_ttl_s must be between 1 and 86400",
        ),
        ("[engine]\napproval_ttl_s = 0\n", "approval_ttl_s must be between 1 and 86400"),
        ('[state]\nredis_url = "redis://:::bad"\n', "redis_url has a bad port"),
        ('[state]\nredis_url = "http://x"\n', "redis_url must start with redis://"),
        ('[state]\nredis_url = "redis://:pw@h:99999/0"\n', "redis_url has a bad port"),
        ('[state]\nredis_url = "redis://h/x"\n', "redis_url has a database that is not a number"),
        ('[state]\nredis_url = "unix://"\n', "redis_url needs the socket path"),
    ],
)
def test_bad_config_values_name_the_field(tmp_path: Path, toml: str, needle: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(toml)
    p = sovereign("backtest", "--config", str(cfg), cwd=tmp_path)
    assert p.returncode == 2
    assert needle in p.stderr
    assert "Traceback" not in p.stderr and "pw@" not in p.stderr


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
    # The actors, in Ray's own worker processes, kept the state where the user ran the
    # command (a relative --state resolved there), next to its audit key.
    state = tmp_path / ".sovereign"
    assert (state / "governance.sqlite").exists() and (state / "audit.key").exists()
    assert list((state / "trade_memory").glob("shard-*.sqlite"))


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


# -- BAD INPUT: exit code 2 and one clear line, never a traceback --


def _daily_csv(days: int = 40, symbol: str = "AAA") -> str:
    rows = ["timestamp,symbol,open,high,low,close,volume"]
    price = 100.0
    for i in range(days):
        price *= 1.01
        day = f"2024-{1 + i // 28:02d}-{1 + i % 28:02d}"
        rows.append(f"{day},{symbol},{price},{price * 1.01},{price * 0.99},{price},1000")
    return "\n".join(rows) + "\n"


def _refused(p: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr, p.stderr
    errors = [line for line in p.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, p.stderr
    for needle in needles:
        assert needle in errors[0], p.stderr


# Both session commands load data the same way; paper runs locally so nothing waits on Ray.
SESSIONS = [("backtest",), ("paper", "--broker", "sim", "--runtime", "local")]


@pytest.mark.parametrize("command", SESSIONS, ids=["backtest", "paper"])
def test_unreadable_data_files_are_usage_errors(tmp_path: Path, command: tuple[str, ...]) -> None:
    import gzip

    whole = gzip.compress(_daily_csv().encode())
    (tmp_path / "bad.csv.gz").write_bytes(whole[: len(whole) // 2])
    p = sovereign(*command, "--data", "bad.csv.gz", "--out", "rep", cwd=tmp_path)
    _refused(p, "bad.csv.gz", "cannot read")

    header, _, body = _daily_csv().partition("\n")
    dup = header + ",close\n" + body.replace(",1000\n", ",1000,5\n")
    (tmp_path / "dup.csv").write_text(dup)
    p = sovereign(*command, "--data", "dup.csv", "--out", "rep", cwd=tmp_path)
    _refused(p, "dup.csv", "duplicate column(s): close")
    assert not (tmp_path / "rep").exists()


@pytest.mark.parametrize("command", SESSIONS, ids=["backtest", "paper"])
@pytest.mark.parametrize(
    ("stamps", "needles"),
    [
        (["01/31/2020", "02/03/2020"], ["bad_timestamp=2", "YYYY-MM-DD", "01/31/2020"]),
        (["1580428800", "1580515200"], ["bad_timestamp=2", "ISO 8601", "1580428800"]),
    ],
    ids=["us-dates", "epochs"],
)
def test_every_row_rejected_says_why(
    tmp_path: Path, command: tuple[str, ...], stamps: list[str], needles: list[str]
) -> None:
    rows = ["timestamp,symbol,open,high,low,close,volume"]
    rows += [f"{ts},AAA,10,11,9,10.5,100" for ts in stamps]
    (tmp_path / "bars.csv").write_text("\n".join(rows) + "\n")
    p = sovereign(*command, "--data", "bars.csv", "--out", "rep", cwd=tmp_path)
    _refused(p, "all 2 rows were rejected", *needles)


def test_filters_that_leave_nothing_say_so(tmp_path: Path) -> None:
    (tmp_path / "bars.csv").write_text(_daily_csv())
    p = sovereign("backtest", "--data", "bars.csv", "--start", "2030-01-01", cwd=tmp_path)
    _refused(p, "no bars left after the filters", "40 rows passed validation")


def test_overlong_and_odd_symbols_are_rejected_rows_not_a_crash(tmp_path: Path) -> None:
    body = _daily_csv().rstrip("\n").split("\n")
    body.append(body[-1].replace("AAA", "X" * 120))
    body.append(body[-1].replace("X" * 120, "AA<script>"))
    (tmp_path / "bars.csv").write_text("\n".join(body) + "\n")
    p = sovereign("backtest", "--data", "bars.csv", "--out", "rep", "--shards", "1", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "42 rows: 40 accepted, 2 rejected" in p.stdout
    assert "rejected symbol_too_long: 1" in p.stdout and "rejected bad_symbol: 1" in p.stdout
    report = (tmp_path / "rep" / "report.html").read_text()
    assert "symbol_too_long" in report and "bad_symbol" in report


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("backtest", "--shards", "-3"), "--shards"),
        (("backtest", "--shards", "0"), "--shards"),
        (("backtest", "--shards", "2000"), "--shards"),
        (("backtest", "--shards", "two"), "--shards"),
        (("paper", "--speed", "nan"), "--speed"),
        (("paper", "--speed", "inf"), "--speed"),
        (("paper", "--speed", "-1"), "--speed"),
        (("paper", "--max-steps", "-5"), "--max-steps"),
        (("paper", "--max-steps", "0"), "--max-steps"),
        (("paper", "--poll-interval", "nan"), "--poll-interval"),
        (("paper", "--bar-interval", "0"), "--bar-interval"),
    ],
)
def test_bad_numeric_options_are_refused(
    tmp_path: Path, args: tuple[str, ...], needle: str
) -> None:
    # Small data and the local runtime, so a run that is wrongly accepted ends quickly.
    p = sovereign(
        *args, "--data", "synthetic:2x60", "--runtime", "local", "--out", "rep", cwd=tmp_path
    )
    _refused(p, f"argument {needle}")
    assert not (tmp_path / "rep").exists()


def test_unreachable_redis_is_a_clear_error_at_start(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # free once the socket closes: nothing listens there
    cfg = tmp_path / "redis.toml"
    cfg.write_text(f'[state]\nredis_url = "redis://:hunter2@127.0.0.1:{port}/0"\n')
    for args in (
        ("backtest", "--data", "synthetic:2x60", "--out", "rep"),
        ("constitution", "--account", "main"),
    ):
        p = sovereign(*args, "--config", str(cfg), cwd=tmp_path)
        _refused(p, "[state] redis_url", f"127.0.0.1:{port}")
        assert "hunter2" not in p.stderr
    assert not (tmp_path / "rep").exists()


def test_the_first_ctrl_c_ends_a_paper_session_cleanly_with_its_report(tmp_path: Path) -> None:
    """Ctrl-C in a paper session stops it after the step in progress: the session ends
    as if its data ended there, with its report written and exit code 0."""
    import re
    import signal

    from tests.kit import at_a_terminal

    cmd = at_a_terminal("sovereign", "paper", "--broker", "sim", "--runtime", "local")
    cmd += ["--speed", str(86_400 * 40), "--out", "paper", "--state", "state"]
    proc = subprocess.Popen(
        cmd,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
    )
    assert proc.stdout is not None
    started = ""
    while "steps, runtime local" not in started:
        line = proc.stdout.readline()
        assert line, proc.communicate(timeout=60)
        started += line
    time.sleep(3.0)  # some 120 bar times in
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    assert "stopping after this step" in out
    steps = int(re.search(r"paper \S+: (\d+) steps", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) steps, runtime local", started).group(1))  # type: ignore[union-attr]
    assert 0 < steps < total
    meta = json.loads((tmp_path / "paper" / "metrics.json").read_text())["meta"]
    assert meta["steps"] == steps

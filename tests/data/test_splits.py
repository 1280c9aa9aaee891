"""Tests for split detection, splits files and back-adjustment."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import sovereign  # noqa: F401  (pins threads before numpy does any work)
from sovereign.data import (
    SplitEvent,
    adjust_for_splits,
    detect_splits,
    load_ohlcv,
    load_splits_file,
)
from sovereign.data.splits import volume_is_unadjusted, volume_ratio_around


def bar_start(day: str) -> int:
    """Daily bar start: 09:30 New York on that date, in ns UTC."""
    return pd.Timestamp(f"{day} 09:30", tz="America/New_York").value


def new_york_day(ts: pd.Series) -> pd.Series:
    return (
        pd.to_datetime(ts, unit="ns", utc=True)
        .dt.tz_convert("America/New_York")
        .dt.strftime("%Y-%m-%d")
    )


@pytest.fixture(scope="module")
def raw_daily() -> pd.DataFrame:
    return load_ohlcv("sample:daily", split_adjust="off").frame


def random_walk(seed: int, n: int = 120, symbol: str = "XYZ", price: float = 60.0) -> pd.DataFrame:
    """Daily bars of a quiet random walk with unremarkable volume."""
    rng = np.random.default_rng(seed)
    close = price * np.exp(np.cumsum(rng.normal(0, 0.015, n)))
    prev = np.concatenate([[price], close[:-1]])
    opn = prev * np.exp(rng.normal(0, 0.004, n))
    high = np.maximum(opn, close) * (1 + rng.uniform(0, 0.01, n))
    low = np.minimum(opn, close) * (1 - rng.uniform(0, 0.01, n))
    days = pd.bdate_range("2021-01-04", periods=n)
    return pd.DataFrame(
        {
            "ts": [bar_start(d.strftime("%Y-%m-%d")) for d in days],
            "symbol": symbol,
            "open": opn,
            "high": high,
            "low": low,
            "close": close,
            "volume": rng.lognormal(np.log(1e6), 0.3, n).round(),
        }
    )


def apply_split(df: pd.DataFrame, at: int, ratio: float, *, volume_adjusted: bool) -> pd.DataFrame:
    """Turn adjusted bars into what a raw feed shows for a split at row ``at``."""
    raw = df.copy()
    before = raw.index < at
    for col in ["open", "high", "low", "close"]:
        raw.loc[before, col] *= ratio
    if not volume_adjusted:
        raw.loc[before, "volume"] /= ratio
    return raw


# -- DETECTION ON REAL DATA --


def test_detect_finds_exactly_the_three_real_splits(raw_daily: pd.DataFrame) -> None:
    events = detect_splits(raw_daily)

    found = [(e.symbol, new_york_day(pd.Series([e.ts]))[0], e.ratio) for e in events]
    assert found == [
        ("AAPL", "2000-06-21", 2.0),
        ("MSFT", "2003-02-18", 2.0),
        ("AAPL", "2005-02-28", 2.0),
    ]
    assert all(e.source == "detected" for e in events)
    assert events[0].ts == bar_start("2000-06-21")
    assert "open/prev_close=0.4988" in events[0].evidence
    assert "volume 1.31x" in events[0].evidence


def test_detect_leaves_the_real_aapl_crash_alone(raw_daily: pd.DataFrame) -> None:
    events = detect_splits(raw_daily)
    assert bar_start("2000-09-29") not in {e.ts for e in events}


def test_adjusted_daily_has_no_split_crashes_left(raw_daily: pd.DataFrame) -> None:
    adjusted = load_ohlcv("sample:daily").frame
    for symbol in ["AAPL", "MSFT"]:
        rows = adjusted[adjusted["symbol"] == symbol]
        ret = rows["close"].pct_change()
        crashes = new_york_day(rows["ts"][ret < -0.45]).tolist()
        assert crashes == (["2000-09-29"] if symbol == "AAPL" else [])
    # Bars from the last split on are untouched, earlier ones halved once per split.
    raw_aapl = raw_daily[raw_daily["symbol"] == "AAPL"].set_index("ts")["close"]
    adj_aapl = adjusted[adjusted["symbol"] == "AAPL"].set_index("ts")["close"]
    assert adj_aapl[bar_start("2005-02-28")] == raw_aapl[bar_start("2005-02-28")]
    assert adj_aapl[bar_start("2005-02-25")] == raw_aapl[bar_start("2005-02-25")] / 2
    assert adj_aapl[bar_start("2000-06-20")] == raw_aapl[bar_start("2000-06-20")] / 4


def test_adjusted_daily_keeps_yahoo_volume(raw_daily: pd.DataFrame) -> None:
    # Yahoo volume is already split-adjusted; multiplying it again would double history.
    adjusted = load_ohlcv("sample:daily").frame
    np.testing.assert_array_equal(adjusted["volume"], raw_daily["volume"])
    assert all("already adjusted" in e.evidence for e in load_ohlcv("sample:daily").splits)


# -- DETECTION ON SYNTHETIC SPLITS --


@pytest.mark.parametrize(("ratio", "seed"), [(3.0, 1), (0.1, 2), (2.0, 3), (1.5, 4), (5.0, 5)])
def test_detect_synthetic_split(ratio: float, seed: int) -> None:
    truth = random_walk(seed)
    raw = apply_split(truth, 70, ratio, volume_adjusted=True)

    events = detect_splits(raw)

    assert [(e.symbol, e.ts, e.ratio) for e in events] == [("XYZ", truth["ts"][70], ratio)]
    adjusted = adjust_for_splits(raw, events)
    for col in ["open", "high", "low", "close", "volume"]:
        np.testing.assert_allclose(adjusted[col], truth[col], rtol=1e-12)


def test_detect_one_to_ten_reverse_split_with_unadjusted_volume() -> None:
    truth = random_walk(7, price=2.0)
    raw = apply_split(truth, 60, 0.1, volume_adjusted=False)

    events = detect_splits(raw)
    assert [(e.ts, e.ratio) for e in events] == [(truth["ts"][60], 0.1)]
    adjusted = adjust_for_splits(raw, events)
    np.testing.assert_allclose(adjusted["close"], truth["close"], rtol=1e-12)
    # The raw volume drops ~10x at the event, so it is judged unadjusted and restated.
    np.testing.assert_allclose(adjusted["volume"], truth["volume"], rtol=1e-12)


def test_detect_ignores_crash_on_volume_surge() -> None:
    raw = apply_split(random_walk(8), 70, 2.0, volume_adjusted=True)
    raw.loc[70, "volume"] *= 8
    assert detect_splits(raw) == []


def test_detect_without_volume_says_so() -> None:
    raw = apply_split(random_walk(9), 70, 2.0, volume_adjusted=True)
    raw["volume"] = np.nan
    events = detect_splits(raw)
    assert [e.ratio for e in events] == [2.0]
    assert "volume unknown" in events[0].evidence


def test_detect_is_per_symbol() -> None:
    a = random_walk(10, symbol="AAA", price=50.0)
    b = apply_split(random_walk(11, symbol="BBB", price=100.0), 40, 4.0, volume_adjusted=True)
    both = pd.concat([a, b]).sort_values(["ts", "symbol"], kind="stable").reset_index(drop=True)
    events = detect_splits(both)
    assert [(e.symbol, e.ratio) for e in events] == [("BBB", 4.0)]


def test_volume_rule_needs_three_quarters_of_the_way() -> None:
    assert not volume_is_unadjusted(1.42, 2.0)  # AAPL 2000-06-21 in the bundled file
    assert volume_is_unadjusted(1.9, 2.0)
    assert volume_is_unadjusted(0.12, 0.1)
    assert not volume_is_unadjusted(float("nan"), 2.0)
    ts = np.arange(10, dtype=np.int64)
    assert np.isnan(volume_ratio_around(ts, np.ones(10), 3))  # too few bars before


def test_adjust_cumulates_events_and_returns_a_new_frame() -> None:
    df = random_walk(12, n=30)
    events = [
        SplitEvent(symbol="XYZ", ts=int(df["ts"][20]), ratio=3.0, source="file", evidence=""),
        SplitEvent(symbol="XYZ", ts=int(df["ts"][10]), ratio=2.0, source="file", evidence=""),
        SplitEvent(symbol="OTHER", ts=int(df["ts"][5]), ratio=2.0, source="file", evidence=""),
    ]
    before = df.copy()
    out = adjust_for_splits(df, events)

    pd.testing.assert_frame_equal(df, before)
    factor = np.where(df.index < 10, 6.0, np.where(df.index < 20, 3.0, 1.0))
    np.testing.assert_allclose(out["close"], df["close"] / factor, rtol=1e-15)
    assert (out["high"] >= np.maximum(out["open"], out["close"])).all()


# -- SPLITS FILE --


def test_splits_file_formats(tmp_path: Path) -> None:
    path = tmp_path / "splits.csv"
    path.write_text(
        "symbol,date,ratio\n"
        "# known events\n"
        "AAPL,2005-02-28,2:1\n"
        "\n"
        "XYZ,2021-06-01T13:30:00Z,1:10\n"
        "MSFT,2003-02-18,2\n"
        "ABC,2010-01-04,3:2\n"
    )
    events = load_splits_file(path)

    assert [(e.symbol, e.ts, e.ratio) for e in events] == [
        ("MSFT", bar_start("2003-02-18"), 2.0),
        ("AAPL", bar_start("2005-02-28"), 2.0),
        ("ABC", bar_start("2010-01-04"), 1.5),
        ("XYZ", pd.Timestamp("2021-06-01T13:30:00Z").value, 0.1),
    ]
    assert all(e.source == "file" for e in events)
    assert events[1].evidence == "splits.csv:3"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("AAPL,2005-02-30,2", r"line 3: cannot parse date '2005-02-30'"),
        ("AAPL,2005-02-28,two", r"line 3: bad ratio 'two'"),
        ("AAPL,2005-02-28,1:0", r"line 3: bad ratio '1:0'"),
        ("AAPL,2005-02-28,-2", r"line 3: bad ratio '-2'"),
        ("AAPL,2005-02-28,1", r"line 3: bad ratio '1'"),
        (",2005-02-28,2", r"line 3: empty symbol"),
        ("AAPL,2005-02-28", r"line 3: expected 3 fields"),
    ],
)
def test_splits_file_bad_line_names_it(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "splits.csv"
    path.write_text(f"symbol,date,ratio\nMSFT,2003-02-18,2\n{line}\n")
    with pytest.raises(ValueError, match=message):
        load_splits_file(path)


def test_splits_file_bad_header_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "splits.csv"
    path.write_text("ticker,day,factor\nAAPL,2005-02-28,2\n")
    with pytest.raises(ValueError, match="line 1: expected header"):
        load_splits_file(path)
    with pytest.raises(FileNotFoundError, match=r"missing\.csv"):
        load_splits_file(tmp_path / "missing.csv")


def test_splits_file_overrides_detection(tmp_path: Path) -> None:
    path = tmp_path / "splits.csv"
    path.write_text("symbol,date,ratio\nAAPL,2005-02-28,2:1\n")

    data = load_ohlcv("sample:daily", splits_file=path)

    assert [(e.symbol, e.ts, e.source) for e in data.splits] == [
        ("AAPL", bar_start("2005-02-28"), "file")
    ]
    f = data.frame
    aapl = f[f["symbol"] == "AAPL"]
    crashes = new_york_day(aapl["ts"][aapl["close"].pct_change() < -0.45]).tolist()
    # Only the file's event was applied: the 2000 split is still a raw -45% day.
    assert crashes == ["2000-06-21", "2000-09-29"]
    msft = f[f["symbol"] == "MSFT"]
    assert (msft["close"].pct_change() < -0.45).sum() == 1

"""Tests for the OHLCV loader and the bundled samples."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import sovereign  # noqa: F401  (pins threads before numpy does any work)
from sovereign.data import SAMPLES, LoadedData, generate, load_ohlcv, sample_path

DAILY_SHA256 = "e53d660874259c8a24af2e7f87299f0000952372ab1492ddf237d46793f1118c"


def utc(text: str) -> int:
    return pd.Timestamp(text).value


def write_csv(path: Path, body: str) -> Path:
    path.write_text("timestamp,symbol,open,high,low,close,volume\n" + body)
    return path


@pytest.fixture(scope="module")
def daily() -> LoadedData:
    return load_ohlcv("sample:daily")


def test_sample_files_ship_with_the_package() -> None:
    assert set(SAMPLES) == {"daily", "hourly", "minute", "sp500"}
    for name in SAMPLES:
        assert sample_path(name).is_file()
    digest = hashlib.sha256(sample_path("daily").read_bytes()).hexdigest()
    assert digest == DAILY_SHA256
    assert (sample_path().parent / "README.md").is_file()


def test_load_daily_sample_shape_and_interval(daily: LoadedData) -> None:
    assert daily.source == "sample:daily"
    assert daily.symbols == ["AAPL", "FB", "GOOG", "IBM", "MSFT"]
    assert daily.validation.total_rows == 12_154
    assert daily.validation.rejected == {}
    assert len(daily.frame) == 12_154
    assert daily.interval_s == 23_400
    counts = daily.frame["symbol"].value_counts().to_dict()
    assert counts == {"AAPL": 3270, "IBM": 3270, "MSFT": 3270, "GOOG": 2148, "FB": 196}


def test_load_daily_frame_dtypes_and_order(daily: LoadedData) -> None:
    f = daily.frame
    assert list(f.columns) == ["ts", "symbol", "open", "high", "low", "close", "volume"]
    assert f["ts"].dtype == np.int64
    assert pd.api.types.is_string_dtype(f["symbol"].dtype)
    assert all(f[c].dtype == np.float64 for c in ["open", "high", "low", "close", "volume"])
    assert f.index.equals(pd.RangeIndex(len(f)))
    key = list(zip(f["ts"], f["symbol"], strict=True))
    assert key == sorted(key)
    ts = daily.timestamps
    assert ts.dtype == np.int64 and np.all(np.diff(ts) > 0)
    assert ts.size == f["ts"].nunique()


def test_load_daily_bars_start_at_0930_new_york(daily: LoadedData) -> None:
    ts = pd.to_datetime(daily.frame["ts"], unit="ns", utc=True)
    # 2000-03-01 is in EST (UTC-5), 2000-07-03 in EDT (UTC-4).
    winter = ts[ts.dt.strftime("%Y-%m-%d") == "2000-03-01"]
    summer = ts[ts.dt.strftime("%Y-%m-%d") == "2000-07-03"]
    assert set(winter.dt.strftime("%H:%M")) == {"14:30"}
    assert set(summer.dt.strftime("%H:%M")) == {"13:30"}
    assert set(ts.dt.strftime("%H:%M")) == {"13:30", "14:30"}
    assert set(ts.dt.tz_convert("America/New_York").dt.strftime("%H:%M")) == {"09:30"}


def test_load_symbol_and_date_filters_are_inclusive() -> None:
    data = load_ohlcv("sample", symbols=["MSFT", "GOOG"], start="2005-01-03", end="2005-01-31")
    f = data.frame
    assert data.symbols == ["GOOG", "MSFT"]
    days = pd.to_datetime(f["ts"], unit="ns", utc=True).dt.tz_convert("America/New_York")
    assert days.dt.strftime("%Y-%m-%d").min() == "2005-01-03"
    assert days.dt.strftime("%Y-%m-%d").max() == "2005-01-31"
    assert len(f) == 2 * 20  # 20 trading days in January 2005 from the 3rd
    # Filters apply after the whole history was validated and split-adjusted.
    assert data.validation.total_rows == 12_154
    assert [(e.symbol, e.ratio) for e in data.splits] == [("MSFT", 2.0)]


def test_load_iso_filters_cut_inside_a_day() -> None:
    data = load_ohlcv("sample:minute", start="2026-07-29T14:00:00Z", end="2026-07-29T14:09:00Z")
    assert len(data.frame) == 10
    assert data.frame["ts"].iloc[0] == utc("2026-07-29T14:00:00Z")


def test_load_unknown_symbol_raises() -> None:
    with pytest.raises(ValueError, match="TSLA"):
        load_ohlcv("sample", symbols=["AAPL", "TSLA"])


def test_load_bad_filters_raise() -> None:
    with pytest.raises(ValueError, match="after"):
        load_ohlcv("sample", start="2005-02-01", end="2005-01-01")
    with pytest.raises(ValueError, match="start"):
        load_ohlcv("sample", start="yesterday")


def test_load_intraday_samples() -> None:
    hourly = load_ohlcv("sample:hourly")
    minute = load_ohlcv("sample:minute")
    assert (len(hourly.frame), hourly.interval_s) == (1717, 3600)
    assert (len(minute.frame), minute.interval_s) == (2382, 60)
    assert minute.frame["ts"].iloc[0] == utc("2026-07-29T13:30:00Z")
    assert minute.frame["ts"].iloc[-1] == utc("2026-08-06T14:11:00Z")
    # Zero-volume Yahoo bars are valid and kept.
    assert (hourly.frame["volume"] == 0).sum() == 1
    assert (minute.frame["volume"] == 0).sum() == 2
    assert hourly.splits == [] and minute.splits == []


def test_load_parquet_round_trip(tmp_path: Path) -> None:
    with gzip.open(sample_path("daily"), "rt") as fh:
        raw = pd.read_csv(fh, dtype={"timestamp": str, "symbol": str})
    parquet = tmp_path / "daily.parquet"
    raw.to_parquet(parquet)

    from_parquet = load_ohlcv(parquet)
    from_csv = load_ohlcv("sample:daily")
    pd.testing.assert_frame_equal(from_parquet.frame, from_csv.frame)
    assert from_parquet.interval_s == 23_400
    assert from_parquet.splits == from_csv.splits
    assert from_parquet.source == str(parquet)


def test_load_parquet_with_datetime_columns(tmp_path: Path) -> None:
    df = pd.DataFrame(
        {
            "timestamp": pd.to_datetime(["2024-01-02T14:30:00Z", "2024-01-02T14:31:00Z"]),
            "symbol": ["AAPL", "AAPL"],
            "open": [1.0, 1.0],
            "high": [1.0, 1.0],
            "low": [1.0, 1.0],
            "close": [1.0, 1.0],
            "volume": [1, 2],
        }
    )
    df.to_parquet(tmp_path / "aware.parquet")
    data = load_ohlcv(tmp_path / "aware.parquet")
    assert data.frame["ts"].tolist() == [utc("2024-01-02T14:30:00Z"), utc("2024-01-02T14:31:00Z")]
    assert data.interval_s == 60

    # Naive midnight datetimes are dates: daily bars at the New York open.
    df["timestamp"] = pd.to_datetime(["2024-01-02", "2024-07-01"])
    df.to_parquet(tmp_path / "dates.parquet")
    data = load_ohlcv(tmp_path / "dates.parquet")
    assert data.frame["ts"].tolist() == [utc("2024-01-02T14:30:00Z"), utc("2024-07-01T13:30:00Z")]
    assert data.interval_s == 23_400


def test_load_date_only_vs_iso_timestamps(tmp_path: Path) -> None:
    daily = write_csv(
        tmp_path / "daily.csv",
        "2024-01-02,AAPL,1,1,1,1,1\n2024-07-01,AAPL,1,1,1,1,1\n",
    )
    data = load_ohlcv(daily)
    assert data.frame["ts"].tolist() == [utc("2024-01-02T14:30:00Z"), utc("2024-07-01T13:30:00Z")]
    assert data.interval_s == 23_400

    intraday = write_csv(
        tmp_path / "intraday.csv",
        "2024-01-02T14:30:00Z,AAPL,1,1,1,1,1\n"
        "2024-01-02T15:35:00+01:00,AAPL,1,1,1,1,1\n"  # 14:35Z
        "2024-01-02 14:40:00,AAPL,1,1,1,1,1\n"  # naive: taken as UTC
        "2024-01-02T14:45:00Z,AAPL,1,1,1,1,1\n"
        "2024-01-02T15:45:00Z,AAPL,1,1,1,1,1\n",
    )
    data = load_ohlcv(intraday)
    minutes = [(t - utc("2024-01-02T14:30:00Z")) // 60_000_000_000 for t in data.frame["ts"]]
    assert minutes == [0, 5, 10, 15, 75]
    assert data.interval_s == 300  # the most common gap, not the smallest or the mean


def test_load_mixed_date_and_intraday_raises(tmp_path: Path) -> None:
    mixed = write_csv(
        tmp_path / "mixed.csv",
        "2024-01-02,AAPL,1,1,1,1,1\n2024-01-03T14:30:00Z,AAPL,1,1,1,1,1\n",
    )
    with pytest.raises(ValueError, match="mixes"):
        load_ohlcv(mixed)


def test_load_gzip_csv(tmp_path: Path) -> None:
    path = tmp_path / "bars.csv.gz"
    with gzip.open(path, "wt") as fh:
        fh.write("timestamp,symbol,open,high,low,close,volume\n2024-01-02,NA,1,2,0.5,1.5,10\n")
    data = load_ohlcv(path)
    # "NA" is a real ticker, not a missing value.
    assert data.symbols == ["NA"]
    assert data.frame["close"].tolist() == [1.5]


def test_load_missing_columns_names_them(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("timestamp,symbol,open,close\n2024-01-02,AAPL,1,1\n")
    with pytest.raises(ValueError, match=r"missing column\(s\): high, low, volume"):
        load_ohlcv(path)


def test_load_missing_file_and_bad_source_raise(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.csv"):
        load_ohlcv(tmp_path / "nope.csv")
    with pytest.raises(ValueError, match="sample:daily"):
        load_ohlcv("sample:weekly")
    other = tmp_path / "bars.json"
    other.write_text("{}")
    with pytest.raises(ValueError, match="unsupported"):
        load_ohlcv(other)
    with pytest.raises(ValueError, match="split_adjust"):
        load_ohlcv("sample", split_adjust="on")  # type: ignore[arg-type]


def test_describe_mentions_the_essentials(daily: LoadedData) -> None:
    text = daily.describe()
    assert "source: sample:daily" in text
    assert "rows: 12,154" in text
    assert "symbols: 5 (AAPL, FB, GOOG, IBM, MSFT)" in text
    assert "range: 2000-03-01T14:30:00Z .. 2013-03-01T14:30:00Z" in text
    assert "interval: 23400 s" in text
    assert "0 rejected" in text
    assert "AAPL 2000-06-21 x2 (detected)" in text


def test_loaded_data_is_frozen(daily: LoadedData) -> None:
    with pytest.raises(AttributeError):
        daily.interval_s = 60  # type: ignore[misc]


def test_load_saved_frame_with_ts_column(tmp_path: Path) -> None:
    bars = generate(3, 50, seed=5)
    path = tmp_path / "synthetic.parquet"
    bars.to_frame().to_parquet(path)

    data = load_ohlcv(path, symbols="S0001")

    assert data.interval_s == 60
    assert data.symbols == ["S0001"]
    np.testing.assert_array_equal(data.frame["ts"], bars.ts)
    np.testing.assert_array_equal(data.frame["close"], bars.close[:, 1])


def test_load_empty_and_header_only_csv(tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ValueError, match="cannot read as CSV"):
        load_ohlcv(empty)
    data = load_ohlcv(write_csv(tmp_path / "header.csv", ""))
    assert len(data.frame) == 0 and data.interval_s == 0
    assert data.frame["ts"].dtype == np.int64


def test_load_damaged_files_raise_value_errors_naming_the_file(tmp_path: Path) -> None:
    body = "".join(f"2024-01-{d:02d},AAA,1,2,0.5,1.5,10\n" for d in range(2, 30))
    whole = gzip.compress(("timestamp,symbol,open,high,low,close,volume\n" + body).encode())
    truncated = tmp_path / "cut.csv.gz"
    truncated.write_bytes(whole[: len(whole) // 2])
    not_gzip = tmp_path / "plain.csv.gz"
    not_gzip.write_text("timestamp,symbol,open,high,low,close,volume\n")
    not_parquet = tmp_path / "bars.parquet"
    not_parquet.write_bytes(b"PAR1 this is not a parquet file")
    for path in (truncated, not_gzip, not_parquet):
        with pytest.raises(ValueError, match=rf"{path.name}: cannot read") as info:
            load_ohlcv(path)
        assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "header",
    [
        "timestamp,symbol,open,high,low,close,volume,close",
        "timestamp,symbol,open,high,low,close,volume,Close",
        "ts,symbol,open,high,low,close,volume,ts",
    ],
)
def test_load_duplicate_columns_are_refused_by_name(tmp_path: Path, header: str) -> None:
    path = tmp_path / "dup.csv"
    path.write_text(header + "\n2024-01-02,AAA,1,2,0.5,1.5,10,1.5\n")
    duplicated = header.rsplit(",", 1)[1].lower()
    with pytest.raises(ValueError, match=rf"duplicate column\(s\): {duplicated}"):
        load_ohlcv(path)


def test_load_duplicate_extra_columns_are_harmless(tmp_path: Path) -> None:
    path = tmp_path / "extra.csv"
    path.write_text(
        "timestamp,symbol,open,high,low,close,volume,note,note\n2024-01-02,AAA,1,2,0.5,1.5,10,a,b\n"
    )
    assert load_ohlcv(path).frame["close"].tolist() == [1.5]


def test_load_unparsable_timestamps_show_the_text_they_came_from(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "us.csv", "01/31/2020,AAA,1,2,0.5,1.5,10\n1580428800,AAA,1,2,0.5,1.5,10\n"
    )
    report = load_ohlcv(path).validation
    assert report.rejected == {"bad_timestamp": 2}
    assert report.samples["bad_timestamp"] == [
        "row 0 AAA NaT from '01/31/2020' o=1 h=2 l=0.5 c=1.5 v=10",
        "row 1 AAA NaT from '1580428800' o=1 h=2 l=0.5 c=1.5 v=10",
    ]

"""Tests for row-level OHLCV validation."""

from __future__ import annotations

import string
import time
from pathlib import Path

import msgspec
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sovereign  # noqa: F401  (pins threads before numpy does any work)
from sovereign.data import load_ohlcv
from sovereign.data.validation import (
    BAD_TS,
    MAX_SYMBOL_BYTES,
    REJECT_REASONS,
    ValidationReport,
    validate_ohlcv,
)

T0 = pd.Timestamp("2024-01-02T14:30:00Z").value
MIN = 60_000_000_000


def bar(
    ts: int,
    symbol: object = "AAPL",
    o: float = 10.0,
    h: float = 11.0,
    lo: float = 9.0,
    c: float = 10.5,
    v: float = 100.0,
) -> dict[str, object]:
    return {"ts": ts, "symbol": symbol, "open": o, "high": h, "low": lo, "close": c, "volume": v}


def frame(rows: list[dict[str, object]]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    df["ts"] = df["ts"].astype(np.int64)
    return df


# One bad row per reason, between good rows; the comment is the expected reason.
ROWS = [
    bar(T0, "AAPL"),  # 0 good
    bar(T0, "MSFT"),  # 1 good
    bar(BAD_TS, "AAPL"),  # 2 bad_timestamp
    bar(T0 + MIN, ""),  # 3 missing_symbol
    bar(T0 + 2 * MIN, "AAPL", c=np.nan),  # 4 nan_price
    bar(T0 + 2 * MIN, "AAPL", lo=0.0),  # 5 nonpositive_price
    bar(T0 + 2 * MIN, "AAPL", h=8.0),  # 6 high_lt_low (and open/close outside: first wins)
    bar(T0 + 2 * MIN, "AAPL", o=12.0),  # 7 open_outside_range
    bar(T0 + 2 * MIN, "AAPL", c=8.5),  # 8 close_outside_range
    bar(T0 + 2 * MIN, "AAPL", v=-1.0),  # 9 negative_volume
    bar(T0 + 2 * MIN, "AAPL", v=np.inf),  # 10 infinite_volume
    bar(T0 + 2 * MIN, "AAPL"),  # 11 good
    bar(T0 + 2 * MIN, "AAPL", c=10.0),  # 12 duplicate_timestamp
    bar(T0 + MIN, "AAPL"),  # 13 out_of_order_timestamp
    bar(T0 + MIN, "MSFT", v=np.nan),  # 14 good, volume unknown
    bar(T0 + MIN, "X" * 120),  # 15 symbol_too_long
    bar(T0 + MIN, "AA<PL>"),  # 16 bad_symbol
    bar(T0, "SPK"),  # 17 good
    bar(T0 + MIN, "SPK", o=10_000.0, h=11_000.0, lo=9_000.0, c=10_500.0),  # 18 price_spike
    bar(T0 + 2 * MIN, "SPK"),  # 19 good
]
EXPECTED = {reason: 1 for reason in REJECT_REASONS}


def test_validate_one_bad_row_per_reason_counts_each_under_its_reason() -> None:
    out, report = validate_ohlcv(frame(ROWS))

    assert report.rejected == EXPECTED
    assert report.total_rows == len(ROWS)
    assert report.accepted_rows == 6 == len(out)
    assert report.rejected_rows == len(REJECT_REASONS)
    for reason in REJECT_REASONS:
        assert len(report.samples[reason]) == 1
    assert report.samples["nan_price"][0].startswith("row 4 AAPL 2024-01-02T14:32:00Z o=10 ")
    assert report.samples["bad_timestamp"][0].startswith("row 2 AAPL NaT")
    assert report.samples["missing_symbol"][0].startswith("row 3 <missing>")
    assert "row 13 AAPL 2024-01-02T14:31:00Z" in report.samples["out_of_order_timestamp"][0]
    assert report.samples["price_spike"][0].startswith("row 18 SPK 2024-01-02T14:31:00Z o=10000 ")


def test_validate_good_rows_sorted_by_ts_then_symbol_with_fresh_index() -> None:
    out, _ = validate_ohlcv(frame(ROWS))

    assert list(out.columns) == ["ts", "symbol", "open", "high", "low", "close", "volume"]
    assert out["ts"].tolist() == [T0, T0, T0, T0 + MIN, T0 + 2 * MIN, T0 + 2 * MIN]
    assert out["symbol"].tolist() == ["AAPL", "MSFT", "SPK", "MSFT", "AAPL", "SPK"]
    assert out.index.equals(pd.RangeIndex(6))
    assert out["ts"].dtype == np.int64
    assert all(out[c].dtype == np.float64 for c in ["open", "high", "low", "close", "volume"])
    # The accepted AAPL bar at +2 min is the first one (row 11), not its duplicate.
    assert out.loc[4, "close"] == 10.5


def test_validate_nan_volume_is_accepted_and_counted_as_info() -> None:
    out, report = validate_ohlcv(frame(ROWS))

    assert report.info == {"volume_missing": 1}
    assert report.samples["volume_missing"][0].startswith("row 14 MSFT")
    assert report.samples["volume_missing"][0].endswith("v=nan")
    assert out["volume"].isna().sum() == 1


def test_validate_clean_frame_reports_nothing() -> None:
    out, report = validate_ohlcv(frame([bar(T0), bar(T0 + MIN)]))

    assert report.rejected == {} and report.info == {} and report.samples == {}
    assert len(out) == 2


def test_validate_duplicate_of_rejected_row_is_accepted() -> None:
    # The first bar at T0 is rejected for its price, so the second is the first accepted.
    out, report = validate_ohlcv(frame([bar(T0, lo=-1.0), bar(T0)]))

    assert report.rejected == {"nonpositive_price": 1}
    assert len(out) == 1


def test_validate_earlier_repeat_of_accepted_ts_is_duplicate_not_out_of_order() -> None:
    rows = [bar(T0), bar(T0 + 2 * MIN), bar(T0), bar(T0 + MIN)]
    _, report = validate_ohlcv(frame(rows))

    assert report.rejected == {"duplicate_timestamp": 1, "out_of_order_timestamp": 1}


def test_validate_order_checks_are_per_symbol() -> None:
    rows = [bar(T0 + MIN, "AAPL"), bar(T0, "MSFT"), bar(T0, "IBM")]
    out, report = validate_ohlcv(frame(rows))

    assert report.rejected == {}
    assert out["symbol"].tolist() == ["IBM", "MSFT", "AAPL"]


def test_validate_missing_symbol_variants() -> None:
    rows = [bar(T0, None), bar(T0, "  "), bar(T0, np.nan), bar(T0, "X")]
    out, report = validate_ohlcv(frame(rows))

    assert report.rejected == {"missing_symbol": 3}
    assert out["symbol"].tolist() == ["X"]


def test_validate_accepts_datetime_column_with_nat() -> None:
    df = frame([bar(T0), bar(T0 + MIN)])
    df["ts"] = pd.to_datetime(df["ts"], utc=True)
    df.loc[1, "ts"] = pd.NaT
    out, report = validate_ohlcv(df)

    assert report.rejected == {"bad_timestamp": 1}
    assert out["ts"].tolist() == [T0]


def test_validate_missing_column_raises() -> None:
    with pytest.raises(ValueError, match="volume"):
        validate_ohlcv(frame([bar(T0)]).drop(columns="volume"))


def test_validate_report_is_frozen_and_summary_readable() -> None:
    _, report = validate_ohlcv(frame(ROWS))

    with pytest.raises(AttributeError):
        report.total_rows = 0  # type: ignore[misc]
    text = report.summary()
    assert text.splitlines()[0] == "validated 20 rows: 6 accepted, 14 rejected"
    for reason in REJECT_REASONS:
        assert f"rejected {reason}: 1" in text
    assert "info volume_missing: 1" in text
    # The report travels between actors, so it must survive msgspec encoding.
    again = msgspec.json.decode(msgspec.json.encode(report), type=ValidationReport)
    assert again == report


def _sane_symbol(symbol: str) -> bool:
    allowed = set(string.ascii_letters + string.digits + ".-_/^=+:& ")
    return set(symbol) <= allowed and symbol == symbol.strip() and "  " not in symbol


def _reference(df: pd.DataFrame) -> tuple[list[int], dict[str, int]]:
    """Row-by-row restatement of the rules, to check the vectorised version against."""
    accepted: list[int] = []
    counts: dict[str, int] = {}
    last: dict[str, int] = {}
    seen: set[tuple[str, int]] = set()
    for i, r in enumerate(df.itertuples(index=False)):
        prices = [r.open, r.high, r.low, r.close]
        checks = [
            ("bad_timestamp", r.ts == BAD_TS),
            ("missing_symbol", not isinstance(r.symbol, str) or not r.symbol.strip()),
            ("symbol_too_long", len(str(r.symbol).encode()) > MAX_SYMBOL_BYTES),
            ("bad_symbol", not _sane_symbol(str(r.symbol))),
            ("nan_price", not all(np.isfinite(prices))),
            ("nonpositive_price", min(prices) <= 0),
            ("high_lt_low", r.high < r.low),
            ("open_outside_range", not r.low <= r.open <= r.high),
            ("close_outside_range", not r.low <= r.close <= r.high),
            ("negative_volume", r.volume < 0),
            ("infinite_volume", r.volume == np.inf),
            ("duplicate_timestamp", (r.symbol, r.ts) in seen),
            ("out_of_order_timestamp", r.symbol in last and r.ts < last[r.symbol]),
        ]
        reason = next((name for name, bad in checks if bad), None)
        if reason is None:
            accepted.append(i)
            seen.add((r.symbol, r.ts))
            last[r.symbol] = r.ts
        else:
            counts[reason] = counts.get(reason, 0) + 1
    return accepted, counts


@pytest.mark.parametrize("seed", range(5))
def test_validate_matches_row_by_row_reference_on_messy_data(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 400
    ts = T0 + rng.integers(0, 60, n) * MIN
    ts[rng.random(n) < 0.03] = BAD_TS
    symbols = rng.choice(
        np.array(["A", "B", "C", "BRK B", "", None, "Y" * 33, " A", "A\x00"], dtype=object),
        n,
        p=[0.25, 0.25, 0.25, 0.1, 0.04, 0.04, 0.03, 0.02, 0.02],
    )
    close = rng.uniform(1, 2, n)
    df = pd.DataFrame(
        {
            "ts": ts,
            "symbol": symbols,
            "open": close * rng.uniform(0.95, 1.05, n),
            "high": close * rng.uniform(1.0, 1.06, n),
            "low": close * rng.uniform(0.94, 1.0, n),
            "close": close,
            "volume": rng.choice(
                [-5.0, np.nan, np.inf, 10.0, 20.0], n, p=[0.03, 0.05, 0.02, 0.45, 0.45]
            ),
        }
    )
    df.loc[rng.random(n) < 0.03, "low"] = np.nan
    df.loc[rng.random(n) < 0.03, "close"] = -1.0

    out, report = validate_ohlcv(df)
    accepted, counts = _reference(df)

    assert report.rejected == counts
    assert report.accepted_rows == len(accepted)
    expected = df.iloc[accepted].sort_values(["ts", "symbol"], kind="stable")
    np.testing.assert_array_equal(out["ts"], expected["ts"])
    np.testing.assert_array_equal(out["close"], expected["close"])
    assert out["symbol"].tolist() == expected["symbol"].tolist()


def test_validate_one_million_rows_with_duplicates_is_fast() -> None:
    n_sym, n_bars = 1000, 1000
    ts = np.repeat(T0 + np.arange(n_bars, dtype=np.int64) * MIN, n_sym)
    symbols = np.tile(np.array([f"S{i:04d}" for i in range(n_sym)], dtype=object), n_bars)
    ones = np.ones(ts.size)
    df = pd.DataFrame(
        {
            "ts": ts,
            "symbol": pd.Series(symbols, dtype="str"),
            "open": ones,
            "high": ones,
            "low": ones,
            "close": ones,
            "volume": ones,
        }
    )
    # Append every 10th row again: each is a duplicate of an accepted row.
    df = pd.concat([df, df.iloc[::10]], ignore_index=True)

    start = time.perf_counter()
    out, report = validate_ohlcv(df)
    elapsed = time.perf_counter() - start

    assert report.rejected == {"duplicate_timestamp": 100_000}
    assert len(out) == 1_000_000
    assert elapsed < 10.0, f"validation of 1.1M rows took {elapsed:.1f}s"


def test_load_ohlcv_csv_with_bad_rows_reports_them_by_reason(tmp_path: Path) -> None:
    csv = tmp_path / "bars.csv"
    csv.write_text(
        "timestamp,symbol,open,high,low,close,volume\n"
        "2024-01-02,AAPL,10,11,9,10.5,100\n"
        "2024-01-02,MSFT,20,21,19,20.5,200\n"
        "2024-13-45,AAPL,10,11,9,10.5,100\n"  # bad_timestamp
        "2024-01-03,,10,11,9,10.5,100\n"  # missing_symbol
        "2024-01-03,AAPL,abc,11,9,10.5,100\n"  # nan_price (not a number)
        "2024-01-03,AAPL,10,11,9,,100\n"  # nan_price (empty)
        "2024-01-03,AAPL,10,11,-9,10.5,100\n"  # nonpositive_price
        "2024-01-03,AAPL,10,11,9,12,100\n"  # close_outside_range
        "2024-01-03,AAPL,10,11,9,10.5,-100\n"  # negative_volume
        "2024-01-03,AAPL,10,11,9,10.5,100\n"
        "2024-01-03,AAPL,10,11,9,10.4,100\n"  # duplicate_timestamp
        "2024-01-02,MSFT,20,21,19,20.5,200\n"  # duplicate_timestamp
        "2024-01-01,MSFT,20,21,19,20.5,200\n"  # out_of_order_timestamp
        "2024-01-03,MSFT,20,21,19,20.5,\n"  # good, volume unknown
    )
    data = load_ohlcv(csv)
    report = data.validation

    assert report.total_rows == 14
    assert report.rejected == {
        "bad_timestamp": 1,
        "missing_symbol": 1,
        "nan_price": 2,
        "nonpositive_price": 1,
        "close_outside_range": 1,
        "negative_volume": 1,
        "duplicate_timestamp": 2,
        "out_of_order_timestamp": 1,
    }
    assert report.info == {"volume_missing": 1}
    assert report.samples["bad_timestamp"][0].startswith("row 2 AAPL NaT")
    assert len(data.frame) == 4
    assert data.frame["symbol"].tolist() == ["AAPL", "MSFT", "AAPL", "MSFT"]
    assert data.frame["close"].tolist() == [10.5, 20.5, 10.5, 20.5]
    assert "rejected (bad_timestamp=1" in data.describe()


def test_validate_symbol_length_and_characters() -> None:
    longest = "L" * MAX_SYMBOL_BYTES
    rows = [
        bar(T0, longest),  # good: exactly the limit
        bar(T0, "L" * (MAX_SYMBOL_BYTES + 1)),  # symbol_too_long
        bar(T0, "S" * 200),  # symbol_too_long
        bar(T0, "BRK.B"),  # good
        bar(T0, "BRK B"),  # good: IB writes class shares with a space
        bar(T0, "^GSPC"),  # good
        bar(T0, "M&M.NS"),  # good
        bar(T0, "EUR/USD"),  # good
        bar(T0, " AAPL"),  # bad_symbol: stray space
        bar(T0, "AAPL\n"),  # bad_symbol
        bar(T0, "<b>X</b>"),  # bad_symbol
        bar(T0, "ÄPFEL"),  # bad_symbol: not ASCII
        bar(T0, "A,B"),  # bad_symbol
    ]
    out, report = validate_ohlcv(frame(rows))

    assert report.rejected == {"symbol_too_long": 2, "bad_symbol": 5}
    assert sorted(out["symbol"]) == sorted(
        [longest, "BRK.B", "BRK B", "^GSPC", "M&M.NS", "EUR/USD"]
    )
    # Samples stay short and printable whatever the symbol holds.
    sample = report.samples["symbol_too_long"][1]
    assert sample.startswith("row 2 ") and len(sample) < 160 and "S" * 40 not in sample
    assert all(s.isprintable() for s in report.samples["bad_symbol"])


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    factor=st.sampled_from([0.001, 0.01, 0.1, 10.0, 100.0, 1000.0]),
    where=st.integers(1, 198),
)
def test_a_bad_print_is_quarantined_and_real_reversals_are_not(
    seed: int, factor: float, where: int
) -> None:
    """A random walk (2 % daily moves, and a crisis-sized 30 % drop and rebound) with one
    bar multiplied by ``factor`` with consistent OHLC: that bar, and only that bar, is
    quarantined."""
    rng = np.random.default_rng(seed)
    close = 50.0 * np.exp(np.cumsum(rng.normal(0.0, 0.02, 200)))
    close[120:] *= 0.7  # a real 30 % fall ...
    close[121:] /= 0.7  # ... undone the next day: kept
    rows = [
        bar(T0 + i * MIN, "AAA", o=x, h=x * 1.01, lo=x * 0.99, c=x) for i, x in enumerate(close)
    ]
    if where not in (119, 120, 121):
        x = close[where] * factor
        rows[where] = bar(T0 + where * MIN, "AAA", o=x, h=x * 1.01, lo=x * 0.99, c=x)
    out, report = validate_ohlcv(frame(rows))
    if where in (119, 120, 121):
        assert report.rejected == {}
        return
    assert report.rejected == {"price_spike": 1}
    assert T0 + where * MIN not in out["ts"].tolist()

"""Trade memory on real SQLite files: shard writers, and the merged read side."""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest

from sovereign.memory.trade_memory import (
    ShardTradeStore,
    TradeMemory,
    TradeMemoryWriteError,
    shard_path,
)
from sovereign.memory.trade_rows import SCHEMA_VERSION, TradeRecord
from sovereign.messages import Message, TradeClosed, TradesClosed

DAY_NS = 86_400 * 1_000_000_000
T0 = 1_704_205_800 * 1_000_000_000  # 2024-01-02 14:30 UTC


def make_trade(
    trade_id: str,
    symbol: str,
    exit_ts: int,
    *,
    shard: int = 0,
    regime: str = "Ranging",
    pnl: float = 10.0,
    features: dict[str, Any] | None = None,
) -> TradeClosed:
    return TradeClosed(
        msg_id=f"shard-{shard}:{trade_id}",
        ts_event=exit_ts,
        ts_init=exit_ts,
        trade_id=trade_id,
        shard=shard,
        symbol=symbol,
        side="LONG",
        quantity=100,
        entry_ts=exit_ts - DAY_NS,
        exit_ts=exit_ts,
        entry_price=100.0,
        exit_price=100.0 + pnl / 100,
        pnl=pnl,
        commission=1.0,
        return_pct=pnl / 10_000,
        bars_held=5,
        exit_reason="take_profit" if pnl > 0 else "stop",
        regime=regime,
        confidence=0.6,
        features=features if features is not None else {"atr": 1.5},
    )


# Two shards, two runs. Shard 0 holds AAPL and MSFT, shard 1 holds NVDA; exit times
# interleave across shards, and t3/t4 share an exit time to exercise the tie-breaks.
SHARD0 = [
    make_trade("t1", "AAPL", T0 + 1 * DAY_NS, regime="TrendingUp"),
    make_trade("t3", "MSFT", T0 + 3 * DAY_NS, pnl=-5.0),
    make_trade("t5", "AAPL", T0 + 5 * DAY_NS, regime="Volatile", pnl=-2.0),
]
SHARD1 = [
    make_trade("t2", "NVDA", T0 + 2 * DAY_NS, shard=1, regime="TrendingUp"),
    make_trade("t4", "AAPL", T0 + 3 * DAY_NS, shard=1),
    make_trade("t6", "NVDA", T0 + 6 * DAY_NS, shard=1, regime="Volatile"),
]


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    for shard, trades in ((0, SHARD0), (1, SHARD1)):
        with ShardTradeStore(shard_path(tmp_path, shard), shard) as store:
            for trade in trades:
                store.add(trade, "run-a")
            # A second run replays only the first trade of each shard.
            store.add(trades[0], "run-b")
    return tmp_path


def ids(records: list[TradeRecord]) -> list[tuple[str, str]]:
    return [(r.run_id, r.trade_id) for r in records]


# -- WRITER --


def test_shard_path_layout() -> None:
    assert shard_path("/state", 7) == Path("/state/trade_memory/shard-7.sqlite")
    with pytest.raises(ValueError):
        shard_path("/state", -1)


def test_store_creates_parents_and_enables_wal(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "shard-3.sqlite"
    with ShardTradeStore(path, 3) as store:
        assert store._conn is not None
        assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        other = sqlite3.connect(path)
        try:
            assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert other.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
            indexes = {r[0] for r in other.execute("SELECT name FROM sqlite_master")}
            assert {"trades_run_exit", "trades_symbol", "trades_regime"} <= indexes
        finally:
            other.close()
    assert repr(store) == f"ShardTradeStore(shard=3, path={str(path)!r})"


def test_store_buffers_below_batch_size_until_flush(tmp_path: Path) -> None:
    memory = TradeMemory(tmp_path)
    store = ShardTradeStore(shard_path(tmp_path, 0), 0, batch_size=3)
    try:
        store.add(SHARD0[0], "run")
        store.add(SHARD0[1], "run")
        assert store.pending == 2
        assert memory.count() == 0

        store.add(SHARD0[2], "run")  # reaches batch_size: flushes by itself
        assert store.pending == 0
        assert memory.count() == 3

        store.add(SHARD1[0], "run")
        assert memory.count() == 3
        assert store.flush() == 1
        assert store.flush() == 0
        assert memory.count() == 4
        assert store.written == 4
    finally:
        store.close()


def test_store_close_flushes_and_is_final(tmp_path: Path) -> None:
    store = ShardTradeStore(shard_path(tmp_path, 0), 0)
    store.add(SHARD0[0], "run")
    store.close()
    store.close()
    assert store.closed
    assert TradeMemory(tmp_path).count() == 1
    with pytest.raises(RuntimeError, match="closed"):
        store.add(SHARD0[1], "run")


def test_store_replayed_writes_are_ignored_and_counted(state_dir: Path) -> None:
    memory = TradeMemory(state_dir)
    before = memory.query()
    with ShardTradeStore(shard_path(state_dir, 0), 0) as store:
        for trade in SHARD0:
            store.add(trade, "run-a")
        store.add(SHARD0[0], "run-a")  # a duplicate inside the same batch
        store.add(SHARD0[0], "run-c")  # the same trade in a new run is a new row
        assert store.flush() == 1
    assert store.written == 1
    assert store.duplicates == 4
    assert memory.count() == len(before) + 1
    assert memory.query(run_id="run-a") == [r for r in before if r.run_id == "run-a"]


def test_store_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        ShardTradeStore(shard_path(tmp_path, 0), 0, batch_size=0)
    with ShardTradeStore(shard_path(tmp_path, 0), 0) as store, pytest.raises(ValueError):
        store.add(SHARD0[0], "")


def test_store_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = shard_path(tmp_path, 0)
    ShardTradeStore(path, 0).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(RuntimeError, match="schema version"):
        ShardTradeStore(path, 0)
    with pytest.raises(RuntimeError, match="schema version"):
        TradeMemory(tmp_path).count()


def test_store_accepts_numpy_scalars(tmp_path: Path) -> None:
    trade = msgspec.structs.replace(
        SHARD0[0], quantity=np.int64(7), bars_held=np.int32(2), pnl=np.float64(3.5)
    )
    with ShardTradeStore(shard_path(tmp_path, 0), 0) as store:
        store.add(trade, "run")
    (record,) = TradeMemory(tmp_path).query()
    assert (record.quantity, record.bars_held, record.pnl) == (7, 2, 3.5)
    assert type(record.quantity) is int


# -- READER --


def test_record_fields_mirror_trade_closed() -> None:
    envelope = set(Message.__struct_fields__)
    trade_fields = [f for f in TradeClosed.__struct_fields__ if f not in envelope]
    assert set(TradeRecord.__struct_fields__) == {*trade_fields, "run_id"}


def test_query_merges_shards_in_order(state_dir: Path) -> None:
    records = TradeMemory(state_dir).query(run_id="run-a")
    # t3 (MSFT) and t4 (AAPL) exit together: symbol breaks the tie.
    assert [r.trade_id for r in records] == ["t1", "t2", "t4", "t3", "t5", "t6"]
    assert [r.shard for r in records] == [0, 1, 1, 0, 0, 1]
    keys = [(r.exit_ts, r.symbol, r.trade_id) for r in records]
    assert keys == sorted(keys)


def test_query_without_filters_orders_runs_last(state_dir: Path) -> None:
    records = TradeMemory(state_dir).query()
    assert ids(records)[:4] == [("run-a", "t1"), ("run-b", "t1"), ("run-a", "t2"), ("run-b", "t2")]
    assert len(records) == 8


def test_query_returns_what_was_written(state_dir: Path) -> None:
    (record,) = TradeMemory(state_dir).query(run_id="run-a", symbols=["MSFT"])
    trade = SHARD0[1]
    for name in TradeRecord.__struct_fields__:
        if name != "run_id":
            assert getattr(record, name) == getattr(trade, name), name
    assert record.run_id == "run-a"


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"run_id": "run-b"}, ["t1", "t2"]),
        ({"run_id": "nope"}, []),
        ({"symbols": ["NVDA"]}, ["t2", "t2", "t6"]),
        ({"symbols": ("AAPL", "MSFT"), "run_id": "run-a"}, ["t1", "t4", "t3", "t5"]),
        ({"regime": "Volatile"}, ["t5", "t6"]),
        ({"regime": "TrendingUp", "run_id": "run-a"}, ["t1", "t2"]),
        # The time window is half-open: since <= exit_ts < until.
        ({"since_ns": T0 + 3 * DAY_NS, "run_id": "run-a"}, ["t4", "t3", "t5", "t6"]),
        ({"until_ns": T0 + 3 * DAY_NS, "run_id": "run-a"}, ["t1", "t2"]),
        ({"since_ns": T0 + 2 * DAY_NS, "until_ns": T0 + 5 * DAY_NS}, ["t2", "t2", "t4", "t3"]),
        ({"limit": 3, "run_id": "run-a"}, ["t1", "t2", "t4"]),
        ({"limit": 0}, []),
        ({"limit": 100, "regime": "Volatile"}, ["t5", "t6"]),
        ({"symbols": []}, []),
    ],
)
def test_query_filters(state_dir: Path, filters: dict[str, Any], expected: list[str]) -> None:
    assert [r.trade_id for r in TradeMemory(state_dir).query(**filters)] == expected


def test_query_rejects_a_bare_string_of_symbols(state_dir: Path) -> None:
    with pytest.raises(TypeError):
        TradeMemory(state_dir).query(symbols="AAPL")
    with pytest.raises(ValueError):
        TradeMemory(state_dir).query(limit=-1)


def test_runs_and_count(state_dir: Path) -> None:
    memory = TradeMemory(state_dir)
    assert memory.runs() == ["run-a", "run-b"]
    assert memory.count() == 8
    assert memory.count("run-a") == 6
    assert memory.count("run-b") == 2
    assert memory.count("nope") == 0
    assert [p.name for p in memory.shard_files()] == ["shard-0.sqlite", "shard-1.sqlite"]


def test_features_round_trip(tmp_path: Path) -> None:
    features = {"atr": 1.25, "volume_pct": 30, "sr": "support", "gap": True, "none": None}
    trade = make_trade("t1", "AAPL", T0, features=features, pnl=float("nan"))
    with ShardTradeStore(shard_path(tmp_path, 0), 0) as store:
        store.add(trade, "run")
    (record,) = TradeMemory(tmp_path).query()
    assert record.features == features
    assert type(record.features["volume_pct"]) is int
    assert type(record.features["gap"]) is bool
    # SQLite stores NaN as NULL; the reader gives the NaN back.
    assert math.isnan(record.pnl)


def test_to_frame_expands_features(tmp_path: Path) -> None:
    with ShardTradeStore(shard_path(tmp_path, 0), 0) as store:
        store.add(make_trade("t1", "AAPL", T0, features={"atr": 1.5, "sr": "support"}), "r")
        store.add(make_trade("t2", "MSFT", T0 + DAY_NS, features={"atr": 2.5, "vol": 40}), "r")
    frame = TradeMemory(tmp_path).to_frame(run_id="r")
    base = [f for f in TradeRecord.__struct_fields__ if f != "features"]
    assert list(frame.columns) == [*base, "f_atr", "f_sr", "f_vol"]
    assert list(frame["trade_id"]) == ["t1", "t2"]
    assert list(frame["f_atr"]) == [1.5, 2.5]
    assert frame["f_sr"].iloc[0] == "support"
    assert frame["f_sr"].isna().iloc[1]
    assert frame["exit_ts"].dtype == np.int64
    assert frame["pnl"].dtype == np.float64
    assert len(TradeMemory(tmp_path).to_frame(symbols=["MSFT"])) == 1


@pytest.mark.parametrize("relative", ["missing", "empty"])
def test_missing_or_empty_state_dir_reads_as_empty(tmp_path: Path, relative: str) -> None:
    state_dir = tmp_path / relative
    if relative == "empty":
        (state_dir / "trade_memory").mkdir(parents=True)
    memory = TradeMemory(state_dir)
    assert memory.query() == []
    assert memory.runs() == []
    assert memory.count() == 0
    frame = memory.to_frame()
    assert frame.empty
    assert list(frame.columns) == [f for f in TradeRecord.__struct_fields__ if f != "features"]
    assert frame["exit_ts"].dtype == np.int64


def test_reader_ignores_unrelated_files(state_dir: Path) -> None:
    directory = state_dir / "trade_memory"
    (directory / "notes.txt").write_text("not a shard")
    (directory / "shard-x.sqlite").write_text("not a shard either")
    assert TradeMemory(state_dir).count() == 8


def test_a_write_behind_store_writes_the_same_rows_in_its_own_thread(tmp_path: Path) -> None:
    trades = [make_trade(f"T{i}", f"S{i % 7}", DAY_NS * (i + 1)) for i in range(600)]
    plain = ShardTradeStore(shard_path(tmp_path / "a", 0), 0, batch_size=64)
    behind = ShardTradeStore(shard_path(tmp_path / "b", 0), 0, batch_size=64, write_behind=True)
    for t in trades:
        plain.add(t, "run")
        behind.add(t, "run")
    behind.flush()
    behind.sync()
    plain.flush()
    assert behind.written == plain.written == 600
    plain.close()
    behind.close()
    a = TradeMemory(tmp_path / "a").query()
    b = TradeMemory(tmp_path / "b").query()
    assert a == b and len(a) == 600


def test_a_write_behind_failure_is_raised_to_the_owner_and_nothing_is_lost(tmp_path: Path) -> None:
    store = ShardTradeStore(shard_path(tmp_path, 0), 0, batch_size=10, write_behind=True)
    store._buffer.append(("not", "a", "row"))  # a row the INSERT cannot bind
    store.flush()
    with pytest.raises(TradeMemoryWriteError) as failed:
        store.sync()
    assert failed.value.unwritten == 1
    with pytest.raises(TradeMemoryWriteError):
        store.add(make_trade("T1", "S", DAY_NS), "run")
        store.flush()
    with pytest.raises(TradeMemoryWriteError):
        store.close()


def test_a_batch_of_trades_is_stored_as_the_same_trades_one_by_one(tmp_path: Path) -> None:
    trades = [
        make_trade(f"T{i}", f"S{i % 7}", DAY_NS * (i + 1), pnl=float(i % 5 - 2)) for i in range(300)
    ]
    trades[3] = msgspec.structs.replace(trades[3], features={"atr": 2.0, "note": None, "n": 3})
    one = ShardTradeStore(shard_path(tmp_path / "a", 0), 0, batch_size=64)
    many = ShardTradeStore(shard_path(tmp_path / "b", 0), 0, batch_size=64, write_behind=True)
    for t in trades:
        one.add(t, "run")
    many.add_many(TradesClosed.of(trades[:250], msg_id="shard-0:x", shard=0), "run")
    many.add_many(TradesClosed.of(trades[250:], msg_id="shard-0:y", shard=0), "run")
    for store in (one, many):
        store.flush()
        store.sync()
        store.close()
    a = TradeMemory(tmp_path / "a").query()
    assert TradeMemory(tmp_path / "b").query() == a and len(a) == 300
    with pytest.raises(ValueError, match="run_id"):
        ShardTradeStore(shard_path(tmp_path / "c", 0), 0).add_many(
            TradesClosed.of(trades[:1], msg_id="m", shard=0), ""
        )

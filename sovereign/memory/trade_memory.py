"""Sharded SQLite trade memory: one file per shard, written by its shard actor.

Each shard actor owns a :class:`ShardTradeStore` and appends its closed trades to its own
file, so writers never contend for a lock. :class:`TradeMemory` is the read side: it opens
every shard file read-only and merges them into one ordered view for the learner, the
weakness analyser and the report.

The tables, and the conversion of trades to rows and back, are in
:mod:`sovereign.memory.trade_rows`.

The files use WAL journaling so readers can query while a shard is writing. WAL needs
shared memory between the processes that open a file, so the state directory must be on a
local disk, not a network filesystem.
"""

from __future__ import annotations

import heapq
import itertools
import operator
import queue
import re
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import closing
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import pandas as pd

from sovereign.memory.trade_rows import (
    FEATURES_ENCODER,
    FLOAT_FIELDS,
    INSERT,
    INSERT_SHADOW,
    INT_FIELDS,
    RECORD_FIELDS,
    SCHEMA,
    SCHEMA_VERSION,
    SELECT_COLUMNS,
    TradeRecord,
    sort_key,
    to_record,
    to_row,
    to_rows,
)
from sovereign.messages.account import ShadowTradeClosed, TradeClosed, TradesClosed

_SHARD_FILE_RE = re.compile(r"^shard-(\d+)\.sqlite$")


def shard_path(state_dir: str | Path, shard: int) -> Path:
    """Return the trade-memory file of one shard under a state directory.

    Parameters
    ----------
    state_dir
        The session's state directory.
    shard
        The shard number (non-negative).

    Returns
    -------
    Path
        ``<state_dir>/trade_memory/shard-<shard>.sqlite``.
    """
    shard = operator.index(shard)
    if shard < 0:
        raise ValueError(f"shard must be non-negative, got {shard}")
    return Path(state_dir) / "trade_memory" / f"shard-{shard}.sqlite"


class ShardTradeStore:
    """Append-only writer for one shard's trade-memory file.

    Trades are buffered and written in one transaction per batch, because a commit per
    trade would make the shard actor wait on the disk after every fill. Writes are keyed
    by ``(run_id, trade_id)`` and duplicates are ignored, so a replay after a crash can
    rewrite trades that were already stored.

    Not thread-safe: the store has one owner (its shard actor), which must not call it
    concurrently. It may be called from different threads one at a time, as an actor
    runtime may do.

    Parameters
    ----------
    path
        The SQLite file; its parent directories are created. See :func:`shard_path`.
    shard
        The shard number, used to identify the store. Rows keep each trade's own
        ``shard`` field.
    batch_size
        Buffered trades that trigger an automatic :meth:`flush` (default 256).
    write_behind
        Write in a background thread (SQLite does its work without holding the GIL, so
        on a machine with a core to spare the shard does not wait for the disk at all).
        :meth:`flush` then hands the batch over and returns; :meth:`sync` waits until
        everything handed over is written and raises the writer's error, if any. Meant
        for backtests, which can be replayed: a paper or live session writes in its own
        time, so that a trade is on disk when the step that closed it ends.

    Attributes
    ----------
    written
        Rows inserted so far.
    duplicates
        Trades ignored because ``(run_id, trade_id)`` was already stored.
    """

    def __init__(
        self, path: str | Path, shard: int, *, batch_size: int = 256, write_behind: bool = False
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.path = Path(path)
        self.shard = operator.index(shard)
        self.batch_size = batch_size
        self.written = 0
        self.duplicates = 0
        self._buffer: list[tuple[Any, ...]] = []
        self._shadow: list[tuple[Any, ...]] = []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: transactions are explicit (one per flush). The owner may be
        # driven by different threads over its life, never concurrently, so the sqlite3
        # same-thread check would only produce false alarms.
        self._conn: sqlite3.Connection | None = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False
        )
        try:
            self._init_schema(self._conn)
        except BaseException:
            self._conn.close()
            self._conn = None
            raise
        self._writer: _Writer | None = _Writer(self) if write_behind else None

    def _init_schema(self, conn: sqlite3.Connection) -> None:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise RuntimeError(f"{self.path}: cannot enable WAL journaling (got {mode!r})")
        # NORMAL is durable across process crashes in WAL mode; only a power loss can drop
        # the last commits, which a replay restores.
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise RuntimeError(
                    f"{self.path}: trade memory schema version {version}, expected {SCHEMA_VERSION}"
                )
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def __repr__(self) -> str:
        return f"ShardTradeStore(shard={self.shard}, path={str(self.path)!r})"

    @property
    def pending(self) -> int:
        """Trades buffered and not yet written."""
        return len(self._buffer)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._conn is None

    def add(self, trade: TradeClosed, run_id: str) -> None:
        """Buffer a closed trade, flushing when the buffer reaches ``batch_size``.

        Parameters
        ----------
        trade
            The closed trade.
        run_id
            The session that produced it (non-empty).
        """
        self._buffer_rows([to_row(trade, run_id)], run_id)

    def add_many(self, trades: TradesClosed, run_id: str) -> None:
        """Buffer a batch of closed trades (one row each, in order), as ``add`` would
        one at a time."""
        self._buffer_rows(to_rows(trades, run_id), run_id)

    def add_shadow(self, trade: ShadowTradeClosed, run_id: str) -> None:
        """Buffer a shadow trade (a trade a rule prevented), written with the next batch."""
        if self._conn is None:
            raise RuntimeError(f"{self!r} is closed")
        if not run_id:
            raise ValueError("run_id must be a non-empty string")
        index = operator.index
        self._shadow.append(
            (
                run_id,
                trade.trade_id,
                index(trade.shard),
                trade.symbol,
                index(trade.quantity),
                index(trade.entry_ts),
                index(trade.exit_ts),
                float(trade.entry_price),
                float(trade.exit_price),
                float(trade.pnl),
                float(trade.commission),
                float(trade.return_pct),
                index(trade.bars_held),
                trade.exit_reason,
                trade.regime,
                float(trade.confidence),
                FEATURES_ENCODER.encode(trade.features).decode(),
                ",".join(trade.rule_ids),
                trade.effect,
                trade.msg_id,
            )
        )

    def _buffer_rows(self, rows: list[tuple[Any, ...]], run_id: str) -> None:
        if self._conn is None:
            raise RuntimeError(f"{self!r} is closed")
        if not run_id:
            raise ValueError("run_id must be a non-empty string")
        self._buffer.extend(rows)
        if len(self._buffer) >= self.batch_size:
            self.flush()

    def flush(self) -> int:
        """Write the buffered trades in one transaction.

        On failure the transaction is rolled back and the buffer kept, so nothing is
        half-written and the caller may retry.

        Returns
        -------
        int
            Rows written (buffered trades minus ignored duplicates).
        """
        if self._conn is None:
            raise RuntimeError(f"{self!r} is closed")
        if not self._buffer and not self._shadow:
            return 0
        if self._writer is not None:
            self._writer.submit((self._buffer, self._shadow))
            self._buffer, self._shadow = [], []
            return 0  # counted in ``written`` when the writer has written them
        written = self._write((self._buffer, self._shadow))
        self._buffer.clear()
        self._shadow.clear()
        return written

    def sync(self) -> None:
        """Wait until every trade handed to the background writer is written; raise its
        error if a write failed. A no-op without ``write_behind``."""
        if self._writer is not None:
            self._writer.wait()

    def _write(self, batch: _Batch) -> int:
        """One transaction: the trades, then the shadow trades. Returns trades written."""
        rows, shadow = batch
        conn = self._conn
        assert conn is not None
        before = conn.total_changes
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(INSERT, rows)
            written = conn.total_changes - before
            if shadow:
                conn.executemany(INSERT_SHADOW, shadow)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self.written += written
        self.duplicates += len(rows) - written
        return written

    def close(self) -> None:
        """Flush the buffer and close the file. Closing twice is a no-op."""
        if self._conn is None:
            return
        try:
            self.flush()
            self.sync()
        finally:
            if self._writer is not None:
                self._writer.stop()
                self._writer = None
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


_Batch = tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]
"""Trade rows and shadow-trade rows written in one transaction."""


class _Writer:
    """The background thread of a write-behind store: batches are written in the order
    they were handed over, one transaction each. After a failed write it writes nothing
    more (the rows are kept) and ``wait`` raises the error."""

    def __init__(self, store: ShardTradeStore) -> None:
        self._store = store
        self._queue: queue.Queue[_Batch | None] = queue.Queue(maxsize=8)
        self.error: BaseException | None = None
        self.unwritten: list[tuple[Any, ...]] = []
        self._thread = threading.Thread(
            target=self._run, name=f"trade-memory-{store.shard}", daemon=True
        )
        self._thread.start()

    def submit(self, batch: _Batch) -> None:
        if self.error is not None:
            self.unwritten.extend(batch[0])
            raise TradeMemoryWriteError(self.error, len(self.unwritten)) from self.error
        self._queue.put(batch)  # blocks while 8 batches wait: the disk sets the pace

    def wait(self) -> None:
        self._queue.join()
        if self.error is not None:
            raise TradeMemoryWriteError(self.error, len(self.unwritten)) from self.error

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        while True:
            batch = self._queue.get()
            try:
                if batch is None:
                    return
                if self.error is not None:
                    self.unwritten.extend(batch[0])
                    continue
                try:
                    self._store._write(batch)
                except BaseException as exc:  # kept for the owner, who is not this thread
                    self.error = exc
                    self.unwritten.extend(batch[0])
            finally:
                self._queue.task_done()


class TradeMemoryWriteError(RuntimeError):
    """The background writer of a trade-memory store failed; ``unwritten`` trades wait."""

    def __init__(self, cause: BaseException, unwritten: int) -> None:
        super().__init__(f"trade memory write failed ({cause}); {unwritten} trades unwritten")
        self.unwritten = unwritten


class TradeMemory:
    """Read-only queries over every shard file of a state directory.

    Each call opens the shard files read-only, so shards written since the last call are
    included and a reader never blocks a writer. Trades still in a writer's buffer are
    not visible until it flushes.

    Parameters
    ----------
    state_dir
        The session's state directory; a missing directory reads as empty memory.
    """

    def __init__(self, state_dir: str | Path) -> None:
        self.state_dir = Path(state_dir)

    def __repr__(self) -> str:
        return f"TradeMemory(state_dir={str(self.state_dir)!r})"

    def shard_files(self) -> list[Path]:
        """Return the shard files present, ordered by shard number."""
        directory = shard_path(self.state_dir, 0).parent
        if not directory.is_dir():
            return []
        found: list[tuple[int, Path]] = []
        for path in directory.iterdir():
            match = _SHARD_FILE_RE.match(path.name)
            if match and path.is_file():
                found.append((int(match.group(1)), path))
        return [path for _, path in sorted(found)]

    def query(
        self,
        *,
        run_id: str | None = None,
        symbols: Sequence[str] | None = None,
        regime: str | None = None,
        since_ns: int | None = None,
        until_ns: int | None = None,
        limit: int | None = None,
    ) -> list[TradeRecord]:
        """Return stored trades matching every given filter.

        Parameters
        ----------
        run_id
            Only trades of this session.
        symbols
            Only trades in these symbols; an empty sequence matches nothing.
        regime
            Only trades entered in this regime.
        since_ns, until_ns
            Only trades with ``since_ns <= exit_ts < until_ns`` (ns since the Unix epoch).
        limit
            At most this many trades, the earliest first.

        Returns
        -------
        list[TradeRecord]
            Ordered by ``(exit_ts, symbol, trade_id)``, then ``run_id``, across all shards.
        """
        if isinstance(symbols, str):
            # A bare string is a Sequence[str] of its characters; that is never meant.
            raise TypeError("symbols must be a sequence of symbols, not a string")
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be non-negative, got {limit}")
        if limit == 0 or (symbols is not None and len(symbols) == 0):
            return []
        where: list[str] = []
        params: list[Any] = []
        if run_id is not None:
            where.append("run_id = ?")
            params.append(run_id)
        if symbols is not None:
            unique = sorted(set(symbols))
            where.append(f"symbol IN ({', '.join(['?'] * len(unique))})")
            params.extend(unique)
        if regime is not None:
            where.append("regime = ?")
            params.append(regime)
        if since_ns is not None:
            where.append("exit_ts >= ?")
            params.append(operator.index(since_ns))
        if until_ns is not None:
            where.append("exit_ts < ?")
            params.append(operator.index(until_ns))
        sql = f"SELECT {SELECT_COLUMNS} FROM trades"
        if where:
            sql += " WHERE " + " AND ".join(where)
        # SQLite's BINARY collation compares UTF-8 bytes, which orders like Python str
        # comparison, so the per-shard orders agree with the merge key.
        sql += " ORDER BY exit_ts, symbol, trade_id, run_id"
        if limit is not None:
            # The global first N are among each shard's first N.
            sql += " LIMIT ?"
            params.append(limit)

        per_shard: list[list[TradeRecord]] = []
        for handle in self._connections():
            with handle as conn:
                per_shard.append([to_record(row) for row in conn.execute(sql, params)])
        merged = heapq.merge(*per_shard, key=sort_key)
        return list(itertools.islice(merged, limit))

    def to_frame(
        self,
        *,
        run_id: str | None = None,
        symbols: Sequence[str] | None = None,
        regime: str | None = None,
        since_ns: int | None = None,
        until_ns: int | None = None,
        limit: int | None = None,
    ) -> pd.DataFrame:
        """Return :meth:`query` results as a frame.

        Parameters are those of :meth:`query`.

        Returns
        -------
        pandas.DataFrame
            One row per trade in query order, one column per :class:`TradeRecord` field,
            and each feature as an ``f_<name>`` column (sorted by name; missing where a
            trade lacks the feature).
        """
        records = self.query(
            run_id=run_id,
            symbols=symbols,
            regime=regime,
            since_ns=since_ns,
            until_ns=until_ns,
            limit=limit,
        )
        columns: dict[str, pd.Series] = {}
        for name in RECORD_FIELDS:
            values = [getattr(r, name) for r in records]
            if name in INT_FIELDS:
                dtype: Any = "int64"
            elif name in FLOAT_FIELDS:
                dtype = "float64"
            else:
                dtype = str
            columns[name] = pd.Series(values, dtype=dtype)
        feature_names = sorted({key for r in records for key in r.features})
        for key in feature_names:
            columns[f"f_{key}"] = pd.Series([r.features.get(key) for r in records])
        return pd.DataFrame(columns)

    def shadow_frame(self, *, run_id: str | None = None) -> pd.DataFrame:
        """The shadow trades (the trades rules prevented, ``core.shadow``), ordered by
        exit time: one row each with ``run_id, trade_id, symbol, entry_ts, exit_ts, pnl,
        return_pct, regime, rule_ids, effect`` (``rule_ids`` comma-separated)."""
        columns = (
            "run_id, trade_id, symbol, quantity, entry_ts, exit_ts, pnl, return_pct, "
            "regime, exit_reason, rule_ids, effect"
        )
        sql = f"SELECT {columns} FROM shadow_trades"
        params: tuple[str, ...] = ()
        if run_id is not None:
            sql += " WHERE run_id = ?"
            params = (run_id,)
        rows: list[tuple[Any, ...]] = []
        for handle in self._connections():
            with handle as conn:
                has = conn.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'shadow_trades'"
                ).fetchone()
                if has:
                    rows.extend(conn.execute(sql, params))
        frame = pd.DataFrame(rows, columns=[c.strip() for c in columns.split(",")])
        frame["pnl"] = frame["pnl"].astype("float64")
        frame["return_pct"] = frame["return_pct"].astype("float64")
        return frame.sort_values(["exit_ts", "symbol", "trade_id"], kind="stable").reset_index(
            drop=True
        )

    def runs(self) -> list[str]:
        """Return the run ids present in any shard, sorted."""
        found: set[str] = set()
        for handle in self._connections():
            with handle as conn:
                found.update(row[0] for row in conn.execute("SELECT DISTINCT run_id FROM trades"))
        return sorted(found)

    def count(self, run_id: str | None = None) -> int:
        """Return the number of stored trades, optionally of one run only."""
        sql = "SELECT COUNT(*) FROM trades"
        params: tuple[str, ...] = ()
        if run_id is not None:
            sql += " WHERE run_id = ?"
            params = (run_id,)
        total = 0
        for handle in self._connections():
            with handle as conn:
                total += conn.execute(sql, params).fetchone()[0]
        return total

    def _connections(self) -> Iterator[closing[sqlite3.Connection]]:
        for path in self.shard_files():
            uri = f"{path.resolve().as_uri()}?mode=ro"
            conn = sqlite3.connect(uri, uri=True)
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                # A writer is creating this file and has not committed the schema yet.
                conn.close()
                continue
            if version != SCHEMA_VERSION:
                conn.close()
                raise RuntimeError(
                    f"{path}: trade memory schema version {version}, expected {SCHEMA_VERSION}"
                )
            # closing(): a Connection's own context manager commits but does not close.
            yield closing(conn)

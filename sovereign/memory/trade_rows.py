"""The rows of the trade-memory files: the tables, the stored trade (``TradeRecord``), and
the conversion of closed trades to rows and of rows back to records.

``sovereign.memory.trade_memory`` writes and reads the files with these.
"""

from __future__ import annotations

import itertools
import operator
from typing import Any, Literal

import msgspec

from sovereign.messages.account import FeatureValue, TradeClosed, TradesClosed

SCHEMA_VERSION = 1
"""Stored in ``PRAGMA user_version``; bump it (and migrate) when the table changes."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS trades (
    run_id      TEXT    NOT NULL,
    trade_id    TEXT    NOT NULL,
    shard       INTEGER NOT NULL,
    symbol      TEXT    NOT NULL,
    side        TEXT    NOT NULL,
    quantity    INTEGER NOT NULL,
    entry_ts    INTEGER NOT NULL,
    exit_ts     INTEGER NOT NULL,
    entry_price REAL,
    exit_price  REAL,
    pnl         REAL,
    commission  REAL,
    return_pct  REAL,
    bars_held   INTEGER NOT NULL,
    exit_reason TEXT    NOT NULL,
    regime      TEXT    NOT NULL,
    confidence  REAL,
    features    TEXT    NOT NULL,
    msg_id      TEXT    NOT NULL,
    PRIMARY KEY (run_id, trade_id)
);
CREATE INDEX IF NOT EXISTS trades_run_exit ON trades (run_id, exit_ts);
CREATE INDEX IF NOT EXISTS trades_symbol ON trades (symbol);
CREATE INDEX IF NOT EXISTS trades_regime ON trades (regime);
CREATE TABLE IF NOT EXISTS shadow_trades (
    run_id      TEXT    NOT NULL,
    trade_id    TEXT    NOT NULL,
    shard       INTEGER NOT NULL,
    symbol      TEXT    NOT NULL,
    quantity    INTEGER NOT NULL,
    entry_ts    INTEGER NOT NULL,
    exit_ts     INTEGER NOT NULL,
    entry_price REAL,
    exit_price  REAL,
    pnl         REAL,
    commission  REAL,
    return_pct  REAL,
    bars_held   INTEGER NOT NULL,
    exit_reason TEXT    NOT NULL,
    regime      TEXT    NOT NULL,
    confidence  REAL,
    features    TEXT    NOT NULL,
    rule_ids    TEXT    NOT NULL,
    effect      TEXT    NOT NULL,
    msg_id      TEXT    NOT NULL,
    PRIMARY KEY (run_id, trade_id)
);
"""
# ``shadow_trades`` (the trades the rules prevented, ``core.shadow``) came after version 1
# without changing ``trades``: a version-1 file gets the table when it is next opened.
# REAL columns are nullable on purpose: SQLite stores a NaN as NULL, and a NaN return (a
# zero-notional entry) is data, not a reason to lose the trade.

INSERT = (
    "INSERT OR IGNORE INTO trades (run_id, trade_id, shard, symbol, side, quantity, entry_ts,"
    " exit_ts, entry_price, exit_price, pnl, commission, return_pct, bars_held, exit_reason,"
    " regime, confidence, features, msg_id)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)

INSERT_SHADOW = (
    "INSERT OR IGNORE INTO shadow_trades (run_id, trade_id, shard, symbol, quantity, entry_ts,"
    " exit_ts, entry_price, exit_price, pnl, commission, return_pct, bars_held, exit_reason,"
    " regime, confidence, features, rule_ids, effect, msg_id)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)

SELECT_COLUMNS = (
    "run_id, trade_id, shard, symbol, side, quantity, entry_ts, exit_ts, entry_price,"
    " exit_price, pnl, commission, return_pct, bars_held, exit_reason, regime, confidence,"
    " features"
)

# Sorted keys make the stored JSON a pure function of the features, so identical replays
# write identical rows.
FEATURES_ENCODER = msgspec.json.Encoder(order="sorted")
_FEATURES_DECODER = msgspec.json.Decoder(dict[str, FeatureValue])


class TradeRecord(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A closed trade as stored in trade memory.

    The fields of :class:`~sovereign.messages.account.TradeClosed` without the message
    envelope, plus the ``run_id`` of the session that produced it. Float fields are NaN
    where the trade carried a NaN.
    """

    run_id: str
    trade_id: str
    shard: int
    symbol: str
    side: Literal["LONG", "SHORT"]
    quantity: int
    entry_ts: int
    exit_ts: int
    entry_price: float
    exit_price: float
    pnl: float
    commission: float
    return_pct: float
    bars_held: int
    exit_reason: str
    regime: str
    confidence: float
    features: dict[str, FeatureValue] = msgspec.field(default_factory=dict)


RECORD_FIELDS: tuple[str, ...] = tuple(f for f in TradeRecord.__struct_fields__ if f != "features")
INT_FIELDS = frozenset({"shard", "quantity", "entry_ts", "exit_ts", "bars_held"})
FLOAT_FIELDS = frozenset(
    {"entry_price", "exit_price", "pnl", "commission", "return_pct", "confidence"}
)


def to_row(trade: TradeClosed, run_id: str) -> tuple[Any, ...]:
    """The ``trades`` row (``INSERT`` order) of one closed trade."""
    # Structs are not validated on construction, so coerce here: sqlite3 cannot bind numpy
    # integers, and operator.index refuses a float where an integer belongs.
    index = operator.index
    return (
        run_id,
        trade.trade_id,
        index(trade.shard),
        trade.symbol,
        trade.side,
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
        trade.msg_id,
    )


def to_rows(t: TradesClosed, run_id: str) -> list[tuple[Any, ...]]:
    """The ``trades`` rows of a batch of closed trades, as ``to_row`` makes them."""
    # ``tolist`` gives plain ints and floats, which is what sqlite3 binds.
    m = len(t)
    encode = FEATURES_ENCODER.encode
    return list(
        zip(
            itertools.repeat(run_id, m),
            t.trade_id,
            itertools.repeat(operator.index(t.shard), m),
            t.symbol,
            t.side,
            t.quantity.to_numpy().tolist(),
            t.entry_ts.to_numpy().tolist(),
            t.exit_ts.to_numpy().tolist(),
            t.entry_price.to_numpy().tolist(),
            t.exit_price.to_numpy().tolist(),
            t.pnl.to_numpy().tolist(),
            t.commission.to_numpy().tolist(),
            t.return_pct.to_numpy().tolist(),
            t.bars_held.to_numpy().tolist(),
            t.exit_reason,
            t.regime,
            t.confidence.to_numpy().tolist(),
            [encode(f).decode() for f in t.features],
            t.msg_ids,
            strict=True,
        )
    )


def _nan_if_null(value: float | None) -> float:
    return float("nan") if value is None else value


def to_record(row: tuple[Any, ...]) -> TradeRecord:
    """The record of a row selected with ``SELECT_COLUMNS`` (a NULL float reads as NaN)."""
    (
        run_id,
        trade_id,
        shard,
        symbol,
        side,
        quantity,
        entry_ts,
        exit_ts,
        entry_price,
        exit_price,
        pnl,
        commission,
        return_pct,
        bars_held,
        exit_reason,
        regime,
        confidence,
        features,
    ) = row
    return TradeRecord(
        run_id=run_id,
        trade_id=trade_id,
        shard=shard,
        symbol=symbol,
        side=side,
        quantity=quantity,
        entry_ts=entry_ts,
        exit_ts=exit_ts,
        entry_price=_nan_if_null(entry_price),
        exit_price=_nan_if_null(exit_price),
        pnl=_nan_if_null(pnl),
        commission=_nan_if_null(commission),
        return_pct=_nan_if_null(return_pct),
        bars_held=bars_held,
        exit_reason=exit_reason,
        regime=regime,
        confidence=_nan_if_null(confidence),
        features=_FEATURES_DECODER.decode(features),
    )


def sort_key(record: TradeRecord) -> tuple[int, str, str, str]:
    """The order of merged query results: exit time, symbol, trade id, then run."""
    return (record.exit_ts, record.symbol, record.trade_id, record.run_id)

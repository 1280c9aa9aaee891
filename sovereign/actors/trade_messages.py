"""The messages that carry a shard's closed trades: one trade, or a chunk's as columns."""

from __future__ import annotations

from sovereign.core.chunk_trades import ClosedColumns
from sovereign.core.trades import ClosedTrade
from sovereign.messages import NDArray, TradeClosed, TradesClosed
from sovereign.messages.base import IdSource


def trade_closed(ids: IdSource, shard: int, t: ClosedTrade) -> TradeClosed:
    return TradeClosed(
        msg_id=ids.next(),
        ts_event=t.exit_ts,
        ts_init=t.exit_ts,
        trade_id=t.trade_id,
        shard=shard,
        symbol=t.symbol,
        side="LONG",
        quantity=t.quantity,
        entry_ts=t.entry_ts,
        exit_ts=t.exit_ts,
        entry_price=t.entry_price,
        exit_price=t.exit_price,
        pnl=t.pnl,
        commission=t.commission,
        return_pct=t.return_pct,
        bars_held=t.bars_held,
        exit_reason=t.exit_reason,
        regime=t.regime,
        confidence=t.confidence,
        features=t.features,
    )


def trades_closed(ids: IdSource, shard: int, t: ClosedColumns) -> TradesClosed:
    """A chunk's closed trades in one message; each row keeps the id its own
    ``TradeClosed`` would have had."""
    msg_ids = ids.take(len(t))
    last = int(t.exit_ts.max())
    return TradesClosed(
        msg_id=ids.next(),
        ts_event=last,
        ts_init=last,
        shard=shard,
        msg_ids=msg_ids,
        trade_id=t.trade_id,
        symbol=t.symbol,
        side=["LONG"] * len(t),
        quantity=NDArray.from_numpy(t.quantity),
        entry_ts=NDArray.from_numpy(t.entry_ts),
        exit_ts=NDArray.from_numpy(t.exit_ts),
        entry_price=NDArray.from_numpy(t.entry_price),
        exit_price=NDArray.from_numpy(t.exit_price),
        pnl=NDArray.from_numpy(t.pnl),
        commission=NDArray.from_numpy(t.commission),
        return_pct=NDArray.from_numpy(t.return_pct),
        bars_held=NDArray.from_numpy(t.bars_held),
        exit_reason=t.exit_reason,
        regime=t.regime,
        confidence=NDArray.from_numpy(t.confidence),
        features=t.features,
    )

"""MonitorActor: the session's metrics — equity curve, trades and counts of everything."""

from __future__ import annotations

import numpy as np

from sovereign.actors.base import Actor
from sovereign.messages import (
    AccountSnapshot,
    ChunkExecution,
    ChunkVerdict,
    EquityCurve,
    Message,
    NDArray,
    OrderFilled,
    OrderRejected,
    RiskVerdict,
    SessionEnded,
    TradeClosed,
    TradesClosed,
)


class MonitorActor(Actor):
    role = "monitor"
    accepts = frozenset(
        {
            AccountSnapshot,
            OrderFilled,
            TradeClosed,
            TradesClosed,
            RiskVerdict,
            OrderRejected,
            SessionEnded,
            ChunkExecution,
            ChunkVerdict,
        }
    )

    def __init__(self, index: int = 0) -> None:
        super().__init__(index)
        self._ts: list[int] = []
        self._equity: list[float] = []
        self._cash: list[float] = []
        self._gross: list[float] = []
        self._executed: ChunkExecution | None = None

    def receive(self, messages: list[Message]) -> list[Message]:
        out: list[Message] = []
        for msg in messages:
            match msg:
                case AccountSnapshot():
                    # One snapshot per step (the gateway's, after the bars); ts is the bar.
                    self._ts.append(msg.ts_event)
                    self._equity.append(msg.equity)
                    self._cash.append(msg.cash)
                    self._gross.append(msg.gross_exposure)
                case OrderFilled():
                    self.count("fills")
                case TradeClosed():
                    self.count("trades_closed")
                    self.count("winning_trades" if msg.pnl > 0 else "losing_trades")
                case TradesClosed():
                    # Counted as one trade at a time would be (no key for a zero).
                    wins = int((msg.pnl.to_numpy() > 0).sum())
                    for key, n in (
                        ("trades_closed", len(msg)),
                        ("winning_trades", wins),
                        ("losing_trades", len(msg) - wins),
                    ):
                        if n:
                            self.count(key, n)
                case RiskVerdict():
                    self.count("intents_approved" if msg.approved else "intents_denied")
                case OrderRejected():
                    self.count("orders_rejected")
                case ChunkExecution():
                    self._executed = msg
                case ChunkVerdict():
                    self._on_chunk(msg)
                case SessionEnded():
                    out.append(self._curve(msg))
                case _:
                    pass
        return out

    def _on_chunk(self, verdict: ChunkVerdict) -> None:
        """A committed chunk: its account path (one row per bar, as the per-bar snapshots
        would give) and its counts. A discarded one is replayed bar by bar instead."""
        ex, self._executed = self._executed, None
        if not verdict.valid or ex is None or ex.chunk != verdict.chunk:
            return
        self._ts.extend(ex.ts.to_numpy().tolist())
        self._equity.extend(ex.equity.to_numpy().tolist())
        self._cash.extend(ex.cash.to_numpy().tolist())
        self._gross.extend(ex.gross_exposure.to_numpy().tolist())
        self.count("fills", verdict.fills)
        self.count("intents_approved", verdict.approved)

    def _curve(self, end: SessionEnded) -> EquityCurve:
        return EquityCurve(
            msg_id=self.ids.next(),
            ts_event=end.ts_event,
            ts_init=end.ts_init,
            ts=NDArray.from_numpy(np.asarray(self._ts, dtype=np.int64)),
            equity=NDArray.from_numpy(np.asarray(self._equity, dtype=np.float64)),
            cash=NDArray.from_numpy(np.asarray(self._cash, dtype=np.float64)),
            gross_exposure=NDArray.from_numpy(np.asarray(self._gross, dtype=np.float64)),
            counters=dict(sorted(self.counters.items())),
        )

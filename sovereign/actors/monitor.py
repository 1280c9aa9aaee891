"""MonitorActor: the session's metrics — equity curve, trades and counts of everything."""

from __future__ import annotations

import numpy as np

from sovereign.actors.base import Actor, accepting
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

MonitorInbox = (
    AccountSnapshot
    | OrderFilled
    | TradeClosed
    | TradesClosed
    | RiskVerdict
    | OrderRejected
    | SessionEnded
    | ChunkExecution
    | ChunkVerdict
)


class MonitorActor(Actor[MonitorInbox]):
    role = "monitor"
    accepts = accepting(MonitorInbox)

    def __init__(self, index: int = 0) -> None:
        super().__init__(index)
        self._ts: list[int] = []
        self._equity: list[float] = []
        self._cash: list[float] = []
        self._gross: list[float] = []
        # The path so far as column segments, oldest first; the lists above hold the bars
        # since the last segment (a chunk's path stays an array: a million bars of (a) as
        # Python floats cost a third of a second).
        self._segments: list[tuple[np.ndarray, ...]] = []
        self._executed: ChunkExecution | None = None

    def receive(self, messages: list[MonitorInbox]) -> list[Message]:
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
        self._seal()
        path = (ex.ts, ex.equity, ex.cash, ex.gross_exposure)
        self._segments.append(tuple(col.to_numpy() for col in path))
        self.count("fills", verdict.fills)
        self.count("intents_approved", verdict.approved)
        if verdict.denied:
            self.count("intents_denied", verdict.denied)

    def _seal(self) -> None:
        """Close the bars taken one at a time into a segment."""
        if self._ts:
            self._segments.append(
                (
                    np.asarray(self._ts, dtype=np.int64),
                    np.asarray(self._equity, dtype=np.float64),
                    np.asarray(self._cash, dtype=np.float64),
                    np.asarray(self._gross, dtype=np.float64),
                )
            )
            self._ts, self._equity, self._cash, self._gross = [], [], [], []

    def _curve(self, end: SessionEnded) -> EquityCurve:
        self._seal()
        dtypes = (np.int64, np.float64, np.float64, np.float64)
        ts, equity, cash, gross = (
            np.concatenate([seg[k] for seg in self._segments]).astype(dtype, copy=False)
            if self._segments
            else np.zeros(0, dtype=dtype)
            for k, dtype in enumerate(dtypes)
        )
        return EquityCurve(
            msg_id=self.ids.next(),
            ts_event=end.ts_event,
            ts_init=end.ts_init,
            ts=NDArray.from_numpy(ts),
            equity=NDArray.from_numpy(equity),
            cash=NDArray.from_numpy(cash),
            gross_exposure=NDArray.from_numpy(gross),
            counters=dict(sorted(self.counters.items())),
        )

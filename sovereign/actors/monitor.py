"""MonitorActor: the session's metrics — equity curve, trades and counts of everything."""

from __future__ import annotations

import numpy as np

from sovereign.actors.base import Actor
from sovereign.messages import (
    AccountSnapshot,
    EquityCurve,
    Message,
    NDArray,
    OrderFilled,
    OrderRejected,
    RiskVerdict,
    SessionEnded,
    TradeClosed,
)


class MonitorActor(Actor):
    role = "monitor"
    accepts = frozenset(
        {
            AccountSnapshot,
            OrderFilled,
            TradeClosed,
            RiskVerdict,
            OrderRejected,
            SessionEnded,
        }
    )

    def __init__(self, index: int = 0) -> None:
        super().__init__(index)
        self._ts: list[int] = []
        self._equity: list[float] = []
        self._cash: list[float] = []
        self._gross: list[float] = []

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
                case RiskVerdict():
                    self.count("intents_approved" if msg.approved else "intents_denied")
                case OrderRejected():
                    self.count("orders_rejected")
                case SessionEnded():
                    out.append(self._curve(msg))
                case _:
                    pass
        return out

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

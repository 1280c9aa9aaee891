"""OperatorActor: turns what happens in the system into notifications for operators.

It decides *what* an operator should hear; a notifier in ``sovereign.comms`` decides how it
is delivered (the console by default, Telegram when configured).
"""

from __future__ import annotations

from datetime import UTC, datetime

from sovereign.actors.base import Actor
from sovereign.messages import (
    Message,
    Notification,
    OrderFilled,
    OrderRejected,
    RegimeUpdate,
    RuleEvaluationRequested,
    SessionEnded,
    SessionStarted,
    TradeClosed,
)


def _when(ts: int) -> str:
    return datetime.fromtimestamp(ts / 1e9, tz=UTC).strftime("%Y-%m-%d %H:%M")


class OperatorActor(Actor):
    role = "operator"

    def __init__(self, index: int = 0, *, notify_fills: bool = False) -> None:
        super().__init__(index)
        self.notify_fills = notify_fills
        self.market_regime = ""

    def receive(self, messages: list[Message]) -> list[Message]:
        out: list[Message] = []
        for msg in messages:
            match msg:
                case Notification():
                    # Raised elsewhere (the guardian's state changes): deliver as is.
                    self.count(f"notified_{msg.kind}")
                    out.append(msg)
                case RuleEvaluationRequested():
                    out.append(
                        self._note(
                            msg.ts_event,
                            "rule_evaluation",
                            "info",
                            f"rule evaluation requested: {msg.reason}",
                            ", ".join(msg.trade_ids),
                        )
                    )
                case TradeClosed():
                    out.append(self._trade(msg))
                case OrderFilled() if self.notify_fills:
                    out.append(
                        self._note(
                            msg.ts_event,
                            "fill",
                            "info",
                            f"{msg.side} {msg.quantity} {msg.symbol} @ {msg.price:.2f}",
                            f"order {msg.order_id}, commission {msg.commission:.2f}",
                        )
                    )
                case OrderRejected():
                    out.append(
                        self._note(
                            msg.ts_event,
                            "order_rejected",
                            "warning",
                            f"order {msg.order_id} ({msg.symbol}) rejected: {msg.reason_code}",
                            msg.detail,
                        )
                    )
                case RegimeUpdate() if msg.shard <= 0 and msg.market != self.market_regime:
                    if self.market_regime:
                        out.append(
                            self._note(
                                msg.ts_event,
                                "regime",
                                "info",
                                f"market regime {self.market_regime} -> {msg.market}",
                                f"model {msg.model}",
                            )
                        )
                    self.market_regime = msg.market
                case SessionStarted():
                    out.append(
                        self._note(
                            msg.ts_event,
                            "session",
                            "info",
                            f"{msg.mode} session {msg.run_id} started",
                            f"{len(msg.symbols)} symbols, capital {msg.initial_capital:,.0f}",
                        )
                    )
                case SessionEnded():
                    out.append(
                        self._note(
                            msg.ts_event,
                            "session",
                            "info",
                            f"session {msg.run_id} ended after {msg.steps} steps",
                            "",
                        )
                    )
                case _:
                    pass
        return out

    def _trade(self, t: TradeClosed) -> Notification:
        verb = "won" if t.pnl > 0 else "lost"
        return self._note(
            t.exit_ts,
            "trade_closed",
            "info",
            f"{t.symbol} trade {verb} {t.pnl:+,.2f} ({t.return_pct:+.2%}) on {t.exit_reason}",
            f"{t.quantity} sh {t.entry_price:.2f} -> {t.exit_price:.2f}, {t.bars_held} bars, "
            f"entered in {t.regime} at confidence {t.confidence:.2f}",
        )

    def _note(self, ts: int, kind: str, level: str, title: str, text: str) -> Notification:
        self.count(f"notified_{kind}")
        return Notification(
            msg_id=self.ids.next(),
            ts_event=ts,
            ts_init=ts,
            kind=kind,
            level=level,  # type: ignore[arg-type]
            title=f"[{_when(ts)}] {title}",
            text=text,
        )

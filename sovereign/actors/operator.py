"""OperatorActor: turns what happens in the system into notifications for operators.

It decides *what* an operator should hear; a notifier in ``sovereign.comms`` decides how it
is delivered (the console by default, Telegram when configured).

It also writes a daily summary (a ``DailySummary``, which is a ``Notification``) when the
gateway's account snapshots move to a new session date, and one for the unfinished day when
the session ends. The state behind it lives only in this actor: after a restart the next
summary covers what was seen since.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from datetime import UTC, datetime

import numpy as np

from sovereign.actors.base import Actor, accepting
from sovereign.core.calendar import session_date
from sovereign.messages import (
    AccountSnapshot,
    ChunkExecution,
    ChunkVerdict,
    DailySummary,
    Message,
    NDArray,
    Notification,
    OrderFilled,
    OrderRejected,
    RegimeUpdate,
    RuleEvaluationRequested,
    SessionEnded,
    SessionStarted,
    TradeClosed,
    TradesClosed,
)

SUMMARY_WINDOW_DAYS = 30
"""Session dates of equity a daily summary's chart series covers, the summarised day last."""

SUMMARY_MAX_POINTS = 1_000
"""At most this many points in a daily summary's chart series (a photo, not a data set)."""


def _when(ts: int) -> str:
    return datetime.fromtimestamp(ts / 1e9, tz=UTC).strftime("%Y-%m-%d %H:%M")


class _DayTrades:
    """The closed trades of one session date."""

    __slots__ = ("pnl", "trades", "wins")

    def __init__(self) -> None:
        self.trades = 0
        self.wins = 0
        self.pnl = 0.0


OperatorInbox = (
    AccountSnapshot
    | Notification
    | RuleEvaluationRequested
    | TradeClosed
    | TradesClosed
    | OrderFilled
    | OrderRejected
    | RegimeUpdate
    | SessionStarted
    | SessionEnded
    | ChunkExecution
    | ChunkVerdict
)


class OperatorActor(Actor[OperatorInbox]):
    """Decides what operators hear.

    Parameters
    ----------
    index
        The actor's index (there is one operator).
    notify_fills
        Also notify every fill (default False: too chatty for anything but a demo).
    daily_summary
        Send a ``DailySummary`` for each finished session date and for the day the session
        ends in (default True). When off, account snapshots are not even looked at.
    muted
        Kinds of notification no channel delivers (``[notifications]`` has them "off"
        everywhere). The per-trade and per-order ones are then not built at all: a long
        backtest closes a trade every few bars, and nobody would read them.
    """

    role = "operator"
    accepts = accepting(OperatorInbox)

    def __init__(
        self,
        index: int = 0,
        *,
        notify_fills: bool = False,
        daily_summary: bool = True,
        muted: Iterable[str] = (),
    ) -> None:
        super().__init__(index)
        self.notify_fills = notify_fills
        muted = frozenset(muted)
        self.notify_trades = "trade_closed" not in muted
        self.notify_rejections = "order_rejected" not in muted
        self.market_regime = ""
        self.daily_summary = daily_summary
        # This runs every bar of long backtests, so a step only appends the snapshot's own
        # int and float to two deques (no tuple per point); arrays are built when a summary
        # is sent, once a day.
        self._point_ts: deque[int] = deque()
        self._point_equity: deque[float] = deque()
        # Each session date in the window with the absolute index of its first point.
        # Indices count points popped off the left too (``_dropped``), so they never shift.
        self._days: deque[tuple[str, int]] = deque()
        self._dropped = 0
        self._day = ""
        self._day_start_equity = 0.0
        self._high_water_mark = -np.inf
        # Keyed by the exit's session date, not by arrival: a trade may arrive in the same
        # batch as the snapshot that starts the next day, before or after it.
        self._trades: dict[str, _DayTrades] = {}
        self._executed: ChunkExecution | None = None

    def receive(self, messages: list[OperatorInbox]) -> list[Message]:
        out: list[Message] = []
        for msg in messages:
            match msg:
                case AccountSnapshot() if self.daily_summary:
                    self._on_account(msg, out)
                case ChunkExecution() | ChunkVerdict():
                    self._on_chunk(msg, out)
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
                case TradeClosed() | TradesClosed():
                    out.extend(self._on_closed(msg))
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
                case OrderRejected() if self.notify_rejections:
                    out.append(
                        self._note(
                            msg.ts_event,
                            "order_rejected",
                            "warning",
                            f"order {msg.order_id} ({msg.symbol}) rejected: {msg.reason_code}",
                            msg.detail,
                        )
                    )
                case RegimeUpdate():
                    self._on_regime(msg, out)
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
                    if self.daily_summary and self._day:
                        out.append(self._summary(msg.ts_event, complete=False))
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

    def _on_regime(self, msg: RegimeUpdate, out: list[Message]) -> None:
        if msg.shard > 0 or msg.market == self.market_regime:
            return
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

    # -- DAILY SUMMARY --

    def _on_account(self, msg: AccountSnapshot, out: list[Message]) -> None:
        day = msg.session_date
        if not day:
            # Not attributable to a day (the gateway dates every per-step snapshot).
            return
        if day != self._day:
            if self._day:
                out.append(self._summary(msg.ts_event, complete=True))
            self._start_day(day, msg.equity)
        self._point_ts.append(msg.ts_event)
        self._point_equity.append(msg.equity)
        if msg.equity > self._high_water_mark:
            self._high_water_mark = msg.equity

    def _on_chunk(self, msg: ChunkExecution | ChunkVerdict, out: list[Message]) -> None:
        """A committed chunk's account path (its execution report, then the verdict that
        commits it), one snapshot per bar as ``_on_account`` takes them, a day at a time.
        Its closed trades come before it (the engine hands them over first), so each day's
        summary counts them."""
        if isinstance(msg, ChunkExecution):
            self._executed = msg
            return
        verdict = msg
        ex, self._executed = self._executed, None
        if not (self.daily_summary and verdict.valid and ex is not None):
            return
        if ex.chunk != verdict.chunk:
            return
        ts, equity = ex.ts.to_numpy(), ex.equity.to_numpy()
        day = ex.day.to_numpy()
        starts = np.flatnonzero(np.r_[True, day[1:] != day[:-1]]).tolist()
        for a, b in zip(starts, [*starts[1:], len(day)], strict=True):
            date = ex.session_dates[int(day[a])]
            if date != self._day:
                if self._day:
                    out.append(self._summary(int(ts[a]), complete=True))
                self._start_day(date, float(equity[a]))
            self._point_ts.extend(ts[a:b].tolist())
            self._point_equity.extend(equity[a:b].tolist())
            top = float(equity[a:b].max())
            if top > self._high_water_mark:
                self._high_water_mark = top

    def _start_day(self, day: str, equity: float) -> None:
        self._day = day
        self._day_start_equity = equity
        self._days.append((day, self._dropped + len(self._point_ts)))
        if len(self._days) > SUMMARY_WINDOW_DAYS:
            self._days.popleft()
            first = self._days[0][1]
            for _ in range(first - self._dropped):
                self._point_ts.popleft()
                self._point_equity.popleft()
            self._dropped = first

    def _on_closed(self, msg: TradeClosed | TradesClosed) -> list[Notification]:
        """Count closed trades into their day's summary and tell of each if asked."""
        if self.daily_summary:
            if isinstance(msg, TradeClosed):
                self._tally([msg.exit_ts], [msg.pnl])
            else:
                self._tally(msg.exit_ts.to_numpy().tolist(), msg.pnl.to_numpy().tolist())
        if not self.notify_trades:
            return []
        trades = [msg] if isinstance(msg, TradeClosed) else msg.trades()
        return [self._trade(t) for t in trades]

    def _tally(self, exit_ts: list[int], pnls: list[float]) -> None:
        for ts, pnl in zip(exit_ts, pnls, strict=True):
            key = session_date(ts)
            day = self._trades.get(key)
            if day is None:
                day = self._trades[key] = _DayTrades()
            day.trades += 1
            if pnl > 0:
                day.wins += 1
            day.pnl += pnl

    def _summary(self, now: int, *, complete: bool) -> DailySummary:
        """The summary of ``self._day``, whose last point is the newest one held."""
        day = self._day
        n = len(self._point_ts)
        ts = np.fromiter(self._point_ts, dtype=np.int64, count=n)
        equity = np.fromiter(self._point_equity, dtype=np.float64, count=n)
        day_start_ts = int(ts[self._days[-1][1] - self._dropped])
        last_ts = int(ts[-1])
        start, end, hwm = self._day_start_equity, float(equity[-1]), float(self._high_water_mark)
        change = end / start - 1.0 if start > 0 else 0.0
        drawdown = max(0.0, 1.0 - end / hwm) if hwm > 0 else 0.0
        if n > SUMMARY_MAX_POINTS:
            # Evenly spaced, both ends kept: the step is over 1, so no index repeats.
            keep = np.linspace(0, n - 1, SUMMARY_MAX_POINTS).round().astype(np.intp)
            ts, equity = ts[keep], equity[keep]

        trades = self._trades.pop(day, None) or _DayTrades()
        # Trades dated before this day can no longer be reported (they arrived after their
        # day's summary, or their day had no snapshot): drop them so the dict stays small.
        for stale in [d for d in self._trades if d < day]:
            self.count("daily_summary_late_trades", self._trades.pop(stale).trades)

        partial = "" if complete else " (partial)"
        title = (
            f"[{_when(last_ts)}] daily summary {day}{partial}: equity {end:,.2f} "
            f"({change * 100:+.2f} %), {trades.trades} trades ({trades.wins} won), "
            f"drawdown {drawdown * 100:.2f} %"
        )
        text = "\n".join(
            (
                f"session {day}: " + ("complete" if complete else "partial, the session ended"),
                f"equity {start:,.2f} -> {end:,.2f} ({end - start:+,.2f}, {change * 100:+.2f} %)",
                f"high-water mark {hwm:,.2f}, drawdown {drawdown * 100:.2f} %",
                f"trades closed {trades.trades}: {trades.wins} won, "
                f"{trades.trades - trades.wins} not, net P&L {trades.pnl:+,.2f}",
            )
        )
        self.count("notified_daily_summary")
        return DailySummary(
            msg_id=self.ids.next(),
            ts_event=last_ts,
            ts_init=now,
            kind="daily_summary",
            level="info",
            title=title,
            text=text,
            # For the chart: where to shade the day (the series may skip its first point).
            data={"day_start_ts": day_start_ts, "points": n},
            session_date=day,
            start_equity=start,
            end_equity=end,
            high_water_mark=hwm,
            drawdown=drawdown,
            trades=trades.trades,
            wins=trades.wins,
            pnl=trades.pnl,
            complete=complete,
            equity_ts=NDArray.from_numpy(ts),
            equity=NDArray.from_numpy(equity),
        )

    # -- NOTES --

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

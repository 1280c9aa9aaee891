"""Account, position, trade-outcome and operator messages."""

from __future__ import annotations

from typing import Literal

import msgspec
import numpy as np

from sovereign.messages.base import Message, NDArray

FeatureValue = float | int | str | bool | None


class AccountSnapshot(Message, frozen=True, gc=False):
    """The account after the latest bar, marked to market (``equity`` includes unrealised
    P&L). Exposures are notional, in account currency."""

    cash: float
    equity: float
    realized_pnl: float
    unrealized_pnl: float
    gross_exposure: float
    net_exposure: float
    commissions: float
    open_positions: int
    session_date: str = ""


class PositionSnapshot(Message, frozen=True, gc=False):
    """One symbol's position after a change (a quantity of 0 means flat)."""

    symbol: str
    quantity: int
    avg_price: float
    market_price: float
    unrealized_pnl: float
    realized_pnl: float


class TradeClosed(Message, frozen=True, gc=False):
    """A round trip, from the first entry fill to the fill that made the position flat.

    ``features`` are the values the entry decision saw (ATR, volume percentile, S/R score,
    ...), so the learner and the weakness analyser can slice trade memory by them.
    ``pnl`` is net of commissions; ``return_pct`` is ``pnl`` over the entry notional.
    """

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


class ShadowTradeClosed(Message, frozen=True, gc=False):
    """A trade a rule prevented, followed to its end on the real bars (``core.shadow``):
    never an order, never in the account. ``rule_ids`` are the rules that acted on it;
    ``effect`` is ``skipped`` (the whole trade was not taken) or ``scaled`` (the part a
    ``ScaleSize`` did not buy, on the taken trade's prices). The fields are those of
    ``TradeClosed``."""

    trade_id: str
    shard: int
    symbol: str
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
    rule_ids: list[str]
    effect: Literal["skipped", "scaled"]
    features: dict[str, FeatureValue] = msgspec.field(default_factory=dict)


_TRADE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("quantity", "<i8"),
    ("entry_ts", "<i8"),
    ("exit_ts", "<i8"),
    ("entry_price", "<f8"),
    ("exit_price", "<f8"),
    ("pnl", "<f8"),
    ("commission", "<f8"),
    ("return_pct", "<f8"),
    ("bars_held", "<i8"),
    ("confidence", "<f8"),
)
_TRADE_LISTS = ("msg_ids", "trade_id", "symbol", "side", "exit_reason", "regime", "features")


class TradesClosed(Message, frozen=True, gc=False):
    """Many round trips of one shard at once, as columns: a committed chunk's.

    Row ``i`` is the ``TradeClosed`` that ``trades()[i]`` rebuilds, field for field
    (``msg_ids[i]`` is its message id, its ``exit_ts`` its ``ts_event``), in the order the
    shard closed them. A chunk closes thousands of trades, and one message per trade
    cost more than everything else the chunk did; consumers that need a trade at a time
    expand it, the others read the columns.
    """

    shard: int
    msg_ids: list[str]
    trade_id: list[str]
    symbol: list[str]
    side: list[Literal["LONG", "SHORT"]]
    quantity: NDArray
    entry_ts: NDArray
    exit_ts: NDArray
    entry_price: NDArray
    exit_price: NDArray
    pnl: NDArray
    commission: NDArray
    return_pct: NDArray
    bars_held: NDArray
    exit_reason: list[str]
    regime: list[str]
    confidence: NDArray
    features: list[dict[str, FeatureValue]]

    def __post_init__(self) -> None:
        m = len(self.msg_ids)
        for name in _TRADE_LISTS:
            if len(getattr(self, name)) != m:
                raise ValueError(
                    f"TradesClosed.{name} has {len(getattr(self, name))} rows, not {m}"
                )
        for name, dtype in _TRADE_COLUMNS:
            col: NDArray = getattr(self, name)
            if col.dtype != dtype or col.shape != (m,):
                raise ValueError(
                    f"TradesClosed.{name} must be {dtype} with shape ({m},), "
                    f"got {col.dtype} {col.shape}"
                )

    def __len__(self) -> int:
        return len(self.msg_ids)

    @classmethod
    def of(cls, trades: list[TradeClosed], *, msg_id: str, shard: int) -> TradesClosed:
        """The columns of one shard's ``trades`` (``ts_event``: the last exit)."""
        last = max((t.exit_ts for t in trades), default=0)
        columns = {
            name: NDArray.from_numpy(np.array([getattr(t, name) for t in trades], dtype=dtype))
            for name, dtype in _TRADE_COLUMNS
        }
        lists = {name: [getattr(t, name) for t in trades] for name in _TRADE_LISTS[1:]}
        return cls(
            msg_id=msg_id,
            ts_event=last,
            ts_init=last,
            shard=shard,
            msg_ids=[t.msg_id for t in trades],
            **lists,
            **columns,
        )

    def trades(self) -> list[TradeClosed]:
        """One ``TradeClosed`` per row."""
        names = (*_TRADE_LISTS, *(name for name, _ in _TRADE_COLUMNS))
        columns = [
            *(getattr(self, name) for name in _TRADE_LISTS),
            *(getattr(self, name).to_numpy().tolist() for name, _ in _TRADE_COLUMNS),
        ]
        out = []
        for values in zip(*columns, strict=True):
            row = dict(zip(names, values, strict=True))
            msg_id, ts = row.pop("msg_ids"), row["exit_ts"]
            out.append(TradeClosed(msg_id=msg_id, ts_event=ts, ts_init=ts, shard=self.shard, **row))
        return out


class Notification(Message, frozen=True, gc=False):
    """Something an operator should see (console or Telegram)."""

    kind: str
    level: Literal["info", "warning", "critical"]
    title: str
    text: str
    data: dict[str, FeatureValue] = msgspec.field(default_factory=dict)


# kw_only: Notification ends with a field that has a default, and msgspec refuses required
# positional fields after it. Keyword-only fields are exempt; every caller names its
# fields anyway.
class DailySummary(Notification, frozen=True, gc=False, kw_only=True):
    """A Notification with one session date's figures and an equity series to chart.

    It is a Notification, so every path that delivers notifications delivers it unchanged;
    a notifier that knows the type can also draw ``equity`` as a chart. Its own tag
    (``DailySummary``) means a decoder must list the type to accept it: the wire union does.

    Parameters
    ----------
    session_date
        The New York trading date summarised (YYYY-MM-DD).
    start_equity, end_equity
        Equity at the day's first and last account snapshot.
    high_water_mark
        The highest equity seen in the session up to the end of the day.
    drawdown
        ``1 - end_equity / high_water_mark`` as a fraction (0 at a new high, never negative).
    trades, wins, pnl
        Trades closed that day, those with a positive P&L, and their net P&L summed.
    complete
        False for the day a session ended in (its figures are as of the end of the session).
    equity_ts, equity
        The chart series over the trailing session dates up to this day's end: ``<i8`` ns
        and ``<f8``, of equal length, decimated to a bounded number of points.
    """

    session_date: str
    start_equity: float
    end_equity: float
    high_water_mark: float
    drawdown: float
    trades: int
    wins: int
    pnl: float
    complete: bool
    equity_ts: NDArray
    equity: NDArray


class SessionStarted(Message, frozen=True, gc=False):
    """Sent to every actor once before the first bar."""

    run_id: str
    mode: Literal["backtest", "paper", "live"]
    symbols: NDArray
    initial_capital: float


class SessionEnded(Message, frozen=True, gc=False):
    """Sent to every actor after the last bar: flush stores and report."""

    run_id: str
    steps: int


class ShardReport(Message, frozen=True, gc=False):
    """A shard's account of the session: what it saw, rejected and did."""

    shard: int
    symbols: int
    bars: int
    rejected_bars: dict[str, int]
    intents: int
    trades_closed: int
    open_trades: int
    decode_errors: int = 0
    # Order events the strategy could not match to a live order of its own, by kind:
    # ``late_entry_fills`` (booked, then sold), ``unknown_order_events`` (dropped, counted),
    # ``orphaned_orders`` (never answered, forgotten after a grace period).
    order_events: dict[str, int] = msgspec.field(default_factory=dict)
    # What the shard believes it holds at the end (symbol -> shares), and how it came
    # through restarts: ``restarts``, ``fills_booked`` (each execution once),
    # ``reconciled_positions`` / ``reconciled_orders`` (booked from the broker's book).
    positions: dict[str, int] = msgspec.field(default_factory=dict)
    recovery: dict[str, int] = msgspec.field(default_factory=dict)


class EquityCurve(Message, frozen=True, gc=False):
    """The monitor's end-of-session record: one row per step.

    ``ts`` is ``<i8`` (bar start, ns), the others ``<f8``.
    """

    ts: NDArray
    equity: NDArray
    cash: NDArray
    gross_exposure: NDArray
    counters: dict[str, int] = msgspec.field(default_factory=dict)


class ActorStats(Message, frozen=True, gc=False):
    """An actor's counters at the end of a session (what it refused, dropped, did)."""

    role: str
    index: int
    counters: dict[str, int] = msgspec.field(default_factory=dict)


class BookPosition(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """One non-flat position in a BookSnapshot."""

    symbol: str
    quantity: int
    avg_price: float
    market_price: float


class BookOrder(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """One working order in a BookSnapshot. ``price`` is the limit, or the last price of a
    market order, so its notional can be counted against the limits."""

    order_id: str
    symbol: str
    side: Literal["BUY", "SELL"]
    remaining: int
    price: float
    purpose: Literal["OPEN", "CLOSE"] = "OPEN"


class BookSnapshot(Message, frozen=True, gc=False):
    """The broker's view of the book after a step: every open position and working order.

    The guardian rebuilds its holdings and pending orders from it every step, so a guardian
    that restarts is reconciled with the broker by the next snapshot.
    """

    positions: list[BookPosition] = msgspec.field(default_factory=list)
    working: list[BookOrder] = msgspec.field(default_factory=list)
    session_date: str = ""


class TradingStateChanged(Message, frozen=True, gc=False):
    """The guardian's trading state moved (ACTIVE, NO_NEW_POSITIONS, HALTED)."""

    previous: Literal["ACTIVE", "NO_NEW_POSITIONS", "HALTED"]
    state: Literal["ACTIVE", "NO_NEW_POSITIONS", "HALTED"]
    reason: str
    equity: float
    high_water_mark: float
    day_start_equity: float
    drawdown: float
    day_loss: float
    session_date: str


class RuleEvaluationRequested(Message, frozen=True, gc=False):
    """The guardian asks the self-modification engine to look at recent losses."""

    reason: str
    consecutive_losses: int
    trade_ids: list[str] = msgspec.field(default_factory=list)

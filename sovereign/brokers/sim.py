"""The simulated broker used by backtests and the default paper demo.

Fill model (documented in the README):

* An order submitted after the bar at time t works from the next bar of its symbol on.
* Market orders fill at that bar's open, moved against us by ``slippage_bps``.
* Buy limits fill when the bar trades at or below the limit, at min(open, limit); sell
  limits when it trades at or above, at max(open, limit) (a gap through the limit fills at
  the better open). Limit fills get no slippage.
* A fill never exceeds ``max_volume_share`` of the bar's volume; the rest carries over to
  later bars. A bar with zero volume fills nothing; a bar with unknown (NaN) volume is not
  capped, and that is counted.
* Commission per order fill: ``commission_per_share`` per share, at least
  ``commission_min`` and at most ``commission_max_pct`` of the trade value (IBKR Pro fixed
  pricing by default: $0.005/share, $1.00 minimum, 1 % maximum).
* With a ``position_cap`` (the constitution's max position size), an opening fill is cut
  so that the position's notional at the fill price stays within that fraction of the
  equity at that moment (positions marked at this bar's open); the cut remainder is
  canceled (``POSITION_CAP_AT_FILL``). This is the last line of defence behind the
  guardian's sizing, for gaps between the decision and the fill.
"""

from __future__ import annotations

import math

import numpy as np

from sovereign.brokers import sim_chunk
from sovereign.brokers.base import accepted, canceled, rejected
from sovereign.brokers.sim_chunk import ChunkMarket, ChunkOrders, Speculation, Working
from sovereign.config import SimConfig
from sovereign.core.fills import commission_for, market_price, volume_cap
from sovereign.core.portfolio import Portfolio
from sovereign.messages import (
    AccountSnapshot,
    BarBatch,
    BookOrder,
    BookPosition,
    IdSource,
    Message,
    OrderCanceled,
    OrderFilled,
    OrderRejected,
    PositionSnapshot,
    SubmitOrder,
)


class SimBroker:
    """An in-process broker filling orders against the bars it is shown."""

    name = "sim"

    def __init__(
        self, config: SimConfig, initial_cash: float, *, position_cap: float | None = None
    ) -> None:
        self.config = config
        self.position_cap = position_cap
        self.portfolio = Portfolio(initial_cash)
        self._working: dict[str, Working] = {}
        self._ids = IdSource("sim")
        self._index_cache: dict[int, tuple[bytes, dict[str, int]]] = {}
        self.last_ts = 0
        self.counters = {
            "fills": 0,
            "uncapped_unknown_volume": 0,
            "zero_volume_bars": 0,
            "position_cap_cuts": 0,
        }

    # -- COMMANDS -----------------------------------------------------------------------

    def submit(self, order: SubmitOrder, now_ns: int) -> list[Message]:
        if order.order_id in self._working:
            return [self._rejected(order, "DUPLICATE_ORDER_ID", "order id already working", now_ns)]
        self._working[order.order_id] = Working(order, submitted_ns=now_ns)
        return [accepted(self._ids, order, f"SIM-{order.order_id}", now_ns)]

    def cancel(self, order_id: str, now_ns: int) -> list[Message]:
        w = self._working.pop(order_id, None)
        if w is None:
            return []
        return [canceled(self._ids, w.order, w.filled, "canceled on request", now_ns)]

    # -- MARKET DATA --------------------------------------------------------------------

    def on_bars(self, batch: BarBatch) -> list[Message]:
        """Fill working orders against this batch, then mark positions to its closes."""
        self.last_ts = max(self.last_ts, batch.ts)
        if not self._working and not self.portfolio.open:
            return []
        index = self._index(batch)
        events: list[Message] = []
        if self._working:
            # Python floats once per column: positions and fills read them one at a time.
            opens = batch.open.to_numpy().tolist()
            # Fills happen at the open: that is what positions are worth at that moment
            # (without fills nothing reads that mark before the close replaces it).
            self._mark(index, opens)
            events = self._fill_working(batch, index, opens)
        self._mark(index, batch.close.to_numpy().tolist())
        return events

    def _mark(self, index: dict[str, int], prices: list[float]) -> None:
        for symbol, pos in self.portfolio.open.items():
            i = index.get(symbol)
            if i is not None:
                pos.market_price = prices[i]

    def _fill_working(
        self, batch: BarBatch, index: dict[str, int], opens: list[float]
    ) -> list[Message]:
        highs = batch.high.to_numpy()
        lows = batch.low.to_numpy()
        volumes = batch.volume.to_numpy()
        now = batch.ts_event
        events: list[Message] = []
        done: list[str] = []
        # Orders fill in submission order (dicts keep insertion order): deterministic.
        # The account's equity (which the position cap is measured against) is summed once
        # and then carried through the fills: summing every open position at every fill
        # made a step with many fills quadratic in the number of positions.
        equity: float | None = None
        p = self.portfolio
        for order_id, w in self._working.items():
            symbol = w.order.symbol
            i = index.get(symbol)
            if i is None or w.submitted_ns > batch.ts:
                continue
            fill = self._try_fill(
                w, opens[i], float(highs[i]), float(lows[i]), float(volumes[i]), batch.ts
            )
            if fill is None:
                continue
            quantity, price = fill
            if equity is None and self._capped(w):
                equity = p.equity
            capped = self._cap_at_fill(w, quantity, price, equity)
            if capped > 0:
                pos = p.positions.get(symbol)
                before = p.cash + (pos.market_value if pos is not None else 0.0)
                events.append(self._book_fill(w, capped, price, ts=batch.ts, now=now))
                if equity is not None:
                    equity += p.cash + p.positions[symbol].market_value - before
            if capped < quantity:
                events.append(self._cut(w, now))
                done.append(order_id)
            elif w.remaining == 0:
                done.append(order_id)
        for order_id in done:
            del self._working[order_id]
        return events

    def _try_fill(
        self, w: Working, open_: float, high: float, low: float, volume: float, ts: int
    ) -> tuple[int, float] | None:
        order = w.order
        if order.order_type == "MARKET":
            price = market_price(open_, order.side, self.config)
        else:
            limit = float(order.limit_price)  # type: ignore[arg-type]
            if order.side == "BUY":
                if low > limit:
                    return None
                price = min(open_, limit)
            else:
                if high < limit:
                    return None
                price = max(open_, limit)
        quantity = w.remaining
        cap = volume_cap(volume, self.config)
        if cap is None:
            self.counters["uncapped_unknown_volume"] += 1
        else:
            if cap <= 0:
                self.counters["zero_volume_bars"] += 1
                return None
            quantity = min(quantity, cap)
        return quantity, price

    def _capped(self, w: Working) -> bool:
        return self.position_cap is not None and w.order.purpose == "OPEN" and w.order.side == "BUY"

    def _cap_at_fill(
        self, w: Working, quantity: int, price: float, equity: float | None = None
    ) -> int:
        """The part of an opening fill that keeps the position within the cap.

        ``equity`` is the account's equity carried through this bar's fills. Unless it
        leaves room for at least one share more than the order (rounding is far below a
        share) the equity is summed afresh, so carrying it never changes a fill."""
        if not self._capped(w):
            return quantity
        assert self.position_cap is not None
        p = self.portfolio
        held = p.quantity(w.order.symbol)
        commission = commission_for(quantity, price, self.config)
        allowed = self._room(held, price, (p.equity if equity is None else equity) - commission)
        if equity is not None and allowed <= quantity + 1:
            allowed = self._room(held, price, p.equity - commission)
        if allowed >= quantity:
            return quantity
        self.counters["position_cap_cuts"] += 1
        return allowed

    def _room(self, held: int, price: float, equity: float) -> int:
        room = self.position_cap * equity - held * price  # type: ignore[operator]
        return max(0, math.floor(room / price)) if room > 0 else 0

    def _cut(self, w: Working, now: int) -> OrderCanceled:
        return canceled(self._ids, w.order, w.filled, "POSITION_CAP_AT_FILL", now)

    def _book_fill(
        self, w: Working, quantity: int, price: float, *, ts: int, now: int
    ) -> OrderFilled:
        order = w.order
        commission = commission_for(quantity, price, self.config)
        self.portfolio.apply_fill(order.symbol, order.side, quantity, price, commission)
        w.filled += quantity
        w.executions += 1
        w.commission += commission
        self.counters["fills"] += 1
        return OrderFilled(
            msg_id=self._ids.next(),
            ts_event=ts,
            ts_init=now,
            correlation_id=order.msg_id,
            order_id=order.order_id,
            execution_id=f"{order.order_id}/E{w.executions}",
            shard=order.shard,
            symbol=order.symbol,
            side=order.side,
            quantity=quantity,
            price=price,
            commission=commission,
            cum_quantity=w.filled,
            leaves_quantity=w.remaining,
            purpose=order.purpose,
            liquidity="SIM",
        )

    # -- SPECULATIVE CHUNKS (backtests) -------------------------------------------------

    speculative = True
    """This broker can execute a chunk on paper and book it later (``sim_chunk``)."""

    def speculate_chunk(
        self, market: ChunkMarket, orders: ChunkOrders, expects: dict[str, int]
    ) -> Speculation:
        """Execute a chunk's approved orders without booking them (see ``sim_chunk``)."""
        return sim_chunk.speculate(self, market, orders, expects)

    def commit_chunk(self, spec: Speculation) -> list[Message]:
        """Book a speculation; returns the fills of the orders working before the chunk."""
        return list(sim_chunk.commit(self, spec, self._ids))

    # -- QUERIES ------------------------------------------------------------------------

    def account(self, now_ns: int) -> AccountSnapshot:
        p = self.portfolio
        equity, unrealized, gross, net = p.figures()
        return AccountSnapshot(
            msg_id=self._ids.next(),
            ts_event=now_ns,
            ts_init=now_ns,
            cash=p.cash,
            equity=equity,
            realized_pnl=p.realized_pnl,
            unrealized_pnl=unrealized,
            gross_exposure=gross,
            net_exposure=net,
            commissions=p.commissions,
            open_positions=p.open_positions,
        )

    def position_snapshots(self, symbols: list[str], now_ns: int) -> list[PositionSnapshot]:
        out = []
        for symbol in symbols:
            pos = self.portfolio.position(symbol)
            out.append(
                PositionSnapshot(
                    msg_id=self._ids.next(),
                    ts_event=now_ns,
                    ts_init=now_ns,
                    symbol=symbol,
                    quantity=pos.quantity,
                    avg_price=pos.avg_price,
                    market_price=pos.market_price if math.isfinite(pos.market_price) else 0.0,
                    unrealized_pnl=pos.unrealized_pnl,
                    realized_pnl=pos.realized_pnl,
                )
            )
        return out

    connected = True

    def poll(self, now_ns: int) -> list[Message]:
        return []  # everything happens in on_bars

    def positions(self) -> dict[str, int]:
        return {s: p.quantity for s, p in self.portfolio.open.items()}

    @property
    def working_orders(self) -> int:
        return len(self._working)

    def book(self) -> tuple[list[BookPosition], list[BookOrder]]:
        """Every open position and working order (for the guardian's reconciliation)."""
        positions = [
            BookPosition(
                symbol=s,
                quantity=p.quantity,
                avg_price=p.avg_price,
                market_price=p.market_price if math.isfinite(p.market_price) else p.avg_price,
            )
            for s, p in sorted(self.portfolio.open.items())
        ]
        working = []
        for w in self._working.values():
            o = w.order
            pos = self.portfolio.positions.get(o.symbol)
            last = pos.market_price if pos is not None else math.nan
            price = o.limit_price if o.limit_price is not None else last
            working.append(
                BookOrder(
                    order_id=o.order_id,
                    symbol=o.symbol,
                    side=o.side,
                    remaining=w.remaining,
                    price=price if price is not None and math.isfinite(price) else 0.0,
                    purpose=o.purpose,
                )
            )
        return positions, working

    # -- PERSISTENCE (named paper accounts) ----------------------------------------------

    def snapshot(self) -> dict[str, object]:
        """The simulated account as a JSON document. Working orders are not kept: a new
        session starts without them, as a broker's DAY orders would."""
        p = self.portfolio
        return {
            "cash": p.cash,
            "commissions": p.commissions,
            "realized_pnl": p.realized_pnl,
            "positions": {
                s: [pos.quantity, pos.avg_price, pos.realized_pnl, pos.market_price]
                for s, pos in p.positions.items()
                if pos.quantity
            },
        }

    def restore(self, doc: dict[str, object]) -> None:
        p = Portfolio(float(doc["cash"]))  # type: ignore[arg-type]
        p.commissions = float(doc.get("commissions", 0.0))  # type: ignore[arg-type]
        p.realized_pnl = float(doc.get("realized_pnl", 0.0))  # type: ignore[arg-type]
        for symbol, (qty, avg, realized, mark) in dict(doc.get("positions", {})).items():  # type: ignore[call-overload]
            p.set_position(symbol, qty, avg, realized, mark)
        self.portfolio = p

    # -- HELPERS ------------------------------------------------------------------------

    def _index(self, batch: BarBatch) -> dict[str, int]:
        # A fixed universe sends the same symbols column every step: build the map once.
        key = batch.symbols.data
        cached = self._index_cache.get(batch.shard)
        if cached is None or cached[0] != key:
            syms = np.frombuffer(key, dtype=batch.symbols.dtype)
            cached = (key, {s.decode(): i for i, s in enumerate(syms.tolist())})
            self._index_cache[batch.shard] = cached
        return cached[1]

    def _rejected(self, order: SubmitOrder, code: str, detail: str, now: int) -> OrderRejected:
        return rejected(self._ids, order, code, detail, now)

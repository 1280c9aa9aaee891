"""ShardActor: one slice of the watchlist.

Per step it receives, in this order, the order events and verdicts about its own orders,
the regime update for its universe and its BarBatch; it returns OrderIntents (and cancels
for entries it is abandoning) and TradeClosed for finished round trips, which it also
writes to its trade-memory shard.
"""

from __future__ import annotations

import pickle
import time

import numpy as np

from sovereign.actors.base import Actor, accepting
from sovereign.actors.shard_chunks import ShardChunks
from sovereign.actors.trade_messages import trade_closed, trades_closed
from sovereign.config import SimConfig, StrategyConfig
from sovereign.core.bars import clean_rows
from sovereign.core.chunk_trades import ClosedColumns
from sovereign.core.chunks import (
    ChunkOutcome,
)
from sovereign.core.shadow import ShadowCosts
from sovereign.core.signals import CancelSignal, EntrySignal, ExitSignal, ShardStrategy
from sovereign.core.trades import ClosedTrade
from sovereign.core.universe import Universe
from sovereign.domain.regimes import REGIME_NAMES, REGIME_UNKNOWN
from sovereign.memory.stores import Stores
from sovereign.memory.trade_memory import ShardTradeStore
from sovereign.messages import (
    AccountSnapshot,
    BarBatch,
    BarChunk,
    BookSnapshot,
    CancelOrder,
    ChunkExecution,
    ChunkVerdict,
    Message,
    OrderCanceled,
    OrderFilled,
    OrderIntent,
    OrderRejected,
    RecentOrderEvents,
    RegimeChunk,
    RegimeUpdate,
    RiskVerdict,
    RuleSetSnapshot,
    SessionEnded,
    SessionStarted,
    ShadowTradeClosed,
    ShardReport,
    TradeClosed,
    TradesClosed,
)

BACKTEST_BATCH = 4_096
"""Trades per trade-memory transaction in a backtest."""
BACKTEST_FLUSH_S = 2.0
"""A backtest's closed trades go to trade memory at most this long after they closed."""
BOOKED_MEMORY = 4_096
"""Execution ids a shard remembers, to book a fill delivered twice once; one booked within
the gateway's replay window (``replay_window`` of its calls) is never forgotten, however
many there are."""


ShardInbox = (
    OrderFilled
    | RiskVerdict
    | OrderRejected
    | OrderCanceled
    | RegimeUpdate
    | RuleSetSnapshot
    | BarBatch
    | SessionStarted
    | SessionEnded
    | BarChunk
    | RegimeChunk
    | ChunkVerdict
    | ChunkExecution
    | RecentOrderEvents
    | BookSnapshot
    | AccountSnapshot
)


class ShardActor(ShardChunks, Actor[ShardInbox]):
    role = "shard"
    accepts = accepting(ShardInbox)

    def __init__(
        self,
        index: int,
        symbols: list[str],
        strategy: StrategyConfig,
        stores: Stores,
        *,
        account: str = "",
        replay_window: int = 0,
        shadow: ShadowCosts | None = None,
        adopt_carried: bool = False,
        fill_model: SimConfig | None = None,
    ) -> None:
        super().__init__(index)
        self.universe = Universe(symbols)
        self.strategy = ShardStrategy(self.universe, strategy, shard=index, shadow=shadow)
        self.stores = stores
        # A named account's intent ids go on from session to session (a real broker
        # remembers the ids of the day, and one used twice would be taken for the other).
        self.account = account
        self.state = stores.state()
        self._seq_saved: dict[str, int] = {}
        self.store: ShardTradeStore | None = None
        self.run_id = ""
        self.mode = "backtest"
        self._flushed_at = 0.0
        n = len(self.universe)
        self.regime_codes = np.full(n, REGIME_UNKNOWN, dtype=np.uint8)
        self.regime_probs = np.full((n, len(REGIME_NAMES)), 0.25, dtype=np.float32)
        self.last_ts = -1
        self.rejected_bars: dict[str, int] = {}
        self.trades_closed = 0
        self.intents = 0
        # Preallocated full-width columns: a batch is scattered into them each step.
        self._o = np.full(n, np.nan)
        self._h = np.full(n, np.nan)
        self._l = np.full(n, np.nan)
        self._c = np.full(n, np.nan)
        self._v = np.full(n, np.nan)
        self._mask = np.zeros(n, dtype=bool)
        # A chunk run speculatively: (chunk, checkpoint, outcome) until its verdict.
        self._chunk: tuple[int, dict[str, object], ChunkOutcome] | None = None
        self._regimes: RegimeChunk | None = None
        # The simulated broker's fill model, when it is the broker: a chunk's speculation
        # books market sells where it fills them.
        self.fill_model = fill_model
        # Execution ids of the fills booked, with the call that booked each: a fill
        # delivered twice (in RecentOrderEvents after a restart) is booked once.
        self._booked: dict[str, int] = {}
        self._calls = 0
        self.replay_window = replay_window
        self.fills_booked = 0
        self._rules: tuple[int, list[object], dict[str, float]] = (0, [], {})
        # After a restart: the next book of the broker is checked against ours.
        self._reconcile = False
        self.adopt_carried = adopt_carried

    def receive(self, messages: list[ShardInbox]) -> list[Message]:
        out: list[Message] = []
        closed: list[ClosedTrade | ClosedColumns] = []
        # Events a failed call of ours missed come first, in the order they happened; what
        # follows in this batch repeats the newest of them and is booked once.
        self._calls += 1
        replays = [e for m in messages if isinstance(m, RecentOrderEvents) for e in m.events]
        for msg in [*replays, *messages]:
            match msg:
                case BarChunk() | ChunkVerdict() | ChunkExecution() | RegimeChunk():
                    out.extend(self._on_chunk_message(msg, messages, closed))
                case OrderFilled() | RiskVerdict() | OrderRejected() | OrderCanceled():
                    trade = self._on_order_event(msg)
                    if trade is not None:
                        closed.append(trade)
                case RegimeUpdate(shard=s) if s == self.index:
                    self._on_regime(msg)
                case RuleSetSnapshot() | AccountSnapshot():
                    self._on_state(msg)
                case BookSnapshot() if self._reconcile:
                    closed.extend(self._reconcile_with(msg))
                case BarBatch():
                    if msg.shard in (self.index, -1):
                        out.extend(self._on_bars(msg))
                case RecentOrderEvents():
                    pass  # its events were taken first, above
                case SessionStarted():
                    self._on_session_started(msg)
                case SessionEnded():
                    out.append(self._on_session_ended(msg))
                case _:
                    pass
        out.extend(self._closed_messages(closed))
        if self.strategy.shadow is not None and self.strategy.shadow.closed:
            out.extend(self._shadow_messages())
        if self.account and self.mode != "backtest":
            self._save_sequences()
        return out

    def _on_state(self, msg: RuleSetSnapshot | AccountSnapshot) -> None:
        if isinstance(msg, RuleSetSnapshot):
            self.strategy.set_rules(msg.version, msg.rules, msg.parameters)
            self._rules = (msg.version, list(msg.rules), dict(msg.parameters))
            self.count("rule_sets_adopted")
        elif self.strategy.shadow is not None:
            # What the shadow book sizes prevented entries at, as the guardian does.
            self.strategy.shadow.equity = msg.equity

    def _shadow_messages(self) -> list[Message]:
        """The shadow trades closed in this call: for self-modification and trade memory
        only (no other actor accepts them)."""
        assert self.strategy.shadow is not None
        out: list[Message] = []
        for s in self.strategy.shadow.take_closed():
            t = s.trade
            msg = ShadowTradeClosed(
                msg_id=self.ids.next(),
                ts_event=t.exit_ts,
                ts_init=t.exit_ts,
                shard=self.index,
                rule_ids=list(s.rule_ids),
                effect=s.effect,  # type: ignore[arg-type]
                **t._asdict(),
            )
            if self.store is not None:
                self.store.add_shadow(msg, self.run_id)
            out.append(msg)
        self.count("shadow_trades", len(out))
        return out

    def _closed_messages(self, closed: list[ClosedTrade | ClosedColumns]) -> list[Message]:
        out: list[Message] = []
        for trade in closed:
            if isinstance(trade, ClosedColumns):
                out.append(self._trades_message(trade))
            else:
                out.append(self._trade_message(trade))
        if closed and self.store is not None:
            # Paper and live: one transaction per step that closed trades, so nothing
            # older than a step is lost if the process dies. A backtest can be replayed,
            # so it writes in large batches (SQLite's cost per row falls by two thirds from
            # 256 rows a transaction to 4,096), at most BACKTEST_FLUSH_S apart, behind its
            # back (``write_behind``).
            now = time.monotonic()
            if self.mode != "backtest" or now - self._flushed_at >= BACKTEST_FLUSH_S:
                self.store.flush()
                self._flushed_at = now
        return out

    # -- HANDLERS -----------------------------------------------------------------------

    def _on_order_event(
        self, msg: OrderFilled | RiskVerdict | OrderRejected | OrderCanceled
    ) -> ClosedTrade | None:
        """Events about our own orders only; everything else is someone else's."""
        match msg:
            case OrderFilled(shard=s) if s == self.index:
                if msg.execution_id in self._booked:
                    self.count("fills_seen_again")
                    return None
                self._booked[msg.execution_id] = self._calls
                # Forget the oldest beyond the memory, never one the gateway may still send
                # again (a shard call takes two gateway calls' output at most).
                while len(self._booked) > BOOKED_MEMORY:
                    oldest = next(iter(self._booked))
                    if self._booked[oldest] >= self._calls - self.replay_window:
                        break
                    del self._booked[oldest]
                self.fills_booked += 1
                if msg.order_id not in self.strategy.orders:
                    # Not a live order of ours: the guardian flattening a position on a
                    # halt, or a fill the broker reported after the order was canceled.
                    if msg.side == "BUY":
                        self.log.warning(
                            "%s: %d shares filled on entry %s after it stopped working; "
                            "booked, and sold at the next close",
                            msg.symbol,
                            msg.quantity,
                            msg.order_id,
                        )
                    return self.strategy.on_external_fill(
                        msg.symbol, msg.side, msg.quantity, msg.price, msg.commission, msg.ts_event
                    )
                return self.strategy.on_fill(
                    msg.order_id,
                    msg.quantity,
                    msg.price,
                    msg.commission,
                    msg.leaves_quantity,
                    msg.ts_event,
                )
            case RiskVerdict(approved=False) if msg.intent_id in self.strategy.orders:
                return self.strategy.on_denied(msg.intent_id, msg.ts_event)
            case RiskVerdict(approved=True) if msg.intent_id in self.strategy.orders:
                # What the broker will fill is what the guardian approved.
                self.strategy.orders[msg.intent_id].quantity = msg.quantity
            case OrderRejected(shard=s) if s == self.index:
                return self.strategy.on_denied(msg.order_id, msg.ts_event)
            case OrderCanceled(shard=s) if s == self.index:
                return self.strategy.on_canceled(msg.order_id, msg.ts_event)
        return None

    # -- RESTARTS -----------------------------------------------------------------------

    _KEPT = (
        "run_id",
        "mode",
        "regime_codes",
        "regime_probs",
        "last_ts",
        "rejected_bars",
        "trades_closed",
        "intents",
        "counters",
        "_booked",
        "_calls",
        "fills_booked",
        "_rules",
        "_seq_saved",
    )

    def snapshot(self) -> bytes:
        """Everything the strategy knows (indicators, open trades, working orders, the
        intent-id sequence) but its compiled rules (rebuilt from the rules), and the
        actor's own state."""
        strategy = {k: v for k, v in vars(self.strategy).items() if k != "compiled"}
        state = {name: getattr(self, name) for name in self._KEPT}
        state["ids"] = self.ids.n
        state["strategy"] = strategy
        return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)

    def restore(self, blob: bytes) -> None:
        """Go on after a crash from the last call that completed; the fills of the calls
        that did not reach us come in ``RecentOrderEvents``, and the broker's next book is
        checked against ours (``_reconcile_with``)."""
        # Sealed by the audit key (memory.checkpoints): only our own process wrote it.
        state = pickle.loads(blob)
        for name in self._KEPT:
            setattr(self, name, state[name])
        self.ids.n = state["ids"]
        vars(self.strategy).update(state["strategy"])
        version, rules, parameters = self._rules
        self.strategy.set_rules(version, rules, parameters)  # type: ignore[arg-type]
        if self.run_id:
            self._open_store(self.mode)
        self._reconcile = True
        self.count("restarts")

    def _reconcile_with(self, book: BookSnapshot) -> list[ClosedTrade]:
        """After a restart, the broker's positions in our symbols against ours. A fill
        lost beyond the replayed events (or an order no longer working that we still
        wait on) would leave them apart: the broker's word is booked, and counted. A
        position we cannot account for is sold at the next close (as a late fill)."""
        self._reconcile = False
        strategy = self.strategy
        index = self.universe.index
        working = {o.order_id for o in book.working}
        for order_id in [k for k in strategy.orders if k not in working]:
            # No longer working at the broker and no event told us: it ended unseen.
            self.count("reconciled_orders")
            strategy.on_canceled(order_id, book.ts_event)
        held = {p.symbol: p for p in book.positions if p.symbol in index}
        out: list[ClosedTrade] = []
        for symbol, i in index.items():
            theirs = held[symbol].quantity if symbol in held else 0
            ours = int(strategy.quantity[i])
            if theirs == ours:
                continue
            self.count("reconciled_positions")
            self.log.error("%s: the broker holds %d, we held %d: reconciled", symbol, theirs, ours)
            price = held[symbol].market_price if symbol in held else 0.0
            side = "BUY" if theirs > ours else "SELL"
            trade = strategy.on_external_fill(
                symbol, side, abs(theirs - ours), price, 0.0, book.ts_event
            )
            if trade is not None:
                out.append(trade)
        return out

    def _open_store(self, mode: str) -> None:
        # A backtest can be replayed: its trades are written behind its back, in a
        # thread of their own, and it waits for them only at the session's end.
        backtest = mode == "backtest"
        self.store = self.stores.shard_trades(
            self.index, batch_size=BACKTEST_BATCH if backtest else 256, write_behind=backtest
        )

    def _on_session_started(self, msg: SessionStarted) -> None:
        self.run_id = msg.run_id
        self.mode = msg.mode
        if self.store is None:
            self._open_store(msg.mode)
        if self.account:
            store = self.state()
            for symbol in self.universe.symbols:
                doc = store.get(_seq_key(self.account, symbol))
                if doc is not None:
                    self.strategy._seq[symbol] = int(doc["n"])
            self._seq_saved = dict(self.strategy._seq)
        if self.adopt_carried:
            # A named simulated account's positions outlive its sessions, its trades do
            # not: what the broker holds that this session did not buy has no stop, no
            # target and no end, so the first book is reconciled like a restart's (a
            # position nobody manages is sold at the next close, counted and logged).
            self._reconcile = True

    def _save_sequences(self) -> None:
        """Write the intent-id sequences that moved (a named account's, in paper and live
        sessions after every call that issued ids, and at every session's end)."""
        moved = {s: n for s, n in self.strategy._seq.items() if self._seq_saved.get(s) != n}
        if not moved:
            return
        store = self.state()
        for symbol, n in moved.items():
            store.put(_seq_key(self.account, symbol), {"n": n})
        self._seq_saved.update(moved)

    def _on_session_ended(self, msg: SessionEnded) -> ShardReport:
        if self.account:
            self._save_sequences()
        if self.store is not None:
            self.store.flush()
            self.store.sync()
        return ShardReport(
            msg_id=self.ids.next(),
            ts_event=msg.ts_event,
            ts_init=msg.ts_init,
            shard=self.index,
            symbols=len(self.universe),
            bars=self.strategy.counters.bars,
            rejected_bars=dict(sorted(self.rejected_bars.items())),
            intents=self.intents,
            trades_closed=self.trades_closed,
            open_trades=self.strategy.open_trades,
            decode_errors=self.counters.get("decode_errors", 0),
            order_events={
                k: v
                for k, v in (
                    ("late_entry_fills", self.strategy.counters.late_entry_fills),
                    ("unknown_order_events", self.strategy.counters.unknown_order_events),
                    ("orphaned_orders", self.strategy.counters.orphaned_orders),
                )
                if v
            },
            positions={
                s: int(q)
                for s, q in zip(self.universe.symbols, self.strategy.quantity.tolist(), strict=True)
                if q
            },
            recovery={
                "restarts": self.counters.get("restarts", 0),
                "fills_booked": self.fills_booked,
                "reconciled_positions": self.counters.get("reconciled_positions", 0),
                "reconciled_orders": self.counters.get("reconciled_orders", 0),
            },
        )

    def _on_regime(self, msg: RegimeUpdate) -> None:
        idx = self.universe.locate(msg.symbols.to_numpy())
        ok = idx >= 0
        self.regime_codes[idx[ok]] = msg.codes.to_numpy()[ok]
        self.regime_probs[idx[ok]] = msg.probabilities.to_numpy()[ok]

    def _on_bars(self, batch: BarBatch) -> list[Message]:
        if batch.ts <= self.last_ts:
            key = "duplicate_time" if batch.ts == self.last_ts else "out_of_order_time"
            self.rejected_bars[key] = self.rejected_bars.get(key, 0) + len(batch)
            return []
        self._take_rows(batch)
        self.last_ts = batch.ts
        entries, exits, cancels = self.strategy.on_bars(
            batch.ts,
            self._mask,
            self._h,
            self._l,
            self._c,
            self._v,
            self.regime_codes,
            self.regime_probs,
            trade=not batch.warmup,
            open_=self._o,
        )
        out = self._intents(batch, entries, exits, cancels)
        self.intents += len(exits) + len(entries)
        return out

    def _take_rows(self, batch: BarBatch) -> None:
        """Scatter the batch's good rows of known symbols into the full-width columns
        (``_mask`` says which symbols have a bar); count every row refused, by reason."""
        idx = self.universe.locate(batch.symbols.to_numpy())
        o, h, lo = batch.open.to_numpy(), batch.high.to_numpy(), batch.low.to_numpy()
        c, v = batch.close.to_numpy(), batch.volume.to_numpy()
        good, reasons = clean_rows(o, h, lo, c, v)
        known = idx >= 0
        if not known.all():
            self.rejected_bars["unknown_symbol"] = self.rejected_bars.get(
                "unknown_symbol", 0
            ) + int((~known).sum())
        if not good.all():
            for reason, hit in reasons.items():
                n = int((hit & known).sum())
                if n:
                    self.rejected_bars[reason] = self.rejected_bars.get(reason, 0) + n
        if idx is self.universe.identity and not reasons:
            # The whole universe, in order, every row good (clean_rows names reasons only
            # when a row is bad): the usual replay step, plain copies and no gathers.
            self._mask.fill(True)
            self._o[:], self._h[:], self._l[:], self._c[:], self._v[:] = o, h, lo, c, v
        else:
            take = good & known
            rows = idx[take]
            self._mask[:] = False
            self._mask[rows] = True
            self._o[rows], self._h[rows], self._l[rows] = o[take], h[take], lo[take]
            self._c[rows], self._v[rows] = c[take], v[take]

    def _intents(
        self,
        batch: BarBatch,
        entries: list[EntrySignal],
        exits: list[ExitSignal],
        cancels: list[CancelSignal],
    ) -> list[Message]:
        """The strategy's decisions at this bar as messages: cancels, exits, entries."""
        now = batch.ts_event
        out: list[Message] = []
        for cancel in cancels:
            out.append(
                CancelOrder(
                    msg_id=self.ids.next(),
                    ts_event=now,
                    ts_init=now,
                    correlation_id=batch.msg_id,
                    order_id=cancel.order_id,
                    reason=cancel.reason,
                )
            )
        envelope = {"ts_event": now, "ts_init": now, "correlation_id": batch.msg_id}
        for x in exits:
            out.append(
                OrderIntent(
                    msg_id=self.ids.next(),
                    **envelope,
                    intent_id=x.intent_id,
                    shard=self.index,
                    symbol=x.symbol,
                    side="SELL",
                    purpose="CLOSE",
                    quantity=x.quantity,
                    ref_price=x.ref_price,
                    confidence=1.0,
                    regime=x.regime,
                    reason=x.reason,
                )
            )
        for e in entries:
            out.append(
                OrderIntent(
                    msg_id=self.ids.next(),
                    **envelope,
                    intent_id=e.intent_id,
                    shard=self.index,
                    symbol=e.symbol,
                    side="BUY",
                    purpose="OPEN",
                    quantity=e.quantity,
                    ref_price=e.ref_price,
                    confidence=e.confidence,
                    regime=e.regime,
                    reason=e.reason,
                    stop_price=e.stop_price if e.stop_price > 0 else None,
                    size_scale=e.size_scale,
                )
            )
        return out

    def _trades_message(self, t: ClosedColumns) -> TradesClosed:
        msg = trades_closed(self.ids, self.index, t)
        self.trades_closed += len(t)
        if self.store is not None:
            self.store.add_many(msg, self.run_id)
        return msg

    def _trade_message(self, t: ClosedTrade) -> TradeClosed:
        msg = trade_closed(self.ids, self.index, t)
        self.trades_closed += 1
        if self.store is not None:
            self.store.add(msg, self.run_id)
        return msg


def _seq_key(account: str, symbol: str) -> str:
    return f"intent-seq/account/{account}/{symbol}"

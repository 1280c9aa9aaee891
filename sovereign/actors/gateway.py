"""GatewayActor: the only actor that talks to a broker.

It refuses any SubmitOrder whose guardian approval does not verify (bad signature, order
differs from what was signed, expired, or already used), tracks every order's lifecycle in
the order manager (duplicate order ids refused, fills deduplicated by execution id), and
publishes fills, position snapshots for what changed, and an account snapshot per step.
"""

from __future__ import annotations

import pickle
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import msgspec
import numpy as np

from sovereign.actors.base import Actor, accepting
from sovereign.brokers.base import BrokerAdapter, rejected
from sovereign.brokers.sim_chunk import ChunkMarket, ChunkOrders, Speculation
from sovereign.core.calendar import session_date
from sovereign.core.risk import ApprovalVerifier
from sovereign.execution.order_manager import OrderManager
from sovereign.memory.account import SIM_ACCOUNT_KIND, seal, unseal
from sovereign.memory.stores import Stores
from sovereign.messages import (
    Approval,
    ApprovedChunk,
    BarBatch,
    BarChunk,
    BookSnapshot,
    CancelOrder,
    ChunkExecution,
    ChunkVerdict,
    Message,
    NDArray,
    Notification,
    OrderAccepted,
    OrderCanceled,
    OrderFilled,
    OrderRejected,
    RecentOrderEvents,
    SessionEnded,
    SessionStarted,
    SubmitOrder,
)

_REPLAYED = (OrderFilled, OrderCanceled, OrderRejected)
# What, in an output, says the gateway's state changed (beyond marks and the clock).
_CHANGES = (*_REPLAYED, OrderAccepted, Notification)


GatewayInbox = (
    BarBatch
    | SubmitOrder
    | CancelOrder
    | SessionStarted
    | SessionEnded
    | BarChunk
    | ApprovedChunk
    | ChunkVerdict
)


class GatewayActor(Actor[GatewayInbox]):
    role = "gateway"
    accepts = accepting(GatewayInbox)

    def __init__(
        self,
        index: int,
        broker_factory: Callable[[], BrokerAdapter],
        secret: bytes,
        *,
        stores: Stores | None = None,
        account_key: str = "",
        replay_window: int = 0,
    ) -> None:
        super().__init__(index)
        # Built here, inside the actor's process: a broker holds sockets and state that
        # must not be pickled across processes.
        self.broker = broker_factory()
        self.verifier = ApprovalVerifier(secret)
        self.orders = OrderManager()
        self.clock = 0
        self.session_date = ""
        # Only a named simulated account keeps a book in the store.
        self.stores = stores or Stores("")
        self.account_key = account_key
        self.state = self.stores.state()
        self._seal_key = self.stores.audit_key
        # What our own fills say each position should be; checked against the broker.
        self.expected: dict[str, int] = {}
        self._mismatch: dict[str, tuple[int, int]] = {}
        # A speculative chunk executed on paper, until the guardian's verdict on it.
        self._chunk: _Executed | None = None
        self._markets: dict[tuple[bytes, ...], tuple[list[str], dict[str, int], np.ndarray]] = {}
        # Paper and live: the order events of the last ``replay_window`` calls, sent again
        # with every output (``RecentOrderEvents``) for shards that missed some.
        self._recent: deque[list[Message]] = deque(maxlen=max(1, replay_window))
        self.replay_window = replay_window
        # Whether a call changed more than marks and the clock since the last snapshot.
        self._dirty = True

    def _with_recent(self, out: list[Message]) -> list[Message]:
        """Paper and live: the output, and the order events of the last calls again."""
        if any(isinstance(m, _CHANGES) for m in out):
            self._dirty = True
            # A named simulated account's book follows every change, so that a crash of
            # the process loses no fill of it (the trading state is stored as it moves).
            self._save_account()
        if self.replay_window:
            self._recent.append([m for m in out if isinstance(m, _REPLAYED)])
            recent = [m for call in self._recent for m in call]
            if recent:
                out.append(
                    RecentOrderEvents(
                        msg_id=self.ids.next(),
                        ts_event=self.clock,
                        ts_init=self.clock,
                        events=recent,  # type: ignore[arg-type]
                    )
                )
        return out

    # -- RESTARTS -----------------------------------------------------------------------

    _KEPT = ("orders", "clock", "session_date", "expected", "_mismatch", "counters", "_recent")

    def snapshot(self) -> bytes | None:
        """The order manager (every order sent and every execution booked), the approvals
        already used, the positions our fills add up to, the recent events, and a
        simulated broker whole (it lives in this process: its book is the account).

        Only after a call that changed any of it: a call that only brought bars moved the
        marks and the clock, which the next bars set again after a restart."""
        if not self._dirty:
            return None
        self._dirty = False
        self.verifier.forget_expired(self.clock)
        state = {name: getattr(self, name) for name in self._KEPT}
        state["ids"] = self.ids.n
        state["used"] = self.verifier._used
        state["refused"] = self.verifier.refused
        state["broker"] = self.broker if getattr(self.broker, "speculative", False) else None
        return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)

    def restore(self, blob: bytes) -> None:
        """Go on after a crash: the restored order manager refuses the ids it knows and
        drops the executions it booked, the used approvals stay used (a replayed approval
        is refused), and the broker's account is what it was. A real broker is asked what
        became of the orders that were working (``adopt``), as after a reconnect."""
        # Sealed by the audit key (memory.checkpoints): only our own process wrote it.
        state = pickle.loads(blob)
        for name in self._KEPT:
            setattr(self, name, state[name])
        self.ids.n = state["ids"]
        self.verifier._used = state["used"]
        self.verifier.refused = state["refused"]
        if state["broker"] is not None:
            self.broker = state["broker"]
        else:
            adopt = getattr(self.broker, "adopt", None)
            if adopt is not None:
                adopt(
                    [(r.order, r.filled) for r in self.orders.working()],
                    set(self.orders._executions),
                )
        self.count("restarts")

    def receive(self, messages: list[GatewayInbox]) -> list[Message]:
        out: list[Message] = []
        touched: list[str] = []
        saw_bars = False
        bar_chunks: list[BarChunk] = []
        approved: ApprovedChunk | None = None
        # A real broker's events arrive on their own time: collect them first.
        out.extend(self._track(self.broker.poll(self.clock), touched))
        for msg in messages:
            match msg:
                case BarBatch():
                    saw_bars = True
                    self.clock = max(self.clock, msg.ts_event)
                    self.session_date = session_date(msg.ts)
                    out.extend(self._track(self.broker.on_bars(msg), touched))
                case SubmitOrder():
                    self._dirty = True
                    out.extend(self._submit(msg, touched))
                case CancelOrder():
                    self._dirty = True
                    out.extend(self._cancel(msg, touched))
                case BarChunk():
                    bar_chunks.append(msg)
                case ApprovedChunk():
                    approved = msg
                case ChunkVerdict():
                    self._settle_chunk(msg)
                case SessionStarted():
                    self._restore_account()
                    self.expected = {s: q for s, q in self.broker.positions().items() if q}
                case SessionEnded():
                    self._save_account()
                    self.counters.update(self.orders.counters)
                    self.counters["executions_booked"] = len(self.orders._executions)
                    self.counters.update(_int_counters(getattr(self.broker, "counters", {})))
                    self.counters.update(
                        {f"refused_{k}": v for k, v in self.verifier.refused.items()}
                    )
                    out.append(self.broker.account(msg.ts_event))
                    out.append(self.stats(msg.ts_event))
                case _:
                    pass
        if approved is not None or bar_chunks:
            out.append(self._execute_chunk(approved, bar_chunks))
        if touched and not saw_bars:
            # After bars the whole book follows, with every position: snapshots of the
            # touched ones would only repeat it.
            out.extend(self.broker.position_snapshots(sorted(set(touched)), self.clock))
        if saw_bars:
            out.extend(self._check_positions())
            # The book first: whoever reads the account snapshot already knows the book.
            positions, working = self.broker.book()
            out.append(
                BookSnapshot(
                    msg_id=self.ids.next(),
                    ts_event=self.clock,
                    ts_init=self.clock,
                    positions=positions,
                    working=working,
                    session_date=self.session_date,
                )
            )
            account = self.broker.account(self.clock)
            out.append(msgspec.structs.replace(account, session_date=self.session_date))
        return self._with_recent(out)

    def release(self) -> None:
        close = getattr(self.broker, "close", None)
        if close is not None:
            close()

    def _check_positions(self) -> list[Message]:
        """Our fills and the broker's positions must agree; say so once when they do not."""
        if not getattr(self.broker, "connected", True):
            return []
        held = self.broker.positions()
        out: list[Message] = []
        if not self._mismatch and held == self.expected:
            return out  # the usual case, checked in one comparison
        for symbol in sorted(set(held) | set(self.expected)):
            ours, theirs = self.expected.get(symbol, 0), held.get(symbol, 0)
            if ours == theirs:
                self._mismatch.pop(symbol, None)
                continue
            if self._mismatch.get(symbol) == (ours, theirs):
                continue
            self._mismatch[symbol] = (ours, theirs)
            self.count("position_mismatches")
            self.log.error("%s: our fills say %d, the broker says %d", symbol, ours, theirs)
            out.append(
                Notification(
                    msg_id=self.ids.next(),
                    ts_event=self.clock,
                    ts_init=self.clock,
                    kind="position_mismatch",
                    level="critical",
                    title=f"{symbol}: our fills say {ours}, {self.broker.name} says {theirs}",
                    text="the broker's position is what the guardian uses; investigate",
                )
            )
        return out

    # -- SPECULATIVE CHUNKS (backtests with the simulated broker) -----------------------

    def _execute_chunk(self, approved: ApprovedChunk | None, bars: list[BarChunk]) -> Message:
        """Execute a chunk's batch approval on paper and report the account path; nothing
        is booked until the guardian's verdict (``_settle_chunk``). Whatever does not
        verify is refused whole, and the report says why (the chunk is then replayed bar by
        bar, where every order needs its own approval)."""
        self._chunk = None
        chunk = approved.chunk if approved is not None else (bars[0].chunk if bars else -1)
        why = self._chunk_refusal(approved, bars)
        if why:
            return self._execution(chunk, why, 0, None, None)
        assert approved is not None
        market = self._market(bars)
        k_bars = market.ts.shape[0]
        symbol = [x.decode() for x in approved.symbol.to_numpy().tolist()]
        seq = approved.seq.to_numpy()
        bar = approved.bar.to_numpy()
        side = approved.side.to_numpy()
        quantity = approved.quantity.to_numpy()
        order_id = [f"{s}-{q}" for s, q in zip(symbol, seq.tolist(), strict=True)]
        if (
            ((side != 1) & (side != 2)).any()
            or (quantity <= 0).any()
            or (bar < 0).any()
            or (bar >= k_bars).any()
            or (np.diff(bar) < 0).any()
        ):
            return self._execution(chunk, "MALFORMED_ORDERS", 0, None, None)
        if (approved.expires_ns.to_numpy() < market.ts_event[bar]).any():
            self.count("refused_APPROVAL_EXPIRED")
            return self._execution(chunk, "APPROVAL_EXPIRED", 0, None, None)
        if len(set(order_id)) != len(order_id) or any(self.orders.knows(o) for o in order_id):
            self.count("rejected_DUPLICATE_ORDER_ID")
            return self._execution(chunk, "DUPLICATE_ORDER_ID", 0, None, None)
        orders = ChunkOrders(
            order_id=order_id,
            symbol=symbol,
            shard=approved.shard.to_numpy(),
            bar=bar,
            buy=side == 1,
            quantity=quantity,
            limit=approved.limit_price.to_numpy(),
            seq=seq,
        )
        spec = self.broker.speculate_chunk(market, orders, set(approved.expects))  # type: ignore[attr-defined]
        if spec.diverged:
            return self._execution(chunk, spec.diverged, spec.bar, None, None)
        self._chunk = _Executed(chunk, spec, orders, approved, seq)
        return self._execution(chunk, "", -1, spec, orders, seq)

    def _chunk_refusal(self, approved: ApprovedChunk | None, bars: list[BarChunk]) -> str:
        if approved is None or not bars:
            return "a chunk needs its approval and its bars"
        if approved.refused:
            return f"not approved: {approved.refused}"
        if not getattr(self.broker, "speculative", False):
            self.count("refused_SPECULATION_UNSUPPORTED")
            return "SPECULATION_UNSUPPORTED: this broker cannot take back an execution"
        if any(b.chunk != approved.chunk for b in bars):
            return "bars of another chunk"
        columns = _approved_columns(approved)
        reason = self.verifier.check_chunk(
            approved.chunk, columns, approved.expects, approved.signature
        )
        if reason is not None:
            self.log.warning("refused chunk %d: %s", approved.chunk, reason)
            return reason
        return ""

    def _market(self, bars: list[BarChunk]) -> ChunkMarket:
        bars = sorted(bars, key=lambda b: b.shard)
        ts = bars[0].ts.to_numpy()
        key = tuple(b.symbols.data for b in bars)
        cached = self._markets.get(key)
        if cached is None:
            names = [s.decode() for b in bars for s in b.symbols.to_numpy().tolist()]
            shard_of = np.concatenate([np.full(len(b.symbols), b.shard) for b in bars])
            cached = self._markets[key] = (names, {s: j for j, s in enumerate(names)}, shard_of)
        names, column, shard_of = cached

        def stack(field: str) -> np.ndarray:
            parts = [getattr(b, field).to_numpy() for b in bars]
            return parts[0] if len(parts) == 1 else np.hstack(parts)

        return ChunkMarket(
            ts=ts,
            ts_event=ts + bars[0].interval_s * 1_000_000_000,
            symbols=names,
            open=stack("open"),
            high=stack("high"),
            low=stack("low"),
            close=stack("close"),
            volume=stack("volume"),
            column=column,
            shard_of=shard_of,
        )

    def _execution(
        self,
        chunk: int,
        diverged: str,
        bar: int,
        spec: Speculation | None,
        orders: ChunkOrders | None,
        seq: np.ndarray | None = None,
    ) -> ChunkExecution:
        if diverged:
            self.count("chunks_diverged")
        i8, f8 = np.int64, np.float64
        empty_s = NDArray.from_numpy(np.zeros(0, dtype="S1"))
        if spec is None or orders is None or seq is None:
            z8 = NDArray.from_numpy(np.zeros(0, i8))
            zf = NDArray.from_numpy(np.zeros(0, f8))
            return ChunkExecution(
                msg_id=self.ids.next(),
                ts_event=self.clock,
                ts_init=self.clock,
                chunk=chunk,
                diverged=diverged,
                bar=bar,
                ts=z8,
                equity=zf,
                cash=zf,
                gross_exposure=zf,
                open_positions=z8,
                day=z8,
                session_dates=[],
                held=z8,
                fill_symbol=empty_s,
                fill_seq=z8,
                fill_shard=z8,
                fill_bar=z8,
                fill_price=zf,
                fill_commission=zf,
                position_symbols=empty_s,
                positions=z8,
                working=[],
            )
        m = spec.market
        assert m is not None
        symbols_of_fills = [m.symbols[j] for j in spec.fill_col.tolist()]
        held = sorted(spec.end_positions.items())
        return ChunkExecution(
            msg_id=self.ids.next(),
            ts_event=int(m.ts_event[-1]),
            ts_init=int(m.ts_event[-1]),
            chunk=chunk,
            diverged="",
            bar=-1,
            ts=NDArray.from_numpy(m.ts_event.astype(i8)),
            equity=NDArray.from_numpy(spec.equity),
            cash=NDArray.from_numpy(spec.cash),
            gross_exposure=NDArray.from_numpy(spec.gross),
            open_positions=NDArray.from_numpy(spec.open_positions.astype(i8)),
            day=NDArray.from_numpy(spec.day.astype(i8)),
            session_dates=spec.dates,
            held=NDArray.from_numpy(spec.held.astype(i8)),
            fill_symbol=_names(symbols_of_fills),
            fill_seq=NDArray.from_numpy(spec.fill_seq.astype(i8)),
            fill_shard=NDArray.from_numpy(spec.fill_shard.astype(i8)),
            fill_bar=NDArray.from_numpy(spec.fill_bar.astype(i8)),
            fill_price=NDArray.from_numpy(spec.fill_price.astype(f8)),
            fill_commission=NDArray.from_numpy(spec.fill_commission.astype(f8)),
            position_symbols=_names([s for s, _ in held]),
            positions=NDArray.from_numpy(np.array([q for _, q in held], dtype=i8)),
            working=spec.working,
        )

    def _settle_chunk(self, verdict: ChunkVerdict) -> None:
        """Book the chunk the guardian found valid, or forget the one it did not."""
        executed, self._chunk = self._chunk, None
        if executed is None or executed.chunk != verdict.chunk:
            if verdict.valid:
                # A verdict for an execution this actor does not hold (it restarted): the
                # engine stops a backtest at a failed step, so this is only counted.
                self.count("chunk_verdicts_unmatched")
            return
        if not verdict.valid:
            self.count("chunks_discarded")
            return
        spec, orders, approved = executed.spec, executed.orders, executed.approved
        if not self.verifier.check_verdict(verdict.chunk, approved.signature, verdict.signature):
            # Booking needs the guardian's own word that the chunk kept every limit.
            self.log.error("chunk %d: refused a verdict the guardian did not sign", verdict.chunk)
            self.count("chunks_discarded")
            return
        m = spec.market
        assert m is not None
        touched: list[str] = []
        self._track(self.broker.commit_chunk(spec), touched)  # type: ignore[attr-defined]
        k_bars = m.ts.shape[0]
        last = orders.bar == k_bars - 1
        self.orders.settle([orders.order_id[i] for i in np.flatnonzero(~last).tolist()])
        self.clock = max(self.clock, int(m.ts_event[-1]))
        self.session_date = spec.dates[int(spec.day[-1])] if spec.dates else self.session_date
        expires = approved.expires_ns.to_numpy()
        for i in np.flatnonzero(last).tolist():
            # The last bar's orders work from the next bar on, as bar by bar.
            limit = float(orders.limit[i])
            side = "BUY" if orders.buy[i] else "SELL"
            price = None if np.isnan(limit) else limit
            order = SubmitOrder(
                msg_id=self.ids.next(),
                ts_event=self.clock,
                ts_init=self.clock,
                correlation_id=approved.msg_id,
                order_id=orders.order_id[i],
                intent_id=orders.order_id[i],
                shard=int(orders.shard[i]),
                symbol=orders.symbol[i],
                side=side,  # type: ignore[arg-type]
                quantity=int(orders.quantity[i]),
                order_type="MARKET" if price is None else "LIMIT",
                approval=Approval(
                    order_id=orders.order_id[i],
                    symbol=orders.symbol[i],
                    side=side,  # type: ignore[arg-type]
                    quantity=int(orders.quantity[i]),
                    limit_price=price,
                    expires_ns=int(expires[i]),
                    signature=approved.signature,
                ),
                limit_price=price,
                purpose="OPEN" if orders.buy[i] else "CLOSE",
            )
            self.orders.register(order)
            self._track(self.broker.submit(order, self.clock), touched)
        self.expected = {s: q for s, q in self.broker.positions().items() if q}
        self.count("chunks_committed")

    # -- NAMED ACCOUNTS -----------------------------------------------------------------

    def _key(self) -> bytes:
        if self._seal_key is None:
            self._seal_key = self.stores.seal_key()
        return self._seal_key

    def _restore_account(self) -> None:
        """A named simulated account goes on from its stored book, whose seal must hold
        (the session's start checked it; this is the gateway's own check)."""
        if not self.account_key or not hasattr(self.broker, "restore"):
            return
        doc = self.state().get(self.account_key)
        if doc is not None:
            self.broker.restore(
                unseal(self._key(), SIM_ACCOUNT_KIND, doc, f"the account {self.account_key}")
            )
            self.count("account_restored")
        # Stored at once, so that an account with a trading history always has a book.
        self._save_account()

    def _save_account(self) -> None:
        if not self.account_key or not hasattr(self.broker, "snapshot"):
            return
        doc = seal(self._key(), SIM_ACCOUNT_KIND, self.broker.snapshot())
        self.state().put(self.account_key, doc)

    def _submit(self, order: SubmitOrder, touched: list[str]) -> list[Message]:
        # An order is never checked at a time before it was decided (a clock restored from
        # an older checkpoint would otherwise be lenient with its expiry).
        reason = self.verifier.check(order, max(self.clock, order.ts_event))
        if reason is not None:
            self.log.warning("refused order %s: %s", order.order_id, reason)
            return [self._reject(order, reason, "the guardian's approval did not verify")]
        if not self.orders.register(order):
            return [self._reject(order, "DUPLICATE_ORDER_ID", "this order id was already sent")]
        if self.persist is not None and not getattr(self.broker, "speculative", False):
            # Write-ahead: the order (and its used approval) is on disk before it leaves
            # for a real broker, so a crash now leaves a restarted gateway that knows it.
            self.persist()
        return self._track(self.broker.submit(order, self.clock), touched)

    def _cancel(self, cancel: CancelOrder, touched: list[str]) -> list[Message]:
        rec = self.orders.get(cancel.order_id)
        if rec is None or rec.state.terminal:
            self.count("cancel_unknown_or_done")
            return []
        return self._track(self.broker.cancel(cancel.order_id, self.clock), touched)

    def _track(self, events: list[Message], touched: list[str]) -> list[Message]:
        """Run broker events through the order manager; drop duplicates."""
        out: list[Message] = []
        for ev in events:
            match ev:
                case OrderFilled():
                    if self.orders.on_fill(ev):
                        out.append(ev)
                        touched.append(ev.symbol)
                        signed = ev.quantity if ev.side == "BUY" else -ev.quantity
                        held = self.expected.get(ev.symbol, 0) + signed
                        # Flat symbols leave the map, so that it compares directly with
                        # the broker's positions, which name only what is held.
                        if held:
                            self.expected[ev.symbol] = held
                        else:
                            self.expected.pop(ev.symbol, None)
                case OrderAccepted():
                    if self.orders.on_accepted(ev):
                        out.append(ev)
                case OrderCanceled():
                    if self.orders.on_canceled(ev):
                        out.append(ev)
                case OrderRejected():
                    self.orders.on_rejected(ev)
                    out.append(ev)
                case _:
                    out.append(ev)
        return out

    def _reject(self, order: SubmitOrder, code: str, detail: str) -> OrderRejected:
        self.count(f"rejected_{code}")
        return rejected(self.ids, order, code, detail, self.clock)


@dataclass(frozen=True, slots=True)
class _Executed:
    chunk: int
    spec: Speculation
    orders: ChunkOrders
    approved: ApprovedChunk
    seq: np.ndarray


def _approved_columns(a: ApprovedChunk) -> tuple[NDArray, ...]:
    return (
        a.symbol,
        a.shard,
        a.bar,
        a.side,
        a.quantity,
        a.limit_price,
        a.seq,
        a.expires_ns,
    )


def _names(names: list[str]) -> NDArray:
    width = max((len(s.encode()) for s in names), default=1)
    return NDArray.from_numpy(np.array([s.encode() for s in names], dtype=f"S{width}"))


def _int_counters(counters: object) -> dict[str, int]:
    """A broker's counters (a dict or a dataclass), the integer ones."""
    import dataclasses

    items = (
        dataclasses.asdict(counters).items()  # type: ignore[call-overload]
        if dataclasses.is_dataclass(counters)
        else dict(counters).items()  # type: ignore[call-overload]
    )
    return {f"broker_{k}": int(v) for k, v in items if isinstance(v, int | bool)}

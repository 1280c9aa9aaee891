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

import msgspec
import numpy as np

from sovereign.actors.base import Actor, accepting
from sovereign.actors.gateway_chunks import Executed, GatewayChunks
from sovereign.brokers.base import BrokerAdapter, rejected
from sovereign.core.calendar import session_date
from sovereign.core.risk import ApprovalVerifier
from sovereign.execution.order_manager import OrderManager
from sovereign.memory.account import SIM_ACCOUNT_KIND, seal, unseal
from sovereign.memory.stores import Stores
from sovereign.messages import (
    ApprovedChunk,
    BarBatch,
    BarChunk,
    BookSnapshot,
    CancelOrder,
    ChunkVerdict,
    Message,
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


class GatewayActor(GatewayChunks, Actor[GatewayInbox]):
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
        self._chunk: Executed | None = None
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


def _int_counters(counters: object) -> dict[str, int]:
    """A broker's counters (a dict or a dataclass), the integer ones."""
    import dataclasses

    items = (
        dataclasses.asdict(counters).items()  # type: ignore[call-overload]
        if dataclasses.is_dataclass(counters)
        else dict(counters).items()  # type: ignore[call-overload]
    )
    return {f"broker_{k}": int(v) for k, v in items if isinstance(v, int | bool)}

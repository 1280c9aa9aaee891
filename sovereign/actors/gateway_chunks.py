"""The gateway's part in speculative chunks (``core.chunks``): execute a chunk's approved
orders on the simulated broker without committing, report the account path the guardian
validates, then commit or take it back as the guardian's verdict says."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from sovereign.brokers.base import BrokerAdapter
from sovereign.brokers.sim_chunk import ChunkMarket, ChunkOrders, Speculation
from sovereign.core.risk import ApprovalVerifier
from sovereign.execution.order_manager import OrderManager
from sovereign.messages import (
    Approval,
    ApprovedChunk,
    BarChunk,
    ChunkExecution,
    ChunkVerdict,
    Message,
    NDArray,
    SubmitOrder,
)
from sovereign.messages.base import IdSource


@dataclass(frozen=True, slots=True)
class Executed:
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


class GatewayChunks:
    """A part of ``GatewayActor``: these are the attributes of it a chunk reads and moves."""

    broker: BrokerAdapter
    verifier: ApprovalVerifier
    orders: OrderManager
    clock: int
    session_date: str
    expected: dict[str, int]
    ids: IdSource
    log: Any
    _chunk: Executed | None
    _markets: dict[tuple[bytes, ...], tuple[list[str], dict[str, int], np.ndarray]]
    count: Callable[..., None]
    _track: Callable[[list[Message], list[str]], list[Message]]  # GatewayActor's

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
        expects = dict(zip(approved.expects, approved.expects_quantity, strict=True))
        spec = self.broker.speculate_chunk(market, orders, expects)  # type: ignore[attr-defined]
        if spec.diverged:
            path = (market.ts_event, spec)
            return self._execution(chunk, spec.diverged, spec.bar, None, None, path=path)
        self._chunk = Executed(chunk, spec, orders, approved, seq)
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
        if len(approved.expects_quantity) != len(approved.expects):
            return "the expected orders and their quantities differ in number"
        reason = self.verifier.check_chunk(
            approved.chunk,
            columns,
            approved.expects,
            approved.expects_quantity,
            approved.signature,
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

    def _not_executed(
        self,
        chunk: int,
        diverged: str,
        bar: int,
        path: tuple[np.ndarray, Speculation] | None,
    ) -> ChunkExecution:
        """The report of a chunk refused or diverged: no fills; the account path as
        speculated where there is one (``path``: its bar closes and the speculation)."""
        i8, f8 = np.int64, np.float64
        empty_s = NDArray.from_numpy(np.zeros(0, dtype="S1"))
        z8 = NDArray.from_numpy(np.zeros(0, i8))
        zf = NDArray.from_numpy(np.zeros(0, f8))
        ts, equity, cash, gross, held, opened, day = z8, zf, zf, zf, z8, z8, z8
        dates: list[str] = []
        if path is not None and path[1].equity.size:
            when, p = path
            ts = NDArray.from_numpy(when.astype(i8))
            equity, cash = NDArray.from_numpy(p.equity), NDArray.from_numpy(p.cash)
            gross, held = NDArray.from_numpy(p.gross), NDArray.from_numpy(p.held.astype(i8))
            opened = NDArray.from_numpy(p.open_positions.astype(i8))
            day, dates = NDArray.from_numpy(p.day.astype(i8)), p.dates
        return ChunkExecution(
            msg_id=self.ids.next(),
            ts_event=self.clock,
            ts_init=self.clock,
            chunk=chunk,
            diverged=diverged,
            bar=bar,
            ts=ts,
            equity=equity,
            cash=cash,
            gross_exposure=gross,
            open_positions=opened,
            day=day,
            session_dates=dates,
            held=held,
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

    def _execution(
        self,
        chunk: int,
        diverged: str,
        bar: int,
        spec: Speculation | None,
        orders: ChunkOrders | None,
        seq: np.ndarray | None = None,
        *,
        path: tuple[np.ndarray, Speculation] | None = None,
    ) -> ChunkExecution:
        """The execution report; for a chunk that diverged, ``path``: the account path
        as speculated, where the speculation computed one (the guardian sizes from it)."""
        if diverged:
            self.count("chunks_diverged")
        i8, f8 = np.int64, np.float64
        if spec is None or orders is None or seq is None:
            return self._not_executed(chunk, diverged, bar, path)
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

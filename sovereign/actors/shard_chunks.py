"""The shard's part in speculative chunks (``core.chunks``): run the strategy over a
chunk of bar times on the assumption that every intent is approved and filled at the next
open, then commit it or go back to the state before it, as the guardian's verdict says."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from sovereign.core.chunk_state import assumed_fills, checkpoint, restore
from sovereign.core.chunk_trades import ClosedColumns, closed_pnl, commit_trades
from sovereign.core.chunks import (
    ChunkBars,
    ChunkOutcome,
    ChunkUnsupportedError,
    strategy_chunk,
    strategy_state_names,
)
from sovereign.core.fills import commission_for, market_price
from sovereign.core.signals import ShardStrategy
from sovereign.core.trades import ClosedTrade
from sovereign.core.universe import Universe
from sovereign.domain.settings import SimConfig
from sovereign.messages import (
    BarChunk,
    ChunkExecution,
    ChunkVerdict,
    IntentChunk,
    Message,
    NDArray,
    RegimeChunk,
)
from sovereign.messages.base import IdSource


class ShardChunks:
    """A part of ``ShardActor``: these are the attributes of it a chunk reads and moves."""

    index: int
    universe: Universe
    strategy: ShardStrategy
    ids: IdSource
    regime_codes: np.ndarray
    regime_probs: np.ndarray
    _regimes: RegimeChunk | None
    fill_model: SimConfig | None
    last_ts: int
    intents: int
    fills_booked: int
    _chunk: tuple[int, dict[str, Any], ChunkOutcome] | None
    count: Callable[..., None]

    _ACTOR_STATE = ("last_ts", "intents", "regime_codes", "regime_probs")

    def _on_chunk_message(
        self,
        msg: BarChunk | ChunkVerdict | ChunkExecution | RegimeChunk,
        messages: list[Message],
        closed: list[ClosedTrade | ClosedColumns],
    ) -> list[Message]:
        if isinstance(msg, ChunkExecution):
            return []  # read with the verdict that follows it
        if isinstance(msg, RegimeChunk):
            if msg.shard == self.index:
                self._regimes = msg  # read with the bar chunk that follows it
            return []
        if isinstance(msg, ChunkVerdict):
            # Its execution report (the commissions charged) travels in the same call.
            executed = next(
                (m for m in messages if isinstance(m, ChunkExecution) and m.chunk == msg.chunk),
                None,
            )
            closed.extend(self._settle_chunk(msg, executed))
            return []
        return [self._on_bar_chunk(msg)] if msg.shard == self.index else []

    def _on_bar_chunk(self, msg: BarChunk) -> IntentChunk:
        """Run the strategy over a chunk speculatively (``core.chunks``): every intent is
        assumed approved and filled at the next open. The state before it is kept until
        the guardian's verdict commits the chunk or discards it."""
        self._chunk = None
        ts = msg.ts.to_numpy()
        bar_close = ts + msg.interval_s * 1_000_000_000
        # The orders working before the chunk and the quantity each is assumed to fill
        # (the broker's speculation checks it against what it will fill).
        saved_orders = assumed_fills(self.strategy)

        def refuse(why: str) -> IntentChunk:
            self.count("chunks_refused")
            return self._intent_chunk(msg, bar_close, None, saved_orders, why)

        if int(ts[0]) <= self.last_ts or (np.diff(ts) <= 0).any():
            return refuse("bar times not after the last bar")
        if self.universe.locate(msg.symbols.to_numpy()) is not self.universe.identity:
            return refuse("the chunk's symbols are not this shard's universe")
        open_ = msg.open.to_numpy()
        bars = ChunkBars(
            ts=ts,
            open=open_,
            high=msg.high.to_numpy(),
            low=msg.low.to_numpy(),
            close=msg.close.to_numpy(),
            volume=msg.volume.to_numpy(),
            # Without slippage a market sell fills at the open itself (None).
            sell_open=None
            if self.fill_model is None or not self.fill_model.slippage_bps
            else market_price(open_, "SELL", self.fill_model),
        )
        regimes, self._regimes = self._regimes, None
        if (
            regimes is not None
            and len(regimes)
            and (regimes.chunk != msg.chunk or not np.array_equal(regimes.ts.to_numpy(), ts))
        ):
            return refuse("the regimes are not of the chunk's bar times")
        saved = checkpoint(self.strategy, strategy_state_names())
        saved.update({name: getattr(self, name) for name in self._ACTOR_STATE})
        saved["ids"] = self.ids.n
        codes, probs = self.regime_codes, self.regime_probs
        if regimes is not None and len(regimes):
            codes, probs = self._regime_rows(regimes)
        try:
            sizes = None if msg.sizes is None else msg.sizes.to_numpy()
            outcome = strategy_chunk(self.strategy, bars, codes, regime_probs=probs, sizes=sizes)
        except ChunkUnsupportedError as exc:
            self._restore(saved)
            return refuse(str(exc))
        self._chunk = (msg.chunk, saved, outcome)
        self.last_ts = int(ts[-1])
        self.intents += len(outcome.intents)
        opens = {k: saved["orders"][k].purpose == "OPEN" for k in saved_orders}
        working = {k: (q, opens[k]) for k, q in saved_orders.items()}
        fee = _fill_fees(bars, outcome, working, self.universe, self.fill_model)
        pnl = closed_pnl(outcome, fee)
        return self._intent_chunk(msg, bar_close, outcome, saved_orders, "", pnl)

    def _regime_rows(self, regimes: RegimeChunk) -> tuple[np.ndarray, np.ndarray]:
        """The regime codes (K, n) and probabilities (K, n, 4) after each of a chunk's bar
        times in universe order; the shard is left with the last bar's, as the last
        ``RegimeUpdate`` of those bars would have left it."""
        idx = self.universe.locate(regimes.symbols.to_numpy())
        ok = idx >= 0
        k, n = len(regimes), self.regime_codes.size
        codes = np.broadcast_to(self.regime_codes, (k, n)).copy()
        codes[:, idx[ok]] = regimes.codes.to_numpy()[:, ok]
        probs = np.broadcast_to(self.regime_probs, (k, *self.regime_probs.shape)).copy()
        probs[:, idx[ok]] = regimes.probabilities.to_numpy()[:, ok]
        self.regime_codes = codes[-1].copy()
        self.regime_probs = probs[-1].copy()
        return codes, probs

    def _intent_chunk(
        self,
        msg: BarChunk,
        bar_close: np.ndarray,
        outcome: ChunkOutcome | None,
        pending: dict[str, int],
        refused: str,
        pnl: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> IntentChunk:
        i = outcome.intents if outcome is not None else None
        closed = {}
        if outcome is not None and pnl is not None:
            closed = {
                "closed_bar": NDArray.from_numpy(outcome.trades.exit_bar.astype("<i8")),
                "closed_pnl": NDArray.from_numpy(pnl[1].astype("<f8")),
            }

        def col(name: str, dtype: str) -> NDArray:
            values = getattr(i, name) if i is not None else np.zeros(0)
            return NDArray.from_numpy(np.asarray(values, dtype=dtype))

        return IntentChunk(
            msg_id=self.ids.next(),
            ts_event=msg.ts_event,
            ts_init=msg.ts_init,
            correlation_id=msg.msg_id,
            chunk=msg.chunk,
            shard=self.index,
            symbols=NDArray.from_numpy(self.universe.array),
            bar_close=NDArray.from_numpy(bar_close.astype(np.int64)),
            bar=col("bar", "<i8"),
            index=col("index", "<i8"),
            side=col("side", "|u1"),
            quantity=col("quantity", "<i8"),
            ref_price=col("ref_price", "<f8"),
            confidence=col("confidence", "<f8"),
            seq=col("seq", "<i8"),
            pending=list(pending),
            refused=refused,
            pending_quantity=list(pending.values()),
            asked=col("asked", "<i8"),
            regime=col("regime", "|u1"),
            size_scale=col("size_scale", "<f8"),
            **closed,
        )

    def _settle_chunk(
        self, verdict: ChunkVerdict, executed: ChunkExecution | None
    ) -> list[ClosedColumns]:
        """Commit the speculative chunk (its closed trades, with the commissions the broker
        charged, go to trade memory) or go back to the state before it."""
        held, self._chunk = self._chunk, None
        if held is None or held[0] != verdict.chunk:
            return []
        _, saved, outcome = held
        if verdict.valid and executed is None:
            # The commissions of its fills are in the report: never book without them.
            raise RuntimeError(f"chunk {verdict.chunk}: a valid verdict without its execution")
        if not verdict.valid:
            self._restore(saved)
            self.count("chunks_discarded")
            return []
        fee = None
        if executed is not None:
            # The chunk's fills are booked here, as bar by bar each OrderFilled would be.
            self.fills_booked += int((executed.fill_shard.to_numpy() == self.index).sum())
            commissions = executed.fill_commission.to_numpy()
            mine = (executed.fill_shard.to_numpy() == self.index) & (commissions != 0)
            if mine.any():
                index = self.universe.index
                names = executed.fill_symbol.to_numpy()[mine].tolist()
                seqs = executed.fill_seq.to_numpy()[mine].tolist()
                charged = {
                    (index[s.decode()], q): c
                    for s, q, c in zip(names, seqs, commissions[mine].tolist(), strict=True)
                }

                def fee(j: int, seq: int) -> float:
                    return charged.get((j, seq), 0.0)

        self.count("chunks_committed")
        # The indicators' blocks kept for a re-speculation of these bars are done with.
        self.strategy._blocks_kept = None
        trades = commit_trades(self.strategy, outcome, fee)
        return [trades] if len(trades) else []

    def _restore(self, saved: dict[str, object]) -> None:
        state = dict(saved)
        self.ids.n = state.pop("ids")  # type: ignore[assignment]
        for name in self._ACTOR_STATE:
            setattr(self, name, state.pop(name))
        restore(self.strategy, state)


def _fill_fees(
    bars: ChunkBars,
    outcome: ChunkOutcome,
    pending: dict[str, tuple[int, bool]],
    universe: Universe,
    fill_model: SimConfig | None,
) -> Callable[[int, int], float] | None:
    """What the fill model charges each order the chunk fills, by universe index and
    order seq, as the broker will (the commissions of a committed chunk come from its
    report): every intent fills in full at the next bar's open (an exit at the market's
    sell price there), the orders pending before the chunk (quantity, whether it opens)
    at its first."""
    if fill_model is None:
        return None
    sell = bars.open if bars.sell_open is None else bars.sell_open
    k_bars = len(bars)
    fills: dict[tuple[int, int], tuple[int, float]] = {}
    i = outcome.intents
    for b, j, side, q, seq in zip(
        i.bar.tolist(),
        i.index.tolist(),
        i.side.tolist(),
        i.quantity.tolist(),
        i.seq.tolist(),
        strict=True,
    ):
        if b + 1 < k_bars and q > 0:
            prices = bars.open if side == 1 else sell
            fills[(j, seq)] = (q, float(prices[b + 1, j]))
    for order_id, (q, opens) in pending.items():
        symbol, seq = order_id.rsplit("-", 1)
        j = universe.index[symbol]
        fills[(j, int(seq))] = (q, float((bars.open if opens else sell)[0, j]))
    charged = {k: commission_for(q, p, fill_model) for k, (q, p) in fills.items()}

    def fee(j: int, seq: int) -> float:
        return charged.get((j, seq), 0.0)

    return fee

"""A committed chunk's closed trades (``core.chunks``), booked with the strategy's own
arithmetic and handed on as columns."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from sovereign.core.chunks import ChunkOutcome
from sovereign.core.trades import EXIT_REASONS
from sovereign.domain.regimes import REGIME_NAMES


@dataclass(slots=True)
class ClosedColumns:
    """A committed chunk's closed trades as columns, in the order their fills closed
    them: row ``i`` holds the fields of the ``ClosedTrade`` the strategy would have made
    of that trade one bar at a time (same names, same arithmetic)."""

    trade_id: list[str]
    symbol: list[str]
    quantity: np.ndarray  # int64
    entry_ts: np.ndarray  # int64
    exit_ts: np.ndarray  # int64
    entry_price: np.ndarray  # float64
    exit_price: np.ndarray
    pnl: np.ndarray
    commission: np.ndarray
    return_pct: np.ndarray
    bars_held: np.ndarray  # int64
    exit_reason: list[str]
    regime: list[str]
    confidence: np.ndarray  # float64
    features: list[dict[str, Any]]

    def __len__(self) -> int:
        return len(self.trade_id)


_REGIME_LABELS = np.array([*REGIME_NAMES, "Unknown"], dtype=object)


def closed_pnl(
    outcome: ChunkOutcome, commission: Callable[[int, int], float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The commissions paid and the P&L of each trade a chunk closes, in the order its
    fills close them (``ShardStrategy._close``'s arithmetic): what the fills charged, by
    universe index and order seq (None: no commissions beyond those booked before)."""
    t = outcome.trades
    if commission is None:
        paid = t.commission.astype(np.float64)
    else:
        fees = t.commission.tolist()
        columns = zip(t.index.tolist(), t.entry_seq.tolist(), t.exit_seq.tolist(), strict=True)
        for i, (j, e, x) in enumerate(columns):
            if e:
                fees[i] += commission(j, e)
            fees[i] += commission(j, x)
        paid = np.array(fees, dtype=np.float64)
    return paid, t.exit_proceeds - t.entry_cost - paid


def commit_trades(
    st: Any, outcome: ChunkOutcome, commission: Callable[[int, int], float] | None = None
) -> ClosedColumns:
    """Book what a chunk left for its commit: the commissions of its fills (by universe
    index and order seq; None: no commissions) and the losing streak. Returns the chunk's
    closed trades as columns, in the order their fills closed them, each figure with the
    strategy's own arithmetic (``ShardStrategy._close``: element by element, in the same
    order of operations, so every value is the same to the last bit)."""
    if commission is not None:
        for j, seq in outcome.entries_filled.items():
            st.trades[j].commission += commission(j, seq)
    t = outcome.trades
    paid, pnl = closed_pnl(outcome, commission)
    q, cost, proceeds = t.quantity.astype(np.int64), t.entry_cost, t.exit_proceeds
    with np.errstate(divide="ignore", invalid="ignore"):
        return_pct = np.where(cost != 0, pnl / cost, 0.0)
        entry_price = cost / q
        exit_price = proceeds / q
    # The losing streak, as one trade after another would leave it.
    gains = np.flatnonzero(~(pnl < 0))
    m = int(pnl.size)
    st.losing_streak = m - 1 - int(gains[-1]) if gains.size else st.losing_streak + m

    why = t.reason.tolist()
    codes = t.regime.astype(np.int64)
    regime = _REGIME_LABELS[np.where((codes >= 0) & (codes < len(REGIME_NAMES)), codes, -1)]
    names = st.universe.names[t.index]
    trade_id = [f"{s}-{e}" for s, e in zip(names.tolist(), t.entry_seq.tolist(), strict=True)]
    confidence = t.confidence.astype(np.float64)
    features: list[dict[str, Any]] = list(t.features)
    reason = [EXIT_REASONS[w] for w in why]
    for i, before in t.earlier.items():
        trade_id[i], confidence[i], features[i] = (
            before.trade_id,
            before.confidence,
            before.features,
        )
        if why[i] < 0:
            reason[i] = before.exit_reason or "unknown"
    return ClosedColumns(
        trade_id=trade_id,
        symbol=names.tolist(),
        quantity=q,
        entry_ts=t.entry_ts.astype(np.int64),
        exit_ts=t.exit_ts.astype(np.int64),
        entry_price=entry_price,
        exit_price=exit_price,
        pnl=pnl,
        commission=paid,
        return_pct=return_pct,
        bars_held=t.bars_held.astype(np.int64),
        exit_reason=reason,
        regime=regime.tolist(),
        confidence=confidence,
        features=features,
    )


__all__ = ["ClosedColumns", "closed_pnl", "commit_trades"]

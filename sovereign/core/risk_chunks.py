"""The risk engine's part in speculative chunks (backtests with the simulated broker).

A chunk's intents are approved on condition, as one signed batch (``approve_chunk``), and
the chunk is validated against the account path the broker's speculation computed
(``validate_chunk``): valid only if every order would have been approved in full bar by
bar and no bar moves the trading state (``core.chunks`` tells the whole story).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from sovereign.core.constitution import Constitution
from sovereign.core.guardian import TradingState, TradingStateMachine
from sovereign.core.risk import (
    RiskBook,
    SizingPolicy,
    evaluate_intent,
    sign_chunk,
    sign_verdict,
    unsafe_orders,
)
from sovereign.domain.regimes import REGIME_UNKNOWN, regime_name
from sovereign.messages import (
    ApprovedChunk,
    ChunkExecution,
    ChunkHorizon,
    ChunkVerdict,
    IntentChunk,
    NDArray,
    OrderIntent,
)
from sovereign.messages.base import IdSource


@dataclass(frozen=True, slots=True)
class PendingChunk:
    """A chunk approved on condition: its orders in decision order (the price is the
    entry's limit, or the exit's reference price; ``asked`` what each asks bar by bar,
    ``quantity`` what the chunk speculates it fills, 0 for an entry it speculates the
    guardian denies; ``sent`` the orders the approval lets through to the broker)."""

    chunk: int
    signature: bytes
    bar: np.ndarray
    buy: np.ndarray
    quantity: np.ndarray
    price: np.ndarray
    confidence: np.ndarray
    symbol: np.ndarray
    asked: np.ndarray
    sent: np.ndarray
    regime: np.ndarray
    size_scale: np.ndarray
    # The trades the chunk closes, every shard's in the order the guardian counts them
    # (by bar; shard order within one): the bar whose open closes each and its P&L. None:
    # a shard did not say (then no review of the rules may be due in the chunk).
    closed_bar: np.ndarray | None = None
    closed_pnl: np.ndarray | None = None


Sized = dict[str, Any]
"""The ``sized_*`` columns of a verdict."""


class RiskEngine(Protocol):
    """What of the risk engine (``core.risk_engine``) a chunk's approval reads and moves."""

    constitution: Constitution
    policy: SizingPolicy
    secret: bytes
    ttl_ns: int
    ids: IdSource
    fingerprint: str
    machine: TradingStateMachine | None
    reconciled: bool
    book: RiskBook
    working: list[Any]
    reasons: dict[str, int]
    chunk: PendingChunk | None

    def count(self, key: str, n: int) -> None: ...


def approve_chunk(engine: RiskEngine, chunks: list[IntentChunk]) -> ApprovedChunk:
    """Approve a chunk's intents on condition, as one signed batch.

    Everything that does not depend on the account inside the chunk is checked here,
    as ``RiskEngine.decide`` checks it; the rest (sizing against each bar's equity, cash and
    exposure, and the trading state at every bar) waits for the execution report
    (``validate_chunk``). A chunk that cannot be approved this way is refused whole,
    and the engine replays it bar by bar, where each intent is decided on its own."""
    engine.chunk = None
    chunk = chunks[0].chunk
    names, shard, bar, side, quantity, ref, confidence, seq, asked, regime, scale = (
        _in_decision_order(chunks)
    )
    buy = side == 1
    bar_close = chunks[0].bar_close.to_numpy()
    refused = _chunk_refusal(engine, chunks, bar_close, bar, side, buy, quantity, ref, confidence)
    limit = np.where(buy, engine.policy.entry_limits(ref), np.nan)
    expires = bar_close[bar] + engine.ttl_ns if not refused else np.zeros(bar.size, dtype=np.int64)
    # An entry speculated as denied reaches no broker: it is validated, not approved.
    sent = quantity > 0
    columns = tuple(
        NDArray.from_numpy(np.ascontiguousarray(x[sent]))
        for x in (
            names,
            shard.astype(np.int64),
            bar.astype(np.int64),
            side.astype(np.uint8),
            quantity.astype(np.int64),
            limit.astype(np.float64),
            seq.astype(np.int64),
            expires.astype(np.int64),
        )
    )
    # Each shard's own orders, with the quantity it assumed each fills (an order twice,
    # for two quantities, is then expected twice: the broker's book matches neither).
    pairs = sorted({p for c in chunks for p in zip(c.pending, c.pending_quantity, strict=True)})
    expects, quantities = [o for o, _ in pairs], [q for _, q in pairs]
    signature = b"" if refused else sign_chunk(engine.secret, chunk, columns, expects, quantities)
    if refused:
        engine.count("chunks_refused", 1)
    else:
        engine.chunk = PendingChunk(
            chunk=chunk,
            signature=signature,
            bar=bar,
            buy=buy,
            quantity=quantity,
            price=np.where(buy, limit, ref),
            confidence=confidence,
            symbol=names,
            asked=asked,
            sent=sent,
            regime=regime,
            size_scale=scale,
            **_closed_columns(chunks),
        )
    now = int(bar_close[-1]) if bar_close.size else 0
    return ApprovedChunk(
        msg_id=engine.ids.next(),
        ts_event=now,
        ts_init=now,
        chunk=chunk,
        symbol=columns[0],
        shard=columns[1],
        bar=columns[2],
        side=columns[3],
        quantity=columns[4],
        limit_price=columns[5],
        seq=columns[6],
        expires_ns=columns[7],
        expects=expects,
        expects_quantity=quantities,
        signature=signature,
        refused=refused,
    )


def _closed_columns(chunks: list[IntentChunk]) -> dict[str, np.ndarray]:
    """The shards' closed trades (``PendingChunk.closed_*``), in the order their closing
    reaches the guardian: by bar, the shards' order kept within one."""
    if any(c.closed_bar is None or c.closed_pnl is None for c in chunks):
        return {}
    bar = np.concatenate([c.closed_bar.to_numpy() for c in chunks if c.closed_bar is not None])
    pnl = np.concatenate([c.closed_pnl.to_numpy() for c in chunks if c.closed_pnl is not None])
    order = np.argsort(bar, kind="stable")
    return {"closed_bar": bar[order], "closed_pnl": pnl[order]}


def _review_cut(engine: RiskEngine, pending: PendingChunk, horizon: ChunkHorizon | None) -> int:
    """The bar of the chunk at which self-modification would review the rules (-1: none
    in it): the first session change at which a review is due (``horizon``), or the first
    after a losing streak asks for one (``TradingStateMachine.first_review``). Only a
    chunk's last bar may hold one: the rules it deploys would change the bars after it."""
    if horizon is None:
        return -1
    assert engine.machine is not None
    cut = horizon.due
    changes = horizon.changes.to_numpy()
    if pending.closed_bar is None or pending.closed_pnl is None:
        return int(changes[0]) if changes.size else cut  # a shard did not say: the first
    first = engine.machine.first_review(pending.closed_pnl)
    if first >= 0:
        later = changes[changes > pending.closed_bar[first]]
        if later.size and (cut < 0 or int(later[0]) < cut):
            cut = int(later[0])
    return cut


def _in_decision_order(chunks: list[IntentChunk]) -> list[np.ndarray]:
    """The shards' intents as one set of columns in the order the guardian decides them
    bar by bar (by bar, exits first, then by symbol): symbol, shard, bar, side, quantity,
    reference price, confidence, seq, the quantity asked, the regime code and the size
    scale."""
    names = np.concatenate([c.symbols.to_numpy()[c.index.to_numpy()] for c in chunks])
    shard = np.concatenate([np.full(len(c), c.shard, dtype=np.int64) for c in chunks])
    cols = {
        k: np.concatenate([getattr(c, k).to_numpy() for c in chunks])
        for k in ("bar", "side", "quantity", "ref_price", "confidence", "seq")
    }
    cols["asked"] = np.concatenate(
        [(c.quantity if c.asked is None else c.asked).to_numpy() for c in chunks]
    )
    unknown = np.uint8(REGIME_UNKNOWN)
    cols["regime"] = np.concatenate(
        [np.full(len(c), unknown) if c.regime is None else c.regime.to_numpy() for c in chunks]
    )
    cols["size_scale"] = np.concatenate(
        [np.ones(len(c)) if c.size_scale is None else c.size_scale.to_numpy() for c in chunks]
    )
    order = np.lexsort((names, cols["side"] == 1, cols["bar"]))
    return [names[order], shard[order], *(v[order] for v in cols.values())]


def _chunk_refusal(
    engine: RiskEngine,
    chunks: list[IntentChunk],
    bar_close: np.ndarray,
    bar: np.ndarray,
    side: np.ndarray,
    buy: np.ndarray,
    quantity: np.ndarray,
    ref: np.ndarray,
    confidence: np.ndarray,
) -> str:
    """Why a chunk cannot be approved on condition ("" when it can)."""
    if any(c.chunk != chunks[0].chunk for c in chunks):
        return "intents of different chunks"
    for c in chunks:
        if c.refused:
            return f"shard {c.shard}: {c.refused}"
        if not np.array_equal(c.bar_close.to_numpy(), bar_close):
            return "the shards' bar times differ"
    if engine.constitution.fingerprint != engine.fingerprint:
        return "CONSTITUTION_TAMPERED"
    if engine.machine is None:
        return "NOT_STARTED: no account state yet"
    if not engine.reconciled:
        return "RECONCILING: no book snapshot since the guardian started"
    if engine.machine.state is not TradingState.ACTIVE:
        # Denials, flattening and the way back to ACTIVE are decided bar by bar.
        return f"trading is {engine.machine.state.value}"
    if bar.size and ((bar < 0).any() or (bar >= bar_close.size).any()):
        return "an intent's bar is outside the chunk"
    # An entry may be speculated as denied (0 shares: the guardian's size from an earlier
    # speculation of these bars); nothing else is ever for no shares.
    if ((side != 1) & (side != 2)).any() or (quantity < 0).any() or (quantity[~buy] == 0).any():
        return "malformed intents"
    with np.errstate(invalid="ignore"):
        if not (np.isfinite(ref) & (ref > 0)).all():
            return "BAD_PRICE"
        # Written so that NaN is refused too (it compares false either way).
        if (buy & ~(confidence >= engine.constitution.min_confidence_for_trade)).any():
            return "LOW_CONFIDENCE"
    return ""


def validate_chunk(
    engine: RiskEngine, ex: ChunkExecution, horizon: ChunkHorizon | None = None
) -> ChunkVerdict:
    """Decide a chunk against its execution report: valid if every order would have
    been approved in full bar by bar, no bar moves the trading state and no review of the
    rules by self-modification (``horizon``, when it runs) comes before its last bar. A
    valid chunk is taken into the guardian's state here, as its bars one at a time would
    have."""
    pending, engine.chunk = engine.chunk, None
    ts = ex.ts.to_numpy()
    now = int(ts[-1]) if ts.size else ex.ts_event

    def verdict(
        valid: bool,
        reason: str = "",
        bar: int = -1,
        n: int = 0,
        sized: Sized | None = None,
    ) -> ChunkVerdict:
        engine.count("chunks_valid" if valid else "chunks_invalid", 1)
        assert pending is not None or not valid
        signature = (
            sign_verdict(engine.secret, ex.chunk, pending.signature)
            if valid and pending is not None
            else b""
        )
        return ChunkVerdict(
            msg_id=engine.ids.next(),
            ts_event=now,
            ts_init=now,
            chunk=ex.chunk,
            valid=valid,
            reason=reason,
            bar=bar,
            approved=n,
            fills=ex.fills if valid else 0,
            denied=int((~pending.sent).sum()) if valid and pending is not None else 0,
            signature=signature,
            **(sized or {}),
        )

    if pending is None or pending.chunk != ex.chunk:
        return verdict(False, "no conditional approval for this chunk")
    if ex.diverged:
        # With the account path up to the divergence (the broker's cap would cut an
        # opening fill): an entry decided before it that the guardian sizes otherwise is
        # what went wrong, and its sizes are what to speculate with.
        checked = _orders_checked(engine, pending, ex, ts) if ex.equity.shape[0] else None
        if checked is not None and checked[2] is not None and checked[1] < ex.bar:
            return verdict(False, checked[0], checked[1], sized=checked[2])
        return verdict(False, ex.diverged, ex.bar)
    problem, bar, sized, denials = _chunk_problem(engine, pending, ex, ts)
    if problem:
        return verdict(False, problem, bar, sized=sized)
    if horizon is not None and horizon.chunk != ex.chunk:
        return verdict(False, "the review horizon is of another chunk")
    cut = _review_cut(engine, pending, horizon)
    if 0 <= cut < ts.size - 1:
        # The chunk through that bar is what bar by bar would do; the review follows it.
        return verdict(False, "self-modification would review the rules inside it", cut + 1)
    _commit_chunk(engine, ex, now)
    n = int(pending.sent.sum())
    for code, k in (("APPROVED", n), *denials.items()):
        engine.reasons[code] = engine.reasons.get(code, 0) + k
    return verdict(True, n=n)


def _held(pending: PendingChunk, ex: ChunkExecution) -> np.ndarray | None:
    """Each order's symbol's position at its decision: the broker's report for the orders
    sent; none for an entry speculated as denied (a shard enters only when flat)."""
    sent = ex.held.to_numpy()
    if sent.shape != (int(pending.sent.sum()),):
        return None
    held = np.zeros(pending.bar.shape, dtype=np.int64)
    held[pending.sent] = sent
    return held


def _chunk_problem(
    engine: RiskEngine, pending: PendingChunk, ex: ChunkExecution, ts: np.ndarray
) -> tuple[str, int, Sized | None, dict[str, int]]:
    """Why the executed chunk is not what bar by bar would have done, and at which bar
    ("" when it is); when an entry's size is what differs, every entry's size on the
    speculated path (the ``sized_*`` columns of the verdict); and the reasons for the
    entries it denies, as bar by bar would count them."""
    machine = engine.machine
    assert machine is not None  # a chunk is only approved with an account state
    checked = _orders_checked(engine, pending, ex, ts)
    if checked is None:
        return "the execution report does not match the approval", -1, None, {}
    problem, bar, sized, codes = checked
    if problem:
        return problem, bar, sized, {}
    moved = machine.observe_path(ex.equity.to_numpy(), ex.day.to_numpy(), ex.session_dates)
    if moved >= 0:
        return "the trading state would change", moved, None, {}
    denials: dict[str, int] = {}
    for code in codes[~pending.sent].tolist():
        denials[code] = denials.get(code, 0) + 1
    return "", -1, None, denials


def _orders_checked(
    engine: RiskEngine, pending: PendingChunk, ex: ChunkExecution, ts: np.ndarray
) -> tuple[str, int, Sized | None, np.ndarray] | None:
    """Every order of the chunk against what bar by bar would decide on its account path:
    the first that differs (why, its bar, and the guardian's sizes where an entry's size
    is what differs), and each entry's reason code. None: no path to check against."""
    equity, cash = ex.equity.to_numpy(), ex.cash.to_numpy()
    gross, held = ex.gross_exposure.to_numpy(), _held(pending, ex)
    if held is None or equity.shape != ts.shape or not ts.size:
        return None
    b = pending.bar
    unsafe = unsafe_orders(
        bar=b,
        buy=pending.buy,
        quantity=pending.quantity,
        price=pending.price,
        confidence=pending.confidence,
        held=held,
        equity=equity[b],
        cash=cash[b],
        gross=gross[b],
        constitution=engine.constitution,
        policy=engine.policy,
    )
    bad_exit = np.flatnonzero(unsafe & ~pending.buy)
    # The entries the sufficient condition does not clear, or speculated at another size
    # than they ask, are sized as ``evaluate_intent`` sizes them bar by bar.
    doubt = pending.buy & (unsafe | (pending.asked != pending.quantity))
    exact, codes = pending.quantity, np.full(b.shape, "", dtype=object)
    if doubt.any():
        exact, codes = _exact_sizes(engine, pending, held, ex, np.unique(b[doubt]))
    wrong = np.flatnonzero(exact != pending.quantity)
    if bad_exit.size and (not wrong.size or bad_exit[0] < wrong[0]):
        return "an order might not be approved in full", int(b[bad_exit[0]]), None, codes
    if wrong.size:
        entries = np.flatnonzero(pending.buy)
        sized = {
            "sized_symbols": NDArray.from_numpy(np.ascontiguousarray(pending.symbol[entries])),
            "sized_bars": NDArray.from_numpy(b[entries].astype(np.int64)),
            "sized_quantities": NDArray.from_numpy(exact[entries].astype(np.int64)),
        }
        return "the guardian would size an entry otherwise", int(b[wrong[0]]), sized, codes
    return "", -1, None, codes


def _exact_sizes(
    engine: RiskEngine,
    pending: PendingChunk,
    held: np.ndarray,
    ex: ChunkExecution,
    bars: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Each order's quantity as bar by bar would approve it on the speculated path (0:
    denied), and the reason code of each entry's decision: for every entry of ``bars``,
    ``evaluate_intent`` (the one definition of sizing) with the account of its bar and
    the entries decided before it at that bar pending, as the guardian's book holds them
    then; the others as speculated."""
    exact = pending.quantity.astype(np.int64).copy()
    codes = np.full(exact.shape, "", dtype=object)
    equity, cash = ex.equity.to_numpy(), ex.cash.to_numpy()
    gross = ex.gross_exposure.to_numpy()
    # The orders are in decision order, so by bar: each bar's are one slice.
    first = np.searchsorted(pending.bar, bars, side="left").tolist()
    last = np.searchsorted(pending.bar, bars, side="right").tolist()
    buy = pending.buy.tolist()
    for bar, lo, hi in zip(bars.tolist(), first, last, strict=True):
        book = RiskBook(equity=float(equity[bar]), cash=float(cash[bar]))
        book.gross_exposure = float(gross[bar])
        for k in range(lo, hi):
            if not buy[k]:
                continue
            symbol, price = pending.symbol[k].decode(), float(pending.price[k])
            book.held = {symbol: int(held[k])}
            intent = OrderIntent(
                msg_id="",
                ts_event=0,
                ts_init=0,
                intent_id=str(k),
                shard=0,
                symbol=symbol,
                side="BUY",
                purpose="OPEN",
                quantity=int(pending.asked[k]),
                ref_price=price,
                confidence=float(pending.confidence[k]),
                regime=regime_name(int(pending.regime[k])),
                reason="",
                size_scale=float(pending.size_scale[k]),
            )
            d = evaluate_intent(intent, book, engine.constitution, engine.policy, price=price)
            exact[k], codes[k] = (d.quantity if d.approved else 0), d.reason_code
            if exact[k]:
                book.add_pending(str(k), symbol, "BUY", int(exact[k]), price)
    return exact, codes


def _commit_chunk(engine: RiskEngine, ex: ChunkExecution, now: int) -> None:
    """Take a valid chunk's account and book as its last bar left them."""
    assert engine.machine is not None
    equity, cash = ex.equity.to_numpy(), ex.cash.to_numpy()
    gross = ex.gross_exposure.to_numpy()
    s = engine.machine.s
    s.last_cash, s.last_gross_exposure = float(cash[-1]), float(gross[-1])
    s.last_open_positions = int(ex.open_positions.to_numpy()[-1])
    s.last_ts = now
    engine.book.equity, engine.book.cash = float(equity[-1]), float(cash[-1])
    engine.book.gross_exposure = float(gross[-1])
    names = [x.decode() for x in ex.position_symbols.to_numpy().tolist()]
    engine.book.held = dict(zip(names, ex.positions.to_numpy().tolist(), strict=True))
    engine.book.pending = {}
    for o in ex.working:
        engine.book.add_pending(o.order_id, o.symbol, o.side, o.remaining, o.price)
    engine.working = list(ex.working)

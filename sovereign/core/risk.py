"""Position sizing, the guardian's decision logic, and the signed approval capability.

Sizing (all notionals at the intent's reference price ``P``, ``E`` = current equity
including unrealised P&L):

    cap        = max_position_size * E                       (the constitution: 5 %)
    conf_scale = 0.5 + 0.5 * (c - c_min) / (1 - c_min)       (0.5 at the floor, 1 at c = 1)
    reg_scale  = volatile_scale in Volatile, else 1          (smaller in Volatile)
    rule_scale = the active rules' ScaleSize factors          (at most 1)
    target     = cap * conf_scale * reg_scale * rule_scale
    room       = cap - P * (held + pending buys)             (what is already held and pending)
    quantity   = floor(min(target, room, cash room, gross-exposure room) / P)

An entry that asks for a fixed quantity (``OrderIntent.quantity > 0``) gets that many shares
or, if ``room``, cash or exposure allow fewer, fewer — never more; the scales do not apply.
An entry whose confidence is below the constitution's floor is denied (``LOW_CONFIDENCE``);
one that rounds to zero shares is denied (``POSITION_LIMIT``). Exits are approved up to the
held quantity less the sells already pending.

Every approval is signed: an HMAC-SHA256 under a per-run secret that only the guardian and
the gateway hold, over the order id, symbol, side, quantity, limit price and expiry. The
gateway verifies it, refuses it after expiry, and accepts each one once.
"""

from __future__ import annotations

import hmac
import math
from dataclasses import dataclass, field

import msgspec
import numpy as np

from sovereign.core.constitution import Constitution
from sovereign.messages.base import NDArray
from sovereign.messages.orders import Approval, OrderIntent, SubmitOrder

# -- APPROVALS -------------------------------------------------------------------------

_canonical = msgspec.msgpack.Encoder()


def _approval_payload(
    order_id: str, symbol: str, side: str, quantity: int, limit_price: float | None, expires_ns: int
) -> bytes:
    return _canonical.encode((order_id, symbol, side, quantity, limit_price, expires_ns))


def sign_approval(
    secret: bytes,
    *,
    order_id: str,
    symbol: str,
    side: str,
    quantity: int,
    limit_price: float | None,
    expires_ns: int,
) -> Approval:
    """Sign an approval for exactly this order."""
    payload = _approval_payload(order_id, symbol, side, quantity, limit_price, expires_ns)
    # hmac.digest: OpenSSL's one-shot HMAC, the same bytes as hmac.new(...).digest()
    # without building an HMAC object (it runs for every order, twice).
    signature = hmac.digest(secret, payload, "sha256")
    return Approval(
        order_id=order_id,
        symbol=symbol,
        side=side,  # type: ignore[arg-type]
        quantity=quantity,
        limit_price=limit_price,
        expires_ns=expires_ns,
        signature=signature,
    )


def chunk_payload(
    chunk: int, columns: tuple[NDArray, ...], expects: list[str], quantities: list[int]
) -> bytes:
    """The canonical bytes a chunk's batch approval signs: its number, every column whole
    (dtype, shape and bytes) and the orders it expects working before it, with the
    quantity each is to fill."""
    return _canonical.encode(("chunk", chunk, columns, expects, quantities))


def sign_chunk(
    secret: bytes,
    chunk: int,
    columns: tuple[NDArray, ...],
    expects: list[str],
    quantities: list[int],
) -> bytes:
    """Sign a speculative chunk's orders, all at once (one HMAC for the batch)."""
    return hmac.digest(secret, chunk_payload(chunk, columns, expects, quantities), "sha256")


def sign_verdict(secret: bytes, chunk: int, approval: bytes) -> bytes:
    """The guardian's signature on a chunk it found valid: only this commits a chunk's
    execution at the broker (a chunk is discarded without one)."""
    return hmac.digest(secret, _canonical.encode(("verdict", chunk, approval)), "sha256")


_NEVER = 2**63 - 1


class ApprovalVerifier:
    """The gateway's side of the capability: verify, check expiry, accept once.

    ``check`` returns ``None`` for a valid approval (and marks it used) or a reason code:
    ``BAD_SIGNATURE``, ``APPROVAL_MISMATCH`` (the order differs from what was signed),
    ``APPROVAL_EXPIRED`` or ``APPROVAL_REPLAYED``.
    """

    __slots__ = ("_secret", "_used", "refused")

    def check_chunk(
        self,
        chunk: int,
        columns: tuple[NDArray, ...],
        expects: list[str],
        quantities: list[int],
        signature: bytes,
    ) -> str | None:
        """Verify a chunk's batch approval and accept it once: None, or a reason code
        (``BAD_SIGNATURE``, ``APPROVAL_REPLAYED``). Expiry is per order, against each
        order's own submission time: the caller checks it."""
        payload = chunk_payload(chunk, columns, expects, quantities)
        expected = hmac.digest(self._secret, payload, "sha256")
        reason: str | None = None
        if not hmac.compare_digest(expected, signature):
            reason = "BAD_SIGNATURE"
        elif signature in self._used:
            reason = "APPROVAL_REPLAYED"
        if reason is not None:
            self.refused[reason] = self.refused.get(reason, 0) + 1
            return reason
        # A chunk's orders expire one by one (the caller checks each): never forgotten.
        self._used[signature] = _NEVER
        return None

    def check_verdict(self, chunk: int, approval: bytes, signature: bytes) -> bool:
        """Whether ``signature`` is the guardian's on committing this chunk's approval."""
        expected = hmac.digest(
            self._secret, _canonical.encode(("verdict", chunk, approval)), "sha256"
        )
        ok = hmac.compare_digest(expected, signature)
        if not ok:
            self.refused["BAD_VERDICT_SIGNATURE"] = self.refused.get("BAD_VERDICT_SIGNATURE", 0) + 1
        return ok

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the approval secret must be at least 16 bytes")
        self._secret = secret
        # Used approvals and when each expires: an expired one is refused as expired
        # before it could be taken for a replay, so it need not be remembered past that.
        self._used: dict[bytes, int] = {}
        self.refused: dict[str, int] = {}

    def check(self, order: SubmitOrder, now_ns: int) -> str | None:
        reason = self._check(order, now_ns)
        if reason is not None:
            self.refused[reason] = self.refused.get(reason, 0) + 1
        return reason

    def _check(self, order: SubmitOrder, now_ns: int) -> str | None:
        a = order.approval
        payload = _approval_payload(
            a.order_id, a.symbol, a.side, a.quantity, a.limit_price, a.expires_ns
        )
        expected = hmac.digest(self._secret, payload, "sha256")
        if not hmac.compare_digest(expected, a.signature):
            return "BAD_SIGNATURE"
        if (
            a.order_id != order.order_id
            or a.symbol != order.symbol
            or a.side != order.side
            or a.quantity != order.quantity
            or a.limit_price != order.limit_price
        ):
            return "APPROVAL_MISMATCH"
        if now_ns > a.expires_ns:
            return "APPROVAL_EXPIRED"
        if a.signature in self._used:
            return "APPROVAL_REPLAYED"
        self._used[a.signature] = a.expires_ns
        return None

    def forget_expired(self, now_ns: int) -> None:
        """Drop the used approvals that have expired (refused as expired from now on)."""
        if any(expires < now_ns for expires in self._used.values()):
            self._used = {s: e for s, e in self._used.items() if e >= now_ns}


# -- SIZING AND DECISIONS ----------------------------------------------------------------


@dataclass(slots=True)
class Decision:
    """The outcome of evaluating one intent."""

    approved: bool
    reason_code: str
    detail: str
    quantity: int = 0


@dataclass(slots=True)
class _Pending:
    symbol: str
    side: str
    remaining: int
    price: float


@dataclass(slots=True)
class RiskBook:
    """What the guardian knows of the account: equity, cash, holdings, pending orders."""

    equity: float
    cash: float
    gross_exposure: float = 0.0
    held: dict[str, int] = field(default_factory=dict)
    pending: dict[str, _Pending] = field(default_factory=dict)

    def pending_quantity(self, symbol: str, side: str) -> int:
        return sum(
            p.remaining for p in self.pending.values() if p.symbol == symbol and p.side == side
        )

    def pending_buy_notional(self) -> float:
        """Notional of all pending buys, at the prices they were approved at."""
        return sum(p.remaining * p.price for p in self.pending.values() if p.side == "BUY")

    def add_pending(
        self, order_id: str, symbol: str, side: str, quantity: int, price: float
    ) -> None:
        self.pending[order_id] = _Pending(symbol, side, quantity, price)

    def on_fill(self, order_id: str, quantity: int) -> None:
        p = self.pending.get(order_id)
        if p is None:
            return
        p.remaining -= quantity
        if p.remaining <= 0:
            del self.pending[order_id]

    def on_done(self, order_id: str) -> None:
        self.pending.pop(order_id, None)


@dataclass(frozen=True, slots=True)
class SizingPolicy:
    """Knobs for sizing inside the constitution (see the module docstring).

    ``entry_limit_buffer``: entries go out as marketable limit orders at
    ``ref_price * (1 + buffer)`` and are sized at that price, so the notional at any fill
    is at most what was approved, whatever the market did since the decision.
    """

    volatile_scale: float = 0.5
    max_gross_exposure: float = 1.0
    entry_limit_buffer: float = 0.01

    def __post_init__(self) -> None:
        if not self.entry_limit_buffer > 0:
            raise ValueError("entry_limit_buffer must be positive: entries are never at market")

    def entry_limits(self, ref_price: np.ndarray) -> np.ndarray:
        """``entry_limit`` of a column of reference prices, with the same arithmetic."""
        raw = ref_price * (1.0 + self.entry_limit_buffer)
        ticks = np.where(raw >= 1.0, 100.0, 10_000.0)
        return np.floor(raw * ticks + 1e-9) / ticks

    def entry_limit(self, ref_price: float) -> float:
        """The entry's limit price, rounded *down* to the tick: whole cents from $1 up
        (US equities' minimum price variation; brokers reject sub-penny limits), a
        hundredth of a cent below. Never above what was sized."""
        raw = ref_price * (1.0 + self.entry_limit_buffer)
        ticks = 100 if raw >= 1.0 else 10_000
        # The epsilon keeps 12.34 from flooring to 12.33 through binary rounding.
        return math.floor(raw * ticks + 1e-9) / ticks


def confidence_scale(confidence: float, floor: float) -> float:
    """0.5 at the confidence floor rising linearly to 1.0 at full confidence."""
    if floor >= 1.0:
        return 1.0
    return 0.5 + 0.5 * min(1.0, max(0.0, (confidence - floor) / (1.0 - floor)))


def entry_target(
    confidence: float,
    regime: str,
    size_scale: float,
    equity: float,
    constitution: Constitution,
    policy: SizingPolicy,
) -> float:
    """The notional an entry is sized to before any room is taken into account: the
    position cap, scaled by confidence, by the Volatile regime and by the rules' size
    factor. ``evaluate_intent`` sizes every entry with it; the shards' shadow book sizes
    the trades a rule prevented with it too."""
    scale = confidence_scale(confidence, constitution.min_confidence_for_trade)
    if regime == "Volatile":
        scale *= policy.volatile_scale
    scale *= min(1.0, max(0.0, size_scale))
    return constitution.max_position_size * equity * scale


def evaluate_intent(
    intent: OrderIntent,
    book: RiskBook,
    constitution: Constitution,
    policy: SizingPolicy,
    *,
    price: float | None = None,
) -> Decision:
    """Approve and size an intent, or deny it with a reason code. Never raises.

    ``price`` is the worst price the order can fill at (an entry's limit price); it
    defaults to the intent's reference price.
    """
    price = intent.ref_price if price is None else price
    if not (math.isfinite(price) and price > 0):
        return Decision(False, "BAD_PRICE", f"reference price {price!r} is not usable")
    if not math.isfinite(book.equity) or book.equity <= 0:
        return Decision(False, "NO_EQUITY", f"equity is {book.equity!r}")
    held = book.held.get(intent.symbol, 0)

    if intent.purpose == "CLOSE":
        if intent.side != "SELL":
            return Decision(False, "LONG_ONLY", "only long positions are traded; a CLOSE sells")
        closable = held - book.pending_quantity(intent.symbol, "SELL")
        quantity = min(intent.quantity or closable, closable)
        if quantity <= 0:
            return Decision(False, "NOTHING_TO_CLOSE", f"{intent.symbol}: nothing left to close")
        return Decision(True, "APPROVED", f"close {quantity} {intent.symbol}", quantity)

    if intent.side != "BUY":
        return Decision(False, "LONG_ONLY", "short selling is not enabled")
    floor = constitution.min_confidence_for_trade
    if not intent.confidence >= floor:  # NaN is refused too
        return Decision(
            False,
            "LOW_CONFIDENCE",
            f"confidence {intent.confidence:.3f} is below the constitution's {floor:.2f}",
        )
    cap = constitution.max_position_size * book.equity
    target = entry_target(
        intent.confidence, intent.regime, intent.size_scale, book.equity, constitution, policy
    )
    committed = (held + book.pending_quantity(intent.symbol, "BUY")) * price
    room = cap - committed
    # Pending buys of every symbol will consume cash and add exposure when they fill.
    pending_buys = book.pending_buy_notional()
    gross_room = policy.max_gross_exposure * book.equity - book.gross_exposure - pending_buys
    cash_room = book.cash - pending_buys
    notional = min(target, room, gross_room, cash_room)
    quantity = math.floor(notional / price) if notional > 0 else 0
    if intent.quantity > 0:
        # A fixed-size request (the breakout strategy): that many shares, or fewer if a
        # limit allows fewer — never more. Computed apart so 100 * p / p cannot floor to 99.
        limit_room = min(room, gross_room, cash_room)
        quantity = min(intent.quantity, math.floor(limit_room / price) if limit_room > 0 else 0)
    if quantity <= 0:
        if room <= min(gross_room, cash_room):
            code, which = "POSITION_LIMIT", "position limit"
        elif gross_room <= cash_room:
            code, which = "EXPOSURE_LIMIT", "gross exposure limit"
        else:
            code, which = "INSUFFICIENT_CASH", "available cash"
        return Decision(
            False,
            code,
            f"{intent.symbol}: no room under the {which} "
            f"(cap {cap:,.0f}, already committed {committed:,.0f})",
        )
    return Decision(
        True,
        "APPROVED",
        f"buy {quantity} {intent.symbol} at ~{price:.2f} (notional {quantity * price:,.0f}, "
        f"{quantity * price / book.equity:.2%} of equity)",
        quantity,
    )


def unsafe_orders(
    *,
    bar: np.ndarray,
    buy: np.ndarray,
    quantity: np.ndarray,
    price: np.ndarray,
    confidence: np.ndarray,
    held: np.ndarray,
    equity: np.ndarray,
    cash: np.ndarray,
    gross: np.ndarray,
    constitution: Constitution,
    policy: SizingPolicy,
) -> np.ndarray:
    """Of a speculative chunk's orders (one row each, in decision order, with the account
    of its decision bar), those that ``evaluate_intent``, deciding bar by bar, might not
    approve in full (a boolean mask).

    Exits must close exactly the position held. Entries get a sufficient condition: each
    one's room under the position, gross-exposure and cash limits, with *all* of its bar's
    entries counted as pending (bar by bar only those decided before it are), must exceed
    its notional by a margin far above rounding. Where that does not hold, the chunk is
    replayed bar by bar, which decides exactly.
    """
    if bar.shape[0] == 0:
        return np.zeros(0, dtype=bool)
    bad = ~(np.isfinite(equity) & (equity > 0))
    sell = ~buy
    bad |= sell & ((held != quantity) | (quantity <= 0))
    notional = np.where(buy, quantity * price, 0.0)
    # All of a bar's entries, as pending buys of each of them (an upper bound).
    bars, inverse = np.unique(bar, return_inverse=True)
    del bars
    pending = np.bincount(inverse, weights=notional)[inverse]
    with np.errstate(invalid="ignore"):
        cap = constitution.max_position_size * equity
        room = cap - held * price
        gross_room = policy.max_gross_exposure * equity - gross - pending
        cash_room = cash - pending
        slack = np.minimum(np.minimum(room, gross_room), cash_room) - notional
        tolerance = (
            1e-9 * (np.abs(equity) + np.abs(cash) + np.abs(gross) + pending + notional) + 1e-6
        )
        entry_bad = (
            ~(np.isfinite(price) & (price > 0))
            | (quantity <= 0)
            | (held < 0)
            | ~(confidence >= constitution.min_confidence_for_trade)
            | ~(slack > tolerance)
        )
    bad |= buy & entry_bad
    return bad

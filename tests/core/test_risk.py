"""Sizing inside the constitution, and the signed approval capability."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sovereign.core.constitution import Constitution, ConstitutionError
from sovereign.core.risk import (
    ApprovalVerifier,
    RiskBook,
    SizingPolicy,
    confidence_scale,
    evaluate_intent,
)
from tests.kit import DAY_NS, SECRET, intent, submit

C = Constitution()
P = SizingPolicy()


def book(equity: float = 100_000.0, **kw: object) -> RiskBook:
    return RiskBook(equity=equity, cash=equity, **kw)  # type: ignore[arg-type]


def test_low_confidence_is_denied_with_a_reason_code() -> None:
    d = evaluate_intent(intent("AAPL", confidence=0.39), book(), C, P)
    assert not d.approved and d.reason_code == "LOW_CONFIDENCE"


def test_full_confidence_sizes_to_five_percent_rounded_down() -> None:
    d = evaluate_intent(intent("AAPL", confidence=1.0, ref_price=333.0), book(), C, P)
    assert d.approved
    assert d.quantity == 15  # floor(5000 / 333)


def test_confidence_and_volatile_regime_shrink_the_size() -> None:
    at_floor = evaluate_intent(intent("AAPL", confidence=0.4, ref_price=10.0), book(), C, P)
    assert at_floor.quantity == 250  # half of the 500-share cap
    volatile = evaluate_intent(
        intent("AAPL", confidence=1.0, ref_price=10.0, regime="Volatile"), book(), C, P
    )
    assert volatile.quantity == 250
    assert confidence_scale(0.7, 0.4) == pytest.approx(0.75)


def test_held_and_pending_count_against_the_cap() -> None:
    b = book(held={"AAPL": 300})
    b.add_pending("x", "AAPL", "BUY", 100, 10.0)
    d = evaluate_intent(intent("AAPL", confidence=1.0, ref_price=10.0), b, C, P)
    assert d.quantity == 100  # cap 500 - 300 held - 100 pending
    b.add_pending("y", "AAPL", "BUY", 100, 10.0)
    d = evaluate_intent(intent("AAPL", confidence=1.0, ref_price=10.0), b, C, P)
    assert not d.approved and d.reason_code == "POSITION_LIMIT"


def test_cash_and_gross_exposure_limit_entries() -> None:
    b = RiskBook(equity=100_000.0, cash=1_000.0)
    d = evaluate_intent(intent("AAPL", confidence=1.0, ref_price=10.0), b, C, P)
    assert d.quantity == 100
    b = RiskBook(equity=100_000.0, cash=100_000.0, gross_exposure=99_990.0)
    d = evaluate_intent(intent("AAPL", confidence=1.0, ref_price=10.0), b, C, P)
    assert d.quantity == 1


def test_exits_are_approved_up_to_what_is_held_and_not_already_being_sold() -> None:
    b = book(held={"AAPL": 50})
    d = evaluate_intent(intent("AAPL", side="SELL", purpose="CLOSE", quantity=80), b, C, P)
    assert d.approved and d.quantity == 50
    b.add_pending("s", "AAPL", "SELL", 50, 10.0)
    d = evaluate_intent(intent("AAPL", side="SELL", purpose="CLOSE", quantity=50), b, C, P)
    assert not d.approved and d.reason_code == "NOTHING_TO_CLOSE"


def test_short_selling_is_refused() -> None:
    d = evaluate_intent(intent("AAPL", side="SELL", purpose="OPEN"), book(), C, P)
    assert not d.approved and d.reason_code == "LONG_ONLY"


@settings(max_examples=300)
@given(
    equity=st.floats(1_000, 1e8),
    price=st.floats(0.5, 5_000),
    confidence=st.floats(0.0, 1.0),
    held=st.integers(0, 10_000),
    pending=st.integers(0, 10_000),
    regime=st.sampled_from(["TrendingUp", "Volatile", "Ranging"]),
)
def test_notional_after_fill_never_exceeds_the_cap_at_the_decision_price(
    equity: float, price: float, confidence: float, held: int, pending: int, regime: str
) -> None:
    b = book(equity, held={"X": held})
    b.add_pending("p", "X", "BUY", pending, price)
    d = evaluate_intent(intent("X", confidence=confidence, ref_price=price, regime=regime), b, C, P)
    if d.approved:
        assert (held + pending + d.quantity) * price <= C.max_position_size * equity + 1e-6
        assert confidence >= C.min_confidence_for_trade


# -- APPROVALS --------------------------------------------------------------------------


def test_valid_approval_passes_once_and_replay_is_refused() -> None:
    v = ApprovalVerifier(SECRET)
    order = submit("o1", "AAPL", "BUY", 10, now=0)
    assert v.check(order, now_ns=0) is None
    assert v.check(order, now_ns=0) == "APPROVAL_REPLAYED"


def test_the_signature_is_hmac_sha256_over_the_msgpack_payload() -> None:
    # Pinned independently of sign_approval: what the gateway (or an auditor) recomputes.
    import hashlib
    import hmac

    order = submit("o1", "AAPL", "BUY", 10, now=0, ttl_ns=DAY_NS)
    a = order.approval
    payload = msgspec.msgpack.encode(
        (a.order_id, a.symbol, a.side, a.quantity, a.limit_price, a.expires_ns)
    )
    assert a.signature == hmac.new(SECRET, payload, hashlib.sha256).digest()


def test_expired_approval_is_refused() -> None:
    v = ApprovalVerifier(SECRET)
    order = submit("o1", "AAPL", "BUY", 10, now=0, ttl_ns=DAY_NS)
    assert v.check(order, now_ns=DAY_NS + 1) == "APPROVAL_EXPIRED"


def test_approval_signed_with_another_secret_is_refused() -> None:
    v = ApprovalVerifier(SECRET)
    order = submit("o1", "AAPL", "BUY", 10, secret=b"someone-else-entirely-0000")
    assert v.check(order, now_ns=0) == "BAD_SIGNATURE"


FIELDS = st.sampled_from(["order_id", "symbol", "side", "quantity", "limit_price"])


@settings(max_examples=300)
@given(field=FIELDS, data=st.data())
def test_an_order_that_differs_from_what_was_signed_never_passes(
    field: str, data: st.DataObject
) -> None:
    v = ApprovalVerifier(SECRET)
    order = submit("o1", "AAPL", "BUY", 10, order_type="LIMIT", limit_price=100.0)
    changes: dict[str, object] = {
        "order_id": data.draw(st.text(min_size=1).filter(lambda s: s != "o1")),
        "symbol": data.draw(st.text(min_size=1).filter(lambda s: s != "AAPL")),
        "side": "SELL",
        "quantity": data.draw(st.integers(1, 10**6).filter(lambda q: q != 10)),
        "limit_price": data.draw(st.floats(0.01, 1e5).filter(lambda p: p != 100.0)),
    }
    tampered = msgspec.structs.replace(order, **{field: changes[field]})
    assert v.check(tampered, now_ns=0) is not None


@settings(max_examples=300)
@given(sig=st.binary(min_size=0, max_size=64), flip=st.integers(0, 31))
def test_tampered_signatures_never_pass(sig: bytes, flip: int) -> None:
    v = ApprovalVerifier(SECRET)
    order = submit("o1", "AAPL", "BUY", 10)
    good = bytearray(order.approval.signature)
    good[flip] ^= 0x01
    for bad in (sig, bytes(good)):
        forged = msgspec.structs.replace(
            order, approval=msgspec.structs.replace(order.approval, signature=bad)
        )
        assert v.check(forged, now_ns=0) == "BAD_SIGNATURE"


# -- CONSTITUTION -----------------------------------------------------------------------


def test_constitution_can_only_be_tightened() -> None:
    c = Constitution().tightened(max_position_size=0.02, min_confidence_for_trade=0.5)
    assert c.max_position_size == 0.02 and c.min_confidence_for_trade == 0.5
    with pytest.raises(ConstitutionError, match=r"max_position_size = 0.1 .* at most 0.05"):
        Constitution().tightened(max_position_size=0.1)
    with pytest.raises(ConstitutionError, match=r"min_confidence_for_trade .* at least 0.4"):
        Constitution().tightened(min_confidence_for_trade=0.3)
    with pytest.raises(ConstitutionError, match="not a constitutional limit"):
        Constitution().tightened(forbidden_modifications=0)


def test_fingerprint_is_stable_and_changes_with_the_limits() -> None:
    assert Constitution().fingerprint == Constitution().fingerprint
    assert len(Constitution().fingerprint) == 64
    assert Constitution().tightened(max_drawdown=0.05).fingerprint != Constitution().fingerprint

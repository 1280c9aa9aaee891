"""The guardian's check of a speculative chunk is sound: whenever it passes a chunk's
orders, deciding them one at a time (``evaluate_intent`` with the book as it stands at
each decision) approves every one of them in full. And a chunk's batch approval verifies
only unchanged, once."""

from __future__ import annotations

import numpy as np
from hypothesis import event, given, settings
from hypothesis import strategies as st

from sovereign.core.constitution import Constitution
from sovereign.core.risk import (
    ApprovalVerifier,
    RiskBook,
    SizingPolicy,
    evaluate_intent,
    sign_chunk,
    unsafe_orders,
)
from sovereign.domain.regimes import regime_name
from sovereign.messages import NDArray, OrderIntent

C = Constitution()
POLICY = SizingPolicy(entry_limit_buffer=0.5)


@st.composite
def chunks(draw):
    n_bars = draw(st.integers(1, 4))
    rows = []
    for b in range(n_bars):
        equity = draw(st.floats(1_000, 2_000_000))
        cash = equity * draw(st.floats(-0.2 if draw(st.booleans()) else 0.05, 1.0))
        gross = equity * draw(st.floats(0.0, 1.3 if draw(st.booleans()) else 0.9))
        symbols = draw(st.lists(st.sampled_from("ABCDEFGH"), unique=True, max_size=6))
        # Often near the limits: notionals around the 5 % cap and the cash left.
        roomy = draw(st.booleans())
        for sym in sorted(symbols):
            buy = draw(st.booleans())
            held = 0 if buy and draw(st.integers(0, 3)) else draw(st.integers(0, 300))
            exact = draw(st.integers(0, 5)) > 0
            qty = draw(st.integers(1, 300)) if buy else (held if exact else held + 1)
            rows.append(
                dict(
                    bar=b,
                    symbol=sym,
                    buy=buy,
                    quantity=qty,
                    price=equity * draw(st.floats(0.0001, 0.06)) / max(qty, 1)
                    if roomy
                    else draw(st.floats(0.5, 500)),
                    confidence=draw(st.floats(0.3, 1.0)),
                    held=held,
                    equity=equity,
                    cash=cash,
                    gross=gross,
                )
            )
    return rows


def one_at_a_time(rows) -> bool:
    """Bar by bar, exits first then by symbol: is every order approved in full?"""
    decided = sized_one_at_a_time(rows)
    return all(q == r["quantity"] for (q, _), r in zip(decided, rows, strict=True))


@settings(max_examples=500, deadline=None)
@given(chunks())
def test_a_chunk_that_passes_is_approved_in_full_one_order_at_a_time(rows) -> None:
    rows = sorted(rows, key=lambda r: (r["bar"], r["buy"], r["symbol"]))
    col = {k: np.array([r[k] for r in rows]) for k in rows[0]} if rows else None
    if col is None:
        return
    unsafe = unsafe_orders(
        bar=col["bar"].astype(np.int64),
        buy=col["buy"].astype(bool),
        quantity=col["quantity"].astype(np.int64),
        price=col["price"].astype(float),
        confidence=col["confidence"].astype(float),
        held=col["held"].astype(np.int64),
        equity=col["equity"].astype(float),
        cash=col["cash"].astype(float),
        gross=col["gross"].astype(float),
        constitution=C,
        policy=POLICY,
    )
    if not unsafe.any():
        assert one_at_a_time(rows)


def test_the_check_is_not_vacuous() -> None:
    """A roomy account passes (so chunks do run), a tight one does not."""
    args = dict(
        bar=np.array([0, 0]),
        buy=np.array([True, False]),
        quantity=np.array([100, 50]),
        price=np.array([20.0, 30.0]),
        confidence=np.array([1.0, 1.0]),
        held=np.array([0, 50]),
        cash=np.array([1e6, 1e6]),
        gross=np.array([0.0, 0.0]),
        constitution=C,
        policy=POLICY,
    )
    assert unsafe_orders(equity=np.array([1e6, 1e6]), **args).tolist() == [False, False]
    assert unsafe_orders(equity=np.array([30_000.0, 30_000.0]), **args).tolist() == [True, False]


@settings(max_examples=200, deadline=None)
@given(
    st.binary(min_size=1, max_size=64),
    st.integers(0, 7),
    st.integers(0, 255),
)
def test_a_batch_approval_verifies_only_unchanged_and_once(data, which, flip) -> None:
    secret = b"k" * 32
    columns = (
        NDArray.from_numpy(np.array([b"AAA", b"BBB"], dtype="S3")),
        NDArray.from_numpy(np.array([0, 1], dtype="<i8")),
        NDArray.from_numpy(np.array([100, 100], dtype="<i8")),
        NDArray.from_numpy(np.array([1.5, np.nan])),
        NDArray.from_numpy(np.frombuffer(data.ljust(8, b"\0")[:8], dtype="<i8").copy()),
    )
    expects, quantities = ["AAA-1"], [100]
    signature = sign_chunk(secret, 7, columns, expects, quantities)
    verifier = ApprovalVerifier(secret)
    # Tampered: one byte of one column changed, or the expectations, or the chunk number.
    tampered = list(columns)
    if which < len(columns):
        col = tampered[which]
        raw = bytearray(col.data)
        raw[flip % len(raw)] ^= 1 + flip % 255
        tampered[which] = NDArray(dtype=col.dtype, shape=col.shape, data=bytes(raw))
        forged = verifier.check_chunk(7, tuple(tampered), expects, quantities, signature)
        assert forged == "BAD_SIGNATURE"
    elif which == 5:
        assert verifier.check_chunk(7, columns, ["AAA-2"], quantities, signature) == "BAD_SIGNATURE"
    elif which == 6:
        # The quantity a working order is expected to fill is signed too.
        assert verifier.check_chunk(7, columns, expects, [99], signature) == "BAD_SIGNATURE"
    else:
        assert verifier.check_chunk(8, columns, expects, quantities, signature) == "BAD_SIGNATURE"
    assert verifier.check_chunk(7, columns, expects, quantities, signature) is None
    again = verifier.check_chunk(7, columns, expects, quantities, signature)
    assert again == "APPROVAL_REPLAYED"


def sized_one_at_a_time(rows, regimes=None) -> list[tuple[int, str]]:
    """Bar by bar, exits first then by symbol: what the guardian approves of each order
    (the quantity, 0 if denied) and its reason code, in the rows' order."""
    out: dict[int, tuple[int, str]] = {}
    for b in sorted({r["bar"] for r in rows}):
        decisions = [(k, r) for k, r in enumerate(rows) if r["bar"] == b]
        first = decisions[0][1]
        book = RiskBook(equity=first["equity"], cash=first["cash"], gross_exposure=first["gross"])
        book.held = {r["symbol"]: r["held"] for _, r in decisions}
        for k, r in sorted(decisions, key=lambda x: (x[1]["buy"], x[1]["symbol"])):
            intent = OrderIntent(
                msg_id=f"i{k}",
                ts_event=0,
                ts_init=0,
                intent_id=f"{r['symbol']}-{k}",
                shard=0,
                symbol=r["symbol"],
                side="BUY" if r["buy"] else "SELL",
                purpose="OPEN" if r["buy"] else "CLOSE",
                quantity=r["quantity"],
                ref_price=r["price"],
                confidence=r["confidence"],
                regime="Unknown" if regimes is None else regime_name(regimes[k]),
                reason="test",
                size_scale=r.get("size_scale", 1.0),
            )
            d = evaluate_intent(intent, book, C, POLICY, price=r["price"])
            q = d.quantity if d.approved else 0
            out[k] = (q, d.reason_code)
            if q:
                book.add_pending(intent.intent_id, r["symbol"], intent.side, q, r["price"])
    return [out[k] for k in range(len(rows))]


@settings(max_examples=300, deadline=None)
@given(chunks(), st.data())
def test_the_guardian_sizes_a_chunk_as_it_decides_one_order_at_a_time(rows, data) -> None:
    """Speculated with the guardian's sizes (an entry cut or denied as it decides), a
    chunk passes the guardian's check, which counts each denial's reason as bar by bar
    does; speculated otherwise, it fails at the first entry sized otherwise and hands
    back the sizes of every entry on that path."""
    from types import SimpleNamespace

    from sovereign.core.risk_chunks import PendingChunk, _chunk_problem

    rows = sorted(rows, key=lambda r: (r["bar"], r["buy"], r["symbol"]))
    rows = [r for r in rows if r["buy"] or r["held"] == r["quantity"] > 0]  # exits in full
    rows = [r for r in rows if r["held"] == 0 or not r["buy"]]  # a shard enters when flat
    if not rows:
        return
    # Some entries ask the guardian to size them (no quantity), in any regime.
    for r in rows:
        if r["buy"] and data.draw(st.booleans()):
            r["quantity"] = 0
    regimes = [data.draw(st.sampled_from([0, 1, 2, 3, 255])) for _ in rows]
    # The rules scale some entries down (the baseline strategy's ``ScaleSize``).
    for r in rows:
        r["size_scale"] = data.draw(st.sampled_from([1.0, 1.0, 0.5, 0.25]))
    truth = sized_one_at_a_time(rows, regimes)
    speculated = [
        q if data.draw(st.integers(0, 3)) else data.draw(st.integers(0, 400)) for q, _ in truth
    ]
    speculated = [s if r["buy"] else r["quantity"] for s, r in zip(speculated, rows, strict=True)]
    col = {k: np.array([r[k] for r in rows]) for k in rows[0]}
    buy = col["buy"].astype(bool)
    quantity = np.array(speculated, dtype=np.int64)
    pending = PendingChunk(
        chunk=1,
        signature=b"",
        bar=col["bar"].astype(np.int64),
        buy=buy,
        quantity=quantity,
        price=col["price"].astype(float),
        confidence=col["confidence"].astype(float),
        symbol=np.array([r["symbol"].encode() for r in rows]),
        asked=col["quantity"].astype(np.int64),
        sent=quantity > 0,
        regime=np.array(regimes, dtype=np.uint8),
        size_scale=np.array([r["size_scale"] for r in rows]),
    )
    n_bars = int(col["bar"].max()) + 1
    per_bar = {r["bar"]: r for r in rows}
    path = {
        k: NDArray.from_numpy(
            np.array([per_bar[b][k] if b in per_bar else 1.0 for b in range(n_bars)])
        )
        for k in ("equity", "cash", "gross")
    }
    ex = SimpleNamespace(
        equity=path["equity"],
        cash=path["cash"],
        gross_exposure=path["gross"],
        held=NDArray.from_numpy(col["held"].astype(np.int64)[quantity > 0]),
        day=NDArray.from_numpy(np.zeros(n_bars, np.int64)),
        session_dates=["2026-01-02"],
    )
    machine = SimpleNamespace(observe_path=lambda *a: -1)
    engine = SimpleNamespace(constitution=C, policy=POLICY, machine=machine)
    ts = np.arange(n_bars, dtype=np.int64)
    problem, bar, sized, denials = _chunk_problem(engine, pending, ex, ts)  # type: ignore[arg-type]
    wrong = [k for k, (q, _) in enumerate(truth) if rows[k]["buy"] and q != speculated[k]]
    event("valid" if not wrong else "sized otherwise")
    if not wrong:
        assert problem == "", problem
        want: dict[str, int] = {}
        for (q, code), r in zip(truth, rows, strict=True):
            if r["buy"] and q == 0:
                want[code] = want.get(code, 0) + 1
        assert denials == want
        event("with denials" if want else "no denials")
    else:
        assert problem == "the guardian would size an entry otherwise"
        assert bar == rows[wrong[0]]["bar"]
        assert sized is not None
        entries = [k for k, r in enumerate(rows) if r["buy"]]
        got = sized["sized_quantities"].to_numpy().tolist()
        # On the speculated path, up to the first wrong bar, the sizes are bar by bar's.
        for k, q in zip(entries, got, strict=True):
            if rows[k]["bar"] <= bar:
                assert q == truth[k][0]

"""The risk engine on its own: the guardian's decisions with no store, audit log or actor.

The audit log is a list (the engine's injected ``record``), and what the engine sends is
checked the way the gateway checks it (``ApprovalVerifier``).
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from sovereign.core.constitution import Constitution
from sovereign.core.guardian import TradingState
from sovereign.core.risk import ApprovalVerifier, SizingPolicy
from sovereign.core.risk_engine import RiskEngine
from sovereign.messages import (
    BookSnapshot,
    CancelOrder,
    OrderIntent,
    RiskVerdict,
    RuleEvaluationRequested,
    SubmitOrder,
    TradingStateChanged,
)
from sovereign.messages.account import BookOrder, BookPosition
from sovereign.messages.base import IdSource
from tests.kit import SECRET, cash_account

T0 = 1_704_205_800 * 1_000_000_000
C = Constitution()


class Engine:
    """A risk engine with its effects kept in lists."""

    def __init__(self) -> None:
        self.audit: list[tuple[str, int, dict[str, object]]] = []
        self.counts: dict[str, int] = {}
        self.engine = RiskEngine(
            C,
            SizingPolicy(),
            SECRET,
            300,
            ids=IdSource("guardian/0"),
            count=self._count,
            record=self._record,
            fingerprint=C.fingerprint,
            shard_of={"AAA": 0, "BBB": 1},
        )

    def _count(self, key: str, n: int) -> None:
        self.counts[key] = self.counts.get(key, 0) + n

    def _record(self, action: str, ts: int, payload: dict[str, object]) -> tuple[int, str]:
        self.audit.append((action, ts, payload))
        return len(self.audit), f"h{len(self.audit)}"

    def account(self, equity: float, ts: int = T0, date: str = "2024-01-02") -> list[Any]:
        msg = cash_account(ts, equity, date)
        self.engine.account_seen(msg)
        return self.engine.observe_account(msg)

    def book(self, held: dict[str, int], working: list[BookOrder] | None = None) -> None:
        positions = [BookPosition(s, q, 100.0, 100.0) for s, q in held.items()]
        self.engine.on_broker_event(
            BookSnapshot(
                msg_id="book", ts_event=T0, ts_init=T0, positions=positions, working=working or []
            )
        )


def intent(symbol: str, purpose: str, quantity: int = 0, confidence: float = 0.9) -> OrderIntent:
    return OrderIntent(
        msg_id=f"i-{symbol}-{purpose}",
        ts_event=T0,
        ts_init=T0,
        intent_id=f"{symbol}-{purpose}",
        shard=0,
        symbol=symbol,
        side="BUY" if purpose == "OPEN" else "SELL",
        purpose=purpose,  # type: ignore[arg-type]
        quantity=quantity,
        ref_price=100.0,
        confidence=confidence,
        regime="TrendingUp",
        reason="test",
        stop_price=95.0 if purpose == "OPEN" else None,
    )


def verdicts(out: list[Any]) -> dict[str, RiskVerdict]:
    return {m.intent_id: m for m in out if isinstance(m, RiskVerdict)}


def test_nothing_is_approved_before_the_account_and_the_book_are_known() -> None:
    e = Engine()
    out = e.engine.decide_all([intent("AAA", "OPEN")])
    assert verdicts(out)["AAA-OPEN"].reason_code == "NOT_STARTED"
    e.account(100_000.0)
    assert e.audit[0][0] == "trading_state_created"
    out = e.engine.decide_all([intent("AAA", "OPEN")])
    assert verdicts(out)["AAA-OPEN"].reason_code == "RECONCILING"


def test_an_approved_entry_is_sized_under_the_cap_and_carries_an_approval_the_gateway_accepts():
    e = Engine()
    e.account(100_000.0)
    e.book({})
    out = e.engine.decide_all([intent("AAA", "OPEN")])
    v = verdicts(out)["AAA-OPEN"]
    assert v.approved and v.quantity > 0
    (submit,) = [m for m in out if isinstance(m, SubmitOrder)]
    assert submit.limit_price is not None
    assert submit.quantity * submit.limit_price <= C.max_position_size * 100_000.0
    verifier = ApprovalVerifier(SECRET)
    assert verifier.check(submit, T0) is None
    assert verifier.check(submit, T0) is not None  # an approval is used once
    # What it approved is pending in its book: a second entry of the same symbol finds no room.
    assert e.engine.book.pending_quantity("AAA", "BUY") == submit.quantity


def test_a_drawdown_halts_cancels_everything_working_and_flattens_every_position() -> None:
    e = Engine()
    e.account(100_000.0)
    working = [BookOrder("AAA-OPEN", "AAA", "BUY", 10, 101.0)]
    e.book({"BBB": 40}, working)
    out = e.account(89_000.0, ts=T0 + 60_000_000_000)
    assert e.engine.machine is not None
    assert e.engine.machine.state is TradingState.HALTED
    changes = [m for m in out if isinstance(m, TradingStateChanged)]
    assert [c.state for c in changes] == ["HALTED"]
    assert [m.order_id for m in out if isinstance(m, CancelOrder)] == ["AAA-OPEN"]
    (flatten,) = [m for m in out if isinstance(m, SubmitOrder)]
    assert (flatten.symbol, flatten.side, flatten.quantity) == ("BBB", "SELL", 40)
    assert flatten.shard == 1
    # The halt is audited, and the state names the audit entry.
    assert e.audit[-1][0] == "trading_state" and e.audit[-1][2]["to"] == "HALTED"
    assert e.engine.machine.s.audit_seq == len(e.audit)
    # Entries are refused; the flatten order already sells everything held.
    out = e.engine.decide_all([intent("AAA", "OPEN"), intent("BBB", "CLOSE", 5)])
    v = verdicts(out)
    assert not v["AAA-OPEN"].approved and v["AAA-OPEN"].reason_code == "HALTED"
    assert v["BBB-CLOSE"].reason_code == "NOTHING_TO_CLOSE"


def test_losing_streaks_ask_for_a_rule_evaluation_in_the_order_trades_closed() -> None:
    e = Engine()
    e.account(100_000.0)
    closed = [(T0 + k, -10.0, f"t{k}", f"m{k}") for k in (3, 1, 2)]
    out = e.engine.trades_closed(closed)
    (request,) = [m for m in out if isinstance(m, RuleEvaluationRequested)]
    assert request.trade_ids == ["t1", "t2", "t3"]
    assert request.correlation_id == "m3"


def test_a_tampered_constitution_refuses_every_decision() -> None:
    e = Engine()
    e.account(100_000.0)
    e.book({"AAA": 5})
    e.engine.fingerprint = "not the constitution's"
    out = e.engine.decide_all([intent("AAA", "CLOSE", 5), intent("BBB", "OPEN")])
    assert {v.reason_code for v in verdicts(out).values()} == {"CONSTITUTION_TAMPERED"}
    assert not [m for m in out if isinstance(m, SubmitOrder)]


@settings(max_examples=60, deadline=None)
@given(
    path=st.lists(st.floats(50_000.0, 150_000.0), min_size=1, max_size=12),
    asks=st.lists(
        st.tuples(
            st.sampled_from(["AAA", "BBB"]),
            st.sampled_from(["OPEN", "CLOSE"]),
            st.integers(0, 500),
            st.floats(0.0, 1.0),
        ),
        max_size=20,
    ),
)
def test_once_halted_no_entry_is_ever_approved_whatever_the_account_does(
    path: list[float], asks: list[tuple[str, str, int, float]]
) -> None:
    e = Engine()
    e.account(100_000.0)
    e.book({"AAA": 10})
    e.account(85_000.0, ts=T0 + 1)  # 15 % down: beyond the 10 % hard stop
    for k, equity in enumerate(path):
        # Equity recovering, new days, new highs: none of it lifts a halt.
        e.account(equity, ts=T0 + 86_400_000_000_000 * (k + 1), date=f"2024-02-{k + 1:02d}")
        out = e.engine.decide_all(
            [intent(s, p, q if p == "CLOSE" else 0, c) for s, p, q, c in asks]
        )
        for m in out:
            if isinstance(m, SubmitOrder):
                assert m.side == "SELL"
        for v in verdicts(out).values():
            if v.intent_id.endswith("OPEN"):
                assert not v.approved
        assert e.engine.machine is not None
        assert e.engine.machine.state is TradingState.HALTED

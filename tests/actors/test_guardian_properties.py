"""Property tests: the constitution holds under random equity paths and order streams.

The real GuardianActor and GatewayActor with the real sim broker, driven step by step with
hypothesis-generated prices (including crashes) and intents (including nonsense), the way
the engine drives them. After every step the invariants are checked on what the broker
actually filled.
"""

from __future__ import annotations

import functools
import math
import tempfile
from dataclasses import dataclass, field

import msgspec
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sovereign.actors.gateway import GatewayActor
from sovereign.actors.guardian import GuardianActor
from sovereign.brokers.sim import SimBroker
from sovereign.config import SimConfig
from sovereign.core.constitution import Constitution
from sovereign.core.portfolio import Portfolio
from sovereign.core.risk import SizingPolicy
from sovereign.memory.stores import Stores
from sovereign.messages import (
    NDArray,
    OrderFilled,
    OrderIntent,
    SessionStarted,
    SubmitOrder,
    TradingStateChanged,
)
from tests.kit import SECRET, bars

CAPITAL = 100_000.0
DAY_NS = 86_400 * 1_000_000_000
T0 = 1_704_205_800 * 1_000_000_000  # 2024-01-02 14:30 UTC: a Tuesday, 09:30 in New York
SYMBOLS = ["AAA", "BBB", "CCC", "DDD", "EEE", "FFF"]
C = Constitution()


@dataclass
class Harness:
    n: int
    bars_per_session: int
    guardian: GuardianActor
    gateway: GatewayActor
    prices: np.ndarray
    prev_acks: list = field(default_factory=list)
    seq: int = 0

    @classmethod
    def build(cls, state_dir: str, n: int, bars_per_session: int) -> Harness:
        guardian = GuardianActor(
            0,
            C,
            SizingPolicy(),
            SECRET,
            approval_ttl_s=7 * 86_400,
            stores=Stores(state_dir),
            state_scope="run/property",
            shard_of={s: 0 for s in SYMBOLS},
        )
        broker = functools.partial(
            SimBroker, SimConfig(max_volume_share=1.0), CAPITAL, position_cap=C.max_position_size
        )
        gateway = GatewayActor(0, broker, SECRET)
        start = SessionStarted(
            msg_id="start",
            ts_event=T0,
            ts_init=T0,
            run_id="property",
            mode="backtest",
            symbols=NDArray.from_numpy(np.array([s.encode() for s in SYMBOLS[:n]])),
            initial_capital=CAPITAL,
        )
        guardian.receive([start])
        gateway.receive([start])
        return cls(n, bars_per_session, guardian, gateway, np.full(n, 100.0))

    def ts(self, step: int) -> int:
        day, k = divmod(step, self.bars_per_session)
        return T0 + day * DAY_NS + k * 60_000_000_000

    def step(self, step: int, gaps: list[float], moves: list[float], wishes: list[tuple]):
        """One bar: prices gap at the open then move to the close; then the intents."""
        prev = self.prices
        opens = prev * np.exp(np.array(gaps[: self.n]))
        closes = opens * np.exp(np.array(moves[: self.n]))
        highs = np.maximum(opens, closes) * 1.001
        lows = np.minimum(opens, closes) * 0.999
        ts = self.ts(step)
        batch = bars(
            ts, SYMBOLS[: self.n], opens, highs, lows, closes, [1e9] * self.n, interval_s=60
        )
        self.prices = closes
        gw_out = self.gateway.receive([batch])
        intents = [self.intent(ts, batch.ts_event, w) for w in wishes]
        g_out = self.guardian.receive([*self.prev_acks, *gw_out, *intents])
        acks = self.gateway.receive(g_out)
        self.prev_acks = acks
        return opens, gw_out, g_out

    def intent(self, ts: int, now: int, wish: tuple) -> OrderIntent:
        i, kind, confidence, price_factor, qty = wish
        i %= self.n
        self.seq += 1
        side, purpose = {
            0: ("BUY", "OPEN"),
            1: ("SELL", "CLOSE"),
            2: ("SELL", "OPEN"),
            3: ("BUY", "CLOSE"),
        }[kind]
        return OrderIntent(
            msg_id=f"i{self.seq}",
            ts_event=now,
            ts_init=now,
            intent_id=f"{SYMBOLS[i]}-{self.seq}",
            shard=0,
            symbol=SYMBOLS[i],
            side=side,
            purpose=purpose,
            quantity=qty,
            ref_price=float(self.prices[i]) * price_factor,
            confidence=confidence,
            regime="TrendingUp",
            reason="property",
        )


wish = st.tuples(
    st.integers(0, 5),
    st.sampled_from([0, 0, 0, 1, 1, 2, 3]),
    st.one_of(st.just(1.0), st.floats(0.0, 1.0)),
    st.sampled_from([1.0, 1.0, 1.0, 0.5, 0.9, 1.1, 3.0, 0.001]),
    st.integers(0, 10_000),
)
step_data = st.tuples(
    st.lists(st.one_of(st.floats(-0.02, 0.02), st.floats(-0.6, 0.3)), min_size=6, max_size=6),
    st.lists(st.floats(-0.05, 0.05), min_size=6, max_size=6),
    st.lists(wish, max_size=5),
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    n=st.integers(1, 6),
    bars_per_session=st.integers(1, 4),
    steps=st.lists(step_data, min_size=5, max_size=40),
)
def test_the_constitution_holds_under_random_paths_and_order_streams(
    n: int, bars_per_session: int, steps: list
) -> None:
    with tempfile.TemporaryDirectory() as state_dir:
        h = Harness.build(state_dir, n, bars_per_session)
        mirror = Portfolio(CAPITAL)
        blocked_session: int | None = None
        halted = False
        for k, (gaps, moves, wishes) in enumerate(steps):
            session = k // bars_per_session
            opens, gw_out, g_out = h.step(k, gaps, moves, wishes)
            # Positions are worth their open when the fills happen.
            for j, s in enumerate(SYMBOLS[:n]):
                mirror.mark(s, float(opens[j]))
            for fill in (m for m in gw_out if isinstance(m, OrderFilled)):
                mirror.apply_fill(
                    fill.symbol, fill.side, fill.quantity, fill.price, fill.commission
                )
                if fill.side == "BUY":
                    assert not halted, "a position was added after the halt"
                    assert blocked_session != session, "a position opened after a 3 % day"
                    notional = mirror.quantity(fill.symbol) * fill.price
                    assert notional <= C.max_position_size * mirror.equity * (1 + 1e-9), (
                        f"{fill.symbol}: {notional:,.2f} > 5 % of {mirror.equity:,.2f}"
                    )
            for change in (m for m in g_out if isinstance(m, TradingStateChanged)):
                if change.state == "HALTED":
                    halted = True
                elif change.state == "NO_NEW_POSITIONS":
                    blocked_session = session
            submits = [m for m in g_out if isinstance(m, SubmitOrder)]
            if halted:
                assert all(o.side == "SELL" for o in submits)
            if blocked_session == session:
                assert all(o.purpose == "CLOSE" for o in submits)
            # The guardian's view of the trading state is the one it persisted.
            assert h.guardian.machine is not None
            assert math.isfinite(h.guardian.machine.s.high_water_mark)
        if halted:
            assert h.guardian.machine.state.value == "HALTED"


def test_a_crash_halts_cancels_and_flattens(tmp_path) -> None:
    h = Harness.build(str(tmp_path), 6, 1)
    calm = ([0.0] * 6, [0.001] * 6)
    buy_all = [(i, 0, 1.0, 1.0, 0) for i in range(6)]
    for k in range(3):
        h.step(k, *calm, buy_all)
    held_before = dict(h.guardian.book.held)
    assert sum(held_before.values()) > 0
    _, _, g_out = h.step(3, [-0.5] * 6, [0.0] * 6, buy_all)  # a 40 % gap down everywhere
    changes = [m for m in g_out if isinstance(m, TradingStateChanged)]
    assert [c.state for c in changes] == ["HALTED"]
    submits = [m for m in g_out if isinstance(m, SubmitOrder)]
    assert submits and all(o.side == "SELL" and o.order_id.startswith("G-") for o in submits)
    h.step(4, [0.0] * 6, [0.0] * 6, buy_all)
    assert sum(h.guardian.book.held.values()) == 0
    # And it stays halted: nothing but denials for new entries.
    _, _, g_out = h.step(5, [0.1] * 6, [0.1] * 6, buy_all)
    assert not [m for m in g_out if isinstance(m, SubmitOrder)]
    assert h.guardian.reasons["HALTED"] >= 6


# -- APPROVALS AT THE GATEWAY -----------------------------------------------------------

approval_fields = st.fixed_dictionaries(
    {
        "order_id": st.text(max_size=8),
        "symbol": st.sampled_from(["AAA", "BBB", "ZZZ"]),
        "side": st.sampled_from(["BUY", "SELL"]),
        "quantity": st.integers(1, 10**6),
        "limit_price": st.none() | st.floats(0.01, 1e4),
        "expires_ns": st.integers(0, 2**62),
        "signature": st.binary(max_size=40),
    }
)


def _gateway() -> GatewayActor:
    return GatewayActor(0, functools.partial(SimBroker, SimConfig(), CAPITAL), SECRET)


@settings(max_examples=300, deadline=None)
@given(
    approval=approval_fields,
    order_id=st.text(max_size=8),
    symbol=st.sampled_from(["AAA", "BBB"]),
    side=st.sampled_from(["BUY", "SELL"]),
    quantity=st.integers(1, 10**6),
    order_type=st.sampled_from(["MARKET", "LIMIT"]),
    limit=st.floats(0.01, 1e4),
)
def test_arbitrary_submits_with_forged_approvals_never_reach_the_broker(
    approval: dict,
    order_id: str,
    symbol: str,
    side: str,
    quantity: int,
    order_type: str,
    limit: float,
) -> None:
    from sovereign.messages import Approval

    gw = _gateway()
    order = SubmitOrder(
        msg_id="x",
        ts_event=0,
        ts_init=0,
        order_id=order_id,
        intent_id=order_id,
        shard=0,
        symbol=symbol,
        side=side,  # type: ignore[arg-type]
        quantity=quantity,
        order_type=order_type,  # type: ignore[arg-type]
        approval=Approval(**approval),
        limit_price=limit if order_type == "LIMIT" else None,
    )
    out = gw.receive([order])
    assert [type(m).__name__ for m in out] == ["OrderRejected"]
    assert gw.broker.working_orders == 0
    assert gw.orders.counters["submitted"] == 0


@settings(max_examples=200, deadline=None)
@given(
    field_=st.sampled_from(["order_id", "symbol", "side", "quantity", "limit_price", "expires"]),
    data=st.data(),
)
def test_a_genuine_approval_on_an_altered_order_never_reaches_the_broker(
    field_: str, data: st.DataObject
) -> None:
    from tests.kit import submit

    gw = _gateway()
    genuine = submit("o1", "AAA", "BUY", 10, order_type="LIMIT", limit_price=50.0)
    changes = {
        "order_id": {"order_id": "o2", "intent_id": "o2"},
        "symbol": {"symbol": "BBB"},
        "side": {"side": "SELL"},
        "quantity": {"quantity": data.draw(st.integers(11, 10**6))},
        "limit_price": {"limit_price": data.draw(st.floats(50.01, 1e4))},
        "expires": {
            "approval": msgspec.structs.replace(
                genuine.approval, expires_ns=genuine.approval.expires_ns + 1
            )
        },
    }[field_]
    (rejected,) = gw.receive([msgspec.structs.replace(genuine, **changes)])
    assert rejected.reason_code in ("BAD_SIGNATURE", "APPROVAL_MISMATCH")  # type: ignore[attr-defined]
    assert gw.broker.working_orders == 0
    # The genuine order still goes through, once; its replay does not.
    assert type(gw.receive([genuine])[0]).__name__ == "OrderAccepted"
    (replayed,) = gw.receive([genuine])
    assert replayed.reason_code == "APPROVAL_REPLAYED"  # type: ignore[attr-defined]
    assert gw.broker.working_orders == 1


def test_equity_falling_between_decision_and_fill_is_caught_at_the_fill(tmp_path) -> None:
    """Approved at 5 % of yesterday's equity; overnight another holding gaps down, so at
    the fill the same order would be more than 5 % of today's equity: the fill is cut."""
    h = Harness.build(str(tmp_path), 2, 1)
    h.step(0, [0.0, 0.0], [0.0, 0.0], [(0, 0, 1.0, 1.0, 0)])  # decide AAA
    h.step(1, [0.0, 0.0], [0.0, 0.0], [(1, 0, 1.0, 1.0, 0)])  # AAA fills; decide BBB
    assert h.guardian.book.held.get("AAA", 0) > 0
    _, gw_out, _ = h.step(2, [-0.9, 0.0], [0.0, 0.0], [])  # AAA gaps -59 %, BBB fills
    (fill,) = [m for m in gw_out if isinstance(m, OrderFilled) and m.symbol == "BBB"]
    equity = h.gateway.broker.portfolio.equity
    assert fill.quantity * fill.price <= C.max_position_size * equity * (1 + 1e-9)
    assert h.gateway.broker.counters["position_cap_cuts"] == 1
    cut = [m for m in gw_out if type(m).__name__ == "OrderCanceled"]
    assert cut and cut[0].reason == "POSITION_CAP_AT_FILL"  # type: ignore[attr-defined]

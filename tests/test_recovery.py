"""Nothing is lost when an actor dies: restarted actors go on from their checkpoints, and
the books of the broker, the gateway and the shards agree afterwards.

The Ray tests kill actor processes mid-session (``ray.kill`` with a restart, as a crash
would) in paper sessions with the simulated broker; the unit tests check the pieces
(snapshot and restore of the gateway and a shard, a real broker's orders adopted after a
gateway crash) without Ray.
"""

from __future__ import annotations

import functools
import random
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from sovereign.actors.gateway import GatewayActor
from sovereign.actors.shard import ShardActor
from sovereign.brokers.sim import SimBroker
from sovereign.config import Config, parse_config
from sovereign.data.loaders import load_ohlcv
from sovereign.memory.account import sim_account_key
from sovereign.memory.governance import DEPLOYED, GovernanceStore
from sovereign.memory.state_store import open_state_store
from sovereign.memory.stores import Stores
from sovereign.messages import (
    REGIME_NAMES,
    OrderAccepted,
    OrderFilled,
    OrderRejected,
    RecentOrderEvents,
    SessionStarted,
)
from tests import kit
from tests.kit import DAY_NS, SECRET, one_bar, submit

# Held positions (so the crash halts the account); the rule-based regimes, for speed.
HOLDING = {**kit.HOLDING, "regime": {**kit.HOLDING["regime"], "model": "baseline"}}
TRADING = {
    "regime": {"trend_margin": 0.0005, "model": "baseline"},
    "strategy": {"max_hold_bars": 30, "exit_on_regime_change": False, "volume_threshold": 0.0},
}
ACTORS = ("shard/1", "guardian/0", "gateway/0", "regime/0", "selfmod/0", "operator/0")


def started(mode: str = "paper") -> SessionStarted:
    import numpy as np

    from sovereign.messages import NDArray

    return SessionStarted(
        msg_id="s",
        ts_event=0,
        ts_init=0,
        run_id="r",
        mode=mode,
        symbols=NDArray.from_numpy(np.array([b"AAA"])),
        initial_capital=100_000.0,
    )


# -- THE PIECES ------------------------------------------------------------------------------


def sim_gateway(tmp_path: Path) -> GatewayActor:
    factory = functools.partial(SimBroker, Config().sim, 100_000.0, position_cap=0.05)
    return GatewayActor(0, factory, SECRET, stores=Stores(str(tmp_path)), replay_window=8)


def test_a_restored_gateway_has_its_account_its_orders_and_its_used_approvals(tmp_path) -> None:
    """The gateway Ray restarts used to come back with an empty simulated account, and
    would have taken a replayed approval or an order id it had already sent."""
    gw = sim_gateway(tmp_path)
    gw.receive([started()])
    gw.receive([one_bar(0, "AAA", 10.0, 10.5, 9.5, 10.0)])
    order = submit("AAA-1", "AAA", "BUY", 100, now=60_000_000_000, ttl_ns=DAY_NS)
    gw.receive([order])
    filled = gw.receive([one_bar(60_000_000_000, "AAA", 10.0, 10.2, 9.9, 10.1)])
    assert [m for m in filled if isinstance(m, OrderFilled)]
    before = (gw.broker.portfolio.cash, gw.broker.positions(), gw.broker.counters["fills"])

    again = sim_gateway(tmp_path)  # Ray reran the constructor ...
    again.restore(gw.snapshot())  # ... and the host handed it the checkpoint
    assert (again.broker.portfolio.cash, again.broker.positions()) == before[:2]
    assert again.broker.counters["fills"] == before[2]
    # The approval already used, and the order id already sent, are refused.
    out = again.receive([order])
    (rejected,) = [m for m in out if isinstance(m, OrderRejected)]
    assert rejected.reason_code == "APPROVAL_REPLAYED"
    fresh = submit("AAA-1", "AAA", "BUY", 50, now=60_000_000_000, ttl_ns=DAY_NS)
    (rejected,) = [m for m in again.receive([fresh]) if isinstance(m, OrderRejected)]
    assert rejected.reason_code == "DUPLICATE_ORDER_ID"
    # The fill of before the crash is among the events sent again to the shards.
    (recent,) = [m for m in out if isinstance(m, RecentOrderEvents)]
    assert any(isinstance(e, OrderFilled) for e in recent.events)


def test_a_restored_shard_issues_new_ids_and_books_a_fill_once(tmp_path) -> None:
    cfg = parse_config(TRADING)
    data = load_ohlcv("synthetic:4x200", seed=3)
    symbols = sorted(data.symbols)
    shard = ShardActor(0, symbols, cfg.strategy, Stores(str(tmp_path)))
    shard.receive([started()])
    shard.regime_codes[:] = REGIME_NAMES.index("TrendingUp")  # no regime actor here
    from sovereign.data.feeds import ReplayFeed

    feed = ReplayFeed(data.frame, [symbols], data.interval_s)
    ids: list[str] = []
    step = 0
    while not ids:
        (batch,) = [b for b in feed.batches(step) if b is not None]
        ids = [m.intent_id for m in shard.receive([batch]) if hasattr(m, "intent_id")]
        step += 1
    intent = ids[0]
    symbol = intent.rsplit("-", 1)[0]
    fill = OrderFilled(
        msg_id="f",
        ts_event=1,
        ts_init=1,
        order_id=intent,
        execution_id="E1",
        shard=0,
        symbol=symbol,
        side="BUY",
        quantity=10,
        price=10.0,
        commission=1.0,
        cum_quantity=10,
        leaves_quantity=0,
        purpose="OPEN",
    )
    shard.receive([fill])
    restored = ShardActor(0, symbols, cfg.strategy, Stores(str(tmp_path)))
    restored.restore(shard.snapshot())
    i = restored.universe.index[symbol]
    assert int(restored.strategy.quantity[i]) == 10
    # The fill again (in the events the gateway sends again): booked once.
    replay = RecentOrderEvents(msg_id="r", ts_event=2, ts_init=2, events=[fill])
    restored.receive([replay])
    assert int(restored.strategy.quantity[i]) == 10 and restored.fills_booked == 1
    # New intents get new ids: the sequence went on, it did not start again.
    issued: list[str] = []
    for s in range(step, step + 150):
        (batch,) = [b for b in feed.batches(s) if b is not None]
        issued += [m.intent_id for m in restored.receive([batch]) if hasattr(m, "intent_id")]
    assert issued and not set(issued) & {intent}
    assert all(int(x.rsplit("-", 1)[1]) > int(intent.rsplit("-", 1)[1]) for x in issued if
               x.startswith(symbol + "-"))  # fmt: skip


def test_a_restarted_gateway_adopts_its_orders_at_ib_and_books_their_fills_once(tmp_path) -> None:
    """A real broker keeps working while the gateway is down: the restarted gateway asks
    TWS about the orders its checkpoint knew, and their fills reach the books once."""
    from sovereign.brokers.ib import IBBroker, IBSettings
    from sovereign.testing.tws import TwsEmulator

    data = load_ohlcv("sample", symbols=["AAPL"], end="2004-12-31")
    tws = TwsEmulator(data, start_index=200)
    tws.start()
    try:
        settings = IBSettings(port=tws.port, max_requests=0, historical_pacing=False)
        factory = functools.partial(IBBroker, settings)
        gw = GatewayActor(0, factory, SECRET, stores=Stores(str(tmp_path)), replay_window=8)
        order = submit("AAPL-7", "AAPL", "BUY", 10, now=0, ttl_ns=2**62)
        gw.receive([order])
        snapshot = gw.snapshot()  # what the write-ahead checkpoint holds
        for _ in range(500):  # until TWS has it working
            if [o for o in tws.orders() if o.status == "Submitted"]:
                break
            gw.broker.conn.pump(0.02)
        assert [(o.orderRef, o.status) for o in tws.orders()] == [("AAPL-7", "Submitted")]
        tws.fill_while_disconnected(True)
        gw.close()  # the gateway dies
        tws.advance()  # the order fills at TWS meanwhile
        assert tws.positions() == {"AAPL": 10}
        again = GatewayActor(0, factory, SECRET, stores=Stores(str(tmp_path)), replay_window=8)
        again.restore(snapshot)
        fills: list[OrderFilled] = []
        for _ in range(50):
            fills += [m for m in again.receive([]) if isinstance(m, OrderFilled)]
            if fills:
                break
            again.broker.conn.pump(0.05)
        assert [f.order_id for f in fills] == ["AAPL-7"]
        assert again.broker.positions() == {"AAPL": 10}
        assert len(again.orders._executions) == len(tws.executions()) == 1
        out = again.receive([])
        assert not [m for m in out if isinstance(m, OrderFilled)]  # not twice
        assert not [m for m in out if isinstance(m, OrderAccepted) and m.order_id != "AAPL-7"]
        again.close()
    finally:
        tws.stop()


# -- ON RAY -------------------------------------------------------------------------------------


def paper(tmp_path: Path, ray: Any, kills: dict[int, str], *, doc: dict[str, Any], data: Any):
    """A paper session on Ray with the simulated broker on a named account, killing each
    actor of ``kills`` (step -> name) when the session reaches that step."""
    from sovereign.session import run_session

    config = parse_config({**doc, "engine": {"shards": 2, "account": "chaos"}})
    done: list[str] = []

    def on_progress(p: Any) -> None:
        for step, name in sorted(kills.items()):
            if p.step >= step and name not in done:
                handle = ray.get_actor(f"sovereign/{name}", namespace="sovereign")
                ray.kill(handle, no_restart=False)
                done.append(name)

    state = tmp_path / "state"
    out = run_session(
        config,
        data,
        runtime="ray",
        mode="paper",
        state_dir=state,
        out_dir=None,
        run_id="chaos",
        on_progress=on_progress,
    )
    assert sorted(done) == sorted(kills.values()), "not every kill happened"
    return out, state


def books(out: Any, state: Path) -> dict[str, Any]:
    """What the broker, the gateway and the shards hold and booked at the end."""
    stats = {(s.role, s.index): s.counters for s in out.result.actor_stats}
    with closing(open_state_store(state)) as store:
        doc = store.get(sim_account_key("chaos"))
    assert doc is not None
    shard_positions: dict[str, int] = {}
    for r in out.result.shard_reports:
        shard_positions.update(r.positions)
    return {
        "broker_positions": {s: p[0] for s, p in doc["positions"].items()},
        "shard_positions": shard_positions,
        "broker_fills": stats[("gateway", 0)].get("broker_fills", 0),
        "gateway_executions": stats[("gateway", 0)].get("executions_booked", 0),
        "shard_fills": sum(r.recovery.get("fills_booked", 0) for r in out.result.shard_reports),
        "reconciled": sum(
            r.recovery.get("reconciled_positions", 0) for r in out.result.shard_reports
        ),
        "duplicates": stats[("gateway", 0)].get("rejected_DUPLICATE_ORDER_ID", 0),
        "nothing_to_close": stats[("guardian", 0)].get("verdict_NOTHING_TO_CLOSE", 0),
        "mismatches": stats[("gateway", 0)].get("position_mismatches", 0),
    }


def assert_books_agree(b: dict[str, Any]) -> None:
    assert b["duplicates"] == 0, "an order id reached the broker twice"
    assert b["broker_fills"] == b["gateway_executions"] == b["shard_fills"], b
    assert b["shard_positions"] == b["broker_positions"], b
    assert b["reconciled"] == 0, "a fill was lost and had to be taken from the book"
    assert b["mismatches"] == 0


@pytest.fixture(scope="module")
def trading_data():
    return load_ohlcv("synthetic:20x500", seed=7)


@pytest.mark.ray
@pytest.mark.parametrize("victim", ["gateway/0", "shard/1"])
def test_a_killed_gateway_or_shard_comes_back_with_its_books(
    tmp_path, ray_session, trading_data, victim: str
) -> None:
    out, state = paper(tmp_path, ray_session, {150: victim}, doc=TRADING, data=trading_data)
    b = books(out, state)
    assert_books_agree(b)
    assert b["nothing_to_close"] == 0
    assert b["broker_fills"] > 50
    stats = {(s.role, s.index): s.counters for s in out.result.actor_stats}
    role, index = victim.split("/")
    if role == "gateway":
        assert stats[("gateway", 0)].get("restored_from_checkpoint") == 1
    else:
        report = next(r for r in out.result.shard_reports if r.shard == int(index))
        assert report.recovery["restarts"] == 1


@pytest.fixture(scope="module")
def crash_data():
    return load_ohlcv(kit.CRASH_DATA, seed=7)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, ray_session, crash_data):
    tmp = tmp_path_factory.mktemp("calm")
    out, state = paper(tmp, ray_session, {}, doc=HOLDING, data=crash_data)
    return out, state


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_chaos_every_actor_killed_once_loses_nothing(
    tmp_path, ray_session, crash_data, uninterrupted, seed: int
) -> None:
    """The shard, guardian, gateway, regime, self-modification and operator actors are
    each killed once, at a random step (seeded), in a paper session whose market crashes
    at bar 400. No order id reaches the broker twice; every broker fill is booked once by
    the gateway and once by the shard that owns it; the shards hold what the broker holds;
    and the trading state ends as an uninterrupted run's does (HALTED by the crash), with
    no more rule changes in a day than the constitution allows."""
    rng = random.Random(seed)
    steps = rng.sample(range(40, 560), len(ACTORS))
    kills = dict(zip(steps, rng.sample(ACTORS, len(ACTORS)), strict=True))
    out, state = paper(tmp_path, ray_session, kills, doc=HOLDING, data=crash_data)
    assert_books_agree(books(out, state))
    calm, _ = uninterrupted
    assert calm.guardian is not None and calm.guardian.state == "HALTED"
    assert out.guardian is not None and out.guardian.state == calm.guardian.state
    assert out.guardian.halted_reason.startswith("drawdown")
    assert len(out.guardian.resumed) == 0
    with GovernanceStore(state) as store:
        per_day: dict[str, int] = {}
        for r in store.history("account/chaos", limit=1000):
            if r.status == DEPLOYED:
                per_day[r.session_date] = per_day.get(r.session_date, 0) + 1
        decided = store._conn.execute(
            "SELECT session_date, COUNT(*) FROM decisions WHERE approved = 1 GROUP BY 1"
        ).fetchall()
    assert all(n <= 3 for n in per_day.values())
    assert all(n <= 3 for _, n in decided)


def test_an_order_is_checkpointed_before_it_leaves_for_a_real_broker(tmp_path) -> None:
    """Write-ahead: when the order reaches a real broker, the checkpoint that a restarted
    gateway would find already holds it (and its used approval)."""
    seen: list[bytes] = []

    class RealBroker:
        name = "real"

        def __init__(self) -> None:
            self.calls: list[str] = []

        def poll(self, now_ns: int) -> list[Any]:
            return []

        def submit(self, order: Any, now_ns: int) -> list[Any]:
            assert seen, "the order left before it was checkpointed"
            restored = GatewayActor(0, RealBroker, SECRET, stores=Stores(str(tmp_path)))
            restored.restore(seen[-1])
            assert restored.orders.knows(order.order_id)
            assert order.approval.signature in restored.verifier._used
            self.calls.append(order.order_id)
            return []

    gw = GatewayActor(0, RealBroker, SECRET, stores=Stores(str(tmp_path)))
    gw.persist = lambda: seen.append(gw.snapshot() or b"")
    gw.receive([submit("AAA-1", "AAA", "BUY", 10, now=0, ttl_ns=DAY_NS)])
    assert gw.broker.calls == ["AAA-1"]

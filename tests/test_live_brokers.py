"""Paper trading through real broker clients against loopback emulators, end to end.

The whole system runs (feed, shards, guardian, gateway, ...) with the real ib_async and
alpaca-py clients talking to the TWS and Alpaca emulators. The test advances the
emulators' market clock after each live step and injects the faults.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from sovereign.config import parse_config
from sovereign.data.loaders import load_ohlcv
from sovereign.memory.stores import Stores
from sovereign.messages import REGIME_NAMES
from sovereign.session import run_session
from sovereign.specs import make_live_feed
from sovereign.testing.alpaca import AlpacaEmulator
from sovereign.testing.tws import TwsEmulator

SYMBOLS = ["AAPL", "IBM", "MSFT"]
LIVE_STEPS = 45
WARMUP = 120


@pytest.fixture(scope="module")
def data():
    return load_ohlcv("sample", symbols=SYMBOLS, end="2004-12-31")


def live_config(**extra: Any):
    doc = {
        "engine": {"shards": 2},
        "broker": {
            "bar_interval_s": 23_400,
            "poll_interval_s": 0.02,
            "warmup_bars": WARMUP,
            "failover_after_s": 0.3,
        },
        # The emulator enforces neither ib_async's throttle nor IB's pacing.
        "ib": {"max_requests": 0, "connect_timeout_s": 2, "historical_pacing": False},
        "regime": {"model": "baseline"},
        "strategy": {
            "volume_confirmation": False,  # MIDPOINT bars have no volume
            "entry_regimes": list(REGIME_NAMES),
            "breakout_window": 10,
            "max_hold_bars": 5,
        },
        "selfmod": {"enabled": False},
    }
    for section, values in extra.items():
        doc.setdefault(section, {}).update(values)
    return parse_config(doc)


def shard_positions(actors: dict[str, Any]) -> dict[str, int]:
    """What the shards believe they hold, by symbol."""
    held: dict[str, int] = {}
    for name, actor in actors.items():
        if name.startswith("sovereign/shard/"):
            s = actor.strategy
            held.update(
                {sym: int(q) for sym, q in zip(s.universe.symbols, s.quantity, strict=True) if q}
            )
    return held


class Clock:
    """Advance the emulators' market by one bar after each live (not warm-up) step."""

    def __init__(self, emulators: list[Any], interval_s: int) -> None:
        self.emulators = emulators
        self.interval_ns = interval_s * 1_000_000_000
        self.live_steps = 0
        self.actors: dict[str, Any] = {}

    def latest_bar_start(self) -> int:
        return self.emulators[0].now_ts() - self.interval_ns

    def on_started(self, engine: Any) -> None:
        self.engine = engine

    def tick(self, progress: Any) -> bool:
        if not self.actors:
            self.actors = dict(self.engine.runtime.actors)
        if progress.ts < self.latest_bar_start():
            return False  # warm-up history
        self.live_steps += 1
        return True


def test_ib_paper_session_survives_a_drop_with_an_order_in_flight(tmp_path, data) -> None:
    tws = TwsEmulator(data, start_index=WARMUP + 5)
    tws.start()
    try:
        config = live_config(broker={"kind": "ib"}, ib={"port": tws.port})
        clock = Clock([tws], data.interval_s)
        dropped: dict[str, Any] = {}

        def on_progress(p: Any) -> None:
            if not clock.tick(p):
                return
            working = [o for o in tws.orders() if o.status not in ("Filled", "Cancelled")]
            if working and not dropped:
                dropped["order"] = working[0].orderRef
                dropped["step"] = clock.live_steps
                tws.drop_connections()  # with an order in flight ...
            tws.advance()  # ... which fills while we are away

        feed = make_live_feed(config, SYMBOLS)
        out = run_session(
            config,
            None,
            runtime="local",
            mode="paper",
            state_dir=tmp_path / "state",
            out_dir=tmp_path / "out",
            max_steps=WARMUP + LIVE_STEPS,
            feed=feed,
            symbols=SYMBOLS,
            on_progress=on_progress,
            on_started=clock.on_started,
        )
        feed.close()
        assert dropped, "no order was ever in flight: the scenario did not happen"
        gateway = clock.actors["sovereign/gateway/0"]
        broker = gateway.broker
        # The dropped order filled at TWS while we were away, and we know it.
        (dropped_order,) = [o for o in tws.orders() if o.orderRef == dropped["order"]]
        assert dropped_order.status == "Filled"
        assert broker.counters.reconnects >= 1 and broker.counters.reconciled_fills >= 1
        # No duplicate order: each order id reached TWS once.
        refs = Counter(o.orderRef for o in tws.orders())
        assert refs and max(refs.values()) == 1
        assert set(refs) <= set(gateway.orders.orders)
        # No lost fill: every execution at TWS was seen, once.
        assert {e.execId for e in tws.executions()} == gateway.orders._executions
        assert gateway.orders.counters["duplicate_fills"] == 0
        # Positions: TWS, the adapter and the strategy's own books agree.
        shard_qty = shard_positions(clock.actors)
        assert tws.positions() == broker.positions() == shard_qty
        assert gateway.counters.get("position_mismatches", 0) == 0
        assert out.result.counters.get("fills", 0) == len(tws.executions())
    finally:
        tws.stop()


def test_with_tws_down_the_session_fails_over_to_alpaca_without_doubling(
    tmp_path, data, monkeypatch
) -> None:
    tws = TwsEmulator(data, start_index=WARMUP + 5)
    alpaca = AlpacaEmulator(data, start_index=WARMUP + 5)
    tws.start()
    alpaca.start()
    tws.go_down()
    monkeypatch.setenv("APCA_API_KEY_ID", "test-key")
    monkeypatch.setenv("APCA_API_SECRET_KEY", "test-secret")
    monkeypatch.setenv("SOVEREIGN_ALPACA_BASE_URL", alpaca.base_url)
    monkeypatch.setenv("SOVEREIGN_ALPACA_DATA_URL", alpaca.base_url)
    try:
        # With TWS down at the start, the IB account the state belongs to is the one the
        # operator names (it cannot be asked).
        config = live_config(
            broker={"kind": "ib+alpaca"}, ib={"port": tws.port, "account": tws.account}
        )
        clock = Clock([alpaca, tws], data.interval_s)
        notes: list[Any] = []

        def on_progress(p: Any) -> None:
            if clock.tick(p):
                alpaca.advance()
                tws.advance()

        feed = make_live_feed(config, SYMBOLS)
        run_session(
            config,
            None,
            runtime="local",
            mode="paper",
            state_dir=tmp_path / "state",
            out_dir=None,
            max_steps=WARMUP + LIVE_STEPS,
            feed=feed,
            symbols=SYMBOLS,
            on_progress=on_progress,
            on_started=clock.on_started,
            on_notification=notes.append,
        )
        feed.close()
        kinds = [n.kind for n in notes]
        assert "broker_failover" in kinds
        gateway = clock.actors["sovereign/gateway/0"]
        assert gateway.broker.active is gateway.broker.secondary
        assert tws.orders() == [] and tws.positions() == {}
        assert alpaca.orders(), "nothing was traded at Alpaca"
        shard_qty = shard_positions(clock.actors)
        assert alpaca.positions() == gateway.broker.positions() == shard_qty
        ids = Counter(o["client_order_id"] for o in alpaca.orders())
        assert max(ids.values()) == 1
    finally:
        alpaca.stop()
        tws.stop()


def test_when_tws_returns_new_positions_go_back_to_ib_and_nothing_is_split(
    tmp_path, data, monkeypatch
) -> None:
    tws = TwsEmulator(data, start_index=WARMUP + 5)
    alpaca = AlpacaEmulator(data, start_index=WARMUP + 5)
    tws.start()
    alpaca.start()
    tws.go_down()
    monkeypatch.setenv("APCA_API_KEY_ID", "test-key")
    monkeypatch.setenv("APCA_API_SECRET_KEY", "test-secret")
    monkeypatch.setenv("SOVEREIGN_ALPACA_BASE_URL", alpaca.base_url)
    monkeypatch.setenv("SOVEREIGN_ALPACA_DATA_URL", alpaca.base_url)
    try:
        config = live_config(
            broker={"kind": "ib+alpaca"},
            ib={
                "port": tws.port,
                "reconnect_initial_s": 0.05,
                "reconnect_max_s": 0.1,
                "account": tws.account,  # TWS is down at the start: named, not asked
            },
        )
        clock = Clock([alpaca, tws], data.interval_s)
        notes: list[Any] = []

        def on_progress(p: Any) -> None:
            if clock.tick(p):
                if clock.live_steps == 20:
                    tws.come_up()
                alpaca.advance()
                tws.advance()

        feed = make_live_feed(config, SYMBOLS)
        run_session(
            config,
            None,
            runtime="local",
            mode="paper",
            state_dir=tmp_path / "state",
            out_dir=None,
            max_steps=WARMUP + 60,
            feed=feed,
            symbols=SYMBOLS,
            on_progress=on_progress,
            on_started=clock.on_started,
            on_notification=notes.append,
        )
        feed.close()
        kinds = [n.kind for n in notes]
        assert kinds.index("broker_failover") < kinds.index("broker_failback")
        gateway = clock.actors["sovereign/gateway/0"]
        assert gateway.broker.active is gateway.broker.primary
        assert alpaca.orders() and tws.orders(), "both brokers should have traded"
        # Everything the shards hold is held once, at exactly one broker.
        at_ib, at_alpaca = tws.positions(), alpaca.positions()
        assert not set(at_ib) & set(at_alpaca)
        shard_qty = shard_positions(clock.actors)
        assert {**at_ib, **at_alpaca} == gateway.broker.positions() == shard_qty
        assert max(Counter(o["client_order_id"] for o in alpaca.orders()).values()) == 1
        assert max(Counter(o.orderRef for o in tws.orders()).values()) == 1
    finally:
        alpaca.stop()
        tws.stop()


@pytest.mark.parametrize("broker", ["ib", "alpaca"])
def test_streamed_bars_trade_like_polled_ones(tmp_path, data, monkeypatch, broker) -> None:
    """Live mode: bars pushed by the broker's stream (IB keepUpToDate, Alpaca's data
    stream), through a drop and re-subscription on IB."""
    emulator: Any = (
        TwsEmulator(data, start_index=WARMUP + 5)
        if broker == "ib"
        else AlpacaEmulator(data, start_index=WARMUP + 5)
    )
    emulator.start()
    if broker == "alpaca":
        monkeypatch.setenv("APCA_API_KEY_ID", "test-key")
        monkeypatch.setenv("APCA_API_SECRET_KEY", "test-secret")
        monkeypatch.setenv("SOVEREIGN_ALPACA_BASE_URL", emulator.base_url)
        monkeypatch.setenv("SOVEREIGN_ALPACA_DATA_URL", emulator.base_url)
        monkeypatch.setenv("SOVEREIGN_ALPACA_STREAM_URL", emulator.stream_url)
    try:
        config = live_config(
            broker={"kind": broker, "feed": "stream", "stream_grace_s": 2.0},
            ib={"port": emulator.port if broker == "ib" else 7497, "what_to_show": "MIDPOINT"},
        )
        clock = Clock([emulator], data.interval_s)
        seen: list[int] = []

        def on_progress(p: Any) -> None:
            if clock.tick(p):
                seen.append(p.ts)
                if broker == "ib" and clock.live_steps == 5:
                    emulator.drop_connections()
                emulator.advance()

        feed = make_live_feed(config, SYMBOLS)
        run_session(
            config,
            None,
            runtime="local",
            mode="paper",
            state_dir=tmp_path / "state",
            out_dir=None,
            max_steps=WARMUP + 15,
            feed=feed,
            symbols=SYMBOLS,
            on_progress=on_progress,
            on_started=clock.on_started,
        )
        feed.close()
        # Every live bar time once, in order, with no hole.
        assert len(seen) >= 10
        assert seen == sorted(set(seen))
        expected = [int(t) for t in data.timestamps if seen[0] <= t <= seen[-1]]
        assert seen == expected
        if broker == "ib":
            assert feed.source.resubscriptions >= 1
        assert feed.counters.rejected == {}
    finally:
        emulator.stop()


@pytest.mark.ray
@pytest.mark.parametrize("channel", [True, False], ids=["channel", "ray-calls"])
def test_ib_paper_session_on_ray_survives_a_drop(
    tmp_path, data, ray_session, channel: bool
) -> None:
    """The gateway in a Ray actor, its calls on a step channel or as Ray calls: the IB
    connection, made when the gateway is built, serves the calls and reconnects from them
    after a drop mid-session (the local test above drops it with an order in flight). On
    Ray a step's progress is reported once later steps have run, so the market is
    advanced by a thread rather than from the progress callback: one bar at a time, once
    the feed has taken the latest bar and the session has had time to act on it."""
    import threading

    tws = TwsEmulator(data, start_index=WARMUP + 5)
    tws.start()
    stop = threading.Event()
    dropped: dict[str, Any] = {}
    clock = Clock([tws], data.interval_s)
    feeds: list[Any] = []
    advances = {"n": 0}

    def taken_latest() -> bool:
        seen = [ts for ts in feeds[0].last_ns.values() if ts is not None]
        return bool(seen) and max(seen) >= clock.latest_bar_start()

    def market() -> None:
        while not stop.wait(0.05):
            if not taken_latest():
                continue
            if stop.wait(0.2):  # the step of that bar runs and sends its orders
                return
            advances["n"] += 1
            if advances["n"] == 8:
                # Mid-session, whatever is in flight: whether an order is working at
                # that moment depends on the strategy and the timing (which on Ray is
                # not locked to the steps), so the drop does not wait for one.
                working = [o for o in tws.orders() if o.status not in ("Filled", "Cancelled")]
                dropped["order"] = working[0].orderRef if working else None
                tws.drop_connections()
            tws.advance()

    ticker = threading.Thread(target=market, daemon=True)

    try:
        config = live_config(broker={"kind": "ib"}, ib={"port": tws.port}, ray={"channel": channel})
        feed = make_live_feed(config, SYMBOLS)
        feeds.append(feed)
        ticker.start()
        outcome: dict[str, Any] = {}

        def session() -> None:
            outcome["out"] = run_session(
                config,
                None,
                runtime="ray",
                mode="paper",
                state_dir=tmp_path / "state",
                out_dir=tmp_path / "out",
                max_steps=WARMUP + LIVE_STEPS,
                feed=feed,
                symbols=SYMBOLS,
            )

        # A session that hangs (a call that never returns) fails the test, not the run.
        runner = threading.Thread(target=session, daemon=True)
        runner.start()
        runner.join(240)
        stop.set()
        feed.close()
        assert not runner.is_alive(), "the session hung"
        out = outcome["out"]
        assert dropped, "the connection was never dropped"
        assert out.result.runtime == "ray" and out.result.counters.get("failed_steps", 0) == 0
        if dropped["order"] is not None:
            # The market did not wait for the reconnection: the order in flight either
            # filled while we were away or aged past the entry timeout and was canceled.
            (dropped_order,) = [o for o in tws.orders() if o.orderRef == dropped["order"]]
            assert dropped_order.status in ("Filled", "Cancelled")
        # No duplicate order, every fill at TWS reached the books once, none after a cancel.
        refs = Counter(o.orderRef for o in tws.orders())
        assert not refs or max(refs.values()) == 1
        assert out.result.counters.get("fills", 0) == len(tws.executions())
        (gateway,) = [s for s in out.result.actor_stats if s.role == "gateway"]
        assert gateway.counters.get("fills_after_cancel", 0) == 0
        assert gateway.counters.get("broker_reconnects", 0) >= 1
        assert gateway.counters.get("duplicate_fills", 0) == 0
    finally:
        stop.set()
        tws.stop()


def test_a_real_accounts_state_belongs_to_the_broker_account(tmp_path, data) -> None:
    """Without --account a broker account's trading state used to belong to the run, so a
    HALTED IB account started ACTIVE the next time. Its state belongs to the broker's
    account id, is bound to it on the audit log, and no other name can take it over."""
    from sovereign.actors.guardian import GuardianActor
    from sovereign.core.constitution import Constitution
    from sovereign.core.risk import SizingPolicy
    from sovereign.memory.account import AccountRefusedError
    from sovereign.messages import BookSnapshot
    from tests.kit import SECRET, cash_account

    tws = TwsEmulator(data, start_index=WARMUP + 5)
    tws.start()
    state = tmp_path / "state"
    scope = f"account/ib:{tws.account}"
    try:

        def session(run_id: str, **engine: Any):
            config = live_config(broker={"kind": "ib"}, ib={"port": tws.port}, engine=engine)
            feed = make_live_feed(config, SYMBOLS)
            try:
                return run_session(
                    config, None, runtime="local", mode="paper", state_dir=state,
                    out_dir=None, run_id=run_id, max_steps=WARMUP + 3, feed=feed,
                    symbols=SYMBOLS,
                )  # fmt: skip
            finally:
                feed.close()

        first = session("first")
        assert first.guardian is not None and first.guardian.state == "ACTIVE"
        # The account halts (here: a guardian of that account sees a 20 % loss).
        g = GuardianActor(
            0, Constitution(), SizingPolicy(), SECRET, 300, stores=Stores(str(state)),
            state_scope=scope,
        )  # fmt: skip
        book = BookSnapshot(msg_id="b", ts_event=1, ts_init=1, session_date="")
        equity = first.guardian.last_equity
        g.receive([book, cash_account(1, equity)])
        g.receive([cash_account(2, equity * 0.8)])
        assert g.machine is not None and g.machine.state.value == "HALTED"
        del g
        second = session("second")  # no --account, as before
        assert second.guardian is not None and second.guardian.state == "HALTED"
        (stats,) = [s for s in second.result.actor_stats if s.role == "guardian"]
        assert stats.counters.get("verdict_APPROVED", 0) == 0
        with pytest.raises(AccountRefusedError, match="belongs to the Sovereign account ib:"):
            session("renamed", account="fresh-name")
    finally:
        tws.stop()

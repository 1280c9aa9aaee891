"""Actors under the runtimes: bad bars and garbage bytes are refused, counted, and harmless."""

from __future__ import annotations

import ast
import inspect
import math
import textwrap

import pytest

from sovereign.actors.base import Actor
from sovereign.actors.gateway import GatewayActor
from sovereign.actors.guardian import GuardianActor
from sovereign.actors.monitor import MonitorActor
from sovereign.actors.operator import OperatorActor
from sovereign.actors.regime import RegimeActor
from sovereign.actors.runtime import ActorSpec, LocalRuntime, RayRuntime
from sovereign.actors.selfmod import SelfModActor
from sovereign.actors.shard import ShardActor
from sovereign.config import StrategyConfig
from sovereign.memory.stores import Stores
from sovereign.messages import (
    ALL_MESSAGES,
    WIRE,
    BarBatch,
    Message,
    Notification,
    SessionEnded,
    ShardReport,
)
from tests.conftest import gcs_address
from tests.kit import bars

MIN = 60 * 1_000_000_000


def shard_spec(tmp_path, symbols=("AAA", "BBB", "CCC")) -> ActorSpec:
    return ActorSpec(
        ShardActor,
        index=0,
        kwargs={
            "symbols": list(symbols),
            "strategy": StrategyConfig(),
            "stores": Stores(str(tmp_path)),
        },
    )


def end() -> SessionEnded:
    return SessionEnded(msg_id="end", ts_event=0, ts_init=0, run_id="r", steps=0)


def report_of(messages) -> ShardReport:
    (report,) = [m for m in messages if isinstance(m, ShardReport)]
    return report


def test_bad_bars_never_reach_the_indicators_and_are_counted_by_reason(tmp_path) -> None:
    rt = LocalRuntime()
    shard = rt.spawn(shard_spec(tmp_path))
    good = bars(
        MIN, ["AAA", "BBB", "CCC"], [10, 10, 10], [11, 11, 11], [9, 9, 9], [10, 10, 10], [100] * 3
    )
    rt.tell(shard, [good])
    atr_before = shard.strategy.atr.tr.copy()
    bad = bars(
        2 * MIN,
        ["AAA", "BBB", "CCC", "ZZZ"],
        [math.nan, 10, 10, 10],
        [11, 8, 11, 11],  # BBB: high < low
        [9, 9, 9, 9],
        [10, 10, -1, 10],  # CCC: close outside range and non-positive
        [100, 100, 100, 100],
    )
    rt.tell(shard, [bad])
    # No row of that batch was good: the indicators did not move.
    assert shard.strategy.atr.tr.tolist() == atr_before.tolist()
    stale = bars(MIN, ["AAA"], [10], [11], [9], [10], [100])
    rt.tell(shard, [stale])
    report = report_of(rt.tell(shard, [end()]))
    assert report.rejected_bars == {
        "high_lt_low": 1,
        "nan_price": 1,
        "nonpositive_price": 1,
        "out_of_order_time": 1,
        "unknown_symbol": 1,
    }
    assert report.bars == 3


def test_local_wire_runtime_counts_and_drops_undecodable_batches(tmp_path) -> None:
    from sovereign.actors.runtime import _decode_inputs

    actor = shard_spec(tmp_path).build()
    messages = _decode_inputs(actor, [b"\xc1garbage", WIRE.encode_batch([end()])])
    assert [type(m).__name__ for m in messages] == ["SessionEnded"]
    assert actor.counters["decode_errors"] == 1


@pytest.mark.ray
@pytest.mark.parametrize("channel", [True, False], ids=["channel", "ray-calls"])
def test_ray_actor_survives_garbage_bytes_and_reports_them(
    tmp_path, ray_session, channel: bool
) -> None:
    rt = RayRuntime(channel=channel)
    try:
        handle = rt.spawn(shard_spec(tmp_path))
        good = bars(MIN, ["AAA"], [10], [11], [9], [10], [100])
        r1 = rt.tell(handle, [good])
        r2 = rt.tell(handle, b"\x00\x01\x02 definitely not msgpack", b"")
        r3 = rt.tell(handle, [end()])
        out1, out2, out3 = rt.fetch([r1, r2, r3])
        assert out1 == [] and out2 == []
        report = report_of(out3)
        assert report.decode_errors == 2
        assert report.bars == 1
        from ray.util.state import list_actors

        alive = list_actors(address=gcs_address(), filters=[("state", "=", "ALIVE")])
        names = {a.name for a in alive}
        assert "sovereign/shard/0" in names
    finally:
        rt.shutdown()


# -- WHAT AN ACTOR ACCEPTS ---------------------------------------------------------------

ACTOR_CLASSES = [
    GatewayActor,
    GuardianActor,
    MonitorActor,
    OperatorActor,
    RegimeActor,
    SelfModActor,
    ShardActor,
]


def _matched_types(cls: type) -> set[str]:
    """Every class named in a ``case`` pattern of ``cls.receive``."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls.receive)))
    return {
        node.cls.id
        for node in ast.walk(tree)
        if isinstance(node, ast.MatchClass) and isinstance(node.cls, ast.Name)
    }


@pytest.mark.parametrize("cls", ACTOR_CLASSES, ids=lambda c: c.__name__)
def test_an_actor_accepts_every_type_its_receive_handles(cls: type) -> None:
    # A type handled in ``receive`` but missing from ``accepts`` would never be delivered.
    handled = _matched_types(cls)
    assert handled, "receive has no case patterns: the check would prove nothing"
    assert cls.accepts is not None
    assert handled == {t.__name__ for t in cls.accepts}
    assert cls.accepts <= set(ALL_MESSAGES)


class _Recorder(Actor):
    role = "recorder"
    accepts = frozenset({SessionEnded, BarBatch})

    def __init__(self, index: int = 0) -> None:
        super().__init__(index)
        self.seen: list[str] = []

    def receive(self, messages: list[Message]) -> list[Message]:
        self.seen.extend(type(m).__name__ for m in messages)
        return []


@pytest.mark.parametrize("wire", [False, True], ids=["direct", "wire"])
def test_both_local_deliveries_hand_an_actor_only_what_it_accepts(wire: bool) -> None:
    rt = LocalRuntime(wire=wire)
    actor = rt.spawn(ActorSpec(_Recorder))
    note = Notification(
        msg_id="n", ts_event=0, ts_init=0, kind="x", level="info", title="t", text=""
    )
    batch = bars(MIN, ["AAA"], [10], [11], [9], [10], [100])
    rt.tell(actor, [note, batch], [end(), note])
    assert actor.seen == ["BarBatch", "SessionEnded"]


@pytest.mark.ray
@pytest.mark.parametrize("channel", [True, False], ids=["channel", "ray-calls"])
def test_ray_never_runs_a_call_whose_plain_input_failed(ray_session, channel: bool) -> None:
    """A backtest passes the previous step's verdicts to the gateway as a plain result: if
    the call that was to produce them failed, the gateway's call must never run (that is
    what keeps a failed step from sending orders). A lenient input is survived instead."""
    from sovereign.actors.runtime import ActorCallError, Lenient

    class Breaks(Actor):
        role = "breaks"
        accepts = frozenset({BarBatch})

        def receive(self, messages: list[Message]) -> list[Message]:
            raise RuntimeError("this actor fails every call")

    class Counts(Actor):
        role = "counts"
        accepts = frozenset({BarBatch, SessionEnded})

        def receive(self, messages: list[Message]) -> list[Message]:
            self.count("calls")
            if any(isinstance(m, SessionEnded) for m in messages):
                return [self.stats(0)]
            return []

    rt = RayRuntime(channel=channel)
    try:
        breaks, counts = rt.spawn(ActorSpec(Breaks)), rt.spawn(ActorSpec(Counts))
        batch = bars(MIN, ["AAA"], [10], [11], [9], [10], [100])
        failed = rt.tell(breaks, [batch])
        plain = rt.tell(counts, failed, [batch])
        lenient = rt.tell(counts, Lenient(failed), [batch])
        with pytest.raises(ActorCallError):
            rt.fetch([plain])
        assert rt.fetch([lenient]) == [[]]
        (stats,) = rt.fetch([rt.tell(counts, [end()])])[0]
        # Two calls ran (the lenient one and the end), and the lenient one counted its loss.
        assert stats.counters == {"calls": 2, "lost_inputs": 1}
    finally:
        rt.shutdown()


@pytest.mark.ray
@pytest.mark.parametrize("channel", [True, False], ids=["channel", "ray-calls"])
def test_ray_lenient_inputs_arrive_whether_finished_pending_or_failed(
    ray_session, channel: bool
) -> None:
    """The driver sends a finished lenient input with the call, leaves a pending one to
    the actor to fetch, and a failed one to the actor to count: the actor sees every
    message that exists, once, in input order, and counts the one loss."""
    import time

    from sovereign.actors.runtime import Lenient

    class Echo(Actor):
        role = "echo"
        accepts = frozenset({BarBatch})

        def receive(self, messages: list[Message]) -> list[Message]:
            if self.index == 1:
                time.sleep(0.5)  # still running when the next call is sent
            if self.index == 2:
                raise RuntimeError("this one fails")
            return list(messages)

    class Seen(Actor):
        role = "seen"
        accepts = frozenset({BarBatch, SessionEnded})

        def receive(self, messages: list[Message]) -> list[Message]:
            self.count("calls")
            out = [m for m in messages if isinstance(m, BarBatch)]
            if any(isinstance(m, SessionEnded) for m in messages):
                out.append(self.stats(0))
            return out

    rt = RayRuntime(channel=channel)
    try:
        done, slow, failing = (rt.spawn(ActorSpec(Echo, index=i)) for i in range(3))
        seen = rt.spawn(ActorSpec(Seen))
        first = bars(MIN, ["AAA"], [10], [11], [9], [10], [100])
        second = bars(MIN * 2, ["BBB"], [20], [21], [19], [20], [200])
        finished = rt.tell(done, [first])
        rt.fetch([finished])
        pending = rt.tell(slow, [second])
        failed = rt.tell(failing, [first])
        out = rt.tell(seen, Lenient(finished), Lenient(failed), Lenient(pending), Lenient(finished))
        got = rt.fetch([out])[0]
        assert [b.msg_id for b in got] == [first.msg_id, second.msg_id, first.msg_id]
        (stats,) = rt.fetch([rt.tell(seen, [end()])])[0]
        assert stats.counters == {"calls": 2, "lost_inputs": 1}
    finally:
        rt.shutdown()

"""The step data flow of the engine on Ray with actors that do nothing: the floor of a step.

Four stand-in actors play the gateway, two shards and the guardian. Each call takes its
inputs (a reference inside a list is fetched inside the actor, as the runtime's
``Lenient`` inputs are) and returns 256 bytes, the size of a quiet step's payload. Used by
the bench's ping job and by ``benchmarks/ray_flow.py``.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sovereign.actors.base import Actor
from sovereign.messages import Message

PAYLOAD = b"x" * 256
# Room for one actor-to-actor step to end before the next is sent (they take ~10 ms here).
STEP_ROOM_S = 0.03
# How long the CPU use of idle actors is sampled.
IDLE_S = 2.0


def stand_ins(ray: Any) -> tuple[Any, Any, list[Any]]:
    """The gateway, the guardian and two shards, started and ready."""

    @ray.remote
    class Stand:
        def call(self, *parts: Any) -> bytes:
            for part in parts:
                if isinstance(part, list):  # a Lenient input: fetched here
                    ray.get(part[0])
            return PAYLOAD

        def pid(self) -> int:
            return os.getpid()

    gateway, guardian = Stand.remote(), Stand.remote()  # type: ignore[attr-defined]
    shards = [Stand.remote() for _ in range(2)]  # type: ignore[attr-defined]
    ray.get([a.call.remote() for a in (gateway, guardian, *shards)])
    return gateway, guardian, shards


def pipelined_us_per_step(
    ray: Any,
    actors: tuple[Any, Any, list[Any]],
    steps: int,
    *,
    separate_orders: bool,
    fetched_inside: bool,
    in_flight: int = 16,
) -> float:
    """Microseconds per step of the flow driven as a backtest drives it.

    Each step depends on the previous one's verdicts (and, with ``separate_orders``, on
    the call that sent its orders), and up to ``in_flight`` steps are submitted ahead, so
    the time per step is what a Ray bar time costs for this graph before any of our work.
    ``separate_orders``: the approved orders go to the gateway in a call of their own (as
    paper and live sessions send them), else with the next step's bars (backtests).
    ``fetched_inside``: the previous step's outputs are fetched inside the actors (the
    runtime's ``Lenient``), else passed as top-level references that Ray resolves first.
    """
    gateway, guardian, shards = actors

    def prev_of(ref: Any) -> list[Any]:
        if ref is None:
            return []
        return [[ref]] if fetched_inside else [ref]

    verdicts: Any = None
    acks: Any = None
    pending: deque[Any] = deque()
    warmup = 10
    started = time.perf_counter()
    for i in range(steps + warmup):
        if i == warmup:
            started = time.perf_counter()
        prev = prev_of(verdicts)
        if separate_orders:
            gw = gateway.call.remote(PAYLOAD)
            prev_acks = prev_of(acks)
            outs = [s.call.remote(*prev, *prev_acks, gw) for s in shards]
            verdicts = guardian.call.remote(*prev_acks, *outs, gw)
            acks = last = gateway.call.remote(verdicts)
        else:
            gw = gateway.call.remote(*prev, PAYLOAD)
            outs = [s.call.remote(*prev, gw) for s in shards]
            verdicts = last = guardian.call.remote(*outs, gw)
        pending.append(last)
        if len(pending) > in_flight:
            ray.get(pending.popleft())
    ray.get(list(pending))
    return (time.perf_counter() - started) / steps * 1e6


def _push_actors(ray: Any) -> tuple[Any, Any, list[Any]]:
    """The four stand-ins of the actor-to-actor flow, wired to each other."""

    @ray.remote
    class Gateway:
        def __init__(self) -> None:
            self.shards: list[Any] = []
            self.arrived: dict[int, float] = {}

        def wire(self, shards: list[Any]) -> None:
            self.shards = shards

        def bars(self, step: int, payload: bytes) -> None:
            for shard in self.shards:
                shard.push.remote(step, payload)

        def orders(self, step: int, payload: bytes) -> None:
            self.arrived[step] = time.perf_counter()

        def times(self) -> dict[int, float]:
            return self.arrived

    @ray.remote
    class Shard:
        def __init__(self, index: int, guardian: Any) -> None:
            self.index, self.guardian = index, guardian

        def push(self, step: int, payload: bytes) -> None:
            self.guardian.push.remote(step, self.index, PAYLOAD)

    @ray.remote
    class Guardian:
        def __init__(self, gateway: Any, shards: int) -> None:
            self.gateway, self.shards = gateway, shards
            self.held: dict[int, int] = {}

        def push(self, step: int, index: int, payload: bytes) -> None:
            n = self.held.get(step, 0) + 1
            if n < self.shards:
                self.held[step] = n
                return
            self.held.pop(step, None)
            self.gateway.orders.remote(step, PAYLOAD)

    gateway = Gateway.remote()  # type: ignore[attr-defined]
    guardian = Guardian.remote(gateway, 2)  # type: ignore[attr-defined]
    shards = [Shard.remote(i, guardian) for i in range(2)]  # type: ignore[attr-defined]
    ray.get(gateway.wire.remote(shards))
    return gateway, guardian, shards


def pushed_step_latencies_us(ray: Any, steps: int, gap_s: float = 0.01) -> list[float]:
    """Bar in -> order at the gateway, per step, with actors that message each other.

    Four stand-ins like those of ``stand_ins``, but no call goes through the driver or
    waits for a reply: the driver hands the bars to the gateway, which pushes them to both
    shards, each shard pushes its output to the guardian, and the guardian, once it holds
    both shards' output for the step, pushes its verdicts to the gateway, which notes the
    time. This is the floor of a step whose data flow is all actor to actor (the engine's
    steps are driven from the driver instead; see BENCHMARKS.md). A step is sent
    ``STEP_ROOM_S`` plus ``gap_s`` after the previous one: that one has then ended and the
    processes idled ``gap_s`` (as with the spaced pings). Times are CLOCK_MONOTONIC, which
    all processes share.
    """
    gateway, guardian, shards = _push_actors(ray)
    sent: dict[int, float] = {}
    warmup = 10
    for step in range(steps + warmup):
        sent[step] = time.perf_counter()
        gateway.bars.remote(step, PAYLOAD)
        time.sleep(STEP_ROOM_S + gap_s)
    deadline = time.monotonic() + 30
    arrived: dict[int, float] = {}
    while time.monotonic() < deadline:
        arrived = ray.get(gateway.times.remote())
        if len(arrived) == steps + warmup:
            break
        time.sleep(0.05)
    for actor in (gateway, guardian, *shards):
        ray.kill(actor)
    return [(arrived[s] - sent[s]) * 1e6 for s in range(warmup, steps + warmup) if s in arrived]


def _cpu_seconds(pids: list[int]) -> float:
    """CPU time (user + system) the processes have used so far (Linux ``/proc``)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        # Fields after the command name: state is the first, utime the 12th, stime the 13th.
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / tick


def idle_cores(pids: list[int], seconds: float = IDLE_S) -> float:
    """Cores the processes keep busy while nobody calls them."""
    before = _cpu_seconds(pids)
    time.sleep(seconds)
    return (_cpu_seconds(pids) - before) / seconds


def timed_steps(step: Callable[[], None], count: int, gap_s: float) -> list[float]:
    """Microseconds each of ``count`` steps takes, each after a pause of ``gap_s``
    (10 untimed steps first, to warm up)."""
    lat = []
    for i in range(count + 10):
        time.sleep(gap_s)
        t0 = time.perf_counter()
        step()
        if i >= 10:
            lat.append((time.perf_counter() - t0) * 1e6)
    return lat


COMPILED_TIMEOUT_S = 120.0


def compiled_step_flow(ray: Any, steps: int, gap_s: float) -> dict[str, Any]:
    """The same do-nothing step flow as a Ray compiled graph (``ray.dag``, shared-memory
    channels instead of a call and a reply per hop): its latency back to back and
    ``gap_s`` apart, and the cores its four idle actors keep busy, next to the same
    actors' before the graph is compiled (a compiled graph's actors wait for their
    inputs by polling). Fresh stand-ins, killed at the end: an actor in a compiled graph
    takes no other calls."""
    from ray.dag import InputNode

    gateway, guardian, shards = stand_ins(ray)
    actors = (gateway, guardian, *shards)
    pids = ray.get([a.pid.remote() for a in actors])
    plain_idle = idle_cores(pids)
    with InputNode() as bars:
        gw = gateway.call.bind(bars)
        outs = [s.call.bind(gw) for s in shards]
        verdicts = guardian.call.bind(*outs, gw)
        # Ray's 10 s defaults for a step's submit and result are hit on two loaded cores
        # (a CI run failed so); a step that takes this long is still a figure.
        dag = gateway.call.bind(verdicts).experimental_compile(_submit_timeout=COMPILED_TIMEOUT_S)
    try:

        def step() -> None:
            ray.get(dag.execute(PAYLOAD), timeout=COMPILED_TIMEOUT_S)

        hot = timed_steps(step, steps, 0.0)
        spaced = timed_steps(step, steps, gap_s)
        compiled_idle = idle_cores(pids)
    finally:
        dag.teardown()
        for actor in actors:
            ray.kill(actor)
    return {
        "back_to_back_us": hot,
        "spaced_us": spaced,
        "idle_cores": compiled_idle,
        "plain_idle_cores": plain_idle,
    }


def channel_step_flow(ray: Any, steps: int, gap_s: float) -> dict[str, Any]:
    """The same do-nothing step flow through ``RayRuntime`` with step channels (the
    engine's default transport): four actors that answer nothing, the calls made with
    ``tell`` as a step makes them, back to back and ``gap_s`` apart; and the cores the
    four keep busy idle with their channels open."""
    from sovereign.actors.runtime import ActorSpec, RayRuntime

    rt = RayRuntime(channel=True)
    gateway, guardian, *shards = (rt.spawn(ActorSpec(Idle, index=i)) for i in range(4))
    bars = [[], []]  # what the driver hands each shard (nothing: the flow is the point)
    try:

        def step() -> None:
            gw = rt.tell(gateway, [])
            outs = [rt.tell(s, gw, b) for s, b in zip(shards, bars, strict=True)]
            verdicts = rt.tell(guardian, *outs, gw)
            rt.fetch([rt.tell(gateway, verdicts)])

        hot, spaced = timed_steps(step, steps, 0.0), timed_steps(step, steps, gap_s)
        # With their channels open and idle: each actor has a thread blocked reading.
        pids = ray.get([h.pid.remote() for h in (gateway, guardian, *shards)])
        return {"back_to_back_us": hot, "spaced_us": spaced, "idle_cores": idle_cores(pids)}
    finally:
        rt.shutdown()


class Idle(Actor):
    """An actor that answers nothing: the stand-in of ``channel_step_flow``."""

    role = "idle"

    def receive(self, messages: list[Message]) -> list[Message]:
        return []

"""The step data flow of the engine on Ray with actors that do nothing: the floor of a step.

Four stand-in actors play the gateway, two shards and the guardian. Each call takes its
inputs (a reference inside a list is fetched inside the actor, as the runtime's
``Lenient`` inputs are) and returns 256 bytes, the size of a quiet step's payload. Used by
the bench's ping job and by ``benchmarks/ray_flow.py``.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

PAYLOAD = b"x" * 256


def stand_ins(ray: Any) -> tuple[Any, Any, list[Any]]:
    """The gateway, the guardian and two shards, started and ready."""

    @ray.remote
    class Stand:
        def call(self, *parts: Any) -> bytes:
            for part in parts:
                if isinstance(part, list):  # a Lenient input: fetched here
                    ray.get(part[0])
            return PAYLOAD

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

"""The floor of a Ray bar time: the engine's step data flow with actors that do nothing.

Four Ray actors stand for the gateway, two shards and the guardian; each call takes its
inputs and returns 256 bytes. The driver submits steps as a backtest does (16 in flight)
and each step depends on the previous one's verdicts, so a bar time cannot overlap the
next: the time per step is what Ray itself costs for this graph, before any of our work.
Four variants, the two choices the engine makes:

* whether a step's approved orders go to the gateway in a call of their own (as paper and
  live sessions send them) or with the next step's bars (what backtests do);
* whether the previous step's outputs are fetched inside the actor (the runtime's
  ``Lenient`` inputs, so that a failed step costs that step only) or passed as top-level
  references, which Ray resolves before the call (a failed step would then fail every
  later one).

Rounds alternate the variants, so the host's drift spreads over all of them.

    .venv/bin/python benchmarks/ray_flow.py [--steps 400] [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import deque
from typing import Any

import sovereign  # noqa: F401  (pins BLAS/OpenMP threads before Ray starts workers)

PAYLOAD = b"x" * 256
VARIANTS = {
    "separate order call, inputs fetched in the actor (engine before this session)": (
        True,
        True,
    ),
    "orders with the next bars, inputs fetched in the actor (backtests now)": (False, True),
    "separate order call, top-level references": (True, False),
    "orders with the next bars, top-level references": (False, False),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="flow")

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

    def run(separate_orders: bool, fetched_inside: bool) -> float:
        def ref(r: Any) -> Any:
            return [r] if fetched_inside else r

        verdicts: Any = None
        acks: Any = None
        in_flight: deque[Any] = deque()
        for i in range(args.steps + 10):
            if i == 10:
                started = time.perf_counter()
            prev = [] if verdicts is None else [ref(verdicts)]
            if separate_orders:
                gw = gateway.call.remote(PAYLOAD)
                prev_acks = [] if acks is None else [ref(acks)]
                outs = [s.call.remote(*prev, *prev_acks, gw) for s in shards]
                verdicts = guardian.call.remote(*prev_acks, *outs, gw)
                acks = gateway.call.remote(verdicts)
                last = acks
            else:
                gw = gateway.call.remote(*prev, PAYLOAD)
                outs = [s.call.remote(*prev, gw) for s in shards]
                verdicts = last = guardian.call.remote(*outs, gw)
            in_flight.append(last)
            if len(in_flight) > 16:
                ray.get(in_flight.popleft())
        ray.get(list(in_flight))
        return (time.perf_counter() - started) / args.steps * 1e6

    figures: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):
        for name, (separate, inside) in VARIANTS.items():
            figures[name].append(round(run(separate, inside), 1))
    ray.shutdown()
    if args.json:
        print(json.dumps({"us_per_step": figures, "steps": args.steps}, indent=2))
        return 0
    print(f"do-nothing step data flow on Ray, {args.steps} steps, 16 in flight; us per step:")
    for name, values in figures.items():
        print(f"  {name:<80} {', '.join(f'{v:,.0f}' for v in sorted(values))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The floor of a Ray bar time: the engine's step data flow with actors that do nothing.

Four Ray actors stand for the gateway, two shards and the guardian; each call takes its
inputs and returns 256 bytes. The driver submits steps as a backtest does (16 in flight)
and each step depends on the previous one's verdicts, so a bar time cannot overlap the
next: the time per step is what Ray itself costs for this graph, before any of our work.
Four variants, the two choices the engine makes:

* whether a step's approved orders go to the gateway in a call of their own (as paper and
  live sessions send them) or with the next step's bars (what backtests do);
* whether the previous step's outputs are fetched inside the actor (the runtime's
  ``Lenient`` inputs, so that a failed step costs that step only: paper and live
  sessions) or passed as top-level references, which Ray resolves before the call (a
  failed step then fails every later one, so a backtest stops at the first: backtests).

Rounds alternate the variants, so the host's drift spreads over all of them.

    .venv/bin/python benchmarks/ray_flow.py [--steps 400] [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys

import sovereign  # noqa: F401  (pins BLAS/OpenMP threads before Ray starts workers)
from sovereign.bench.rayflow import pipelined_us_per_step, stand_ins

VARIANTS = {
    "separate order call, inputs fetched in the actor (paper and live sessions)": (
        True,
        True,
    ),
    "orders with the next bars, inputs fetched in the actor": (False, True),
    "separate order call, top-level references": (True, False),
    "orders with the next bars, top-level references (backtests)": (False, False),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="flow")
    actors = stand_ins(ray)
    figures: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):
        for name, (separate, inside) in VARIANTS.items():
            us = pipelined_us_per_step(
                ray, actors, args.steps, separate_orders=separate, fetched_inside=inside
            )
            figures[name].append(round(us, 1))
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

"""Where a bar time goes: each actor's share of the LocalRuntime pipeline, per bar time.

Runs the ``--strategy breakout`` pipeline (as ``sovereign bench`` does) on one seeded
workload (prices in cents, as the benchmarks use them) and times every actor call
(``receive``, with the runtime's delivery) by wrapping the runtime's ``tell``. The rest of
the engine's wall time (the replay feed building the batches, the driver loop) is reported
as ``driver``. Orders and trades per bar time say how much of the work is per order rather
than per bar.

    .venv/bin/python benchmarks/pipeline_split.py                       # 100 x 2,000, 1 shard
    .venv/bin/python benchmarks/pipeline_split.py --data synthetic:2000x300 --wire --json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from typing import Any

from sovereign.bench.runner import _config, load_workload
from sovereign.session import run_session


def split(spec: str, shards: int, *, wire: bool = False) -> dict[str, Any]:
    data = load_workload(spec)
    spent: Counter[str] = Counter()

    def on_started(engine: Any) -> None:
        rt = engine.runtime
        tell = rt.tell

        def timed(handle: Any, *inputs: Any) -> Any:
            t0 = time.perf_counter()
            out = tell(handle, *inputs)
            spent[handle.role] += time.perf_counter() - t0
            return out

        rt.tell = timed

    with tempfile.TemporaryDirectory(prefix="sovereign-split-") as state:
        out = run_session(
            _config(shards),
            data,
            runtime="local",
            mode="backtest",
            state_dir=state,
            out_dir=None,
            on_started=on_started,
            wire=wire,
        )
    r = out.result
    steps = max(r.steps, 1)
    actors = {k: round(v / steps * 1e6, 1) for k, v in spent.most_common()}
    actors["driver"] = round((r.engine_seconds - sum(spent.values())) / steps * 1e6, 1)
    intents = sum(s.intents for s in r.shard_reports)
    return {
        "spec": spec,
        "shards": shards,
        "wire": wire,
        "bars": r.bars,
        "bar_times": r.steps,
        "bars_per_second": round(r.bars / r.engine_seconds, 1),
        "us_per_bar_time": round(r.engine_seconds / steps * 1e6, 1),
        "us_per_bar_time_by_actor": actors,
        "intents_per_bar_time": round(intents / steps, 2),
        "trades_per_bar_time": round(len(out.trades) / steps, 2),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="synthetic:100x2000")
    p.add_argument("--shards", type=int, default=1)
    p.add_argument(
        "--wire",
        action="store_true",
        help="deliver through the msgpack wire (what Ray does): the cost of serialisation",
    )
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    figures = split(args.data, args.shards, wire=args.wire)
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    print(
        f"{figures['spec']}, {figures['shards']} shard(s)"
        f"{', through the wire' if figures['wire'] else ''}: {figures['bars_per_second']:,.0f} "
        f"bars/s, {figures['us_per_bar_time']:,.0f} us per bar time, "
        f"{figures['intents_per_bar_time']} intents and {figures['trades_per_bar_time']} "
        "trades per bar time"
    )
    for role, us in figures["us_per_bar_time_by_actor"].items():
        print(f"  {role:<10} {us:>10,.1f} us per bar time")
    return 0


if __name__ == "__main__":
    sys.exit(main())

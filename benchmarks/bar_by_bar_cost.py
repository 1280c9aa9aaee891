"""What going bar by bar costs: the breakout preset (which runs in speculative chunks)
with one thing changed, against the default configuration: what switches chunks off,
and the regime models and slippage, which run in chunks too.

    .venv/bin/python benchmarks/bar_by_bar_cost.py                     # synthetic:100x2000
    .venv/bin/python benchmarks/bar_by_bar_cost.py --data synthetic:100x10000

Local runtime, one shard, each variant in this process one after the other; bars/s is the
engine's. Prints a Markdown table (variant, bars/s, steps run in chunks, trades).
"""

from __future__ import annotations

import argparse
import tempfile

import msgspec

from sovereign.bench.runner import _config, load_workload
from sovereign.session import run_session

VARIANTS: list[tuple[str, str, dict[str, object]]] = [
    ("breakout preset (chunks)", "breakout", {}),
    ("chunks off (`[engine] chunk_bars = 1`)", "breakout", {"engine.chunk_bars": 1}),
    ("slippage 1 bp (chunks)", "breakout", {"sim.slippage_bps": 1.0}),
    ("self-modification on", "breakout", {"selfmod.enabled": True}),
    ("HMM regime model on (chunks)", "breakout", {"regime.model": "hmm"}),
    (
        "HMM regime model on, chunks off",
        "breakout",
        {"regime.model": "hmm", "engine.chunk_bars": 1},
    ),
    ("(the default configuration)", "default", {}),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="synthetic:100x2000")
    args = ap.parse_args()
    data = load_workload(args.data)
    print("| variant | bars/s | steps in chunks | trades |\n|---|---:|---:|---:|")
    for name, preset, change in VARIANTS:
        c = _config(1, preset=preset)
        for key, value in change.items():
            section, field = key.split(".")
            part = msgspec.structs.replace(getattr(c, section), **{field: value})
            c = msgspec.structs.replace(c, **{section: part})
        with tempfile.TemporaryDirectory() as state:
            out = run_session(
                c, data, runtime="local", mode="backtest", state_dir=state, out_dir=None
            )
        r = out.result
        chunked = r.counters.get("chunked_steps", 0)
        print(
            f"| {name} | {r.bars / r.engine_seconds:,.0f} | {chunked:,} of {r.steps:,} "
            f"| {len(out.trades):,} |",
            flush=True,
        )


if __name__ == "__main__":
    main()

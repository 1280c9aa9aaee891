"""The breakout preset on accounts of realistic size: speculative chunks where the limits
bind.

With the preset's default capital ($1 billion) 100 shares never reach a limit and every
chunk is committed. On a $250,000 account the gross-exposure room and the 5 % position
limit bind: the guardian cuts or denies entries the shards assumed approved, and a chunk
whose speculation is wrong at some bar is discarded. Such a chunk is speculated again with
the sizes the guardian gave its entries on the discarded path (up to its first denial);
what a chunk that still fails did before its first wrong bar is committed as a chunk of its
own (``sovereign/replay.py``), and only the bars from the wrong one go bar by bar.

    .venv/bin/python benchmarks/account_size.py                        # synthetic:100x2000
    .venv/bin/python benchmarks/account_size.py --base d661983          # and a commit
    .venv/bin/python benchmarks/account_size.py --fixed-quantity 0      # guardian-sized

Local runtime, one shard; each run in a fresh process (``--one``); bars/s is the
engine's. Prints a Markdown table per tree; the trades of chunks on and off are compared.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CAPITALS = (250_000.0, 500_000.0, 1_000_000.0, 1e9)


def one(data: str, capital: float, chunk_bars: int, fixed: int = 100) -> dict[str, object]:
    import msgspec

    from sovereign.bench.runner import _config, load_workload
    from sovereign.session import run_session

    c = _config(1, preset="breakout")
    c = msgspec.structs.replace(
        c,
        engine=msgspec.structs.replace(c.engine, initial_capital=capital, chunk_bars=chunk_bars),
        strategy=msgspec.structs.replace(c.strategy, fixed_quantity=fixed),
    )
    with tempfile.TemporaryDirectory() as tmp:
        out = run_session(
            c,
            load_workload(data),
            runtime="local",
            mode="backtest",
            state_dir=Path(tmp) / "state",
            out_dir=Path(tmp) / "out",
            run_id="same",
        )
        trades = (Path(tmp) / "out" / "trades.csv").read_bytes()
    r = out.result
    return {
        "bars_per_second": r.bars / r.engine_seconds,
        "chunked_steps": r.counters.get("chunked_steps", 0),
        "steps": r.steps,
        "replayed": r.counters.get("chunks_replayed", 0),
        "prefixes": r.counters.get("chunk_prefixes_committed", 0),
        "resized": r.counters.get("chunks_resized", 0),
        "trades": len(out.trades),
        "digest": hashlib.sha256(trades).hexdigest()[:12],
    }


def measure(
    tree: Path, data: str, capital: float, chunk_bars: int, fixed: int
) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    p = subprocess.run(
        [sys.executable, __file__, "--one", json.dumps([data, capital, chunk_bars, fixed])],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="synthetic:100x2000")
    ap.add_argument("--base", default="", help="an earlier commit to compare with")
    ap.add_argument(
        "--fixed-quantity",
        type=int,
        default=100,
        help="shares per entry (the preset's 100; 0: the guardian sizes every entry)",
    )
    ap.add_argument("--one", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(*json.loads(args.one))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"this tree": ROOT}
        if args.base:
            base = Path(tmp) / "base"
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(base), args.base],
                check=True,
            )
            trees = {args.base: base, **trees}
        try:
            for label, tree in trees.items():
                print(f"\n{label}, {args.data}, fixed quantity {args.fixed_quantity}\n")
                print(
                    "| account | chunks off bars/s | chunks on bars/s | steps in chunks "
                    "| chunks discarded | chunks resized | prefixes committed | trades (same?) |"
                )
                print("|---|---:|---:|---:|---:|---:|---:|---|")
                for capital in CAPITALS:
                    off = measure(tree, args.data, capital, 1, args.fixed_quantity)
                    on = measure(tree, args.data, capital, 0, args.fixed_quantity)
                    same = "same" if off["digest"] == on["digest"] else "DIFFERENT"
                    print(
                        f"| ${capital:,.0f} | {off['bars_per_second']:,.0f} "
                        f"| {on['bars_per_second']:,.0f} "
                        f"| {on['chunked_steps']:,} of {on['steps']:,} | {on['replayed']:,} "
                        f"| {on['resized']:,} | {on['prefixes']:,} | {on['trades']:,} ({same}) |",
                        flush=True,
                    )
        finally:
            if args.base:
                subprocess.run(
                    ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)],
                    check=False,
                )


if __name__ == "__main__":
    main()

"""Throughput of the default configuration (no config file: the baseline strategy, the
regime models, self-modification, sized positions, slippage), this tree against an
earlier commit, on the same seeded workloads.

    .venv/bin/python benchmarks/default_config.py                      # this tree only
    .venv/bin/python benchmarks/default_config.py --base 860d86c       # and an earlier one
    .venv/bin/python benchmarks/default_config.py --data synthetic:100x2000 --json
    .venv/bin/python benchmarks/default_config.py --no-selfmod --bar-by-bar  # both ways

``--no-selfmod`` turns self-modification off (the one part of the default configuration
that still forces bar by bar); ``--bar-by-bar`` adds, for each workload, the same run with
``engine.chunk_bars = 1`` (no speculative chunks), whose trades must be the same.

Each measurement is a fresh process running one backtest with ``run_session`` on the
local runtime (``engine.shards`` = 2, the default; notifications off, as nobody listens);
the earlier commit is checked out in a temporary git worktree and imported from there
with the same interpreter. The figure is the engine's bars per second (from the first bar
until every actor has ended the session), with the trade count, which must agree.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPECS = ("synthetic:10x2000", "synthetic:100x2000", "synthetic:1000x2000")


def one(spec: str, selfmod: bool = True, chunk_bars: int = 0) -> dict[str, object]:
    import msgspec

    from sovereign.bench.runner import load_workload
    from sovereign.config import Config, NotificationsConfig
    from sovereign.session import run_session

    c = Config()
    off = {"trade_closed": "off", "order_rejected": "off"}
    c = msgspec.structs.replace(
        c,
        engine=msgspec.structs.replace(c.engine, seed=7, chunk_bars=chunk_bars),
        selfmod=msgspec.structs.replace(c.selfmod, enabled=selfmod),
        notifications=NotificationsConfig(telegram=off, console=off),  # type: ignore[arg-type]
    )
    data = load_workload(spec)
    with tempfile.TemporaryDirectory() as state:
        out = run_session(c, data, runtime="local", mode="backtest", state_dir=state, out_dir=None)
    r = out.result
    return {
        "spec": spec,
        "way": "bar by bar" if chunk_bars == 1 else "chunks",
        "bars_per_second": round(r.bars / r.engine_seconds),
        "trades": len(out.trades),
        "chunked_steps": int(r.counters.get("chunked_steps", 0)),
        "steps": int(r.steps),
    }


def spawn(tree: Path, spec: str, *flags: str) -> dict[str, object]:
    env = {
        **os.environ,
        "PYTHONPATH": str(tree),
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    p = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--one", spec, *flags],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if p.returncode != 0:
        raise SystemExit(f"{spec} failed in {tree}:\n{p.stderr[-2000:]}")
    return dict(json.loads(p.stdout.strip().splitlines()[-1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", action="append", help=f"workloads (default: {', '.join(SPECS)})")
    ap.add_argument("--base", default="", help="an earlier commit to compare with")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--no-selfmod", action="store_true", help="self-modification off")
    ap.add_argument("--bar-by-bar", action="store_true", help="each workload without chunks too")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--chunk-bars", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one, not args.no_selfmod, args.chunk_bars)))
        return 0
    flags = ["--no-selfmod"] if args.no_selfmod else []
    ways = [flags, [*flags, "--chunk-bars", "1"]] if args.bar_by_bar else [flags]
    trees = {"this tree": ROOT}
    with tempfile.TemporaryDirectory() as tmp:
        if args.base:
            base = Path(tmp) / "base"
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(base), args.base],
                check=True,
            )
            trees = {args.base: base, "this tree": ROOT}
        try:
            rows = [
                {"tree": name, **spawn(tree, spec, *way)}
                for spec in (args.data or SPECS)
                for name, tree in trees.items()
                for way in ways
            ]
        finally:
            if args.base:
                subprocess.run(
                    [
                        "git",
                        "-C",
                        str(ROOT),
                        "worktree",
                        "remove",
                        "--force",
                        str(Path(tmp) / "base"),
                    ],
                    check=False,
                )
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        head = f"{'workload':<22} {'tree':<12} {'way':<11} {'bars/s':>10} {'trades':>7}"
        print(f"{head} {'chunked steps':>16}")
        for r in rows:
            print(
                f"{r['spec']:<22} {r['tree']:<12} {r.get('way', 'chunks'):<11} "
                f"{r['bars_per_second']:>10,} {r['trades']:>7,} "
                f"{r.get('chunked_steps', 0):>7,}/{r.get('steps', 0):,}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

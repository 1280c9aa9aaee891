"""Throughput of ``sovereign backtest --data sample`` (self-modification on, the default)
on this tree against an earlier commit, interleaved so that the machine's drift hits both.

    .venv/bin/python benchmarks/selfmod_speed.py                 # --base 0548019 --repeat 5
    .venv/bin/python benchmarks/selfmod_speed.py --json

The earlier commit is checked out in a temporary git worktree and run with the same
interpreter (``python -m sovereign`` from the worktree imports the worktree's package).
Each run is a fresh process with fresh state; the figure is the engine's bars per second
from the report's ``metrics.json`` (``meta.bars_per_second``), and wall seconds of the
whole command. This tree is also run with self-modification off, for scale.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(cwd: Path, data: str, out: Path, *extra: str) -> tuple[float, float, int]:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    start = time.perf_counter()
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "sovereign",
            "backtest",
            "--data",
            data,
            "--out",
            str(out),
            "--state",
            str(out / "state"),
            *extra,
        ],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    wall = time.perf_counter() - start
    if p.returncode != 0:
        raise SystemExit(f"backtest failed in {cwd}:\n{p.stderr[-2000:]}")
    doc = json.loads((out / "metrics.json").read_text())
    return float(doc["meta"]["bars_per_second"]), wall, int(doc["total_trades"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--base", default="0548019", help="the earlier commit (default: before issue 18)"
    )
    ap.add_argument("--data", default="sample")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    off = ROOT / "benchmarks" / "_selfmod_off.toml"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        base = work / "base"
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(base), args.base],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        off.write_text("[selfmod]\nenabled = false\n")
        try:
            figures: dict[str, list[tuple[float, float, int]]] = {
                "base": [],
                "this": [],
                "this_off": [],
            }
            for i in range(args.repeat):
                figures["base"].append(run(base, args.data, work / f"b{i}"))
                figures["this"].append(run(ROOT, args.data, work / f"t{i}"))
                figures["this_off"].append(
                    run(ROOT, args.data, work / f"o{i}", "--config", str(off))
                )
        finally:
            off.unlink(missing_ok=True)
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, capture_output=True
            )
    result = {
        name: {
            "bars_per_second": statistics.median(f[0] for f in runs),
            "wall_seconds": statistics.median(f[1] for f in runs),
            "trades": runs[0][2],
        }
        for name, runs in figures.items()
    }
    result["slowdown"] = result["base"]["bars_per_second"] / result["this"]["bars_per_second"]
    result["base_commit"] = args.base
    if args.json:
        print(json.dumps(result, sort_keys=True))
        return 0
    print(f"sovereign backtest --data {args.data}, median of {args.repeat} (interleaved)")
    print(f"{'':34}{'bars/s':>10}{'wall s':>9}{'trades':>8}")
    labels = {
        "base": f"{args.base} (before), selfmod on",
        "this": "this tree, selfmod on",
        "this_off": "this tree, selfmod off",
    }
    for name, label in labels.items():
        r = result[name]
        print(f"{label:34}{r['bars_per_second']:>10,.0f}{r['wall_seconds']:>9.2f}{r['trades']:>8}")
    print(f"slowdown of selfmod on, this tree against {args.base}: {result['slowdown']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

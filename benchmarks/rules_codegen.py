"""Compiled versus interpreted rule-set evaluation (issue 4).

Builds a seeded, realistic rule set and seeded per-symbol features, checks that
``compile_ruleset`` and ``interpret`` agree, then times: the compile (first call, cache
cleared), the cached lookup, and one evaluation per call of each path at several universe
sizes. Exits 1 if the two paths disagree, since a fast wrong answer is not a result.

    .venv/bin/python benchmarks/rules_codegen.py [--rules 50] [--symbols 1000] [--repeat N]
                                                 [--seed 7] [--json]
"""

from __future__ import annotations

import os

# Before numpy loads: importing the package pins BLAS/OpenMP to one thread per process.
import sovereign

# Also set here, with setdefault as sovereign does, so the script's own settings are in
# view where its figures are made and a caller's explicit choice still wins.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from typing import Any  # noqa: E402

import msgspec  # noqa: E402
import numpy as np  # noqa: E402

from sovereign.core import codegen  # noqa: E402
from sovereign.core.codegen import (  # noqa: E402
    RuleFeatures,
    compile_ruleset,
    generate_source,
    interpret,
)
from sovereign.domain.rules import (  # noqa: E402
    Action,
    AdjustStop,
    AdjustTarget,
    And,
    ATRPercentAbove,
    Condition,
    ConfidenceBelow,
    ConsecutiveLossesAbove,
    MaxHold,
    Not,
    Or,
    RegimeIs,
    RequireConfidence,
    Rule,
    ScaleSize,
    SkipTrade,
    SRScoreAbove,
    SRScoreBelow,
    SymbolIn,
    TimeOfDayBetween,
    VolumeAbove,
    VolumeBelow,
    condition_problems,
    depth,
    walk,
)
from sovereign.messages.market import REGIME_NAMES, REGIME_UNKNOWN  # noqa: E402

SCALES = (100, 10_000)
"""Universe sizes measured besides ``--symbols``, for the scaling picture."""
WARMUP = 20
COMPILE_SAMPLES = 30
# SymbolIn draws from the first names of the universe, so every measured size holds them.
SYMBOL_POOL = 100

# The sub-conditions a rule generator keeps coming back to: the same regime, the same
# volume bucket, the opening and closing half hours. Rules share them, as real generated
# rule sets do, and the compiler computes each distinct one once.
SHARED_LEAVES: tuple[Condition, ...] = (
    RegimeIs("Volatile"),
    RegimeIs("Ranging"),
    RegimeIs("TrendingUp"),
    RegimeIs("TrendingDown"),
    VolumeBelow(20.0),
    VolumeBelow(30.0),
    VolumeAbove(80.0),
    SRScoreAbove(3),
    SRScoreBelow(2),
    ATRPercentAbove(2.5),
    TimeOfDayBetween(570, 600),
    TimeOfDayBetween(930, 960),
)
SHARED_COMPOUNDS: tuple[Condition, ...] = (
    And((RegimeIs("Volatile"), VolumeBelow(30.0))),
    And((SRScoreAbove(3), ATRPercentAbove(2.5))),
    Or((TimeOfDayBetween(570, 600), TimeOfDayBetween(930, 960))),
)


def symbol_name(i: int) -> str:
    return f"S{i:05d}"


# -- RULE SET ---------------------------------------------------------------------------


def _fresh_leaf(rng: np.random.Generator) -> Condition:
    # Round thresholds: generated rules come from bucketed statistics, not raw floats.
    kind = int(rng.integers(0, 10))
    if kind == 0:
        return RegimeIs(str(rng.choice(REGIME_NAMES)))
    if kind == 1:
        return VolumeBelow(float(rng.choice([10, 15, 20, 25, 30, 40])))
    if kind == 2:
        return VolumeAbove(float(rng.choice([60, 70, 75, 80, 90])))
    if kind == 3:
        return SRScoreBelow(int(rng.integers(1, 4)))
    if kind == 4:
        return SRScoreAbove(int(rng.integers(2, 7)))
    if kind == 5:
        return ATRPercentAbove(float(rng.choice([1.0, 1.5, 2.0, 3.0, 4.0])))
    if kind == 6:
        start = int(rng.integers(570, 930)) // 15 * 15
        return TimeOfDayBetween(start, start + int(rng.choice([15, 30, 60])))
    if kind == 7:
        picks = rng.choice(SYMBOL_POOL, size=int(rng.integers(1, 5)), replace=False)
        return SymbolIn(tuple(symbol_name(int(i)) for i in sorted(picks)))
    if kind == 8:
        return ConfidenceBelow(float(rng.choice([0.5, 0.55, 0.6, 0.65])))
    return ConsecutiveLossesAbove(int(rng.integers(2, 5)))


def _condition(rng: np.random.Generator, nesting: int) -> Condition:
    """A condition with ``nesting`` levels of And/Or/Not above its leaves."""
    if nesting == 0:
        if rng.random() < 0.55:
            return SHARED_LEAVES[int(rng.integers(len(SHARED_LEAVES)))]
        return _fresh_leaf(rng)
    if nesting == 1 and rng.random() < 0.25:
        return SHARED_COMPOUNDS[int(rng.integers(len(SHARED_COMPOUNDS)))]
    op = rng.random()
    if op < 0.15:
        return Not(_condition(rng, nesting - 1))
    # One child carries the full nesting; its siblings are shallower, as in real rules.
    items = [_condition(rng, nesting - 1)]
    items += [_condition(rng, int(rng.integers(0, nesting))) for _ in range(rng.integers(1, 3))]
    rng.shuffle(items)
    return And(tuple(items)) if op < 0.7 else Or(tuple(items))


def _action(rng: np.random.Generator, kind: int) -> Action:
    if kind == 0:
        return SkipTrade(str(rng.choice(["low volume", "late session", "weak level", "chop"])))
    if kind == 1:
        return ScaleSize(float(rng.choice([0.25, 0.5, 0.75, 0.9])))
    if kind == 2:
        return AdjustStop(round(float(rng.uniform(0.5, 5.0)), 1))
    if kind == 3:
        return AdjustTarget(round(float(rng.uniform(0.5, 10.0)), 1))
    if kind == 4:
        return MaxHold(int(rng.integers(5, 391)))
    return RequireConfidence(round(float(rng.uniform(0.5, 0.9)), 2))


def build_rules(n_rules: int, seed: int) -> list[Rule]:
    """``n_rules`` well-formed rules, nesting 1-3, every action type present."""
    rng = np.random.default_rng(seed)
    # Round-robin then shuffled, so every action type appears and the mix is even.
    kinds = [i % 6 for i in range(n_rules)]
    rng.shuffle(kinds)
    rules: list[Rule] = []
    for i, kind in enumerate(kinds):
        while True:
            condition = _condition(rng, int(rng.integers(1, 4)))
            if not condition_problems(condition):
                break
        rules.append(
            Rule(
                rule_id=f"r{i:03d}",
                condition=condition,
                action=_action(rng, kind),
                provenance="benchmark",
            )
        )
    return rules


def ruleset_stats(rules: Sequence[Rule]) -> dict[str, Any]:
    nodes = [n for r in rules for n in walk(r.condition)]
    depths = [depth(r.condition) for r in rules]
    source, _ = generate_source(rules)
    return {
        "rules": len(rules),
        "condition_nodes": len(nodes),
        # What the compiler's memo keeps: one generated line per distinct sub-condition.
        "distinct_subconditions": len({msgspec.msgpack.encode(n) for n in nodes}),
        "depth_min": min(depths),
        "depth_max": max(depths),
        "actions": dict(sorted(Counter(type(r.action).__name__ for r in rules).items())),
        "source_lines": source.count("\n"),
    }


# -- FEATURES ---------------------------------------------------------------------------


def build_features(n: int, seed: int) -> RuleFeatures:
    rng = np.random.default_rng([seed, n])
    codes = np.array([0, 1, 2, 3, REGIME_UNKNOWN])
    volume = rng.uniform(0.0, 100.0, n)
    volume[rng.random(n) < 0.03] = np.nan  # a few symbols without a volume history yet
    return RuleFeatures(
        regime=rng.choice(codes, size=n, p=[0.3, 0.25, 0.3, 0.1, 0.05]).astype(np.uint8),
        volume_pct=volume,
        sr_score=rng.integers(0, 9, n).astype(np.int64),
        atr_pct=rng.lognormal(mean=0.5, sigma=0.6, size=n),
        minute=rng.integers(570, 960, n).astype(np.int64),
        symbol=np.array([symbol_name(i) for i in range(n)], dtype=object),
        confidence=rng.uniform(0.3, 1.0, n),
        # The losing streak is the shard's, the same for every candidate.
        losses=np.full(n, int(rng.integers(0, 5)), dtype=np.int64),
    )


# -- TIMING -----------------------------------------------------------------------------


def _summary(samples_ns: Sequence[int]) -> dict[str, float]:
    a = np.asarray(samples_ns, dtype=float) / 1e3
    return {
        "median_us": float(np.median(a)),
        "p90_us": float(np.percentile(a, 90)),
        "min_us": float(a.min()),
        "samples": len(a),
    }


def time_compile(rules: Sequence[Rule]) -> dict[str, Any]:
    # The cache is module state; clearing it is the only way to see the first call again.
    codegen._CACHE.clear()
    t0 = time.perf_counter_ns()
    compile_ruleset(rules)
    cold_ns = time.perf_counter_ns() - t0
    first_calls: list[int] = []
    source_only: list[int] = []
    for _ in range(COMPILE_SAMPLES):
        codegen._CACHE.clear()
        t0 = time.perf_counter_ns()
        compile_ruleset(rules)
        first_calls.append(time.perf_counter_ns() - t0)
        t0 = time.perf_counter_ns()
        generate_source(rules)
        source_only.append(time.perf_counter_ns() - t0)
    lookups: list[int] = []
    for _ in range(WARMUP):
        compile_ruleset(rules)
    for _ in range(COMPILE_SAMPLES * 10):
        t0 = time.perf_counter_ns()
        compile_ruleset(rules)
        lookups.append(time.perf_counter_ns() - t0)
    return {
        "first_in_process_us": cold_ns / 1e3,
        "first_call": _summary(first_calls),
        "source_generation": _summary(source_only),
        "cached_lookup": _summary(lookups),
    }


def time_interleaved(
    fns: Sequence[Callable[[RuleFeatures], object]], f: RuleFeatures, repeat: int
) -> list[list[int]]:
    """Per-call times of each function, interleaved so drift on a shared machine hits all."""
    for _ in range(WARMUP):
        for fn in fns:
            fn(f)
    samples: list[list[int]] = [[] for _ in fns]
    pc = time.perf_counter_ns
    # As timeit does: a collection landing inside one call would only add noise to p90.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for k in range(repeat):
            # Rotate which function goes first, so none always runs on a warmer cache.
            for j in range(len(fns)):
                i = (j + k) % len(fns)
                t0 = pc()
                fns[i](f)
                samples[i].append(pc() - t0)
    finally:
        if was_enabled:
            gc.enable()
    return samples


def time_scale(rules: Sequence[Rule], n: int, seed: int, repeat: int) -> dict[str, Any]:
    f = build_features(n, seed)
    fn = compile_ruleset(rules)
    # The membership tests the compiled function runs, one per distinct SymbolIn: np.isin
    # over object strings is the one leaf whose cost grows far faster than a comparison.
    symbol_sets = [v for v in generate_source(rules)[1].values() if isinstance(v, np.ndarray)]

    def symbol_in(g: RuleFeatures) -> None:
        for s in symbol_sets:
            np.isin(g.symbol, s)

    # Callers hold the compiled function, so the lookup is timed apart, in time_compile.
    c_ns, i_ns, s_ns = time_interleaved((fn, lambda g: interpret(rules, g), symbol_in), f, repeat)
    compiled, interpreted = _summary(c_ns), _summary(i_ns)
    return {
        "symbols": n,
        # Checked in main before anything was timed; a disagreement never gets this far.
        "agree": True,
        "compiled": compiled,
        "interpreted": interpreted,
        "speedup": interpreted["median_us"] / compiled["median_us"],
        "symbol_in": {**_summary(s_ns), "distinct_symbol_sets": len(symbol_sets)},
    }


# -- REPORT -----------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "sovereign": sovereign.__version__,
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "openblas_num_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
    }


def _fmt_us(us: float) -> str:
    return f"{us / 1e3:.2f} ms" if us >= 1e3 else f"{us:.1f} us"


def print_table(result: dict[str, Any]) -> None:
    s, c, cfg = result["ruleset"], result["compile"], result["config"]
    print(
        f"Rule-set compiler: {s['rules']} rules (seed {cfg['seed']}), "
        f"{cfg['repeat']} timed calls per figure after {WARMUP} warm-up calls"
    )
    print(
        f"  {s['condition_nodes']} condition nodes, {s['distinct_subconditions']} distinct "
        f"sub-conditions, depth {s['depth_min']}-{s['depth_max']}"
    )
    print("  actions: " + ", ".join(f"{k} {v}" for k, v in s["actions"].items()))
    print()
    print(f"  {'':37}{'median':>10}{'p90':>12}")
    for label, fig in (
        ("compile, first call (cache cleared)", c["first_call"]),
        ("  of which source generation", c["source_generation"]),
        ("cached lookup (hash of the rules)", c["cached_lookup"]),
    ):
        print(f"  {label:37}{_fmt_us(fig['median_us']):>10}{_fmt_us(fig['p90_us']):>12}")
    print(f"  (first compile in this process: {_fmt_us(c['first_in_process_us'])})")
    print()
    print(
        f"  {'symbols':>8}  {'compiled med':>12}  {'p90':>10}  "
        f"{'interpreted med':>15}  {'p90':>10}  {'speedup':>7}  {'SymbolIn':>9}  agree"
    )
    for row in result["scales"]:
        cm, im = row["compiled"], row["interpreted"]
        sym = row["symbol_in"]
        print(
            f"  {row['symbols']:>8}  {_fmt_us(cm['median_us']):>12}  {_fmt_us(cm['p90_us']):>10}"
            f"  {_fmt_us(im['median_us']):>15}  {_fmt_us(im['p90_us']):>10}"
            f"  {row['speedup']:>6.1f}x  {_fmt_us(sym['median_us']):>9}  yes"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", type=int, default=50, help="rules in the set (default 50)")
    parser.add_argument(
        "--symbols", type=int, default=1000, help="main universe size (default 1000)"
    )
    parser.add_argument(
        "--repeat", type=int, default=300, help="timed calls per figure (default 300)"
    )
    parser.add_argument("--seed", type=int, default=7, help="seed of rules and features")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.rules < 1 or args.symbols < 1 or args.repeat < 1:
        parser.error("--rules, --symbols and --repeat must be positive")

    rules = build_rules(args.rules, args.seed)
    sizes = sorted({*SCALES, args.symbols})
    # Agreement first, at every size: nothing is timed if any answer is wrong.
    for n in sizes:
        f = build_features(n, args.seed)
        if not compile_ruleset(rules)(f).equals(interpret(rules, f)):
            print(f"compiled and interpreted results differ at {n} symbols", file=sys.stderr)
            return 1
    result: dict[str, Any] = {
        "benchmark": "rules_codegen",
        "config": {
            "rules": args.rules,
            "symbols": args.symbols,
            "sizes": sizes,
            "repeat": args.repeat,
            "warmup": WARMUP,
            "compile_samples": COMPILE_SAMPLES,
            "seed": args.seed,
        },
        "machine": machine(),
        "ruleset": ruleset_stats(rules),
        "compile": time_compile(rules),
        "scales": [time_scale(rules, n, args.seed, args.repeat) for n in sizes],
    }
    result["main"] = next(r for r in result["scales"] if r["symbols"] == args.symbols)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

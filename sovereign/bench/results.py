"""The benchmark's workloads, its result table and the targets it is held to."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

WORKLOADS: dict[str, tuple[int, int]] = {
    "a": (1, 1_000_000),
    "b": (100, 10_000),
    "c": (2_000, 2_000),
    # One symbol's long history: the default configuration's single-symbol target.
    "d": (1, 200_000),
}
PRESETS = ("breakout", "default")
"""What an engine run trades: ``breakout`` is the peer-comparable strategy
(``config.breakout_preset``); ``default`` is the configuration a user gets with no config
file (the baseline strategy, the regime models, self-modification, sized positions,
slippage and commissions)."""
FULL_SPECS = {f"synthetic:{n}x{bars}" for n, bars in WORKLOADS.values()}


def workload_spec(name: str, scale: float) -> str:
    symbols, bars = WORKLOADS[name]
    return f"synthetic:{symbols}x{max(100, round(bars * scale))}"


def report(results: list[dict[str, Any]], out: TextIO) -> None:
    """A readable table of the figures."""
    head = (
        f"{'what':<30} {'runtime':<7} {'sh':>2} {'bars':>11} {'bars/s':>12} "
        f"{'us/step':>9} {'RSS MiB':>8} {'trades':>7}"
    )
    out.write(head + "\n" + "-" * len(head) + "\n")
    for r in results:
        if "error" in r:
            what = f"{r.get('kind')} {r.get('spec', '')} {r.get('runtime', '')}"
            out.write(f"{what}: ERROR {r['error']}\n")
            continue
        if r["kind"] == "ping":
            _report_ping(r, out)
            continue
        what = f"{r['kind']} {r['spec'].removeprefix('synthetic:')}"
        if r.get("preset", "breakout") != "breakout":
            what += f" [{r['preset']}]"
        if r["kind"] == "latency":
            what += f" {r['gap_ms']} ms apart" if r.get("gap_ms") else " back to back"
            what += "" if r.get("channel", True) else " (calls)"
        line = (
            f"{what:<30} {r['runtime']:<7} {r.get('shards', ''):>2} {r['bars']:>11,} "
            f"{r['bars_per_second']:>12,.0f} {r['us_per_step']:>9,.1f} "
            f"{r.get('peak_tree_rss_mib', r['peak_rss_mib']):>8,.0f} {r['trades']:>7,}"
        )
        if "step_latency_us_p50" in r:
            line += (
                f"  step p50 {r['step_latency_us_p50']:,.0f} us, "
                f"p99 {r['step_latency_us_p99']:,.0f} us"
            )
        if "step_overhead_us_p50" in r:
            line += (
                f"; our actors' work p50 {r['step_work_us_p50']:,.0f} us, "
                f"transport overhead p50 {r['step_overhead_us_p50']:,.0f} us"
            )
        out.write(line + "\n")


def _report_ping(r: dict[str, Any], out: TextIO) -> None:
    """The bare Ray flows a ping job timed, a line each."""
    out.write(
        f"{'bare Ray actor ping':<30} {'ray':<7} {'':>2} {'':>11} {'':>12} "
        f"{r['ping_us_p50']:>9,.0f} {r['peak_rss_mib']:>8,.0f}  "
        f"p99 {r['ping_us_p99']:,.0f} us\n"
    )
    out.write(
        f"{'bare actors, step data flow':<30} {'ray':<7} {'':>2} {'':>11} {'':>12} "
        f"{r['chain_us_p50']:>9,.0f} {'':>8}  p99 {r['chain_us_p99']:,.0f} us\n"
    )
    gap = f"{r.get('spaced_gap_ms')} ms apart"
    flows: list[tuple[str, str]] = []
    if "spaced_ping_us_p50" in r:
        flows += [
            (f"ping, {gap}", "spaced_ping"),
            (f"step data flow, {gap}", "spaced_chain"),
            (f"actor-to-actor flow, {gap}", "pushed_chain"),
        ]
    if "channel_chain_us_p50" in r:
        flows += [
            ("step channels flow", "channel_chain"),
            (f"step channels flow, {gap}", "spaced_channel_chain"),
        ]
    if "compiled_chain_us_p50" in r:
        flows += [
            ("compiled graph flow", "compiled_chain"),
            (f"compiled graph flow, {gap}", "spaced_compiled_chain"),
        ]
    for label, key in flows:
        out.write(
            f"{label:<30} {'ray':<7} {'':>2} {'':>11} {'':>12} "
            f"{r[key + '_us_p50']:>9,.0f} {'':>8}  "
            f"p99 {r[key + '_us_p99']:,.0f} us\n"
        )
    if "compiled_chain_us_p50" in r:
        out.write(
            f"{'':<30} idle, the four actors keep {r['compiled_idle_cores']:.2f} "
            f"cores busy in a compiled graph, {r['plain_idle_cores']:.2f} without\n"
        )
    if "channel_idle_cores" in r:
        out.write(
            f"{'':<30} idle with their step channels open, four actors keep "
            f"{r['channel_idle_cores']:.2f} cores busy\n"
        )
    if "compiled_error" in r:
        out.write(f"{'compiled graph flow':<30} ray     failed: {r['compiled_error']}\n")
    if "pipelined_flow_us_per_step" in r:
        out.write(
            f"{'bare actors, pipelined steps':<30} {'ray':<7} {'':>2} {'':>11} {'':>12} "
            f"{r['pipelined_flow_us_per_step']:>9,.0f}  (the floor of a Ray bar time)\n"
        )


# Nautilus fills a market order at the close of the bar it is sent in (the others at the
# next open), which moves entries, stops and targets a little: its trade count may differ
# by this fraction (measured: 0.01 % on (a), 0.2 % on (b)). Everyone else must agree
# exactly.
TRADE_TOLERANCE = {"nautilus": 0.01}


def check_trades(results: list[dict[str, Any]]) -> list[str]:
    """Every path must make the reference's trades on the same data (within tolerance)."""
    problems = []
    ref = {
        r["spec"]: r["trades"] for r in results if r.get("kind") == "reference" and "error" not in r
    }
    for r in results:
        if r.get("kind") not in ("engine", "peer") or r.get("spec") not in ref or "error" in r:
            continue
        if r.get("preset", "breakout") != "breakout":
            continue  # the reference and the peers trade the breakout preset only
        want = ref[r["spec"]]
        allowed = TRADE_TOLERANCE.get(r["runtime"], 0.0) * want
        if abs(r["trades"] - want) > allowed:
            problems.append(
                f"{r['spec']} on {r['runtime']}: {r['trades']} trades, the reference {want}"
            )
    return problems


@dataclass(frozen=True, slots=True)
class Target:
    """One of issue 8's targets, measured in this run."""

    name: str
    value: float
    goal: float
    unit: str
    higher_is_better: bool = True

    @property
    def met(self) -> bool:
        return self.value >= self.goal if self.higher_is_better else self.value <= self.goal


def _latency_targets(ok: list[dict[str, Any]]) -> list[Target]:
    """Each Ray step against a ping measured the same way, with the floors of its flow."""
    ping = next((r for r in ok if r.get("kind") == "ping"), None)
    out: list[Target] = []
    for r in ok:
        if r.get("kind") != "latency" or ping is None:
            continue
        # Each step against a ping measured the same way: back to back, or spaced apart.
        gap = r.get("gap_ms", 0)
        key = "spaced_" if gap else ""
        if f"{key}ping_us_p50" not in ping:
            continue
        how = f"{gap} ms apart" if gap else "back to back"
        if r.get("channel", True):
            step, flow = "Ray step", f"{key}channel_chain_us_p50"
        else:  # for comparison: the engine's calls as plain Ray actor calls
            step, flow = "(Ray calls) step", f"{key}chain_us_p50"
        value = r["step_latency_us_p50"] / ping[f"{key}ping_us_p50"]
        out.append(Target(f"{step} p50 / bare actor ping, {how}", value, 4.0, "x", False))
        if "step_overhead_us_p50" in r:
            value = r["step_overhead_us_p50"] / ping[f"{key}ping_us_p50"]
            out.append(
                Target(f"{step} overhead p50 / bare actor ping, {how}", value, 4.0, "x", False)
            )
        if flow in ping:
            floor = ping[flow] / ping[f"{key}ping_us_p50"]
            out.append(
                Target(f"(floor) {step} do-nothing flow / ping, {how}", floor, 4.0, "x", False)
            )
        # The compiled graph is an alternative to Ray calls: listed with them.
        if not r.get("channel", True) and f"{key}compiled_chain_us_p50" in ping:
            floor = ping[f"{key}compiled_chain_us_p50"] / ping[f"{key}ping_us_p50"]
            out.append(
                Target(f"(floor) compiled-graph step flow / ping, {how}", floor, 4.0, "x", False)
            )
    return out


def targets(results: list[dict[str, Any]]) -> list[Target]:
    """The targets this run has the figures for (ratios from the same run)."""
    ok = [r for r in results if "error" not in r]

    def find(
        kind: str, workload: str, runtime: str, preset: str = "breakout"
    ) -> dict[str, Any] | None:
        symbols = WORKLOADS[workload][0]
        for r in ok:
            if (
                r.get("kind") == kind
                and r.get("runtime") == runtime
                and r.get("preset", "breakout") == preset
                and r.get("spec", "").startswith(f"synthetic:{symbols}x")
                and r.get("workload") in (None, "", workload)
            ):
                return r
        return None

    out: list[Target] = []
    scaled = {
        r["spec"]
        for r in ok
        if r.get("kind") == "engine" and r.get("runtime") == "local" and not _full(r)
    }
    # The targets are set on the full workloads: a shortened run only indicates them.
    suffix = f" [shortened: {', '.join(sorted(scaled))}]" if scaled else ""
    for w, per_second in (("b", 1_000_000.0), ("c", 1_000_000.0)):
        local = find("engine", w, "local")
        if local is not None:
            out.append(
                Target(
                    f"LocalRuntime bars/s on ({w})", local["bars_per_second"], per_second, "bars/s"
                )
            )
    for w, ratio in (("b", 50.0), ("a", 10.0)):
        local, nautilus = find("engine", w, "local"), find("peer", w, "nautilus")
        if local is not None and nautilus is not None:
            value = local["bars_per_second"] / nautilus["bars_per_second"]
            out.append(Target(f"LocalRuntime / NautilusTrader on ({w})", value, ratio, "x"))
    local, reference = find("engine", "b", "local"), find("reference", "b", "numpy")
    if local is not None and reference is not None:
        value = reference["bars_per_second"] / local["bars_per_second"]
        out.append(Target("numpy reference / LocalRuntime on (b)", value, 2.0, "x", False))
    out.extend(_latency_targets(ok))
    local, ray = find("engine", "c", "local"), find("engine", "c", "ray")
    if local is not None and ray is not None:
        value = local["bars_per_second"] / ray["bars_per_second"]
        out.append(Target("LocalRuntime / RayRuntime on (c)", value, 2.0, "x", False))
    local = find("engine", "b", "local")
    if local is not None:
        out.append(Target("peak RSS on (b)", local["peak_rss_mib"], 1024.0, "MiB", False))
    out.extend(_default_targets(find))
    return [Target(t.name + suffix, t.value, t.goal, t.unit, t.higher_is_better) for t in out]


def _full(r: dict[str, Any]) -> bool:
    """Whether a result ran its whole workload (not a ``--scale``d part of it)."""
    w = r.get("workload")
    return r["spec"] == workload_spec(w, 1.0) if w in WORKLOADS else r["spec"] in FULL_SPECS


def _default_targets(find: Callable[..., dict[str, Any] | None]) -> list[Target]:
    """Issue 19's targets for the configuration users run by default."""
    out: list[Target] = []
    for w, per_second in (("b", 250_000.0), ("c", 500_000.0), ("d", 50_000.0)):
        local = find("engine", w, "local", "default")
        if local is not None:
            out.append(
                Target(
                    f"default config, LocalRuntime bars/s on ({w})",
                    local["bars_per_second"],
                    per_second,
                    "bars/s",
                )
            )
    local, ray = find("engine", "c", "local", "default"), find("engine", "c", "ray", "default")
    if local is not None and ray is not None:
        value = local["bars_per_second"] / ray["bars_per_second"]
        out.append(
            Target("default config, LocalRuntime / RayRuntime on (c)", value, 2.0, "x", False)
        )
    return out


def report_targets(found: list[Target], out: TextIO) -> None:
    if not found:
        return
    out.write("\ntargets (issue 8), measured in this run:\n")
    width = max(len(t.name) for t in found)
    for t in found:
        sign = ">=" if t.higher_is_better else "<="
        out.write(
            f"  {'met    ' if t.met else 'NOT MET'} {t.name:<{width}} {t.value:>14,.2f} "
            f"{t.unit:<6} (goal {sign} {t.goal:,.0f})\n"
        )

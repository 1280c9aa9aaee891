"""``sovereign bench``: throughput, memory, latency and scaling of the whole pipeline.

Every measurement runs in a fresh Python process (``python -m sovereign.bench.runner
--one SPEC``) so that its peak RSS is its own and no warm cache flatters a later one. The
strategy is ``--strategy breakout`` (``sovereign.config.breakout_preset``) through the
full pipeline: shards, guardian, gateway with the simulated broker, trade memory, regime,
self-modification, monitor and operator actors. Workloads come from the seeded synthetic
generator (GARCH volatility clustering, volume that clusters with it):

    a   1 symbol      x 1,000,000 one-minute bars
    b   100 symbols   x    10,000 bars sharing timestamps
    c   2,000 symbols x     2,000 bars

``--scale`` shortens every workload's bar count (the symbol count stays), for quick runs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sovereign.bench.memory import TreeMemory
from sovereign.bench.rayflow import (
    PAYLOAD,
    channel_step_flow,
    compiled_step_flow,
    pipelined_us_per_step,
    pushed_step_latencies_us,
    stand_ins,
    timed_steps,
)
from sovereign.bench.results import (
    PRESETS,
    WORKLOADS,
    check_trades,
    report,
    report_targets,
    targets,
    workload_spec,
)

SEED = 7
# The pause before each spaced latency measurement: long enough that the processes of the
# graph go idle between steps, as they do between a paper session's bars.
SPACED_GAP_MS = 10


@dataclass(frozen=True, slots=True)
class Job:
    """One measurement, run in its own process."""

    kind: str  # "engine", "scaling" (an engine run of the scaling series), "reference",
    # "peer", "latency" or "ping"
    spec: str = ""
    runtime: str = "local"
    shards: int = 2
    steps: int = 0
    python: str = ""  # the interpreter of a peer that needs its own (NautilusTrader)
    gap_ms: int = 0  # latency probe: the pause before each timed step (0: back to back)
    channel: bool = True  # RayRuntime: calls on step channels (False: as Ray actor calls)
    preset: str = "breakout"  # an engine run's configuration (see PRESETS)
    workload: str = ""  # its name in WORKLOADS, if it is one


def _peak_rss_mib() -> float:
    # ru_maxrss is KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _config(shards: int, channel: bool = True, preset: str = "breakout") -> Any:
    import msgspec

    from sovereign.config import Config, NotificationsConfig, breakout_preset

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    config = breakout_preset(Config()) if preset == "breakout" else Config()
    # A benchmark has no operator listening: per-trade and per-order notifications go to
    # no channel, so the operator does not build them (as in any session so configured).
    off = {"trade_closed": "off", "order_rejected": "off"}
    return msgspec.structs.replace(
        config,
        engine=msgspec.structs.replace(config.engine, shards=shards, seed=SEED),
        ray=msgspec.structs.replace(config.ray, dashboard=False, channel=channel),
        notifications=NotificationsConfig(telegram=off, console=off),  # type: ignore[arg-type]
    )


def load_workload(spec: str) -> Any:
    """The seeded bars of a workload, prices rounded to the cent (volumes are whole shares).

    US equities trade in cents, and NautilusTrader stores prices at its instruments'
    precision (a cent): unrounded synthetic prices would give it other bars than everyone
    else. Rounded, all paths see the same numbers.
    """
    import dataclasses

    from sovereign.data.loaders import load_ohlcv

    data = load_ohlcv(spec, seed=SEED)
    frame = data.frame.copy()
    prices = ["open", "high", "low", "close"]
    frame[prices] = frame[prices].round(2)
    frame["volume"] = frame["volume"].round(0)
    return dataclasses.replace(data, frame=frame)


def run_job(job: Job) -> dict[str, Any]:
    """Carry out one measurement in this process and return its figures."""
    return {**_measure(job), "workload": job.workload}


def _measure(job: Job) -> dict[str, Any]:
    if job.kind == "ping":
        return _ray_ping(job.steps or 2_000)
    started = time.perf_counter()
    data = load_workload(job.spec)
    load_s = time.perf_counter() - started
    symbols = len(data.symbols)
    if job.kind == "reference":
        return _reference(data, job, load_s, started)
    if job.kind == "peer" and job.runtime == "nautilus":
        return {**_nautilus(_panel(data), job.python), "spec": job.spec}
    if job.kind == "peer":
        from sovereign.bench.peers import PEERS

        figures = PEERS[job.runtime](_panel(data))
        return {**figures, "spec": job.spec, "load_seconds": round(load_s, 3)}
    from sovereign.session import run_session

    config = _config(job.shards, job.channel, job.preset)
    latencies: list[float] = []
    engines: list[Any] = []

    def on_started(engine: Any) -> None:
        engines.append(engine)
        if job.kind == "latency":
            engine.step_latencies = latencies
            engine.step_gap_s = job.gap_ms / 1000

    with (
        tempfile.TemporaryDirectory(prefix="sovereign-bench-") as state,
        TreeMemory() as tree,
    ):
        out = run_session(
            config,
            data,
            runtime=job.runtime,
            mode="backtest",
            state_dir=state,
            out_dir=None,
            max_steps=job.steps or None,
            on_started=on_started,
        )
    r = out.result
    figures: dict[str, Any] = {
        "kind": job.kind,
        "spec": job.spec,
        "runtime": job.runtime,
        "shards": job.shards,
        "gap_ms": job.gap_ms,
        "channel": job.channel,
        "symbols": symbols,
        "bars": r.bars,
        "steps": r.steps,
        "load_seconds": round(load_s, 3),
        "engine_seconds": round(r.engine_seconds, 3),
        "process_seconds": round(time.perf_counter() - started, 3),
        "bars_per_second": round(r.bars / r.engine_seconds, 1),
        "bars_per_second_with_load": round(r.bars / (time.perf_counter() - started), 1),
        "us_per_step": round(r.engine_seconds / max(r.steps, 1) * 1e6, 1),
        "peak_rss_mib": round(_peak_rss_mib(), 1),
        # Sampled, the tree can miss the driver's own peak between two samples.
        "peak_tree_rss_mib": round(max(tree.peak_mib, _peak_rss_mib()), 1),
        "preset": job.preset,
        "trades": len(out.trades),
        "failed_steps": r.counters.get("failed_steps", 0),
    }
    if latencies:
        lat = np.array(latencies[10:] or latencies) * 1e6  # the first steps warm up
        figures["step_latency_us_p50"] = round(float(np.percentile(lat, 50)), 1)
        figures["step_latency_us_p99"] = round(float(np.percentile(lat, 99)), 1)
        engine = engines[0]
        if engine.call_times:
            work = step_work(engine.step_starts, latencies, engine.call_times)[10:]
            over = lat[: len(work)] - np.array(work) * 1e6
            figures["step_work_us_p50"] = round(float(np.percentile(np.array(work) * 1e6, 50)), 1)
            figures["step_overhead_us_p50"] = round(float(np.percentile(over, 50)), 1)
            figures["step_overhead_us_p99"] = round(float(np.percentile(over, 99)), 1)
    return figures


def step_work(
    starts: Sequence[float],
    latencies: Sequence[float],
    calls: dict[str, list[tuple[float, float]]],
) -> list[float]:
    """Seconds of each timed step spent in our actors' calls on its critical path.

    A step's path is the gateway (its bars, then its orders), the slowest shard and the
    guardian: the time each spent inside its calls within the step's window (decoding,
    our work, encoding) is the step's work; the rest of its latency is Ray's (calls on
    their way, results on their way back, processes waking up) and the driver's.
    """

    def busy(role: str) -> list[tuple[np.ndarray, np.ndarray]]:
        out = []
        for name, times in calls.items():
            if name.split("/")[1] == role and times:
                arr = np.array(sorted(times))
                out.append((arr[:, 0], arr[:, 1]))
        return out

    def within(actor: tuple[np.ndarray, np.ndarray], lo: float, hi: float) -> float:
        begin, end = actor
        i, j = np.searchsorted(begin, lo), np.searchsorted(begin, hi)
        return float(np.sum(np.minimum(end[i:j], hi) - begin[i:j]))

    gateway, shards, guardian = busy("gateway"), busy("shard"), busy("guardian")
    work = []
    for lo, seconds in zip(starts, latencies, strict=False):
        hi = lo + seconds
        total = sum(within(a, lo, hi) for a in (*gateway, *guardian))
        total += max((within(a, lo, hi) for a in shards), default=0.0)
        work.append(total)
    return work


def _panel(data: Any) -> dict[str, np.ndarray]:
    """The bars as (T, N) arrays; every symbol must have a bar at every bar time."""
    f = data.frame.sort_values(["ts", "symbol"], kind="stable")
    t, n = len(data.timestamps), len(data.symbols)
    if len(f) != t * n:
        raise ValueError("the reference and the peers need every symbol at every bar time")
    cols = {
        c: f[c].to_numpy(dtype=np.float64).reshape(t, n)
        for c in ("open", "high", "low", "close", "volume")
    }
    cols["ts"] = np.asarray(data.timestamps, dtype=np.int64)
    return cols


def _nautilus(cols: dict[str, np.ndarray], python: str) -> dict[str, Any]:
    """NautilusTrader in its own interpreter (it pins pandas < 3), on the same bars."""
    from pathlib import Path

    script = Path(__file__).with_name("peer_nautilus.py")
    with tempfile.TemporaryDirectory(prefix="sovereign-bench-") as tmp:
        path = Path(tmp) / "bars.npz"
        np.savez(path, **cols)
        del cols
        proc = subprocess.run(
            [python, str(script), str(path)], capture_output=True, text=True, check=False
        )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"NautilusTrader failed: {proc.stderr.strip()[-500:]}")
    return dict(json.loads(lines[-1]))


def _reference(data: Any, job: Job, load_s: float, started: float) -> dict[str, Any]:
    from sovereign.bench.reference import breakout_reference

    cols = _panel(data)
    t, n = cols["close"].shape
    t0 = time.perf_counter()
    trades = breakout_reference(
        cols["open"], cols["high"], cols["low"], cols["close"], cols["volume"]
    )
    seconds = time.perf_counter() - t0
    return {
        "kind": "reference",
        "spec": job.spec,
        "runtime": "numpy",
        "symbols": n,
        "bars": t * n,
        "steps": t,
        "load_seconds": round(load_s, 3),
        "engine_seconds": round(seconds, 3),
        "process_seconds": round(time.perf_counter() - started, 3),
        "bars_per_second": round(t * n / seconds, 1),
        "us_per_step": round(seconds / t * 1e6, 1),
        "peak_rss_mib": round(_peak_rss_mib(), 1),
        "trades": len(trades),
    }


def _percentile(values: Any, q: float) -> float:
    """The ``q`` percentile of ``values``, rounded as the figures are reported."""
    return round(float(np.percentile(values, q)), 1)


def _compiled_figures(ray: Any, n: int, gap: float) -> dict[str, Any]:
    """The step flow as a compiled graph, or why it failed (an experimental Ray API)."""
    try:
        compiled = compiled_step_flow(ray, n, gap)
    except Exception as exc:  # an experimental Ray API: keep the other figures
        return {"compiled_error": f"{type(exc).__name__}: {exc}"}
    return {
        "compiled_chain_us_p50": _percentile(compiled["back_to_back_us"], 50),
        "compiled_chain_us_p99": _percentile(compiled["back_to_back_us"], 99),
        "spaced_compiled_chain_us_p50": _percentile(compiled["spaced_us"], 50),
        "spaced_compiled_chain_us_p99": _percentile(compiled["spaced_us"], 99),
        "compiled_idle_cores": round(compiled["idle_cores"], 2),
        "plain_idle_cores": round(compiled["plain_idle_cores"], 2),
    }


def _ray_ping(n: int) -> dict[str, Any]:
    """A bare Ray actor round trip (bytes in, bytes out), the floor of a Ray step; and the
    step's data flow with actors that do nothing, back to back and spaced apart."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="bench")
    actors = stand_ins(ray)
    gateway, guardian, shards = actors

    def ping() -> None:
        ray.get(gateway.call.remote(PAYLOAD))

    def flow() -> None:
        # The data flow of one step of the benchmark's pipeline (no regime model) with
        # actors that do nothing: bars to the gateway, its output to two shards, the
        # shards to the guardian, its verdicts back to the gateway. Four calls in a row on
        # the critical path, references passed from call to call as the engine does.
        gw = gateway.call.remote(PAYLOAD)
        outs = [s.call.remote(gw) for s in shards]
        verdicts = guardian.call.remote(*outs, gw)
        ray.get(gateway.call.remote(verdicts))

    hot_ping, hot_flow = timed_steps(ping, n, 0.0), timed_steps(flow, n // 2, 0.0)
    # Spaced: each call after a pause, as a paper session's steps come (its processes
    # idle between bars, and waking them is part of every hop).
    gap = SPACED_GAP_MS / 1000
    spaced_ping = timed_steps(ping, n // 4, gap)
    spaced_flow = timed_steps(flow, n // 4, gap)
    # The same four stand-ins messaging each other directly, no hop through the driver.
    pushed = pushed_step_latencies_us(ray, n // 4, gap_s=gap)
    # The flow on step channels, the engine's default transport.
    on_channels = channel_step_flow(ray, n // 4, gap)
    # The flow driven as a backtest drives it (orders with the next bars, the previous
    # step's verdicts passed as references Ray resolves before the call, 16 steps in
    # flight): the floor of a Ray bar time for this graph.
    pipelined_us = pipelined_us_per_step(
        ray, actors, n // 2, separate_orders=False, fetched_inside=False
    )
    # The same flow as a compiled graph: what Ray's fastest transport costs per step, and
    # what its polling actors cost the machine while they wait.
    compiled_figures = _compiled_figures(ray, n // 4, gap)
    ray.shutdown()
    return {
        "kind": "ping",
        "runtime": "ray",
        "ping_us_p50": _percentile(hot_ping, 50),
        "ping_us_p99": _percentile(hot_ping, 99),
        "chain_us_p50": _percentile(hot_flow, 50),
        "chain_us_p99": _percentile(hot_flow, 99),
        "spaced_gap_ms": SPACED_GAP_MS,
        "spaced_ping_us_p50": _percentile(spaced_ping, 50),
        "spaced_ping_us_p99": _percentile(spaced_ping, 99),
        "spaced_chain_us_p50": _percentile(spaced_flow, 50),
        "spaced_chain_us_p99": _percentile(spaced_flow, 99),
        "pushed_chain_us_p50": _percentile(pushed, 50),
        "pushed_chain_us_p99": _percentile(pushed, 99),
        "channel_chain_us_p50": _percentile(on_channels["back_to_back_us"], 50),
        "channel_chain_us_p99": _percentile(on_channels["back_to_back_us"], 99),
        "spaced_channel_chain_us_p50": _percentile(on_channels["spaced_us"], 50),
        "spaced_channel_chain_us_p99": _percentile(on_channels["spaced_us"], 99),
        "channel_idle_cores": round(on_channels["idle_cores"], 2),
        "pipelined_flow_us_per_step": round(pipelined_us, 1),
        **compiled_figures,
        "peak_rss_mib": round(_peak_rss_mib(), 1),
    }


def spawn(job: Job, timeout: float = 3_600) -> dict[str, Any]:
    """Run ``job`` in a fresh interpreter; return its figures (or the error)."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
    }
    cmd = [sys.executable, "-m", "sovereign.bench.runner", "--one", json.dumps(_asdict(job))]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return {
            "kind": job.kind,
            "spec": job.spec,
            "runtime": job.runtime,
            "error": " | ".join(tail),
        }
    return dict(json.loads(lines[-1]))


def _asdict(job: Job) -> dict[str, Any]:
    return {f: getattr(job, f) for f in job.__slots__}  # type: ignore[attr-defined]


def plan(
    workloads: Sequence[str],
    scale: float,
    runtimes: Sequence[str],
    *,
    latency_steps: int,
    scaling: bool,
    peers: Sequence[str] = (),
    nautilus_python: str = "",
    presets: Sequence[str] = ("breakout",),
) -> list[Job]:
    jobs: list[Job] = []
    for w in workloads:
        spec = workload_spec(w, scale)
        if "breakout" in presets:
            jobs.append(Job("reference", spec, workload=w))
        # One shard in one process (LocalRuntime runs shards one after the other, so more
        # only add calls); two on Ray, one per core.
        for preset in presets:
            for r in runtimes:
                shards = 1 if r == "local" else 2
                jobs.append(
                    Job("engine", spec, runtime=r, shards=shards, preset=preset, workload=w)
                )
        if "breakout" in presets:
            jobs += [
                Job("peer", spec, runtime=p, python=nautilus_python, workload=w) for p in peers
            ]
    if "ray" in runtimes and latency_steps:
        jobs.append(Job("ping", steps=2_000))
        # On step channels (the default) and, for comparison, as plain Ray actor calls.
        for channel in (True, False):
            for gap_ms in (0, SPACED_GAP_MS):
                jobs.append(
                    Job(
                        "latency",
                        workload_spec("b", scale),
                        runtime="ray",
                        steps=latency_steps,
                        gap_ms=gap_ms,
                        channel=channel,
                    )
                )
    if scaling:
        for n in (10, 100, 1_000):
            jobs.append(Job("scaling", f"synthetic:{n}x{max(100, round(2_000 * scale))}", shards=1))
        for shards in (1, 2, 4):
            for r in runtimes:
                jobs.append(
                    Job(
                        "scaling",
                        f"synthetic:1000x{max(100, round(1_000 * scale))}",
                        runtime=r,
                        shards=shards,
                    )
                )
    return jobs


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sovereign bench", description=__doc__.splitlines()[0])
    p.add_argument("--workloads", default="a,b,c", help="comma-separated: a, b, c, d")
    p.add_argument(
        "--presets",
        default="breakout",
        help="comma-separated engine configurations: breakout (the peers' strategy), "
        "default (what a user runs with no config file)",
    )
    p.add_argument("--scale", type=float, default=1.0, help="fraction of each workload's bars")
    p.add_argument("--runtimes", default="local,ray")
    p.add_argument("--latency-steps", type=int, default=500, help="Ray per-step latency probe")
    p.add_argument("--scaling", action="store_true", help="also time symbols/shard and shards")
    p.add_argument("--json", action="store_true", help="print every figure as JSON on stdout")
    p.add_argument(
        "--peers",
        action="store_true",
        help="also run the strategy in backtrader (the optional bench extra) and, with "
        "--nautilus-python, in NautilusTrader; scripts/bench --peers sets up both",
    )
    p.add_argument(
        "--nautilus-python",
        default=os.environ.get("SOVEREIGN_BENCH_NAUTILUS_PYTHON", ""),
        help="with --peers: an interpreter with nautilus_trader==1.221.0 (scripts/bench makes one)",
    )
    p.add_argument("--log", default="", help="append each measurement to FILE as it finishes")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    if args.one is not None:
        sys.stdout.write(json.dumps(run_job(Job(**json.loads(args.one)))) + "\n")
        return 0
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = [w for w in workloads if w not in WORKLOADS]
    if unknown or not 0 < args.scale <= 1:
        p.error(f"workloads are a, b, c, d (got {unknown}); --scale is in (0, 1]")
    presets = [x.strip() for x in args.presets.split(",") if x.strip()]
    if not presets or any(x not in PRESETS for x in presets):
        p.error(f"presets are {', '.join(PRESETS)} (got {args.presets!r})")
    runtimes = [r.strip() for r in args.runtimes.split(",") if r.strip()]
    peers: list[str] = []
    if args.peers:
        try:
            import backtrader  # noqa: F401
        except ImportError:
            p.error("--peers needs the bench extra: pip install -e '.[bench]' (scripts/bench does)")
        peers = ["backtrader"]
        if args.nautilus_python:
            peers.append("nautilus")
    jobs = plan(
        workloads,
        args.scale,
        runtimes,
        latency_steps=args.latency_steps,
        scaling=args.scaling,
        peers=peers,
        nautilus_python=args.nautilus_python,
        presets=presets,
    )
    human = sys.stderr if args.json else sys.stdout
    human.write(f"sovereign bench: {len(jobs)} measurements, each in its own process\n")
    results = []
    for job in jobs:
        human.write(f"  {job.kind} {job.spec} {job.runtime} shards={job.shards} ...\n")
        human.flush()
        results.append(spawn(job))
        if args.log:
            # Each figure as it comes: a long run that is cut short keeps what it measured.
            with open(args.log, "a", encoding="utf-8") as log:
                log.write(json.dumps(results[-1]) + "\n")
    report(results, human)
    problems = check_trades(results)
    for problem in problems:
        human.write(f"INVALID: {problem}\n")
    found = targets(results)
    report_targets(found, human)
    if args.json:
        summary = [
            {"name": t.name, "value": round(t.value, 3), "goal": t.goal, "met": t.met}
            for t in found
        ]
        sys.stdout.write(
            json.dumps(
                {"results": results, "trade_mismatches": problems, "targets": summary}, indent=2
            )
            + "\n"
        )
    return 1 if problems or any("error" in r for r in results) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

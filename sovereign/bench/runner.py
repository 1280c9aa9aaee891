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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import numpy as np

from sovereign.bench.rayflow import (
    PAYLOAD,
    channel_step_flow,
    compiled_step_flow,
    pipelined_us_per_step,
    pushed_step_latencies_us,
    stand_ins,
    timed_steps,
)

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
SEED = 7
# The pause before each spaced latency measurement: long enough that the processes of the
# graph go idle between steps, as they do between a paper session's bars.
SPACED_GAP_MS = 10
_FULL = {f"synthetic:{n}x{bars}" for n, bars in WORKLOADS.values()}


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


def workload_spec(name: str, scale: float) -> str:
    symbols, bars = WORKLOADS[name]
    return f"synthetic:{symbols}x{max(100, round(bars * scale))}"


def _peak_rss_mib() -> float:
    # ru_maxrss is KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class TreeMemory:
    """The peak of the summed resident memory of this process and all its descendants
    (on Ray: the GCS, the raylet and every actor's worker process), sampled every
    ``interval`` seconds while the run lasts. Pages shared between processes (the object
    store, imported libraries) count once per process that maps them: an upper bound."""

    def __init__(self, interval: float = 0.25) -> None:
        import threading

        self.interval = interval
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def sample(self) -> None:
        import psutil

        me = psutil.Process()
        total = 0
        for proc in [me, *me.children(recursive=True)]:
            try:
                total += proc.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue  # a worker that ended between the listing and the reading
        self.peak_bytes = max(self.peak_bytes, total)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    @property
    def peak_mib(self) -> float:
        return self.peak_bytes / 2**20


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
        "peak_tree_rss_mib": round(tree.peak_mib, 1),
        "preset": job.preset,
        "workload": job.workload,
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

    def p(values: Any, q: float) -> float:
        return round(float(np.percentile(values, q)), 1)

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
    compiled_figures: dict[str, Any]
    try:
        compiled = compiled_step_flow(ray, n // 4, gap)
    except Exception as exc:  # an experimental Ray API: keep the other figures
        compiled_figures = {"compiled_error": f"{type(exc).__name__}: {exc}"}
    else:
        compiled_figures = {
            "compiled_chain_us_p50": p(compiled["back_to_back_us"], 50),
            "compiled_chain_us_p99": p(compiled["back_to_back_us"], 99),
            "spaced_compiled_chain_us_p50": p(compiled["spaced_us"], 50),
            "spaced_compiled_chain_us_p99": p(compiled["spaced_us"], 99),
            "compiled_idle_cores": round(compiled["idle_cores"], 2),
            "plain_idle_cores": round(compiled["plain_idle_cores"], 2),
        }
    ray.shutdown()
    return {
        "kind": "ping",
        "runtime": "ray",
        "ping_us_p50": p(hot_ping, 50),
        "ping_us_p99": p(hot_ping, 99),
        "chain_us_p50": p(hot_flow, 50),
        "chain_us_p99": p(hot_flow, 99),
        "spaced_gap_ms": SPACED_GAP_MS,
        "spaced_ping_us_p50": p(spaced_ping, 50),
        "spaced_ping_us_p99": p(spaced_ping, 99),
        "spaced_chain_us_p50": p(spaced_flow, 50),
        "spaced_chain_us_p99": p(spaced_flow, 99),
        "pushed_chain_us_p50": p(pushed, 50),
        "pushed_chain_us_p99": p(pushed, 99),
        "channel_chain_us_p50": p(on_channels["back_to_back_us"], 50),
        "channel_chain_us_p99": p(on_channels["back_to_back_us"], 99),
        "spaced_channel_chain_us_p50": p(on_channels["spaced_us"], 50),
        "spaced_channel_chain_us_p99": p(on_channels["spaced_us"], 99),
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
            jobs.append(Job("reference", spec))
        # One shard in one process (LocalRuntime runs shards one after the other, so more
        # only add calls); two on Ray, one per core.
        for preset in presets:
            for r in runtimes:
                shards = 1 if r == "local" else 2
                jobs.append(
                    Job("engine", spec, runtime=r, shards=shards, preset=preset, workload=w)
                )
        if "breakout" in presets:
            jobs += [Job("peer", spec, runtime=p, python=nautilus_python) for p in peers]
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
                and r.get("workload", workload) == workload
            ):
                return r
        return None

    out: list[Target] = []
    scaled = {
        r["spec"]
        for r in ok
        if r.get("kind") == "engine" and r.get("runtime") == "local" and r["spec"] not in _FULL
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


def main(argv: Sequence[str] | None = None) -> int:
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

"""`sovereign bench` end to end on a tiny workload: every figure present, trades agree."""

from __future__ import annotations

import json
import os

import pytest

from sovereign.bench.results import TRADE_TOLERANCE, check_trades, targets, workload_spec
from sovereign.bench.runner import main


def tiny_bench(capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, dict]:
    """``sovereign bench --json`` on 1 % of workload (b), LocalRuntime only."""
    args = ["--workloads", "b", "--scale", "0.02", "--runtimes", "local", "--latency-steps", "0"]
    code = main([*args, *extra, "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_a_tiny_bench_reports_every_figure_and_agreeing_trades(capsys) -> None:
    code, out = tiny_bench(capsys)
    assert code == 0, out
    assert out["trade_mismatches"] == []
    by_kind = {r["kind"]: r for r in out["results"]}
    engine, reference = by_kind["engine"], by_kind["reference"]
    assert engine["spec"] == reference["spec"] == workload_spec("b", 0.02) == "synthetic:100x200"
    assert engine["bars"] == reference["bars"] == 20_000
    assert engine["trades"] == reference["trades"] > 0
    for key in ("bars_per_second", "bars_per_second_with_load", "peak_rss_mib", "us_per_step"):
        assert engine[key] > 0
    names = {t["name"] for t in out["targets"]}
    shortened = " [shortened: synthetic:100x200]"
    assert {
        "LocalRuntime bars/s on (b)" + shortened,
        "numpy reference / LocalRuntime on (b)" + shortened,
    } <= names


def test_a_trade_count_disagreement_makes_the_comparison_invalid() -> None:
    results = [
        {"kind": "reference", "spec": "s", "trades": 10},
        {"kind": "engine", "spec": "s", "runtime": "local", "trades": 9},
    ]
    assert check_trades(results) == ["s on local: 9 trades, the reference 10"]


def test_the_peers_make_the_pipelines_trades(capsys) -> None:
    """backtrader (dev extra) trade for trade; NautilusTrader, in its own environment that
    scripts/test provides (SOVEREIGN_BENCH_NAUTILUS_PYTHON), within its documented
    tolerance. The workload is seeded, so the counts are the same on every run."""
    pytest.importorskip("backtrader")  # installed with the dev and bench extras
    nautilus = os.environ.get("SOVEREIGN_BENCH_NAUTILUS_PYTHON", "")
    if not nautilus and os.environ.get("CI"):
        pytest.fail("CI runs scripts/test, which provides the NautilusTrader environment")
    code, out = tiny_bench(capsys, "--peers", "--nautilus-python", nautilus)
    assert code == 0, out
    assert out["trade_mismatches"] == []
    peers = {r["runtime"]: r for r in out["results"] if r["kind"] == "peer"}
    by_kind = {r["kind"]: r for r in out["results"]}
    want = by_kind["reference"]["trades"]
    assert peers["backtrader"]["trades"] == by_kind["engine"]["trades"] == want
    if nautilus:
        got = peers["nautilus"]["trades"]
        assert abs(got - want) <= TRADE_TOLERANCE["nautilus"] * want, (got, want)
        assert got > 100 and peers["nautilus"]["bars"] == 20_000


def test_targets_are_ratios_of_the_same_runs_figures() -> None:
    results = [
        {
            "kind": "reference",
            "spec": "synthetic:100x10000",
            "runtime": "numpy",
            "bars_per_second": 1_600_000.0,
        },
        {
            "kind": "engine",
            "spec": "synthetic:100x10000",
            "runtime": "local",
            "bars_per_second": 200_000.0,
            "peak_rss_mib": 480.0,
        },
        {
            "kind": "peer",
            "spec": "synthetic:100x10000",
            "runtime": "nautilus",
            "bars_per_second": 20_000.0,
        },
        {
            "kind": "engine",
            "spec": "synthetic:2000x2000",
            "runtime": "local",
            "bars_per_second": 400_000.0,
        },
        {
            "kind": "engine",
            "spec": "synthetic:2000x2000",
            "runtime": "ray",
            "bars_per_second": 250_000.0,
        },
        {
            "kind": "ping",
            "runtime": "ray",
            "ping_us_p50": 700.0,
            "chain_us_p50": 3_500.0,
            "spaced_ping_us_p50": 2_000.0,
            "spaced_chain_us_p50": 6_000.0,
            "compiled_chain_us_p50": 630.0,
            "channel_chain_us_p50": 350.0,
            "spaced_channel_chain_us_p50": 900.0,
        },
        {
            "kind": "latency",
            "spec": "synthetic:100x500",
            "runtime": "ray",
            "gap_ms": 0,
            "step_latency_us_p50": 1_400.0,
            "step_overhead_us_p50": 560.0,
        },
        {
            "kind": "latency",
            "spec": "synthetic:100x500",
            "runtime": "ray",
            "gap_ms": 10,
            "channel": True,
            "step_latency_us_p50": 2_400.0,
        },
        {
            "kind": "latency",
            "spec": "synthetic:100x500",
            "runtime": "ray",
            "gap_ms": 0,
            "channel": False,
            "step_latency_us_p50": 7_000.0,
        },
        {
            "kind": "latency",
            "spec": "synthetic:100x500",
            "runtime": "ray",
            "gap_ms": 10,
            "channel": False,
            "step_latency_us_p50": 7_000.0,
        },
        {"kind": "engine", "spec": "synthetic:1x50000", "runtime": "local", "error": "boom"},
    ]
    got = {t.name: (round(t.value, 3), t.met) for t in targets(results)}
    assert got == {
        "LocalRuntime bars/s on (b)": (200_000.0, False),
        "LocalRuntime bars/s on (c)": (400_000.0, False),
        "LocalRuntime / NautilusTrader on (b)": (10.0, False),
        "numpy reference / LocalRuntime on (b)": (8.0, False),
        "Ray step p50 / bare actor ping, back to back": (2.0, True),
        "Ray step overhead p50 / bare actor ping, back to back": (0.8, True),
        "(floor) Ray step do-nothing flow / ping, back to back": (0.5, True),
        "Ray step p50 / bare actor ping, 10 ms apart": (1.2, True),
        "(floor) Ray step do-nothing flow / ping, 10 ms apart": (0.45, True),
        "(Ray calls) step p50 / bare actor ping, back to back": (10.0, False),
        "(floor) (Ray calls) step do-nothing flow / ping, back to back": (5.0, False),
        "(floor) compiled-graph step flow / ping, back to back": (0.9, True),
        "(Ray calls) step p50 / bare actor ping, 10 ms apart": (3.5, True),
        "(floor) (Ray calls) step do-nothing flow / ping, 10 ms apart": (3.0, True),
        "LocalRuntime / RayRuntime on (c)": (1.6, True),
        "peak RSS on (b)": (480.0, True),
    }


def test_the_pipeline_split_accounts_for_every_actor_and_the_driver() -> None:
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[2] / "benchmarks" / "pipeline_split.py"
    spec = importlib.util.spec_from_file_location("pipeline_split", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    figures = module.split("synthetic:20x300", 1)
    parts = figures["us_per_bar_time_by_actor"]
    assert {"shard", "gateway", "guardian", "monitor", "operator", "driver"} <= set(parts)
    assert sum(parts.values()) == pytest.approx(figures["us_per_bar_time"], rel=0.01)
    assert figures["bars"] == 6_000 and figures["trades_per_bar_time"] > 0


def test_workloads_are_in_cents_and_whole_shares_for_every_path() -> None:
    import numpy as np

    from sovereign.bench.runner import load_workload

    frame = load_workload("synthetic:5x300").frame
    for col in ("open", "high", "low", "close"):
        cents = frame[col].to_numpy() * 100
        assert np.allclose(cents, np.round(cents), atol=1e-6)
    assert (frame["volume"] == frame["volume"].round(0)).all()
    assert (frame["high"] >= frame[["open", "close"]].max(axis=1)).all()


def test_both_runtimes_replay_the_whole_of_each_workload() -> None:
    """With speculative chunks a million bar times on Ray take seconds, not hours: no
    runtime replays a shortened workload any more."""
    from sovereign.bench.runner import plan

    jobs = plan(["a"], 1.0, ["local", "ray"], latency_steps=0, scaling=False)
    got = [(j.kind, j.spec, j.runtime) for j in jobs]
    assert got == [
        ("reference", "synthetic:1x1000000", "local"),
        ("engine", "synthetic:1x1000000", "local"),
        ("engine", "synthetic:1x1000000", "ray"),
    ]


@pytest.mark.ray
def test_the_ping_job_times_every_flow_it_reports() -> None:
    """The floors the latency targets are read against: hot and spaced pings, the step
    flow both ways, the actor-to-actor flow and the compiled-graph flow, each a real
    measurement (its own Ray)."""
    from sovereign.bench.runner import Job, spawn

    r = spawn(Job("ping", steps=40), timeout=300)
    assert "error" not in r, r
    assert "compiled_error" not in r, r["compiled_error"]
    keys = ("ping", "chain", "spaced_ping", "spaced_chain", "pushed_chain", "compiled_chain")
    on_channels = ("channel_chain", "spaced_channel_chain")
    for key in (*keys, "spaced_compiled_chain", *on_channels):
        assert 0 < r[f"{key}_us_p50"] <= r[f"{key}_us_p99"], key
    # A flow of four calls cannot beat one round trip of one of them.
    assert r["chain_us_p50"] > r["ping_us_p50"]
    assert r["pushed_chain_us_p50"] > 0 and r["pipelined_flow_us_per_step"] > 0
    # Idle actors of a compiled graph poll their channels; plain idle actors sleep.
    assert r["compiled_idle_cores"] > r["plain_idle_cores"] >= 0
    assert r["channel_idle_cores"] >= 0


def test_step_work_counts_the_gateway_the_slowest_shard_and_the_guardian() -> None:
    """A step's work is its gateway calls, its slowest shard and its guardian, clipped to
    the step's window; calls of other steps and of the watchers do not count."""
    from sovereign.bench.runner import step_work

    calls = {
        "sovereign/gateway/0": [(0.0, 1.0), (8.0, 8.5), (10.0, 11.0)],
        "sovereign/shard/0": [(2.0, 4.0), (12.0, 13.0)],
        "sovereign/shard/1": [(2.0, 5.0)],
        "sovereign/guardian/0": [(6.0, 7.0), (9.8, 10.5)],  # the second runs past step 0
        "sovereign/monitor/0": [(1.0, 9.0)],
    }
    # Step 0: gateway 1 + 0.5, slowest shard 3, guardian 1 + 0.2 (clipped at 10).
    # Step 1: gateway 1, shard 1, guardian none (its call began in step 0).
    assert step_work([0.0, 10.0], [10.0, 5.0], calls) == pytest.approx([5.7, 2.0])


@pytest.mark.ray
@pytest.mark.parametrize("channel", [True, False], ids=["channel", "ray-calls"])
def test_the_latency_probe_splits_each_step_into_work_and_overhead(channel: bool) -> None:
    """The figure the latency target is read from: every timed step split into our
    actors' work on its path and the transport's overhead, both real and adding up to
    the step, on step channels and on Ray calls."""
    from sovereign.bench.runner import Job, spawn

    job = Job("latency", "synthetic:20x200", runtime="ray", steps=40, gap_ms=5, channel=channel)
    r = spawn(job, timeout=300)
    assert "error" not in r, r
    assert r["gap_ms"] == 5 and r["steps"] == 40 and r["channel"] is channel
    assert r["failed_steps"] == 0
    assert 0 < r["step_work_us_p50"] < r["step_latency_us_p50"]
    assert 0 < r["step_overhead_us_p50"] < r["step_latency_us_p50"]
    assert r["step_overhead_us_p50"] <= r["step_overhead_us_p99"]


def test_the_report_shows_the_compiled_graph_flow_or_why_it_failed() -> None:
    import io

    from sovereign.bench.results import report

    ping = {"kind": "ping", "runtime": "ray", "peak_rss_mib": 150.0, "spaced_gap_ms": 10}
    for key in ("ping", "chain", "spaced_ping", "spaced_chain", "pushed_chain"):
        ping |= {f"{key}_us_p50": 1_000.0, f"{key}_us_p99": 2_000.0}
    for key in ("channel_chain", "spaced_channel_chain"):
        ping |= {f"{key}_us_p50": 450.0, f"{key}_us_p99": 900.0}
    compiled = ping | {
        "compiled_chain_us_p50": 650.0,
        "compiled_chain_us_p99": 1_250.0,
        "spaced_compiled_chain_us_p50": 1_400.0,
        "spaced_compiled_chain_us_p99": 3_400.0,
        "compiled_idle_cores": 1.94,
        "plain_idle_cores": 0.02,
    }
    out = io.StringIO()
    report([compiled, ping | {"compiled_error": "RayChannelError: no channel"}], out)
    text = out.getvalue()
    assert "compiled graph flow, 10 ms apart" in text and "1,400" in text
    assert "step channels flow, 10 ms apart" in text and "450" in text
    assert "keep 1.94 cores busy in a compiled graph, 0.02 without" in text
    failed = [line for line in text.splitlines() if "failed:" in line]
    assert len(failed) == 1 and failed[0].startswith("compiled graph flow")
    assert failed[0].endswith("failed: RayChannelError: no channel")


def test_the_default_configuration_is_benchmarked_as_users_run_it(capsys) -> None:
    """``--presets default`` times the configuration a user gets with no config file (the
    regime models, self-modification, sized positions, slippage), reports the memory of
    the whole process tree, and leaves it out of the breakout reference's trade check."""
    from sovereign.bench.runner import _config, plan
    from sovereign.config import Config

    config, defaults = _config(1, preset="default"), Config()
    assert config.strategy == defaults.strategy and config.regime == defaults.regime
    assert config.sim == defaults.sim and config.selfmod == defaults.selfmod
    assert config.regime.model != "none" and config.selfmod.enabled
    assert config.strategy.fixed_quantity == 0 and config.sim.slippage_bps > 0
    jobs = plan(["b", "d"], 0.01, ["local"], latency_steps=0, scaling=False, presets=["default"])
    assert [(j.kind, j.preset, j.workload) for j in jobs] == [
        ("engine", "default", "b"),
        ("engine", "default", "d"),
    ]
    code, out = tiny_bench(capsys, "--presets", "default,breakout")
    assert code == 0, out
    engines = {r["preset"]: r for r in out["results"] if r["kind"] == "engine"}
    assert set(engines) == {"default", "breakout"}
    default = engines["default"]
    assert default["bars"] == 20_000 and default["peak_tree_rss_mib"] >= default["peak_rss_mib"]
    names = {t["name"] for t in out["targets"]}
    assert "default config, LocalRuntime bars/s on (b) [shortened: synthetic:100x200]" in names
    # A different strategy trades differently: no mismatch is reported for it.
    assert out["trade_mismatches"] == []

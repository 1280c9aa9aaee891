"""`sovereign bench` end to end on a tiny workload: every figure present, trades agree."""

from __future__ import annotations

import json

import pytest

from sovereign.bench.runner import check_trades, main, workload_spec


def test_a_tiny_bench_reports_every_figure_and_agreeing_trades(capsys) -> None:
    code = main(
        [
            "--workloads",
            "b",
            "--scale",
            "0.02",
            "--runtimes",
            "local",
            "--latency-steps",
            "0",
            "--json",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert code == 0, out
    assert out["trade_mismatches"] == []
    by_kind = {r["kind"]: r for r in out["results"]}
    engine, reference = by_kind["engine"], by_kind["reference"]
    assert engine["spec"] == reference["spec"] == workload_spec("b", 0.02) == "synthetic:100x200"
    assert engine["bars"] == reference["bars"] == 20_000
    assert engine["trades"] == reference["trades"] > 0
    for key in ("bars_per_second", "bars_per_second_with_load", "peak_rss_mib", "us_per_step"):
        assert engine[key] > 0


def test_a_trade_count_disagreement_makes_the_comparison_invalid() -> None:
    results = [
        {"kind": "reference", "spec": "s", "trades": 10},
        {"kind": "engine", "spec": "s", "runtime": "local", "trades": 9},
    ]
    assert check_trades(results) == ["s on local: 9 trades, the reference 10"]


def test_backtrader_makes_the_same_trades_as_the_pipeline(capsys) -> None:
    pytest.importorskip("backtrader")  # installed with the dev and bench extras
    code = main(
        [
            "--workloads",
            "b",
            "--scale",
            "0.02",
            "--runtimes",
            "local",
            "--latency-steps",
            "0",
            "--peers",
            "--json",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert code == 0, out
    by_kind = {r["kind"]: r for r in out["results"]}
    assert by_kind["peer"]["runtime"] == "backtrader"
    assert (
        by_kind["peer"]["trades"] == by_kind["engine"]["trades"] == by_kind["reference"]["trades"]
    )

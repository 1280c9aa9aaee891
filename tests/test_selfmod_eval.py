"""``sovereign eval selfmod``: self-modification on and off on the same data, a placebo,
and the overfitting figures (CSCV PBO, deflated Sharpe)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from sovereign.selfmod_eval import deflated_sharpe, pbo_cscv


def sovereign(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sovereign", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
    )


def test_where_no_rule_passes_on_and_off_are_the_same_run(tmp_path) -> None:
    """The bundled daily sample with the default configuration: nothing passes the
    tests, so the two backtests are identical, trade for trade; the placebo runs and
    nothing it replays deploys anything either."""
    p = sovereign(
        "eval",
        "selfmod",
        "--data",
        "sample",
        "--placebo",
        "3",
        "--out",
        "ev",
        "--json",
        cwd=tmp_path,
    )
    assert p.returncode == 0, p.stderr
    (result,) = json.loads(p.stdout)
    assert result["rules"]["deployed"] == 0 and result["identical"]
    assert result["on"]["pnl"] == result["off"]["pnl"] and result["on"]["trades"] > 50
    assert result["after_first_deployment"]["difference"] is None
    assert result["placebo"]["seeds"] == 3 and result["placebo"]["runs_deploying"] == 0
    assert "CSCV" in result["overfitting"]["pbo_method"]
    table = (tmp_path / "ev" / "selfmod-eval.md").read_text()
    assert table.startswith("| data |") and "| sample |" in table
    assert "Per symbol on sample" in table and "| AAPL |" in table
    per_symbol = result["on"]["per_symbol"]
    assert per_symbol == result["off"]["per_symbol"]
    assert set(per_symbol) <= {"AAPL", "FB", "GOOG", "IBM", "MSFT"}
    assert sum(x["trades"] for x in per_symbol.values()) == result["on"]["trades"]
    assert not list((tmp_path / "ev").glob("selfmod-eval-*")), "the runs' state was left behind"


def test_bad_arguments_are_refused_with_exit_code_2(tmp_path) -> None:
    p = sovereign("eval", "selfmod", "--placebo", "-1", "--out", "ev", cwd=tmp_path)
    assert p.returncode == 2 and "--placebo" in p.stderr and "Traceback" not in p.stderr
    p = sovereign("eval", "selfmod", "--data", "nope.csv", "--out", "ev", cwd=tmp_path)
    assert p.returncode == 2 and "nope.csv" in p.stderr and "Traceback" not in p.stderr


def test_pbo_is_low_for_a_real_edge_and_about_even_for_noise() -> None:
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 1, (800, 10))
    pbo_noise = pbo_cscv(noise)
    assert pbo_noise is not None and 0.25 <= pbo_noise <= 0.75
    edge = noise.copy()
    edge[:, 3] += 0.5  # one configuration is better in every period
    pbo_edge = pbo_cscv(edge)
    assert pbo_edge is not None and pbo_edge < 0.05
    assert pbo_cscv(noise[:, :1]) is None  # one configuration: nothing was chosen
    assert pbo_cscv(noise[:10]) is None  # too short to cut into blocks


def test_the_deflated_sharpe_ratio_discounts_many_trials() -> None:
    rng = np.random.default_rng(1)
    skilled = rng.normal(0.3, 1.0, 500)
    assert deflated_sharpe(skilled, np.array([0.0])) > 0.99
    lucky = rng.normal(0.05, 1.0, 500)
    few = deflated_sharpe(lucky, np.array([0.0]))
    many = deflated_sharpe(lucky, rng.normal(0.0, 0.05, 200))
    assert few is not None and many is not None and many < few
    assert deflated_sharpe(np.array([1.0, 2.0]), np.array([0.0])) is None

"""Regime models in the product: evaluation, training, and the actor's choices."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from sovereign.actors.regime import RegimeActor, bundled_foundation_path
from sovereign.config import RegimeConfig
from sovereign.core.foundation import FOUNDATION_VERSION
from sovereign.data.loaders import load_ohlcv
from sovereign.messages import REGIME_NAMES, BarBatch, RegimeUpdate
from sovereign.messages.base import IdSource
from sovereign.training.foundation import load_checkpoint


def sovereign(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sovereign", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
    )


def test_eval_regime_on_the_sample_reports_the_figures(tmp_path: Path) -> None:
    p = sovereign(
        "eval",
        "regime",
        "--data",
        "sample",
        "--start",
        "2004-01-01",
        "--out",
        "ev",
        "--json",
        cwd=tmp_path,
    )
    assert p.returncode == 0, p.stderr
    result = json.loads(p.stdout)
    assert set(result["regimes"]) == set(REGIME_NAMES)
    for stats in result["regimes"].values():
        assert {"share", "realized_vol", "drift"} <= stats.keys()
    assert abs(sum(s["share"] for s in result["regimes"].values()) - 1) < 1e-9
    vols = {k: v["realized_vol"] for k, v in result["regimes"].items()}
    # Volatile is markedly more volatile than every other regime.
    assert all(vols["Volatile"] > 1.25 * v for k, v in vols.items() if k != "Volatile")
    assert 0 < result["flicker_per_100"] < 15
    assert 0 <= result["hmm_foundation_agreement"] <= 1
    assert set(result["backtest"]) == {"real_regimes", "baseline"}
    assert result["backtest"]["real_regimes"]["total_trades"] > 0
    md = (tmp_path / "ev" / "regime_eval.md").read_text()
    assert "Flicker" in md and "| Volatile |" in md
    assert json.loads((tmp_path / "ev" / "regime_eval.json").read_text()) == result


def test_train_foundation_writes_a_checkpoint_that_loads(tmp_path: Path) -> None:
    out = tmp_path / "fm.pt"
    p = sovereign(
        "train",
        "foundation",
        "--data",
        "sample",
        "--symbols",
        "AAPL,MSFT",
        "--end",
        "2003-12-31",
        "--steps",
        "20",
        "--seed",
        "3",
        "--out",
        str(out),
        cwd=tmp_path,
    )
    assert p.returncode == 0, p.stderr
    ckpt = load_checkpoint(out)
    assert ckpt.version == FOUNDATION_VERSION and ckpt.seed == 3 and ckpt.steps == 20
    assert ckpt.interval_s == 23_400


def test_the_bundled_checkpoint_ships_and_loads() -> None:
    ckpt = load_checkpoint(bundled_foundation_path())
    assert ckpt.version == FOUNDATION_VERSION and ckpt.interval_s == 23_400
    assert ckpt.seed == 7 and ckpt.steps == 600


def _batches(data, shard: int = 0) -> list[BarBatch]:
    ids = IdSource("t")
    out = []
    for ts, g in data.frame.groupby("ts", sort=True):
        out.append(
            BarBatch.from_arrays(
                msg_id=ids.next(),
                ts=int(ts),
                interval_s=data.interval_s,
                symbols=g["symbol"].to_numpy().astype("S"),
                open=g["open"].to_numpy(),
                high=g["high"].to_numpy(),
                low=g["low"].to_numpy(),
                close=g["close"].to_numpy(),
                volume=g["volume"].to_numpy(),
                shard=shard,
            )
        )
    return out


def test_the_actor_blends_both_models_on_daily_bars() -> None:
    data = load_ohlcv("sample", symbols=["AAPL", "IBM"], end="2002-06-30")
    actor = RegimeActor(0, [["AAPL", "IBM"]], RegimeConfig(hmm_min_bars=100, hmm_window=200))
    updates = [m for b in _batches(data) for m in actor.receive([b])]
    last = updates[-1]
    assert isinstance(last, RegimeUpdate) and last.model == "hmm+foundation"
    assert (last.codes.to_numpy() != 255).all()
    np.testing.assert_allclose(last.probabilities.to_numpy().sum(axis=1), 1, atol=1e-5)


def test_the_actor_refuses_a_daily_model_on_minute_bars() -> None:
    data = load_ohlcv("sample:minute")
    actor = RegimeActor(0, [["AAPL"]], RegimeConfig(hmm_min_bars=100, hmm_window=200))
    updates = [m for b in _batches(data)[:300] for m in actor.receive([b])]
    assert actor.counters["foundation_interval_mismatch"] == 1
    assert updates[-1].model == "hmm"  # type: ignore[attr-defined]


def test_the_actor_answers_each_bar_as_its_own_whatever_one_call_holds() -> None:
    """Two shards in one call share one pass of the foundation model; a shard's second
    bar in the same call waits for the next round, so every update is its own bar's."""
    data = load_ohlcv("sample", symbols=["AAPL", "IBM", "MSFT"], end="2002-06-30")
    config = RegimeConfig(hmm_min_bars=100, hmm_window=200)
    shards = [["AAPL", "IBM"], ["MSFT"]]

    def split(b: BarBatch) -> list[BarBatch]:
        out = []
        for k, names in enumerate(shards):
            keep = np.isin(b.symbols.to_numpy(), np.array(names, dtype="S"))
            out.append(
                BarBatch.from_arrays(
                    msg_id=f"{b.msg_id}/{k}",
                    ts=b.ts,
                    interval_s=b.interval_s,
                    symbols=b.symbols.to_numpy()[keep],
                    open=b.open.to_numpy()[keep],
                    high=b.high.to_numpy()[keep],
                    low=b.low.to_numpy()[keep],
                    close=b.close.to_numpy()[keep],
                    volume=b.volume.to_numpy()[keep],
                    shard=k,
                )
            )
        return out

    bars = [split(b) for b in _batches(data)]
    one_at_a_time = RegimeActor(0, shards, config)
    alone = [one_at_a_time.receive([b]) for step in bars for b in step]
    together = RegimeActor(0, shards, config)
    # Two bar times of both shards in each call: rounds of one bar per shard.
    grouped = []
    for i in range(0, len(bars), 2):
        grouped.extend(together.receive([b for step in bars[i : i + 2] for b in step]))
    flat = [m for ms in alone for m in ms]
    assert len(flat) == len(grouped) > 200
    for a, b in zip(flat, grouped, strict=True):
        assert (a.shard, a.ts, a.model) == (b.shard, b.ts, b.model)
        np.testing.assert_array_equal(a.codes.to_numpy(), b.codes.to_numpy())
        np.testing.assert_allclose(
            a.probabilities.to_numpy(), b.probabilities.to_numpy(), atol=1e-6
        )
    assert flat[-1].model == "hmm+foundation"

"""The breakout strategy through the whole pipeline agrees trade for trade with the bare
numpy reference."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from sovereign.bench.reference import breakout_reference
from sovereign.config import Config, breakout_preset
from sovereign.data.loaders import load_ohlcv
from sovereign.session import run_session

REASONS = {"stop": 0, "target": 1, "max_hold": 2}


def panel(data) -> dict[str, np.ndarray]:
    f = data.frame.sort_values(["ts", "symbol"])
    t, n = len(data.timestamps), len(data.symbols)
    return {
        c: f[c].to_numpy(dtype=np.float64).reshape(t, n)
        for c in ("open", "high", "low", "close", "volume")
    }


@pytest.mark.parametrize("shards", [1, 3])
def test_the_pipeline_trades_exactly_like_the_reference(tmp_path, shards) -> None:
    data = load_ohlcv("synthetic:12x3000", seed=11)
    config = breakout_preset(Config())
    config = msgspec.structs.replace(
        config, engine=msgspec.structs.replace(config.engine, shards=shards)
    )
    out = run_session(
        config, data, runtime="local", mode="backtest", state_dir=tmp_path, out_dir=None
    )
    p = panel(data)
    ref = breakout_reference(p["open"], p["high"], p["low"], p["close"], p["volume"])
    assert len(ref) > 100, "the workload should trade"
    bar = {int(ts): i for i, ts in enumerate(data.timestamps)}
    col = {s: i for i, s in enumerate(data.symbols)}
    got = sorted(
        (
            col[r.symbol],
            bar[int(r.entry_ts)],
            bar[int(r.exit_ts)],
            round(float(r.entry_price), 9),
            round(float(r.exit_price), 9),
            REASONS[r.exit_reason],
        )
        for r in out.trades.itertuples()
    )
    want = sorted(
        zip(
            ref.symbol.tolist(),
            ref.entry_bar.tolist(),
            ref.exit_bar.tolist(),
            np.round(ref.entry_price, 9).tolist(),
            np.round(ref.exit_price, 9).tolist(),
            ref.reason.tolist(),
            strict=True,
        )
    )
    assert got == want
    assert (out.trades["quantity"] == 100).all()
    assert out.trades["commission"].sum() == 0

"""The breakout preset on the bundled daily sample (symbols listed late): the engine's
bars/s (best of 3 runs), the bar times run in chunks, and the trades. Run it in each tree
to compare:

    .venv/bin/python benchmarks/sample_preset.py
"""

from __future__ import annotations

import json
import tempfile

from sovereign.config import Config, breakout_preset
from sovereign.data.loaders import load_ohlcv
from sovereign.session import run_session


def main() -> None:
    data = load_ohlcv("sample")
    best = 0.0
    for _ in range(3):
        with tempfile.TemporaryDirectory() as state:
            out = run_session(
                breakout_preset(Config()),
                data,
                runtime="local",
                mode="backtest",
                state_dir=state,
                out_dir=None,
            )
        r = out.result
        best = max(best, r.bars / r.engine_seconds)
    figures = {
        "bars_per_second": round(best),
        "chunked_steps": r.counters.get("chunked_steps", 0),
        "steps": r.steps,
        "trades": len(out.trades),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()

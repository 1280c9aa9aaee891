"""A paper account restarted every day learns as one session over all its days: the
self-modification evidence (the budget spent, the candidates, the rules' records and the
trades, real and shadow) lives with the account and is reloaded at each start."""

from __future__ import annotations

from pathlib import Path

import msgspec
import numpy as np
import pandas as pd

from sovereign.config import Config, load_config
from sovereign.data.loaders import load_ohlcv
from sovereign.memory.governance import DEPLOYED, GovernanceStore
from sovereign.session import run_session

DEMO = Path(__file__).resolve().parents[1] / "examples" / "selfmod-demo.toml"
# Minute bars whose Volatile regime drifts down, on top of the generator's own weakness
# (TrendingDown drifts down): one third of them is too little to find anything in.
DATA = "synthetic:20x12000:drift=Volatile@-1"


def account_config(name: str) -> Config:
    config = load_config(DEMO)
    return msgspec.structs.replace(
        config, engine=msgspec.structs.replace(config.engine, account=name)
    )


def deployed(state: Path, name: str) -> list[str]:
    with GovernanceStore(state) as store:
        history = sorted(store.history(f"account/{name}", limit=1_000), key=lambda r: r.id)
    # The change and its condition (the evidence quoted in the rule's reason differs).
    return [r.summary.split(": ", 1)[1].split(" -> ")[0] for r in history if r.status == DEPLOYED]


def thirds(config: Config) -> list:
    full = load_ohlcv(DATA, seed=config.engine.seed)
    ts = np.unique(full.frame["ts"].to_numpy())
    cuts = [int(ts[0]), int(ts[len(ts) // 3]), int(ts[2 * len(ts) // 3]), int(ts[-1]) + 1]

    def iso(ns: int) -> str:
        return pd.Timestamp(ns, tz="UTC").isoformat()

    return [
        load_ohlcv(DATA, seed=config.engine.seed, start=iso(cuts[k]), end=iso(cuts[k + 1] - 1))
        for k in range(3)
    ]


def test_three_sessions_reach_the_deployments_of_one(tmp_path) -> None:
    one = account_config("one")
    run_session(
        one,
        load_ohlcv(DATA, seed=one.engine.seed),
        runtime="local",
        mode="paper",
        state_dir=tmp_path / "one",
        out_dir=None,
    )
    whole = deployed(tmp_path / "one", "one")
    assert whole, "one session over all the data deployed nothing"

    three = account_config("three")
    for part in thirds(three):
        run_session(
            three, part, runtime="local", mode="paper", state_dir=tmp_path / "three", out_dir=None
        )
    assert deployed(tmp_path / "three", "three") == whole
    with GovernanceStore(tmp_path / "three") as store:
        doc, trades = store.evidence("account/three")
    assert doc["looks"] >= 3 and len(trades) > 1_000

    # The same three sessions forgetting their evidence each night find nothing: it is
    # the evidence kept with the account that makes the difference.
    forgetful = account_config("forgetful")
    for part in thirds(forgetful):
        run_session(
            forgetful,
            part,
            runtime="local",
            mode="paper",
            state_dir=tmp_path / "forgetful",
            out_dir=None,
        )
        with GovernanceStore(tmp_path / "forgetful") as store:
            store._conn.execute("DELETE FROM evidence")
            store._conn.execute("DELETE FROM evidence_trades")
    assert deployed(tmp_path / "forgetful", "forgetful") == []

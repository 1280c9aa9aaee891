"""The shadow book: the trades a rule prevents are followed on the real bars, with the
real fill model and exits, and never reach a broker."""

from __future__ import annotations

from pathlib import Path

import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sovereign.actors.gateway import GatewayActor
from sovereign.actors.guardian import GuardianActor
from sovereign.actors.selfmod import SelfModActor
from sovereign.config import Config, SimConfig, StrategyConfig
from sovereign.core.constitution import Constitution
from sovereign.core.risk import SizingPolicy
from sovereign.core.selfmod import Change
from sovereign.core.shadow import ShadowCosts
from sovereign.core.signals import ShardStrategy
from sovereign.core.universe import Universe
from sovereign.data.loaders import load_ohlcv
from sovereign.domain.rules import (
    ConfidenceBelow,
    RegimeIs,
    RequireConfidence,
    Rule,
    ScaleSize,
    SkipTrade,
    SymbolIn,
    VolumeBelow,
)
from sovereign.memory.governance import GovernanceStore
from sovereign.memory.trade_memory import TradeMemory
from sovereign.messages import REGIME_NAMES, ShadowTradeClosed
from sovereign.session import run_session

DATA = "synthetic:4x3000"


def seed_rules(state_dir: Path, account: str, rules: list[Rule]) -> None:
    """Rules deployed on an account before its session, as the guardian would approve."""
    scope = f"account/{account}"
    with GovernanceStore(state_dir) as store:
        for rule in rules:
            change = Change("add_rule", rule=rule, rule_id=rule.rule_id)
            pid = f"P-{rule.rule_id}"
            store.decide(
                scope=scope,
                proposal_id=pid,
                session_date="2024-01-02",
                change=change,
                check=lambda book, today: [],
                ts_ns=0,
                actor="guardian",
                audit={},
            )
            store.record_deploy(
                scope=scope,
                ts_ns=0,
                session_date="2024-01-02",
                change=change,
                evidence={},
                trigger="test",
                actor="test",
                proposal_id=pid,
            )


def session(config: Config, state_dir: Path, account: str):
    config = msgspec.structs.replace(
        config,
        engine=msgspec.structs.replace(config.engine, account=account),
        # Nothing is analysed: the rules stay as seeded.
        selfmod=msgspec.structs.replace(config.selfmod, min_trades=10**6),
    )
    data = load_ohlcv(DATA, seed=config.engine.seed)
    return run_session(
        config, data, runtime="local", mode="paper", state_dir=state_dir, out_dir=None
    )


def test_a_prevented_trade_is_the_trade_the_book_would_have_made(tmp_path) -> None:
    """Every entry skipped: the shadow book trades exactly what the trade book trades
    without the rule — same entries and exits at the same prices, for the same reasons —
    and nothing reaches the broker."""
    config = Config()
    everything = Rule(
        rule_id="ALL",
        condition=SymbolIn(["S0000", "S0001", "S0002", "S0003"]),
        action=SkipTrade("all"),
    )
    seed_rules(tmp_path / "a", "a", [everything])
    with_rule = session(config, tmp_path / "a", "a")
    session(config, tmp_path / "b", "b")

    gateway = {s.role: s.counters for s in with_rule.result.actor_stats}["gateway"]
    assert gateway["submitted"] == 0  # no order at all: the shadow trades never left the shard
    shadow = TradeMemory(tmp_path / "a").shadow_frame()
    real = TradeMemory(tmp_path / "b").to_frame()
    assert TradeMemory(tmp_path / "a").count() == 0
    assert len(real) >= 20 and len(shadow) == len(real)
    assert set(shadow.rule_ids) == {"ALL"} and set(shadow.effect) == {"skipped"}
    keys = ["symbol", "entry_ts", "exit_ts", "exit_reason"]
    s = shadow.sort_values(keys).reset_index(drop=True)
    r = real.sort_values(keys).reset_index(drop=True)
    assert s[keys].equals(r[keys])
    # Same prices (the fill model is the broker's); quantities differ only because the
    # shadow book sizes at its own account's equity, which the rule kept flat.
    np.testing.assert_allclose(s.return_pct, r.return_pct, atol=5e-4)


def test_a_scaled_trade_records_the_part_not_bought(tmp_path) -> None:
    config = Config()
    half = Rule(rule_id="HALF", condition=RegimeIs("TrendingUp"), action=ScaleSize(0.5))
    seed_rules(tmp_path, "c", [half])
    session(config, tmp_path, "c")
    real = TradeMemory(tmp_path).to_frame()
    shadow = TradeMemory(tmp_path).shadow_frame()
    scaled = real[real.f_rules_acting.fillna("").str.contains("HALF")]
    assert len(scaled) > 0 and len(shadow) == len(scaled)
    assert set(shadow.effect) == {"scaled"}
    merged = scaled.assign(trade_id=scaled.trade_id + "-scaled").merge(
        shadow, on="trade_id", suffixes=("", "_shadow")
    )
    assert len(merged) == len(scaled)
    # Half bought: the other half, on the same prices.
    assert (abs(merged.quantity_shadow - merged.quantity) <= 1).all()


def test_only_self_modification_takes_shadow_trades() -> None:
    assert ShadowTradeClosed in SelfModActor.accepts
    assert ShadowTradeClosed not in GuardianActor.accepts
    assert ShadowTradeClosed not in GatewayActor.accepts


# -- the trade book never depends on the shadow book -------------------------------------

conditions = st.one_of(
    st.sampled_from(REGIME_NAMES).map(RegimeIs),
    st.floats(5, 95).map(VolumeBelow),
    st.floats(0.3, 0.9).map(ConfidenceBelow),
    st.sampled_from(["S0", "S1", "S2"]).map(lambda s: SymbolIn([s])),
)
actions = st.one_of(
    st.just(SkipTrade("x")),
    st.floats(0.1, 0.9).map(ScaleSize),
    st.floats(0.4, 0.95).map(RequireConfidence),
)
rule_sets = st.lists(st.tuples(conditions, actions), min_size=1, max_size=4).map(
    lambda pairs: [Rule(rule_id=f"R{i}", condition=c, action=a) for i, (c, a) in enumerate(pairs)]
)


def drive(strategy: ShardStrategy, seed: int, steps: int = 300) -> list[object]:
    """Bars through one strategy, every order filled at the next bar's open; returns
    every signal it sent towards the broker."""
    rng = np.random.default_rng(seed)
    n = 3
    close = 50 * np.exp(np.cumsum(rng.normal(0, 0.01, (steps, n)), axis=0))
    opens = close * np.exp(rng.normal(0, 0.002, (steps, n)))
    high = np.maximum(opens, close) * (1 + rng.uniform(0, 0.01, (steps, n)))
    low = np.minimum(opens, close) * (1 - rng.uniform(0, 0.01, (steps, n)))
    volume = rng.uniform(1e4, 1e5, (steps, n))
    regimes = rng.integers(0, 4, (steps, n)).astype(np.uint8)
    probs = np.full((n, 4), 0.25, dtype=np.float32)
    mask = np.ones(n, dtype=bool)
    sent: list[object] = []
    working: list[tuple[str, int]] = []
    for t in range(steps):
        ts = 1_700_000_000_000_000_000 + t * 60_000_000_000
        for order_id, qty in working:
            strategy.on_fill(order_id, qty, float(opens[t, 0]), 1.0, 0, ts)
        working = []
        entries, exits, cancels = strategy.on_bars(
            ts, mask, high[t], low[t], close[t], volume[t], regimes[t], probs, open_=opens[t]
        )
        sent.extend([*entries, *exits, *cancels])
        working += [(e.intent_id, 10) for e in entries]
        working += [(x.intent_id, x.quantity) for x in exits]
    return sent


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rules=rule_sets, seed=st.integers(0, 10_000))
def test_shadow_trades_never_reach_a_broker(rules: list[Rule], seed: int) -> None:
    """Whatever the rules, the signals a shard sends towards the guardian (the only way
    to a broker) are the same with the shadow book as without it, and none is a shadow
    trade's."""
    config = StrategyConfig(
        entry_regimes=list(REGIME_NAMES), breakout_window=5, volume_confirmation=False
    )
    universe = Universe(["S0", "S1", "S2"])
    costs = ShadowCosts(Constitution(), SizingPolicy(), SimConfig())
    plain = ShardStrategy(universe, config, 0)
    shadowed = ShardStrategy(universe, config, 0, shadow=costs)
    assert shadowed.shadow is not None
    shadowed.shadow.equity = 100_000.0
    for s in (plain, shadowed):
        s.set_rules(1, rules, {})
    sent_plain, sent_shadowed = drive(plain, seed), drive(shadowed, seed)
    assert sent_plain == sent_shadowed
    assert not any("shadow" in getattr(x, "intent_id", "") for x in sent_shadowed)
    shadows = shadowed.shadow.take_closed()
    assert all(s.rule_ids for s in shadows)
    assert not {s.trade.trade_id for s in shadows} & set(shadowed.orders)


if __name__ == "__main__":
    pytest.main([__file__])


def test_a_rule_whose_weakness_is_gone_is_retired_by_its_shadow_record(tmp_path) -> None:
    """An account carries a rule from earlier sessions, confirmed then with an effect of
    0.2 % a trade; on these bars its five symbols are like the other fifteen. The trades
    it skips, followed by the shadow book, do as well as those it keeps: the rule is
    proposed for retirement, approved by the guardian and removed (audited)."""
    from sovereign.config import load_config
    from sovereign.memory.governance import DEPLOYED

    demo = Path(__file__).resolve().parents[1] / "examples" / "selfmod-demo.toml"
    config = load_config(demo)
    config = msgspec.structs.replace(
        config, engine=msgspec.structs.replace(config.engine, account="old")
    )
    old = Rule(
        rule_id="R0-1",
        condition=SymbolIn(["S0000", "S0001", "S0002", "S0003", "S0004"]),
        action=SkipTrade("an old weakness"),
    )
    seed_rules(tmp_path, "old", [old])
    with GovernanceStore(tmp_path) as store:
        store.save_evidence("account/old", {"records": {"R0-1": [0.002, 0, 0]}}, 0, [])
    run_session(
        config,
        load_ohlcv("synthetic:20x6000", seed=config.engine.seed),
        runtime="local",
        mode="paper",
        state_dir=tmp_path,
        out_dir=None,
    )
    with GovernanceStore(tmp_path) as store:
        history = sorted(store.history("account/old", limit=100), key=lambda r: r.id)
        book = store.current("account/old")
        assert store.verify().ok
    removal = [r for r in history if r.status == DEPLOYED and r.summary == "remove R0-1"]
    assert removal and "R0-1" not in book.rule_ids()
    evidence = removal[0].evidence
    assert evidence["test"] == "welch_t_noninferiority" and evidence["prevented_n"] >= 20
    assert evidence["p_value"] <= evidence["look_level"]
    shadow = TradeMemory(tmp_path).shadow_frame()
    assert (shadow.rule_ids == "R0-1").sum() >= evidence["prevented_n"]

"""Self-modification end to end: find, confirm, deploy, compare, roll back, audit.

The data are synthetic minute bars with a planted weakness (whatever is bought in the
Volatile regime drifts down) on top of the generator's own (TrendingDown drifts down), long
enough for a weakness to be found at a look and confirmed on later trades."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sovereign.config import load_config
from sovereign.data.loaders import load_ohlcv
from sovereign.memory.audit import governance_path
from sovereign.memory.governance import DEPLOYED, ROLLED_BACK, GovernanceStore
from sovereign.session import run_session

DEMO = Path(__file__).resolve().parents[1] / "examples" / "selfmod-demo.toml"
PLANTED = "synthetic:20x16000:drift=Volatile@-1"


def sovereign(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sovereign", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory):
    """The README's self-modification demo, run once for the module."""
    root = tmp_path_factory.mktemp("selfmod")
    p = sovereign(
        "backtest",
        "--data",
        PLANTED,
        "--config",
        str(DEMO),
        "--out",
        "out",
        "--state",
        "state",
        "--json",
        cwd=root,
    )
    assert p.returncode == 0, p.stderr
    return root, p


def test_the_system_finds_a_weakness_and_deploys_a_rule(demo) -> None:
    root, p = demo
    assert "AutoDeployed #1" in p.stderr
    doc = json.loads((root / "out" / "metrics.json").read_text())
    sm = doc["self_modification"]
    assert sm["deployed"] >= 1
    first = sm["modifications"][0]
    assert first["status"] == "AutoDeployed" and "->" in first["summary"]
    assert "q_value=" in first["evidence"] and "counterfactual_pnl=" in first["evidence"]
    with GovernanceStore(root / "state") as store:
        (scope,) = store.scopes()[:1]
        book = store.current(scope)
        assert book.rules and book.version >= 1
        assert store.verify().ok


def test_the_report_compares_after_deployment_with_a_replay_without_rules(demo) -> None:
    root, _ = demo
    sm = json.loads((root / "out" / "metrics.json").read_text())["self_modification"]
    comparison = sm["comparison"]
    for side in ("with_rules", "without_rules"):
        for key in ("total_trades", "total_pnl", "win_rate", "sharpe", "max_drawdown"):
            assert key in comparison[side]
    assert comparison["with_rules"] != comparison["without_rules"]
    html = (root / "out" / "report.html").read_text()
    assert "Self-modification" in html and "Without" in html and "With the rules" in html


def test_each_rule_has_a_shadow_record_and_a_place_on_the_equity_chart(demo) -> None:
    """The planted weakness stays: its rule is kept, and the trades it skipped (followed
    by the shadow book) lost money, which the rule saved."""
    root, _ = demo
    sm = json.loads((root / "out" / "metrics.json").read_text())["self_modification"]
    records = {r["rule_id"]: r for r in sm["rules"]}
    assert records and all(r["retired"] is None for r in records.values())
    for r in records.values():
        assert r["acted_on"] > 0 and r["kept"] > 0
        assert r["effect"] == -r["acted_pnl"]
    assert sum(r["effect"] for r in records.values()) > 0
    html = (root / "out" / "report.html").read_text()
    assert "Each rule&#x27;s record" in html or "Each rule's record" in html
    # The deployments are drawn on the chart: it differs from the same curve without them.
    from sovereign.report_chart import equity_png

    ts = np.array([1, 2, 3], dtype=np.int64) * 86_400 * 10**9
    plain = equity_png(ts, np.array([1.0, 2.0, 3.0]), "t")
    marked = equity_png(ts, np.array([1.0, 2.0, 3.0]), "t", markers=[(int(ts[1]), "add R1", "g")])
    assert plain != marked


def test_rules_history_and_audit_commands_read_the_store(demo) -> None:
    root, _ = demo
    rules = sovereign("rules", "--state", "state", cwd=root)
    assert rules.returncode == 0 and "->" in rules.stdout and "SkipTrade" in rules.stdout
    history = sovereign("history", "--state", "state", "--limit", "2", cwd=root)
    assert history.returncode == 0 and "AutoDeployed" in history.stdout
    assert "page 1 of" in history.stdout and "q=" in history.stdout
    audit = sovereign("audit", "verify", "--state", "state", cwd=root)
    assert audit.returncode == 0 and "intact" in audit.stdout


def test_tampering_with_the_audit_log_is_detected(demo, tmp_path) -> None:
    root, _ = demo
    copy = tmp_path / "state"
    copy.mkdir()
    source = sqlite3.connect(governance_path(root / "state"))
    target = sqlite3.connect(copy / "governance.sqlite")
    source.backup(target)
    source.close()
    target.execute(
        "UPDATE audit SET payload = replace(payload, 'AutoDeployed', 'Nothing') "
        "WHERE seq = (SELECT MIN(seq) FROM audit WHERE action = 'modification_deployed')"
    )
    target.execute("UPDATE audit SET ts_ns = ts_ns + 1 WHERE action = 'modification_decision'")
    target.commit()
    target.close()
    audit = sovereign("audit", "verify", "--state", str(copy), cwd=tmp_path)
    assert audit.returncode == 1
    assert "TAMPERED" in audit.stdout and "edited" in audit.stdout


def test_a_rollback_reaches_the_running_shards(tmp_path) -> None:
    """Roll back from another connection (as the CLI does) while a session runs."""
    data = load_ohlcv(PLANTED, seed=7)
    config = load_config(DEMO)
    seen: dict[str, object] = {}

    def on_started(engine) -> None:
        seen["engine"] = engine

    def on_progress(p) -> None:
        engine = seen["engine"]
        actors = engine.runtime.actors  # type: ignore[attr-defined]
        shard = actors["sovereign/shard/0"].strategy
        if "rolled_back" not in seen:
            with GovernanceStore(tmp_path / "state") as store:
                deployed = [r for r in store.history(limit=50) if r.status == DEPLOYED]
                if deployed and shard.compiled is not None:
                    first = min(deployed, key=lambda r: r.id)
                    result = store.rollback(first.id, reason="test", by="ops", ts_ns=p.ts)
                    seen["rolled_back"] = result
                    seen["step"] = p.step
        elif p.step >= seen["step"] + 2 and "after" not in seen:  # type: ignore[operator]
            seen["after"] = (shard.rules_version, shard.compiled)
            engine.request_stop()  # what follows the rollback is not under test

    out = run_session(
        config,
        data,
        runtime="local",
        mode="paper",
        state_dir=tmp_path / "state",
        out_dir=None,
        run_id="rollback",
        on_progress=on_progress,
        on_started=on_started,
    )
    assert "rolled_back" in seen, "no rule was deployed early enough to roll back"
    result = seen["rolled_back"]
    version, compiled = seen["after"]  # type: ignore[misc]
    assert version == result.book.version  # type: ignore[attr-defined]
    assert compiled is None or not result.book.rules  # type: ignore[attr-defined]
    with GovernanceStore(tmp_path / "state") as store:
        assert store.get(result.modification_id).status == ROLLED_BACK  # type: ignore[attr-defined,union-attr]
    stats = {s.role: s.counters for s in out.result.actor_stats}
    assert stats["selfmod"]["external_rule_changes"] >= 1

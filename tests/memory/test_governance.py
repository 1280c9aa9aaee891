"""The governance store: versions, history, rollback, and the audit entries of each."""

from __future__ import annotations

import pytest

from sovereign.core.selfmod import Change, RuleBook
from sovereign.domain.rules import RegimeIs, Rule, ScaleSize, SkipTrade
from sovereign.memory.governance import (
    DEPLOYED,
    REJECTED,
    ROLLED_BACK,
    GovernanceStore,
    RollbackError,
)

SCOPE = "account/test"


def approve(store: GovernanceStore, change: Change, proposal_id: str) -> None:
    """The guardian's approval, as it records it (no deployment without one)."""
    decision = store.decide(
        scope=SCOPE,
        proposal_id=proposal_id,
        session_date="2024-01-02",
        change=change,
        check=lambda book, today: [],
        ts_ns=0,
        actor="guardian",
        audit={},
    )
    assert decision.approved


def deploy(store: GovernanceStore, rule_id: str, ts: int) -> int:
    change = Change(
        "add_rule",
        rule=Rule(rule_id=rule_id, condition=RegimeIs("Volatile"), action=ScaleSize(0.5)),
    )
    approve(store, change, f"P-{rule_id}")
    return store.record_deploy(
        scope=SCOPE,
        ts_ns=ts,
        session_date="2024-01-02",
        change=change,
        evidence={"n": 30, "q_value": 0.01},
        trigger="end_of_day",
        actor="test",
        proposal_id=f"P-{rule_id}",
    )[0]


def test_deploys_are_versioned_and_audited(tmp_path) -> None:
    with GovernanceStore(tmp_path) as store:
        first = deploy(store, "a", 1)
        second = deploy(store, "b", 2)
        book = store.current(SCOPE)
        assert book.version == 2 and [r.rule_id for r in book.rules] == ["a", "b"]
        history = store.history(SCOPE)
        assert [r.id for r in history] == [second, first]  # newest first
        assert history[0].status == DEPLOYED and history[0].evidence["q_value"] == 0.01
        assert store.verify().ok
        actions = [e[0] for e in store._conn.execute("SELECT action FROM audit ORDER BY seq")]
        assert actions == ["modification_decision", "modification_deployed"] * 2


def test_rejections_are_recorded_with_their_violations(tmp_path) -> None:
    with GovernanceStore(tmp_path) as store:
        mod = store.record_reject(
            scope=SCOPE,
            ts_ns=1,
            session_date="2024-01-02",
            change=Change("set_parameter", parameter="max_drawdown", value=0.5),
            evidence={},
            violations=["FORBIDDEN_FIELD: max_drawdown"],
            trigger="t",
            actor="test",
            version=0,
        )
        (rec,) = store.history(SCOPE)
        assert rec.id == mod and rec.status == REJECTED
        assert rec.violations == ["FORBIDDEN_FIELD: max_drawdown"]
        assert store.current(SCOPE) == RuleBook()
        with pytest.raises(RollbackError, match="never deployed"):
            store.rollback(mod, reason="x", by="ops", ts_ns=2)


def test_rollback_restores_the_set_from_before_and_undoes_what_came_after(tmp_path) -> None:
    with GovernanceStore(tmp_path) as store:
        a = deploy(store, "a", 1)
        b = deploy(store, "b", 2)
        c = deploy(store, "c", 3)
        result = store.rollback(b, reason="bad rule", by="ops", ts_ns=4)
        assert result.undone == [b, c]
        book = store.current(SCOPE)
        assert book.version == 4 and [r.rule_id for r in book.rules] == ["a"]
        statuses = {r.id: r.status for r in store.history(SCOPE)}
        assert statuses == {a: DEPLOYED, b: ROLLED_BACK, c: ROLLED_BACK}
        with pytest.raises(RollbackError, match="already rolled back"):
            store.rollback(b, reason="again", by="ops", ts_ns=5)
        with pytest.raises(RollbackError, match="no modification 99"):
            store.rollback(99, reason="?", by="ops", ts_ns=5)
        (entry,) = [
            e
            for e in store._conn.execute("SELECT action, payload FROM audit")
            if e[0] == "rollback"
        ]
        assert '"reason":"bad rule"' in entry[1]
        assert store.verify().ok


def test_a_failed_write_leaves_no_half_record(tmp_path, monkeypatch) -> None:
    with GovernanceStore(tmp_path) as store:
        deploy(store, "a", 1)
        change = Change(
            "add_rule",
            rule=Rule(rule_id="x", condition=RegimeIs("Volatile"), action=SkipTrade("x")),
        )
        approve(store, change, "P-x")

        def full_disk(*args: object) -> None:
            raise OSError("disk full")

        # The rule set fails to be written after the modification row was inserted.
        monkeypatch.setattr(store, "_save_book", full_disk)
        with pytest.raises(OSError):
            store.record_deploy(
                scope=SCOPE,
                ts_ns=2,
                session_date="2024-01-02",
                change=change,
                evidence={},
                trigger="t",
                actor="test",
                proposal_id="P-x",
            )
        assert store.count(SCOPE) == 1
        assert store.verify().entries == 3  # two decisions and one deployment
        # The approval was not used up by the failed write: the deployment can be retried.
        monkeypatch.undo()
        store.record_deploy(
            scope=SCOPE,
            ts_ns=3,
            session_date="2024-01-02",
            change=change,
            evidence={},
            trigger="t",
            actor="test",
            proposal_id="P-x",
        )
        assert [r.rule_id for r in store.current(SCOPE).rules] == ["a", "x"]

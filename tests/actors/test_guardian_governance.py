"""The constitution's daily and standing limits on self-modification are counted in the
governance store: no restart, second guardian or second session gets past them, and
nothing is deployed that the guardian did not approve."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sovereign.actors.guardian import GuardianActor
from sovereign.core.constitution import Constitution
from sovereign.core.risk import SizingPolicy
from sovereign.core.rules import RegimeIs, Rule, SkipTrade
from sovereign.core.selfmod import Change
from sovereign.memory.governance import GovernanceStore, UnapprovedChangeError
from sovereign.messages import ModificationDecision, ModificationProposal
from tests.kit import SECRET

SCOPE = "account/limits"
C = Constitution()


def guardian(state: str | Path) -> GuardianActor:
    return GuardianActor(0, C, SizingPolicy(), SECRET, 300, state_dir=str(state), state_scope=SCOPE)


def rule(rule_id: str) -> Rule:
    return Rule(rule_id=rule_id, condition=RegimeIs("Volatile"), action=SkipTrade("test"))


def propose(g: GuardianActor, rule_id: str, day: str, n: int = 0) -> ModificationDecision:
    (d,) = g.receive(
        [
            ModificationProposal(
                msg_id=f"m-{rule_id}-{n}",
                ts_event=0,
                ts_init=0,
                proposal_id=f"P-{rule_id}-{n}",
                kind="add_rule",
                reason="",
                session_date=day,
                rule=rule(rule_id),
            )
        ]
    )
    assert isinstance(d, ModificationDecision)
    return d


def codes(d: ModificationDecision) -> set[str]:
    return {v.split(":")[0] for v in d.violations}


def test_a_restarted_or_second_guardian_cannot_approve_a_fourth_change_in_a_day(tmp_path) -> None:
    day = "2024-01-02"
    first = guardian(tmp_path)
    assert all(propose(first, f"r{i}", day).approved for i in range(3))
    restarted = guardian(tmp_path)  # a Ray restart, or another session the same day
    fourth = propose(restarted, "r3", day)
    assert not fourth.approved and codes(fourth) == {"TOO_MANY_CHANGES_TODAY"}
    other = guardian(tmp_path)
    assert not propose(other, "r4", day).approved
    # The next day counts afresh; a rule id approved and not yet deployed is taken.
    day2 = "2024-01-03"
    assert propose(restarted, "r5", day2).approved
    taken = propose(guardian(tmp_path), "r5", day2, 1)
    assert not taken.approved and codes(taken) == {"MALFORMED"}


def test_nothing_is_deployed_without_an_unused_approval(tmp_path) -> None:
    g = guardian(tmp_path)
    assert propose(g, "ok", "2024-01-02").approved
    change = Change("add_rule", rule=rule("ok"))
    with GovernanceStore(tmp_path) as store:
        before = store.current(SCOPE)

        def deploy(proposal_id: str, change: Change = change) -> int:
            return store.record_deploy(
                scope=SCOPE,
                ts_ns=1,
                session_date="2024-01-02",
                change=change,
                evidence={},
                before=store.current(SCOPE),
                after=store.current(SCOPE).apply(change),
                trigger="t",
                actor="test",
                proposal_id=proposal_id,
            )

        with pytest.raises(UnapprovedChangeError):
            deploy("P-never-proposed")
        with pytest.raises(UnapprovedChangeError):  # approved, but for another change
            deploy("P-ok-0", Change("add_rule", rule=rule("swapped")))
        deploy("P-ok-0")
        with pytest.raises(UnapprovedChangeError):  # an approval is used once
            deploy("P-ok-0")
        assert [r.rule_id for r in store.current(SCOPE).rules] == ["ok"]
        assert before.version + 1 == store.current(SCOPE).version


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.one_of(
            st.just(("restart", "", "")),
            st.just(("deploy", "", "")),
            st.tuples(
                st.just("propose"),
                st.sampled_from(["a", "b", "c", "d", "e"]),
                st.sampled_from(["2024-01-02", "2024-01-03"]),
            ),
        ),
        min_size=1,
        max_size=25,
    )
)
def test_no_sequence_of_restarts_proposals_and_deploys_exceeds_the_limits(ops) -> None:
    """Restarts (a new guardian on the same store), proposals on two days, and the
    deployment of the latest approval: never more than the day's allowance, and never a
    rule id twice in the rule set, deployed or approved."""
    with tempfile.TemporaryDirectory() as state:
        g = guardian(state)
        approved: dict[str, int] = {}
        undeployed: list[tuple[str, str, str]] = []  # (proposal id, rule id, day)
        for n, (op, rule_id, day) in enumerate(ops):
            if op == "restart":
                g = guardian(state)
            elif op == "deploy" and undeployed:
                proposal_id, rid, d = undeployed.pop()
                change = Change("add_rule", rule=rule(rid))
                with GovernanceStore(state) as store, contextlib.suppress(UnapprovedChangeError):
                    # Refused when its day has ended (the approval expired): never deployed.
                    book = store.current(SCOPE)
                    store.record_deploy(
                        scope=SCOPE,
                        ts_ns=n,
                        session_date=d,
                        change=change,
                        evidence={},
                        before=book,
                        after=book.apply(change),
                        trigger="t",
                        actor="test",
                        proposal_id=proposal_id,
                    )
            elif op == "propose":
                decision = propose(g, rule_id, day, n)
                if decision.approved:
                    approved[day] = approved.get(day, 0) + 1
                    undeployed.append((f"P-{rule_id}-{n}", rule_id, day))
        assert all(v <= C.max_rule_changes_per_day for v in approved.values())
        with GovernanceStore(state) as store:
            deployed = [r.rule_id for r in store.current(SCOPE).rules]
            assert len(deployed) == len(set(deployed)) <= C.max_active_rules
            if approved:
                latest = max(approved)
                ids = [r.rule_id for r in store._approved_book(SCOPE, latest).rules]
                assert len(ids) == len(set(ids)) <= C.max_active_rules

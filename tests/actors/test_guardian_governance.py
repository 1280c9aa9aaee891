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
from sovereign.core.selfmod import Change
from sovereign.domain.rules import RegimeIs, Rule, SkipTrade
from sovereign.memory.governance import GovernanceStore, UnapprovedChangeError
from sovereign.memory.stores import Stores
from sovereign.messages import ModificationDecision, ModificationProposal
from tests.kit import SECRET

SCOPE = "account/limits"
C = Constitution()


def guardian(state: str | Path) -> GuardianActor:
    return GuardianActor(
        0, C, SizingPolicy(), SECRET, 300, stores=Stores(str(state)), state_scope=SCOPE
    )


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


SMALL = Constitution(max_active_rules=3)
DAYS = ["2024-01-02", "2024-01-03", "2024-01-04"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.one_of(
            st.just(("restart", "", 0)),
            st.tuples(st.just("deploy"), st.just(""), st.integers(0, 2)),
            st.tuples(
                st.sampled_from(["add", "remove"]),
                st.sampled_from(["a", "b", "c", "d", "e", "f"]),
                st.integers(0, 2),
            ),
        ),
        min_size=1,
        max_size=30,
    )
)
def test_no_sequence_of_restarts_proposals_and_deploys_exceeds_the_limits(ops) -> None:
    """Restarts (a new guardian on the same store), additions and removals proposed on
    three days, and the deployment of the latest approval on some day (its own or a
    later one), under a constitution of at most 3 active rules: never more approvals or
    deployments in a day than the constitution allows, never a rule id twice, and never
    more active rules than the limit, deployed or approved."""
    with tempfile.TemporaryDirectory() as state:

        def new_guardian() -> GuardianActor:
            return GuardianActor(
                0, SMALL, SizingPolicy(), SECRET, 300, stores=Stores(state), state_scope=SCOPE
            )

        g = new_guardian()
        undeployed: list[tuple[str, Change, str]] = []  # (proposal id, change, day)
        deployed_on: dict[str, int] = {}
        for n, (op, rule_id, day_index) in enumerate(ops):
            day = DAYS[day_index]
            if op == "restart":
                g = new_guardian()
            elif op == "deploy" and undeployed:
                proposal_id, change, approved_on = undeployed.pop()
                with GovernanceStore(state) as store, contextlib.suppress(UnapprovedChangeError):
                    # Refused when its day has ended or it no longer applies: never deployed.
                    store.record_deploy(
                        scope=SCOPE,
                        ts_ns=n,
                        session_date=approved_on,
                        change=change,
                        evidence={},
                        trigger="t",
                        actor="test",
                        proposal_id=proposal_id,
                    )
                    # A change counts against the day it was approved.
                    deployed_on[approved_on] = deployed_on.get(approved_on, 0) + 1
            elif op in ("add", "remove"):
                kind = "add_rule" if op == "add" else "remove_rule"
                (d,) = g.receive(
                    [
                        ModificationProposal(
                            msg_id=f"m{n}",
                            ts_event=0,
                            ts_init=0,
                            proposal_id=f"P{n}",
                            kind=kind,  # type: ignore[arg-type]
                            reason="",
                            session_date=day,
                            rule=rule(rule_id) if op == "add" else None,
                            rule_id="" if op == "add" else rule_id,
                        )
                    ]
                )
                assert isinstance(d, ModificationDecision)
                if d.approved:
                    change = (
                        Change("add_rule", rule=rule(rule_id))
                        if op == "add"
                        else Change("remove_rule", rule_id=rule_id)
                    )
                    undeployed.append((f"P{n}", change, day))
            with GovernanceStore(state) as store:
                deployed = [r.rule_id for r in store.current(SCOPE).rules]
                assert len(deployed) == len(set(deployed)) <= SMALL.max_active_rules
                approved = store._conn.execute(
                    "SELECT session_date, COUNT(*) FROM decisions WHERE approved = 1 GROUP BY 1"
                ).fetchall()
        assert all(k <= SMALL.max_rule_changes_per_day for _, k in approved)
        assert all(k <= SMALL.max_rule_changes_per_day for k in deployed_on.values())


def test_a_removal_not_yet_deployed_makes_no_room_for_a_rule_over_the_limit(tmp_path) -> None:
    """With the limit reached, an approved removal that is never deployed (the self-
    modification actor died) must not let an addition past the limit."""
    g = GuardianActor(
        0, SMALL, SizingPolicy(), SECRET, 300, stores=Stores(str(tmp_path)), state_scope=SCOPE
    )
    day1, day2 = DAYS[0], DAYS[1]
    with GovernanceStore(tmp_path) as store:
        for rid in ("a", "b", "c"):
            assert propose(g, rid, day1).approved
            store.record_deploy(
                scope=SCOPE, ts_ns=1, session_date=day1, change=Change("add_rule", rule=rule(rid)),
                evidence={}, trigger="t", actor="test", proposal_id=f"P-{rid}-0",
            )  # fmt: skip
        assert len(store.current(SCOPE).rules) == SMALL.max_active_rules
    (removal,) = g.receive(
        [
            ModificationProposal(
                msg_id="rm", ts_event=0, ts_init=0, proposal_id="P-rm", kind="remove_rule",
                reason="", session_date=day2, rule_id="a",
            )
        ]
    )  # fmt: skip
    assert isinstance(removal, ModificationDecision) and removal.approved
    over = propose(g, "d", day2)
    assert not over.approved and codes(over) == {"TOO_MANY_ACTIVE_RULES"}

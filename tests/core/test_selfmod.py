"""The constitutional check of self-modifications, and what no sequence of proposals can do."""

from __future__ import annotations

import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sovereign.actors.guardian import GuardianActor
from sovereign.core.constitution import Constitution
from sovereign.core.risk import SizingPolicy
from sovereign.core.selfmod import Change, RuleBook, check_proposal
from sovereign.domain.rules import (
    AdjustStop,
    MaxHold,
    RegimeIs,
    RequireConfidence,
    Rule,
    ScaleSize,
    SkipTrade,
    VolumeBelow,
)
from sovereign.memory.governance import GovernanceStore
from sovereign.memory.stores import Stores
from sovereign.messages import ModificationDecision, ModificationProposal, RuleSetSnapshot
from tests.kit import SECRET
from tests.strategies import rule as any_rule

C = Constitution()


def rule(rule_id: str = "r1", action: object = None, condition: object = None) -> Rule:
    return Rule(
        rule_id=rule_id,
        condition=condition or RegimeIs("Volatile"),  # type: ignore[arg-type]
        action=action or SkipTrade("test"),  # type: ignore[arg-type]
    )


def codes(violations: list[str]) -> set[str]:
    return {v.split(":")[0] for v in violations}


def test_a_sound_rule_passes() -> None:
    assert check_proposal(Change("add_rule", rule=rule()), C, RuleBook(), 0) == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            Change("set_parameter", parameter="max_drawdown", value=0.5),
            {"FORBIDDEN_FIELD", "LOOSENS_LIMIT"},
        ),
        (Change("set_parameter", parameter="max_drawdown", value=0.05), {"FORBIDDEN_FIELD"}),
        (Change("set_parameter", parameter="constitution", value=0), {"FORBIDDEN_FIELD"}),
        (
            Change("set_parameter", parameter="forbidden_modifications", value=0),
            {"FORBIDDEN_FIELD"},
        ),
        (
            Change("set_parameter", parameter="min_confidence_for_trade", value=0.1),
            {"FORBIDDEN_FIELD", "LOOSENS_LIMIT"},
        ),
        (Change("set_parameter", parameter="stop_atr_mult", value=9.0), {"ACTION_OUT_OF_BOUNDS"}),
        (Change("set_parameter", parameter="leverage", value=2.0), {"MALFORMED"}),
        (Change("add_rule", rule=rule(action=ScaleSize(1.5))), {"ACTION_OUT_OF_BOUNDS"}),
        (Change("add_rule", rule=rule(action=ScaleSize(0.0))), {"ACTION_OUT_OF_BOUNDS"}),
        (Change("add_rule", rule=rule(action=AdjustStop(0.1))), {"ACTION_OUT_OF_BOUNDS"}),
        (Change("add_rule", rule=rule(action=MaxHold(0))), {"ACTION_OUT_OF_BOUNDS"}),
        (
            Change("add_rule", rule=rule(action=RequireConfidence(0.3))),
            {"CONFIDENCE_BELOW_CONSTITUTION"},
        ),
        (Change("add_rule", rule=rule(condition=VolumeBelow(250))), {"MALFORMED"}),
        (Change("remove_rule", rule_id="nope"), {"MALFORMED"}),
    ],
)
def test_every_violation_is_named(change: Change, expected: set[str]) -> None:
    assert codes(check_proposal(change, C, RuleBook(), 0)) == expected


def test_daily_and_active_limits_are_named_together() -> None:
    full = RuleBook(rules=tuple(rule(f"r{i}") for i in range(50)))
    violations = check_proposal(
        Change("add_rule", rule=rule("new", action=ScaleSize(2))), C, full, 3
    )
    assert codes(violations) == {
        "TOO_MANY_CHANGES_TODAY",
        "TOO_MANY_ACTIVE_RULES",
        "ACTION_OUT_OF_BOUNDS",
    }
    assert any("3 changes already deployed today" in v for v in violations)


def test_rule_book_applies_and_round_trips() -> None:
    book = RuleBook().apply(Change("add_rule", rule=rule("a")))
    book = book.apply(Change("set_parameter", parameter="max_hold_bars", value=10))
    book = book.apply(Change("add_rule", rule=rule("b", action=ScaleSize(0.5))))
    book = book.apply(Change("remove_rule", rule_id="a"))
    assert book.version == 4 and [r.rule_id for r in book.rules] == ["b"]
    assert book.parameters == {"max_hold_bars": 10.0}
    again = RuleBook.from_doc(book.to_doc())
    assert again == book and again.hash == book.hash


# -- NO SEQUENCE OF PROPOSALS BREAKS THE CONSTITUTION ------------------------------------

parameter_names = st.sampled_from(
    [
        "max_drawdown",
        "max_position_size",
        "max_daily_loss",
        "min_confidence_for_trade",
        "max_rule_changes_per_day",
        "max_active_rules",
        "constitution",
        "forbidden_modifications",
        "stop_atr_mult",
        "target_atr_mult",
        "volume_threshold",
        "max_hold_bars",
        "anything_else",
    ]
)
proposal = st.one_of(
    st.tuples(st.just("add_rule"), any_rule, st.just(""), st.just(0.0)),
    st.tuples(st.just("remove_rule"), st.none(), st.text(max_size=8), st.just(0.0)),
    # A relaxation or retirement's replacement: any rule in an active one's place.
    st.tuples(st.just("replace_rule"), any_rule, st.text(max_size=8), st.just(0.0)),
    st.tuples(
        st.just("set_parameter"),
        st.none(),
        parameter_names,
        st.floats(allow_nan=True, allow_infinity=True),
    ),
)
day_of_proposals = st.lists(proposal, max_size=8)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(days=st.lists(day_of_proposals, min_size=1, max_size=12))
def test_no_sequence_of_proposals_breaks_the_constitution(days: list[list[tuple]]) -> None:
    with tempfile.TemporaryDirectory() as state:
        g = GuardianActor(
            0, C, SizingPolicy(), SECRET, 300, stores=Stores(state), state_scope="run/prop"
        )
        fingerprint = C.fingerprint
        book = RuleBook()
        seq = 0
        for d, proposals in enumerate(days):
            date = f"2024-03-{d + 1:02d}"
            approved_today = 0
            for kind, r, name, value in proposals:
                seq += 1
                # The engine sometimes proposes to remove (or replace) a rule that really
                # is active.
                targets_rule = kind in ("remove_rule", "replace_rule")
                rule_id = book.rules[-1].rule_id if targets_rule and book.rules else name
                if kind in ("add_rule", "replace_rule") and r is not None:
                    r = Rule(rule_id=f"{r.rule_id}-{seq}", condition=r.condition, action=r.action)
                msg = ModificationProposal(
                    msg_id=f"p{seq}",
                    ts_event=seq,
                    ts_init=seq,
                    proposal_id=f"p{seq}",
                    kind=kind,
                    reason="prop",
                    session_date=date,
                    rule=r,
                    rule_id=rule_id if targets_rule else "",
                    parameter=name if kind == "set_parameter" else "",
                    value=value if kind == "set_parameter" else 0.0,
                )
                (decision,) = [m for m in g.receive([msg]) if isinstance(m, ModificationDecision)]
                if decision.approved:
                    approved_today += 1
                    book = book.apply(
                        Change(kind, rule=r, rule_id=rule_id, parameter=name, value=value)
                    )
                    # The self-modification actor deploys it: the guardian sees the snapshot.
                    g.receive(
                        [
                            RuleSetSnapshot(
                                msg_id=f"s{seq}",
                                ts_event=seq,
                                ts_init=seq,
                                version=book.version,
                                rules=list(book.rules),
                                parameters=book.parameters,
                                ruleset_hash=book.hash,
                            )
                        ]
                    )
                assert approved_today <= C.max_rule_changes_per_day
                assert len(book.rules) <= C.max_active_rules
                assert not (
                    set(book.parameters)
                    & (
                        set(C.forbidden_modifications)
                        | {
                            "max_position_size",
                            "max_daily_loss",
                            "max_drawdown",
                            "min_confidence_for_trade",
                            "max_rule_changes_per_day",
                            "max_active_rules",
                        }
                    )
                )
                for v in book.parameters.values():
                    assert v == v and abs(v) != float("inf")
                for active in book.rules:
                    match active.action:
                        case ScaleSize(factor=f):
                            assert 0 < f <= 1
                        case RequireConfidence(minimum=m):
                            assert C.min_confidence_for_trade <= m <= 1
        assert g.constitution == C and g.constitution.fingerprint == fingerprint


def test_fifty_rules_then_no_more() -> None:
    with tempfile.TemporaryDirectory() as state:
        g = GuardianActor(
            0, C, SizingPolicy(), SECRET, 300, stores=Stores(state), state_scope="run/x"
        )
        # The active rules are what the governance store holds (deployed earlier).
        book = RuleBook(version=1, rules=tuple(rule(f"r{i}") for i in range(50)))
        with GovernanceStore(state) as store:
            store._save_book("run/x", 0, book, "seeded")
        (d,) = g.receive(
            [
                ModificationProposal(
                    msg_id="p",
                    ts_event=0,
                    ts_init=0,
                    proposal_id="p",
                    kind="add_rule",
                    reason="",
                    session_date="2024-01-02",
                    rule=rule("one-more"),
                )
            ]
        )
        assert isinstance(d, ModificationDecision) and not d.approved
        assert codes(d.violations) == {"TOO_MANY_ACTIVE_RULES"}

"""The rule language, its rendering, and compiled versus interpreted evaluation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sovereign.core.codegen import RuleFeatures, compile_ruleset, generate_source, interpret
from sovereign.core.selfmod import RuleBook
from sovereign.domain.rules import (
    MAX_RULE_DEPTH,
    MAX_RULE_NODES,
    MAX_TREE_DEPTH,
    MAX_TREE_NODES,
    AdjustStop,
    And,
    ATRPercentAbove,
    Condition,
    MaxHold,
    Not,
    Or,
    RegimeIs,
    RequireConfidence,
    Rule,
    ScaleSize,
    SkipTrade,
    SRScoreAbove,
    SymbolIn,
    TimeOfDayBetween,
    VolumeBelow,
    condition_problems,
    depth,
    walk,
)
from sovereign.messages import WIRE, RuleSetSnapshot
from tests.strategies import SYMS, rules


def test_rules_render_readably() -> None:
    rule = Rule(
        rule_id="r1",
        condition=And((RegimeIs("Volatile"), VolumeBelow(30))),
        action=SkipTrade("Low volume in volatile regime"),
    )
    assert rule.render() == (
        'RegimeIs(Volatile) & VolumeBelow(30) -> SkipTrade("Low volume in volatile regime")'
    )
    nested = Rule(
        rule_id="r2",
        condition=Or((Not(SymbolIn(("AAA", "BBB"))), And((SRScoreAbove(3), ATRPercentAbove(2.5))))),
        action=ScaleSize(0.5),
    )
    assert nested.render() == (
        "~SymbolIn(AAA, BBB) | (SRScoreAbove(3) & ATRPercentAbove(2.5)) -> ScaleSize(0.5)"
    )
    assert (
        Rule(rule_id="r3", condition=TimeOfDayBetween(570, 600), action=MaxHold(5)).render()
        == "TimeOfDayBetween(09:30, 10:00) -> MaxHold(5)"
    )


def test_malformed_conditions_are_named() -> None:
    assert condition_problems(RegimeIs("Bullish")) == ["unknown regime 'Bullish'"]
    assert condition_problems(VolumeBelow(130)) == ["volume percentile 130 outside [0, 100]"]
    deep = RegimeIs("Volatile")
    for _ in range(10):
        deep = Not(deep)  # type: ignore[assignment]
    assert any("deeper" in p for p in condition_problems(deep))


@st.composite
def features(draw: st.DrawFn) -> RuleFeatures:
    n = draw(st.integers(0, 30))
    vol = np.array(
        draw(st.lists(st.one_of(st.floats(0, 100), st.just(np.nan)), min_size=n, max_size=n))
    )
    return RuleFeatures(
        regime=np.array(
            draw(st.lists(st.sampled_from([0, 1, 2, 3, 255]), min_size=n, max_size=n)),
            dtype=np.uint8,
        ),
        volume_pct=vol.astype(float),
        sr_score=np.array(
            draw(st.lists(st.integers(0, 8), min_size=n, max_size=n)), dtype=np.int64
        ),
        atr_pct=np.array(draw(st.lists(st.floats(0, 12), min_size=n, max_size=n)), dtype=float),
        minute=np.array(
            draw(st.lists(st.integers(0, 1439), min_size=n, max_size=n)), dtype=np.int64
        ),
        symbol=np.array(
            draw(st.lists(st.sampled_from([*SYMS, "ZZZ"]), min_size=n, max_size=n)), dtype=object
        ),
        confidence=np.array(draw(st.lists(st.floats(0, 1), min_size=n, max_size=n)), dtype=float),
        losses=np.full(n, draw(st.integers(0, 8)), dtype=np.int64),
    )


# -- HOW LARGE A RULE MAY BE ------------------------------------------------------------


def largest(depth: int = MAX_TREE_DEPTH, nodes: int = MAX_TREE_NODES) -> Condition:
    """A condition exactly ``depth`` deep with exactly ``nodes`` nodes: Not, And and Or
    in turn over an And of distinct leaves."""
    bottom = And(tuple(VolumeBelow(i / 4) for i in range(nodes - depth + 1)))
    c: Condition = bottom
    for i in range(depth - 2):
        c = (Not(c), And((c,)), Or((c,)))[i % 3]
    return c


def nots(operators: int) -> Condition:
    c: Condition = RegimeIs("Volatile")
    for _ in range(operators):
        c = Not(c)
    return c


def test_the_constitution_bounds_rules_within_what_any_rule_may_be() -> None:
    """What the engine may propose (the constitution's bound, which the guardian checks)
    always decodes and compiles."""
    assert MAX_RULE_DEPTH <= MAX_TREE_DEPTH and MAX_RULE_NODES <= MAX_TREE_NODES
    c = largest()
    assert depth(c) == MAX_TREE_DEPTH and len(walk(c)) == MAX_TREE_NODES


@settings(max_examples=20, deadline=None)
@given(f=features())
def test_a_rule_at_the_bounds_travels_compiles_and_agrees_with_the_interpreter(
    f: RuleFeatures,
) -> None:
    rule = Rule(rule_id="big", condition=largest(), action=ScaleSize(0.5))
    shallow_and_wide = Rule(rule_id="wide", condition=largest(depth=2), action=SkipTrade("wide"))
    snap = RuleSetSnapshot(
        msg_id="m",
        ts_event=0,
        ts_init=0,
        version=1,
        rules=[rule, shallow_and_wide],
        parameters={},
        ruleset_hash="h",
    )
    back = WIRE.decode(WIRE.encode(snap))
    assert isinstance(back, RuleSetSnapshot) and back == snap
    assert compile_ruleset(back.rules)(f).equals(interpret(back.rules, f))


def test_a_rule_past_the_bounds_cannot_be_built() -> None:
    """Nor, then, proposed: the check runs on every Rule, built or decoded, and walks
    the tree without recursing, so a very deep one is refused as clearly."""
    for c in (largest(depth=MAX_TREE_DEPTH + 1), nots(MAX_TREE_DEPTH), nots(20_000)):
        with pytest.raises(ValueError, match=f"deeper than {MAX_TREE_DEPTH}"):
            Rule(rule_id="deep", condition=c, action=SkipTrade("deep"))
    with pytest.raises(ValueError, match=f"more than {MAX_TREE_NODES} nodes"):
        Rule(rule_id="wide", condition=largest(nodes=MAX_TREE_NODES + 1), action=SkipTrade(""))


def stored_book(condition: dict[str, object]) -> dict[str, object]:
    """A rule book's stored doc whose one rule has ``condition`` (as JSON decodes it)."""
    doc = RuleBook(
        version=3,
        rules=(Rule(rule_id="r", condition=RegimeIs("Volatile"), action=SkipTrade("x")),),
    ).to_doc()
    rules = doc["rules"]
    assert isinstance(rules, list)
    rules[0]["condition"] = condition
    return doc


def test_a_stored_rule_book_past_the_bounds_is_refused_with_a_clear_error() -> None:
    # The second too deep for msgspec itself to reach the Rule's check.
    for levels in (200, 20_000):
        deep: dict[str, object] = {"type": "RegimeIs", "regime": "Volatile"}
        for _ in range(levels):
            deep = {"type": "Not", "item": deep}
        with pytest.raises(ValueError, match=f"rule book.*deeper than {MAX_TREE_DEPTH}"):
            RuleBook.from_doc(stored_book(deep))
    wide = {
        "type": "And",
        "items": [{"type": "VolumeBelow", "percentile": 1.0}] * MAX_TREE_NODES,
    }
    with pytest.raises(ValueError, match=f"rule book.*more than {MAX_TREE_NODES} nodes"):
        RuleBook.from_doc(stored_book(wide))
    at_bounds = RuleBook(
        version=1, rules=(Rule(rule_id="r", condition=largest(), action=SkipTrade("")),)
    )
    assert RuleBook.from_doc(at_bounds.to_doc()) == at_bounds


@settings(max_examples=400, deadline=None)
@given(ruleset=rules, f=features())
def test_compiled_and_interpreted_evaluation_agree(ruleset: list[Rule], f: RuleFeatures) -> None:
    compiled = compile_ruleset(ruleset)(f)
    interpreted = interpret(ruleset, f)
    assert compiled.equals(interpreted)


@settings(max_examples=100, deadline=None)
@given(ruleset=rules)
def test_rules_travel_as_messages(ruleset: list[Rule]) -> None:
    from sovereign.messages import RuleSetSnapshot

    snap = RuleSetSnapshot(
        msg_id="m",
        ts_event=0,
        ts_init=0,
        version=1,
        rules=ruleset,
        parameters={},
        ruleset_hash="h",
    )
    back = WIRE.decode(WIRE.encode(snap))
    assert back == snap


def test_generated_source_contains_no_strings_from_the_rules() -> None:
    evil = Rule(
        rule_id="r",
        condition=SymbolIn(("__import__('os').system('x')",)),
        action=SkipTrade("'); import os; os.system('x'); ('"),
    )
    source, constants = generate_source([evil])
    assert "import" not in source and "system" not in source
    assert list(constants) == ["_S0"]
    f = RuleFeatures(
        regime=np.zeros(1, np.uint8),
        volume_pct=np.zeros(1),
        sr_score=np.zeros(1, np.int64),
        atr_pct=np.zeros(1),
        minute=np.zeros(1, np.int64),
        symbol=np.array(["AAA"], object),
        confidence=np.zeros(1),
        losses=np.zeros(1, np.int64),
    )
    assert not compile_ruleset([evil])(f).skip[0]


def test_compiled_function_is_cached_by_rule_set() -> None:
    ruleset = [Rule(rule_id="a", condition=RegimeIs("Volatile"), action=ScaleSize(0.5))]
    assert compile_ruleset(ruleset) is compile_ruleset(list(ruleset))
    other = [Rule(rule_id="a", condition=RegimeIs("Volatile"), action=ScaleSize(0.25))]
    assert compile_ruleset(other) is not compile_ruleset(ruleset)


def test_combination_is_conservative() -> None:
    f = RuleFeatures(
        regime=np.array([3, 0], np.uint8),
        volume_pct=np.array([20.0, 80.0]),
        sr_score=np.array([0, 4]),
        atr_pct=np.array([1.0, 3.0]),
        minute=np.array([600, 600]),
        symbol=np.array(["AAA", "BBB"], object),
        confidence=np.array([0.5, 0.9]),
        losses=np.array([0, 0]),
    )
    ruleset = [
        Rule(rule_id="1", condition=RegimeIs("Volatile"), action=ScaleSize(0.5)),
        Rule(rule_id="2", condition=VolumeBelow(30), action=ScaleSize(0.5)),
        Rule(rule_id="3", condition=SRScoreAbove(3), action=AdjustStop(1.0)),
        Rule(rule_id="4", condition=ATRPercentAbove(2), action=AdjustStop(2.0)),
        Rule(rule_id="5", condition=Not(RegimeIs("Volatile")), action=RequireConfidence(0.6)),
        Rule(rule_id="6", condition=SymbolIn(("BBB",)), action=RequireConfidence(0.95)),
    ]
    e = compile_ruleset(ruleset)(f)
    assert e.scale.tolist() == [0.25, 1.0]
    assert np.isnan(e.stop_mult[0]) and e.stop_mult[1] == 1.0
    assert np.isnan(e.min_confidence[0]) and e.min_confidence[1] == 0.95
    assert e.max_hold.tolist() == [-1, -1]

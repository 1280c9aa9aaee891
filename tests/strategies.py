"""Hypothesis strategies shared by the tests: rules and rule sets."""

from __future__ import annotations

from hypothesis import strategies as st

from sovereign.domain.rules import (
    AdjustStop,
    AdjustTarget,
    And,
    ATRPercentAbove,
    ConfidenceBelow,
    ConsecutiveLossesAbove,
    MaxHold,
    Not,
    Or,
    RegimeIs,
    RequireConfidence,
    Rule,
    ScaleSize,
    SkipTrade,
    SRScoreAbove,
    SRScoreBelow,
    SymbolIn,
    TimeOfDayBetween,
    VolumeAbove,
    VolumeBelow,
)
from sovereign.messages import REGIME_NAMES

SYMS = ["AAA", "BBB", "CCC", "DDD"]

leaf = st.one_of(
    st.builds(RegimeIs, st.sampled_from([*REGIME_NAMES, "Nope"])),
    st.builds(VolumeBelow, st.floats(0, 100)),
    st.builds(VolumeAbove, st.floats(0, 100)),
    st.builds(SRScoreBelow, st.integers(0, 6)),
    st.builds(SRScoreAbove, st.integers(0, 6)),
    st.builds(ATRPercentAbove, st.floats(0, 10)),
    st.builds(lambda a, w: TimeOfDayBetween(a, a + w), st.integers(0, 1400), st.integers(1, 40)),
    st.builds(
        lambda s: SymbolIn(tuple(s)), st.lists(st.sampled_from(SYMS), min_size=1, max_size=3)
    ),
    st.builds(ConfidenceBelow, st.floats(0, 1)),
    st.builds(ConsecutiveLossesAbove, st.integers(0, 6)),
)
conditions = st.recursive(
    leaf,
    lambda inner: st.one_of(
        st.builds(lambda xs: And(tuple(xs)), st.lists(inner, max_size=3)),
        st.builds(lambda xs: Or(tuple(xs)), st.lists(inner, max_size=3)),
        st.builds(Not, inner),
    ),
    max_leaves=8,
)
actions = st.one_of(
    st.builds(SkipTrade, st.text(max_size=10)),
    st.builds(ScaleSize, st.floats(0.01, 1.0)),
    st.builds(AdjustStop, st.floats(0.5, 5.0)),
    st.builds(AdjustTarget, st.floats(0.5, 10.0)),
    st.builds(MaxHold, st.integers(1, 500)),
    st.builds(RequireConfidence, st.floats(0.4, 1.0)),
)
rule = st.builds(
    lambda c, a, i: Rule(rule_id=f"r{i}", condition=c, action=a),
    conditions,
    actions,
    st.integers(0, 10**6),
)
rules = st.lists(rule, max_size=8)

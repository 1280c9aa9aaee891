"""The trading-rule language: typed conditions and actions, never free text.

A rule is ``condition -> action``. Conditions read the features a shard has for each
entry candidate; actions change what happens to that candidate's trade. Rules are
msgspec Structs, so they travel inside ``RuleSetSnapshot`` messages to the shards and are
stored as they are in the governance store. ``render`` gives the readable form:

    RegimeIs(Volatile) & VolumeBelow(30) -> SkipTrade("Low volume in volatile regime")

Conditions (comparisons are on the entry bar's features):

==========================  =============================================================
``RegimeIs(r)``             the symbol's regime is ``r``
``VolumeBelow(p)``          volume percentile < p          ``VolumeAbove(p)``  >= p
``SRScoreBelow(n)``         support/resistance score < n   ``SRScoreAbove(n)`` >= n
``ATRPercentAbove(p)``      ATR / close * 100 >= p
``TimeOfDayBetween(a, b)``  New York minute of the day in [a, b)
``SymbolIn(s...)``          the symbol is one of these
``ConfidenceBelow(c)``      the entry's confidence < c
``ConsecutiveLossesAbove(n)``  the shard's current losing streak >= n
``And(...)`` / ``Or(...)`` / ``Not(...)``   and / or / not  (``&``, ``|``, ``~`` in renders)
==========================  =============================================================

A missing feature (unknown volume, say) makes a comparison false.

No rule's condition is deeper than ``MAX_TREE_DEPTH`` (32; a lone comparison is 1 deep)
or has more than ``MAX_TREE_NODES`` (256) nodes: a Rule refuses to be built past them
(``ValueError``), so a message carrying one fails to decode (``MessageDecodeError``) and
a stored rule book holding one fails to load. The constitution holds what a proposal may
add far tighter (``MAX_RULE_DEPTH``, ``MAX_RULE_NODES``).

Actions, and how several firing rules combine (the most conservative wins):

* ``SkipTrade(reason)``: no entry.
* ``ScaleSize(factor)``, 0 < factor <= 1: the size is multiplied by every firing factor.
* ``AdjustStop(atr_mult)`` / ``AdjustTarget(atr_mult)``: within bounds; the smallest wins.
* ``MaxHold(bars)``: the smallest wins.
* ``RequireConfidence(min)``: at least the constitution's floor; the largest wins, and an
  entry below it is skipped.
"""

from __future__ import annotations

import hashlib
import json
from typing import Union

import msgspec

from sovereign.domain.regimes import REGIME_NAMES

# -- CONDITIONS -------------------------------------------------------------------------


class _Node(msgspec.Struct, frozen=True, tag=True, gc=False):
    pass


class RegimeIs(_Node, frozen=True):
    regime: str


class VolumeBelow(_Node, frozen=True):
    percentile: float


class VolumeAbove(_Node, frozen=True):
    percentile: float


class SRScoreBelow(_Node, frozen=True):
    score: int


class SRScoreAbove(_Node, frozen=True):
    score: int


class ATRPercentAbove(_Node, frozen=True):
    percent: float


class TimeOfDayBetween(_Node, frozen=True):
    start_minute: int
    end_minute: int


class SymbolIn(_Node, frozen=True):
    symbols: tuple[str, ...]


class ConfidenceBelow(_Node, frozen=True):
    confidence: float


class ConsecutiveLossesAbove(_Node, frozen=True):
    losses: int


class And(_Node, frozen=True):
    items: tuple[Condition, ...]


class Or(_Node, frozen=True):
    items: tuple[Condition, ...]


class Not(_Node, frozen=True):
    item: Condition


Condition = Union[  # noqa: UP007 - a runtime union msgspec resolves recursively
    RegimeIs,
    VolumeBelow,
    VolumeAbove,
    SRScoreBelow,
    SRScoreAbove,
    ATRPercentAbove,
    TimeOfDayBetween,
    SymbolIn,
    ConfidenceBelow,
    ConsecutiveLossesAbove,
    And,
    Or,
    Not,
]

# -- ACTIONS ----------------------------------------------------------------------------


class SkipTrade(_Node, frozen=True):
    reason: str


class ScaleSize(_Node, frozen=True):
    factor: float


class AdjustStop(_Node, frozen=True):
    atr_mult: float


class AdjustTarget(_Node, frozen=True):
    atr_mult: float


class MaxHold(_Node, frozen=True):
    bars: int


class RequireConfidence(_Node, frozen=True):
    minimum: float


Action = Union[SkipTrade, ScaleSize, AdjustStop, AdjustTarget, MaxHold, RequireConfidence]  # noqa: UP007

# Bounds the constitution's check holds actions and tuned parameters to.
STOP_BOUNDS = (0.5, 5.0)
TARGET_BOUNDS = (0.5, 10.0)
MAX_HOLD_BOUNDS = (1, 500)
# What the constitution lets a proposal add (see ``condition_problems``).
MAX_RULE_DEPTH = 6
MAX_RULE_NODES = 32
# What any rule may be at all, however it arrives: a deeper or larger condition is refused
# where a rule is decoded or built, before code generation, whose recursion (and Python's
# compiler, on a long ``&`` chain) it would overflow.
MAX_TREE_DEPTH = 32
MAX_TREE_NODES = 256


class Rule(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One rule with its identity and where it came from."""

    rule_id: str
    condition: Condition
    action: Action
    provenance: str = ""
    created_ts: int = 0

    def __post_init__(self) -> None:
        # Runs on every decode too (msgspec reports it as a validation error), and before
        # anything walks the tree recursively.
        problem = tree_problem(self.condition)
        if problem is not None:
            raise ValueError(problem)

    def render(self) -> str:
        return f"{render_condition(self.condition)} -> {render_action(self.action)}"


# -- RENDERING --------------------------------------------------------------------------


def _num(x: float) -> str:
    return f"{x:g}"


def render_condition(c: Condition, *, top: bool = True) -> str:
    match c:
        case RegimeIs(regime=r):
            return f"RegimeIs({r})"
        case VolumeBelow(percentile=p):
            return f"VolumeBelow({_num(p)})"
        case VolumeAbove(percentile=p):
            return f"VolumeAbove({_num(p)})"
        case SRScoreBelow(score=s):
            return f"SRScoreBelow({s})"
        case SRScoreAbove(score=s):
            return f"SRScoreAbove({s})"
        case ATRPercentAbove(percent=p):
            return f"ATRPercentAbove({_num(p)})"
        case TimeOfDayBetween(start_minute=a, end_minute=b):
            return f"TimeOfDayBetween({a // 60:02d}:{a % 60:02d}, {b // 60:02d}:{b % 60:02d})"
        case SymbolIn(symbols=s):
            return f"SymbolIn({', '.join(s)})"
        case ConfidenceBelow(confidence=x):
            return f"ConfidenceBelow({_num(x)})"
        case ConsecutiveLossesAbove(losses=n):
            return f"ConsecutiveLossesAbove({n})"
        case And(items=items):
            body = " & ".join(render_condition(i, top=False) for i in items) or "True"
            return body if top or len(items) < 2 else f"({body})"
        case Or(items=items):
            body = " | ".join(render_condition(i, top=False) for i in items) or "False"
            return body if top or len(items) < 2 else f"({body})"
        case Not(item=i):
            return f"~{render_condition(i, top=False)}"
    raise TypeError(f"not a condition: {c!r}")


def render_action(a: Action) -> str:
    match a:
        case SkipTrade(reason=r):
            return f"SkipTrade({json.dumps(r)})"
        case ScaleSize(factor=f):
            return f"ScaleSize({_num(f)})"
        case AdjustStop(atr_mult=m):
            return f"AdjustStop({_num(m)})"
        case AdjustTarget(atr_mult=m):
            return f"AdjustTarget({_num(m)})"
        case MaxHold(bars=b):
            return f"MaxHold({b})"
        case RequireConfidence(minimum=m):
            return f"RequireConfidence({_num(m)})"
    raise TypeError(f"not an action: {a!r}")


# -- STRUCTURE --------------------------------------------------------------------------


def tree_problem(c: Condition) -> str | None:
    """Why no rule may have condition ``c`` (deeper than ``MAX_TREE_DEPTH`` or larger than
    ``MAX_TREE_NODES``), or None."""
    # Iterative, and it stops at the first node past a bound: the tree may be of any
    # depth yet, and a recursive walk of it is what must not happen.
    stack: list[tuple[Condition, int]] = [(c, 1)]
    seen = 0
    while stack:
        node, level = stack.pop()
        seen += 1
        if level > MAX_TREE_DEPTH:
            return f"the condition nests deeper than {MAX_TREE_DEPTH} levels"
        if seen > MAX_TREE_NODES:
            return f"the condition has more than {MAX_TREE_NODES} nodes"
        match node:
            case And(items=items) | Or(items=items):
                stack.extend((item, level + 1) for item in items)
            case Not(item=item):
                stack.append((item, level + 1))
    return None


def walk(c: Condition) -> list[Condition]:
    """Every node of a condition tree, depth first."""
    out = [c]
    match c:
        case And(items=items) | Or(items=items):
            for i in items:
                out.extend(walk(i))
        case Not(item=i):
            out.extend(walk(i))
    return out


def depth(c: Condition) -> int:
    match c:
        case And(items=items) | Or(items=items):
            return 1 + max((depth(i) for i in items), default=0)
        case Not(item=i):
            return 1 + depth(i)
    return 1


def condition_problems(c: Condition) -> list[str]:
    """What is malformed in a condition (empty is well formed)."""
    problems: list[str] = []
    if depth(c) > MAX_RULE_DEPTH:
        problems.append(f"condition nests deeper than {MAX_RULE_DEPTH}")
    nodes = walk(c)
    if len(nodes) > MAX_RULE_NODES:
        problems.append(f"condition has more than {MAX_RULE_NODES} terms")
    for n in nodes:
        match n:
            case RegimeIs(regime=r) if r not in REGIME_NAMES:
                problems.append(f"unknown regime {r!r}")
            case VolumeBelow(percentile=p) | VolumeAbove(percentile=p) if not 0 <= p <= 100:
                problems.append(f"volume percentile {p!r} outside [0, 100]")
            case TimeOfDayBetween(start_minute=a, end_minute=b) if not 0 <= a < b <= 1440:
                problems.append(f"time of day [{a}, {b}) is not inside a day")
            case ConfidenceBelow(confidence=x) if not 0 <= x <= 1:
                problems.append(f"confidence {x!r} outside [0, 1]")
            case SymbolIn(symbols=s) if not s:
                problems.append("SymbolIn needs at least one symbol")
            case ATRPercentAbove(percent=p) if not 0 <= p <= 100:
                problems.append(f"ATR percent {p!r} outside [0, 100]")
    return problems


def canonical(rules: list[Rule] | tuple[Rule, ...], parameters: dict[str, float]) -> bytes:
    """Deterministic bytes of a rule set (for hashing and caching)."""
    return msgspec.msgpack.encode(
        [[r.rule_id, r.condition, r.action] for r in rules] + [sorted(parameters.items())]
    )


def ruleset_hash(rules: list[Rule] | tuple[Rule, ...], parameters: dict[str, float]) -> str:
    return hashlib.sha256(canonical(rules, parameters)).hexdigest()

"""Self-modification: the rule book, the constitutional check, and the engine's decisions.

Flow: a trigger (the end of a trading day, or the guardian's losing-streak request) makes
the engine (``core.selfmod_engine``) analyse its trades (``core.weakness``) and call
``propose_modification``; the guardian runs ``check_proposal`` against the constitution; an
approved proposal is applied to the rule book (``RuleBook.apply``) and deployed to the
shards, a rejected one is reported with every limit it broke. No human approval in between.

The constitutional check names every violation:

``FORBIDDEN_FIELD``                  the proposal touches a field in ``forbidden_modifications``
                                     or the constitution itself
``LOOSENS_LIMIT``                    it would make a constitutional limit looser
``TOO_MANY_CHANGES_TODAY``           ``max_rule_changes_per_day`` changes already deployed today
``TOO_MANY_ACTIVE_RULES``            the rule book would exceed ``max_active_rules``
``ACTION_OUT_OF_BOUNDS``             a size factor outside (0, 1], a stop, target, hold or
                                     parameter outside its bounds
``CONFIDENCE_BELOW_CONSTITUTION``    ``RequireConfidence`` below the constitution's floor
``MALFORMED``                        an unknown parameter or rule id, a malformed condition, or a
                                     duplicate rule id

Tunable parameters and their bounds: ``stop_atr_mult`` [0.5, 5], ``target_atr_mult``
[0.5, 10], ``volume_threshold`` [0, 100], ``max_hold_bars`` [1, 500]. The constitution is
never among them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import msgspec

from sovereign.core.constitution import Constitution
from sovereign.domain.rules import (
    MAX_HOLD_BOUNDS,
    MAX_TREE_DEPTH,
    STOP_BOUNDS,
    TARGET_BOUNDS,
    AdjustStop,
    AdjustTarget,
    MaxHold,
    RequireConfidence,
    Rule,
    ScaleSize,
    condition_problems,
    ruleset_hash,
)

TUNABLE: dict[str, tuple[float, float]] = {
    "stop_atr_mult": STOP_BOUNDS,
    "target_atr_mult": TARGET_BOUNDS,
    "volume_threshold": (0.0, 100.0),
    "max_hold_bars": (float(MAX_HOLD_BOUNDS[0]), float(MAX_HOLD_BOUNDS[1])),
}

_CONSTITUTION_FIELDS = frozenset(
    {
        "max_position_size",
        "max_daily_loss",
        "max_drawdown",
        "min_confidence_for_trade",
        "max_rule_changes_per_day",
        "max_active_rules",
    }
)


@dataclass(frozen=True, slots=True)
class Change:
    """What a proposal asks for, as plain data (the guardian and engine share it)."""

    kind: str  # add_rule | remove_rule | replace_rule | set_parameter
    rule: Rule | None = None
    rule_id: str = ""
    parameter: str = ""
    value: float = 0.0


@dataclass(frozen=True, slots=True)
class RuleBook:
    """A version of the active rules and tuned parameters."""

    version: int = 0
    rules: tuple[Rule, ...] = ()
    parameters: dict[str, float] = field(default_factory=dict)

    @property
    def hash(self) -> str:
        return ruleset_hash(self.rules, self.parameters)

    def rule_ids(self) -> set[str]:
        return {r.rule_id for r in self.rules}

    def apply(self, change: Change) -> RuleBook:
        """The next version with the change applied (it must have passed the check)."""
        rules, params = list(self.rules), dict(self.parameters)
        if change.kind == "add_rule" and change.rule is not None:
            rules.append(change.rule)
        elif change.kind == "remove_rule":
            rules = [r for r in rules if r.rule_id != change.rule_id]
        elif change.kind == "replace_rule" and change.rule is not None:
            # In the replaced rule's place: the order of the rules is kept.
            rules = [change.rule if r.rule_id == change.rule_id else r for r in rules]
        elif change.kind == "set_parameter":
            params[change.parameter] = float(change.value)
        else:
            raise ValueError(f"cannot apply {change.kind!r}")
        return RuleBook(version=self.version + 1, rules=tuple(rules), parameters=params)

    def to_doc(self) -> dict[str, object]:
        return {
            "version": self.version,
            "rules": [msgspec.to_builtins(r) for r in self.rules],
            "parameters": dict(self.parameters),
        }

    @classmethod
    def from_doc(cls, doc: dict[str, object]) -> RuleBook:
        """The rule book of a stored doc; ValueError if a rule in it is malformed, or
        deeper or larger than any rule may be (``rules.MAX_TREE_DEPTH``)."""
        try:
            rules = msgspec.convert(doc["rules"], list[Rule])
        except msgspec.ValidationError as exc:
            raise ValueError(f"rule book version {doc.get('version')!r}: {exc}") from None
        except RecursionError:
            # msgspec's own guard, on a doc nested too deep for it to reach the Rule's check.
            raise ValueError(
                f"rule book version {doc.get('version')!r}: a rule nests far deeper than "
                f"{MAX_TREE_DEPTH} levels"
            ) from None
        return cls(
            version=int(doc["version"]),
            rules=tuple(rules),
            parameters={k: float(v) for k, v in dict(doc["parameters"]).items()},  # type: ignore[call-overload]
        )


def check_proposal(
    change: Change, constitution: Constitution, book: RuleBook, changes_today: int
) -> list[str]:
    """Every constitutional limit the change breaks (empty: it may be deployed)."""
    v: list[str] = []
    if changes_today >= constitution.max_rule_changes_per_day:
        v.append(
            f"TOO_MANY_CHANGES_TODAY: {changes_today} changes already deployed today; the "
            f"constitution allows {constitution.max_rule_changes_per_day}"
        )
    match change.kind:
        case "set_parameter":
            v.extend(_check_parameter(change.parameter, change.value, constitution))
        case "add_rule":
            if change.rule is None:
                v.append("MALFORMED: add_rule without a rule")
                return v
            v.extend(_check_rule(change.rule, constitution))
            if change.rule.rule_id in book.rule_ids():
                v.append(f"MALFORMED: rule id {change.rule.rule_id!r} is already active")
            if len(book.rules) + 1 > constitution.max_active_rules:
                v.append(
                    f"TOO_MANY_ACTIVE_RULES: {len(book.rules)} rules are active; one more "
                    f"exceeds the constitution's {constitution.max_active_rules}"
                )
        case "remove_rule":
            if change.rule_id not in book.rule_ids():
                v.append(f"MALFORMED: no active rule {change.rule_id!r} to remove")
        case "replace_rule":
            # One rule for another: the count of rules does not change.
            if change.rule is None:
                v.append("MALFORMED: replace_rule without a rule")
                return v
            v.extend(_check_rule(change.rule, constitution))
            if change.rule_id not in book.rule_ids():
                v.append(f"MALFORMED: no active rule {change.rule_id!r} to replace")
            if change.rule.rule_id != change.rule_id and change.rule.rule_id in book.rule_ids():
                v.append(f"MALFORMED: rule id {change.rule.rule_id!r} is already active")
        case other:
            v.append(f"MALFORMED: unknown kind of change {other!r}")
    return v


def _check_parameter(name: str, value: float, constitution: Constitution) -> list[str]:
    v: list[str] = []
    if name in constitution.forbidden_modifications or name in _CONSTITUTION_FIELDS:
        v.append(f"FORBIDDEN_FIELD: {name} belongs to the constitution and is never modifiable")
        if name in _CONSTITUTION_FIELDS:
            current = getattr(constitution, name)
            stricter_is_smaller = name != "min_confidence_for_trade"
            looser = value > current if stricter_is_smaller else value < current
            if looser or not math.isfinite(value):
                v.append(f"LOOSENS_LIMIT: {name} = {value!r} is looser than {current!r}")
        return v
    bounds = TUNABLE.get(name)
    if bounds is None:
        v.append(f"MALFORMED: {name!r} is not a tunable parameter ({', '.join(sorted(TUNABLE))})")
    elif not (math.isfinite(value) and bounds[0] <= value <= bounds[1]):
        v.append(f"ACTION_OUT_OF_BOUNDS: {name} = {value!r} outside [{bounds[0]:g}, {bounds[1]:g}]")
    return v


def _check_rule(rule: Rule, constitution: Constitution) -> list[str]:
    v = [f"MALFORMED: {p}" for p in condition_problems(rule.condition)]
    match rule.action:
        case ScaleSize(factor=f) if not (math.isfinite(f) and 0 < f <= 1):
            v.append(f"ACTION_OUT_OF_BOUNDS: ScaleSize factor {f!r} outside (0, 1]")
        case AdjustStop(atr_mult=m) if not (
            math.isfinite(m) and STOP_BOUNDS[0] <= m <= STOP_BOUNDS[1]
        ):
            v.append(f"ACTION_OUT_OF_BOUNDS: AdjustStop {m!r} outside {list(STOP_BOUNDS)}")
        case AdjustTarget(atr_mult=m) if not (
            math.isfinite(m) and TARGET_BOUNDS[0] <= m <= TARGET_BOUNDS[1]
        ):
            v.append(f"ACTION_OUT_OF_BOUNDS: AdjustTarget {m!r} outside {list(TARGET_BOUNDS)}")
        case MaxHold(bars=b) if not MAX_HOLD_BOUNDS[0] <= b <= MAX_HOLD_BOUNDS[1]:
            v.append(f"ACTION_OUT_OF_BOUNDS: MaxHold {b} outside {list(MAX_HOLD_BOUNDS)}")
        case RequireConfidence(minimum=m):
            floor = constitution.min_confidence_for_trade
            if not math.isfinite(m) or m < floor:
                v.append(
                    f"CONFIDENCE_BELOW_CONSTITUTION: RequireConfidence({m!r}) is below the "
                    f"constitution's {floor}"
                )
            elif m > 1:
                v.append(f"ACTION_OUT_OF_BOUNDS: RequireConfidence({m!r}) above 1")
    return v


@dataclass(slots=True)
class DailyChanges:
    """Deployed changes per trading day (the constitution caps them)."""

    session_date: str = ""
    count: int = 0

    def today(self, session_date: str) -> int:
        if session_date != self.session_date:
            self.session_date, self.count = session_date, 0
        return self.count

    def record(self, session_date: str) -> None:
        self.today(session_date)
        self.count += 1


@dataclass(frozen=True, slots=True)
class Proposal:
    """A change the engine wants, before the guardian has seen it."""

    proposal_id: str
    change: Change
    reason: str
    evidence: dict[str, float | int | str | bool | None]
    trigger: str
    session_date: str


# Refusals that can change: a new day lifts the daily limit; a rule leaving the book makes
# room under the active-rule limit. Any other refusal (the change itself breaks the
# constitution) stands for good.
DAILY_LIMIT, ACTIVE_LIMIT = "TOO_MANY_CHANGES_TODAY", "TOO_MANY_ACTIVE_RULES"
# The refusals about the change itself; any other (a limit of the day, of the rule count,
# a guardian that cannot trust its constitution) may lift.
LASTING_REFUSALS = frozenset(
    {
        "FORBIDDEN_FIELD",
        "LOOSENS_LIMIT",
        "ACTION_OUT_OF_BOUNDS",
        "CONFIDENCE_BELOW_CONSTITUTION",
        "MALFORMED",
    }
)


def refusal_lifts(violations: list[str]) -> str:
    """When a change refused for ``violations`` may be proposed again, in words."""
    codes = {v.split(":", 1)[0] for v in violations}
    if codes & LASTING_REFUSALS:
        return "never: the change itself breaks the constitution"
    parts = []
    if DAILY_LIMIT in codes:
        parts.append("the next session day")
    if ACTIVE_LIMIT in codes:
        parts.append("a rule leaves the rule set")
    if codes - {DAILY_LIMIT, ACTIVE_LIMIT}:
        parts.append("the next session day")
    return "after " + " and ".join(dict.fromkeys(parts))


class EvidenceTrade(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """A closed trade as the engine keeps it (and stores it for a named account).

    ``kind``: ``real`` (a trade taken), ``skipped`` (a shadow trade a rule prevented) or
    ``scaled`` (the part of a taken trade a size cut did not buy); ``rule_ids``: the rules
    that acted on it."""

    kind: str
    rule_ids: tuple[str, ...]
    pnl: float
    return_pct: float
    regime: str
    symbol: str
    entry_ts: int
    exit_ts: int
    confidence: float
    features: dict[str, float | int | str | bool | None]


_KEPT_FEATURES = ("volume_pct", "sr_score", "minute_of_day", "atr_pct")


def evidence_trade(trade: Any) -> EvidenceTrade:
    """A real trade (``TradeClosed``, a trade-memory record) or a shadow trade
    (``ShadowTradeClosed``) as the engine keeps it."""
    features = getattr(trade, "features", {}) or {}
    effect = getattr(trade, "effect", None)
    if effect is not None:
        kind, rule_ids = str(effect), tuple(getattr(trade, "rule_ids", ()))
    else:
        acting = features.get("rules_acting")
        kind = "real"
        rule_ids = tuple(acting.split(",")) if isinstance(acting, str) and acting else ()
    return EvidenceTrade(
        kind=kind,
        rule_ids=rule_ids,
        pnl=float(trade.pnl),
        return_pct=float(trade.return_pct),
        regime=str(trade.regime),
        symbol=str(trade.symbol),
        entry_ts=int(trade.entry_ts),
        exit_ts=int(trade.exit_ts),
        confidence=float(getattr(trade, "confidence", math.nan)),
        features={k: features[k] for k in _KEPT_FEATURES if k in features},
    )

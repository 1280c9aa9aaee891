"""Self-modification: the rule book, the constitutional check, and the engine's decisions.

Flow: a trigger (the end of a trading day, or the guardian's losing-streak request) makes
the engine analyse its trades (``core.weakness``) and call ``propose_modification``; the
guardian runs ``check_proposal`` against the constitution; an approved proposal is applied
to the rule book (``RuleBook.apply``) and deployed to the shards, a rejected one is
reported with every limit it broke. No human approval in between.

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

import msgspec

from sovereign.core.constitution import Constitution
from sovereign.core.rules import (
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

    kind: str  # add_rule | remove_rule | set_parameter
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
            version=int(doc["version"]),  # type: ignore[arg-type]
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


class SelfModEngine:
    """Finds weaknesses in its trades and turns the strongest into proposals.

    It remembers what is pending with the guardian and what was rejected, so it does not
    propose the same change twice while one is in flight, nor repeat a rejected one on the
    same day.
    """

    def __init__(
        self,
        *,
        min_trades: int = 20,
        fdr: float = 0.10,
        min_new_trades: int = 10,
        max_proposals: int = 1,
    ) -> None:
        self.min_trades = min_trades
        self.fdr = fdr
        self.min_new_trades = min_new_trades
        self.max_proposals = max_proposals
        self.book = RuleBook()
        self.trades: list[object] = []
        self.pending: dict[str, Proposal] = {}
        self._analysed_at = 0
        self.analyses = 0
        self._seq = 0
        self._refused: set[tuple[str, bytes]] = set()

    def on_trade(self, trade: object) -> None:
        self.trades.append(trade)

    def new_trades(self) -> int:
        return len(self.trades) - self._analysed_at

    def analyse(
        self, *, trigger: str, session_date: str, ts: int, force: bool = False
    ) -> list[Proposal]:
        """Look for weaknesses; propose rules for the strongest new ones."""
        from sovereign.core.weakness import TradeSample, find_weaknesses, weakness_to_rule

        if not force and self.new_trades() < self.min_new_trades:
            return []
        self._analysed_at = len(self.trades)
        self.analyses += 1
        sample = TradeSample.from_records(self.trades)
        found = find_weaknesses(
            sample, min_trades=self.min_trades, fdr=self.fdr, max_results=self.max_proposals * 4
        )
        active = {msgspec.msgpack.encode(r.condition) for r in self.book.rules}
        in_flight = {
            msgspec.msgpack.encode(p.change.rule.condition)
            for p in self.pending.values()
            if p.change.rule is not None
        }
        out: list[Proposal] = []
        for w in found:
            key = msgspec.msgpack.encode(w.condition)
            if key in active or key in in_flight or (session_date, key) in self._refused:
                continue
            self._seq += 1
            rule, evidence = weakness_to_rule(
                w,
                rule_id=f"R{self.book.version + 1}-{self._seq}",
                created_ts=ts,
                provenance=f"weakness analysis ({trigger}) of {len(self.trades)} trades",
            )
            out.append(
                self.propose_modification(
                    Change(kind="add_rule", rule=rule, rule_id=rule.rule_id),
                    reason=f"{w.label}: worse than the rest (q = {w.q_value:.3f})",
                    evidence=evidence,
                    trigger=trigger,
                    session_date=session_date,
                )
            )
            if len(out) >= self.max_proposals:
                break
        return out

    def propose_modification(
        self,
        change: Change,
        *,
        reason: str,
        evidence: dict[str, float | int | str | bool | None],
        trigger: str,
        session_date: str,
    ) -> Proposal:
        """Register a change for the guardian's constitutional check."""
        self._seq += 1
        proposal = Proposal(
            proposal_id=f"P{self._seq}-{session_date}",
            change=change,
            reason=reason,
            evidence=evidence,
            trigger=trigger,
            session_date=session_date,
        )
        self.pending[proposal.proposal_id] = proposal
        return proposal

    def settle(self, proposal_id: str, approved: bool) -> Proposal | None:
        """The guardian decided; forget the proposal as pending (and remember a refusal)."""
        p = self.pending.pop(proposal_id, None)
        if p is not None and not approved and p.change.rule is not None:
            self._refused.add((p.session_date, msgspec.msgpack.encode(p.change.rule.condition)))
        return p

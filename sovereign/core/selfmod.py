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
from typing import Any

import msgspec
import numpy as np

from sovereign.core.codegen import eval_condition
from sovereign.core.constitution import Constitution
from sovereign.core.weakness import (
    Confirmation,
    TradeSample,
    Weakness,
    confirm_weakness,
    find_weaknesses,
    retirement_test,
    spending,
    weakness_to_rule,
)
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
    SkipTrade,
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


@dataclass(frozen=True, slots=True)
class _Candidate:
    """A weakness found at a look, waiting for trades it was not found on."""

    weakness: Weakness
    found_at: int  # trades in memory when it was found
    look: int
    level: float


@dataclass(frozen=True, slots=True)
class _Refusal:
    codes: frozenset[str]
    session_date: str
    book_version: int


# Refusals that can change: a new day lifts the daily limit; a rule leaving the book makes
# room under the active-rule limit. Any other refusal (the change itself breaks the
# constitution) stands for good.
_DAILY, _ACTIVE = "TOO_MANY_CHANGES_TODAY", "TOO_MANY_ACTIVE_RULES"
# The refusals about the change itself; any other (a limit of the day, of the rule count,
# a guardian that cannot trust its constitution) may lift.
_LASTING = frozenset(
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
    if codes & _LASTING:
        return "never: the change itself breaks the constitution"
    parts = []
    if _DAILY in codes:
        parts.append("the next session day")
    if _ACTIVE in codes:
        parts.append("a rule leaves the rule set")
    if codes - {_DAILY, _ACTIVE}:
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


@dataclass(slots=True)
class _RuleRecord:
    """What the engine knows of a deployed rule's record: the effect it was confirmed
    with (its lower 95 % bound: the retirement margin), its own looks, and where in the trades
    the window of its next look starts."""

    effect: float = 0.0
    looks: int = 0
    since: int = 0


RELAX_LIMIT = 0.9
"""A size cut relaxed past this factor is removed instead (``_relaxation``)."""


class SelfModEngine:
    """Finds weaknesses in its trades, turns the confirmed ones into proposals, and
    retires the rules whose record stops supporting them.

    Discovery: a look at all the trades (``core.weakness.find_weaknesses``) at the share
    of the account's error budget ``alpha`` that the look may spend
    (``core.weakness.spending``); a look is taken when the trades have grown by
    ``look_growth`` since the last one, so looks are few and each sees much new data.
    The trades are the real ones and the shadow trades of skipped entries: what the
    strategy would have traded, whatever the rules let through.
    Confirmation: a weakness found at a look is proposed only after it holds again on at
    least ``confirm_trades`` trades (inside the slice, and outside it) that closed after
    it was found (``core.weakness.confirm_weakness``); otherwise it is dropped.
    Retirement: every active rule is tested on its record since its deployment
    (``core.weakness.retirement_test``), in windows of its own: look ``k`` reads the
    trades since the last look once ``confirm_trades * 2**(k-1)`` of them were acted on,
    spending ``alpha`` across the rule's own looks; one that no longer helps is removed, a
    size cut relaxed half way to 1 first.

    It remembers what is pending with the guardian, and what was refused and why: a change
    refused for a reason that has not changed is not proposed again (counted in
    ``suppressed``). ``evidence``/``adopt_evidence`` carry all of it across sessions.
    """

    def __init__(
        self,
        *,
        min_trades: int = 20,
        alpha: float = 0.05,
        look_growth: float = 1.5,
        confirm_trades: int = 20,
        min_new_trades: int = 10,
        max_proposals: int = 1,
    ) -> None:
        if look_growth <= 1.0:
            raise ValueError(f"look_growth must be above 1, got {look_growth}")
        self.min_trades = min_trades
        self.alpha = alpha
        self.look_growth = look_growth
        self.confirm_trades = confirm_trades
        self.min_new_trades = min_new_trades
        self.max_proposals = max_proposals
        self.book = RuleBook()
        # The population analysed: real trades and skipped shadow trades, as they closed.
        self.trades: list[EvidenceTrade] = []
        # The parts of scaled trades not bought (a rule's P&L effect, not its population).
        self.scaled: list[EvidenceTrade] = []
        self.pending: dict[str, Proposal] = {}
        self._analysed_at = 0
        self.analyses = 0
        # Looks taken for this account (the error budget spent so far) and the trades in
        # memory at the last one.
        self.looks = 0
        self._look_at = 0
        self.candidates: dict[bytes, _Candidate] = {}
        self.confirmed: dict[bytes, tuple[Weakness, Confirmation, _Candidate]] = {}
        self.records: dict[str, _RuleRecord] = {}
        # Conditions of rules retired, with where in the trades they were.
        self.retired: dict[bytes, int] = {}
        # A retirement's record before its look, until the guardian decides.
        self._retire_undo: dict[str, _RuleRecord] = {}
        self._seq = 0
        self._refused: dict[bytes, _Refusal] = {}
        # Trades already in the account's store (``unsaved_trades``).
        self._stored = 0
        self._stored_scaled = 0
        self.counters: dict[str, int] = {
            "looks": 0,
            "candidates_found": 0,
            "candidates_dropped": 0,
            "candidates_confirmed": 0,
            "suppressed": 0,
            "retirement_looks": 0,
            "retired_not_found_again": 0,
            "retirements_proposed": 0,
            "relaxations_proposed": 0,
        }

    def on_trade(self, trade: object) -> None:
        """A closed trade, real or shadow (``evidence_trade``). A position the strategy
        did not decide (a late fill, a position carried from an earlier session) is not
        evidence about its decisions and is left out."""
        if not isinstance(trade, EvidenceTrade):
            features = getattr(trade, "features", None) or {}
            if features.get("late_fill"):
                self.counters["late_fills_ignored"] = self.counters.get("late_fills_ignored", 0) + 1
                return
        t = trade if isinstance(trade, EvidenceTrade) else evidence_trade(trade)
        if t.kind == "scaled":
            self.scaled.append(t)
        else:
            self.trades.append(t)

    def new_trades(self) -> int:
        return len(self.trades) - self._analysed_at

    # -- THE ACCOUNT'S EVIDENCE (kept across sessions) ----------------------------------

    def evidence(self) -> dict[str, object]:
        """What outlives the session besides the trades (``unsaved_trades``): the looks
        taken (the error budget spent), the candidates waiting for confirmation, the
        confirmed ones not yet proposed, the rules' records and the standing refusals."""
        enc = msgspec.msgpack.encode
        return {
            "looks": self.looks,
            "look_at": self._look_at,
            "analysed_at": self._analysed_at,
            "seq": self._seq,
            "candidates": [
                {
                    "weakness": enc(c.weakness).hex(),
                    "found_at": c.found_at,
                    "look": c.look,
                    "level": c.level,
                }
                for c in self.candidates.values()
            ],
            "confirmed": [
                {
                    "weakness": enc(w).hex(),
                    "confirmation": enc(cf).hex(),
                    "found_at": c.found_at,
                    "look": c.look,
                    "level": c.level,
                }
                for w, cf, c in self.confirmed.values()
            ],
            "records": {
                rule_id: [r.effect, r.looks, r.since] for rule_id, r in self.records.items()
            },
            "retired": {key.hex(): at for key, at in self.retired.items()},
            "refused": [
                {
                    "condition": key.hex(),
                    "codes": sorted(r.codes),
                    "session_date": r.session_date,
                    "book_version": r.book_version,
                }
                for key, r in self._refused.items()
            ],
        }

    def adopt_evidence(
        self,
        doc: dict[str, object],
        trades: list[EvidenceTrade] | None = None,
        *,
        damaged: bool = False,
    ) -> None:
        """Go on from a stored ``evidence`` and the account's stored trades (``damaged``:
        some could not be read). A document that does not read, or trades that do not
        all read, leave the positions it counts in unknown: the candidates, the
        confirmed ones and the rules' windows start again from the trades as they are,
        and the budget is taken as spent by as many looks as those trades would have
        had (never a fresh budget on old data). Counted in ``evidence_unreadable``."""
        try:
            self._adopt(doc)
        except (KeyError, TypeError, ValueError, msgspec.DecodeError):
            damaged = True
            self.looks, self._look_at, self._refused = 0, 0, {}
        for t in trades or []:
            self.on_trade(t)
        n = len(self.trades)
        if damaged:
            self.counters["evidence_unreadable"] = 1
            self.candidates, self.confirmed = {}, {}
            for rec in self.records.values():
                rec.since = n
            self.retired = {key: n for key in self.retired}
            implied = 0
            while n >= 2 * self.min_trades * self.look_growth**implied:
                implied += 1
            self.looks = max(self.looks, implied)
            self._look_at = max(self._look_at, n) if implied else self._look_at
            self._analysed_at = n
        self._stored, self._stored_scaled = n, len(self.scaled)
        self._analysed_at = min(self._analysed_at, n)

    def _adopt(self, doc: dict[str, object]) -> None:
        if doc.get("unreadable"):
            raise ValueError("the stored evidence is not a JSON object")
        dec_w = msgspec.msgpack.Decoder(Weakness)
        dec_c = msgspec.msgpack.Decoder(Confirmation)
        looks = doc.get("looks", 0)
        self.looks = int(looks) if isinstance(looks, int) else 0
        self._look_at = int(doc.get("look_at", 0))  # type: ignore[call-overload]
        self._analysed_at = int(doc.get("analysed_at", 0))  # type: ignore[call-overload]
        self._seq = int(doc.get("seq", 0))  # type: ignore[call-overload]
        for c in doc.get("candidates", []):  # type: ignore[attr-defined]
            w = dec_w.decode(bytes.fromhex(c["weakness"]))
            key = msgspec.msgpack.encode(w.condition)
            self.candidates[key] = _Candidate(
                w, int(c["found_at"]), int(c["look"]), float(c["level"])
            )
        for c in doc.get("confirmed", []):  # type: ignore[attr-defined]
            w = dec_w.decode(bytes.fromhex(c["weakness"]))
            cf = dec_c.decode(bytes.fromhex(c["confirmation"]))
            key = msgspec.msgpack.encode(w.condition)
            cand = _Candidate(w, int(c["found_at"]), int(c["look"]), float(c["level"]))
            self.confirmed[key] = (w, cf, cand)
        for rule_id, (effect, looks_, at) in dict(doc.get("records", {})).items():  # type: ignore[call-overload]
            self.records[str(rule_id)] = _RuleRecord(float(effect), int(looks_), int(at))
        for key, at in dict(doc.get("retired", {})).items():  # type: ignore[call-overload]
            self.retired[bytes.fromhex(key)] = int(at)
        for r in doc.get("refused", []):  # type: ignore[attr-defined]
            self._refused[bytes.fromhex(r["condition"])] = _Refusal(
                frozenset(r["codes"]), str(r["session_date"]), int(r["book_version"])
            )

    def unsaved_trades(self) -> list[EvidenceTrade]:
        """The trades (real and shadow) not yet in the account's store. The population
        keeps its order (its positions are what the candidates' ``found_at`` count); the
        scaled parts are told apart by their kind. ``saved`` marks them stored once the
        store has them."""
        return self.trades[self._stored :] + self.scaled[self._stored_scaled :]

    def saved(self) -> None:
        self._stored, self._stored_scaled = len(self.trades), len(self.scaled)

    # -- ANALYSIS -----------------------------------------------------------------------

    def analyse(
        self, *, trigger: str, session_date: str, ts: int, force: bool = False
    ) -> list[Proposal]:
        """Retire the rules whose record no longer supports them, confirm the candidates
        that have enough new trades, propose the confirmed ones the guardian may accept,
        and take a discovery look if one is due."""
        if not force and self.new_trades() < self.min_new_trades:
            return []
        self._analysed_at = len(self.trades)
        self.analyses += 1
        out = self._retirements(trigger, session_date)
        sample = TradeSample.from_records(self.trades)
        free = self._uncovered(sample)
        self._confirm(sample, free)
        out += self._propose_confirmed(trigger, session_date, ts, self.max_proposals - len(out))
        n = len(self.trades)
        if n >= 2 * self.min_trades and n >= self.look_growth * self._look_at:
            self._look(sample, free, n)
        return out

    def _uncovered(self, sample: TradeSample) -> np.ndarray:
        """The trades no active skip covers: a new rule is judged by what it would add
        to the rules in force (a slice that looks weak only because it contains an
        active rule's slice is not a weakness of its own)."""
        free = np.ones(len(sample), dtype=bool)
        skips = [r for r in self.book.rules if isinstance(r.action, SkipTrade)]
        if skips and len(sample):
            features = sample.rule_features()
            for rule in skips:
                free &= ~eval_condition(rule.condition, features)
        return free

    def _look(self, full: TradeSample, free: np.ndarray, n: int) -> None:
        sample = full.select(free)
        self.looks += 1
        self.counters["looks"] += 1
        self._look_at = n
        level = spending(self.looks, self.alpha)
        found = find_weaknesses(
            sample,
            min_trades=self.min_trades,
            fdr=level,
            max_results=self.max_proposals * 4,
        )
        taken = self._taken()
        for w in found:
            key = msgspec.msgpack.encode(w.condition)
            if key in taken or key in self.candidates or key in self.confirmed:
                continue
            retired_at = self.retired.get(key)
            if retired_at is not None:
                # Found again on a history that still holds the time it was real: it is a
                # candidate only if the trades since its retirement show it too (tested
                # at this look's level, out of this look's share of the budget).
                since = full.select(free & (np.arange(len(full)) >= retired_at))
                if not confirm_weakness(since, w.condition, level=level).holds:
                    self.counters["retired_not_found_again"] += 1
                    continue
            self.candidates[key] = _Candidate(w, found_at=n, look=self.looks, level=level)
            self.counters["candidates_found"] += 1

    def _confirm(self, sample: TradeSample, free: np.ndarray) -> None:
        for key, c in list(self.candidates.items()):
            new = sample.select(free & (np.arange(len(sample)) >= c.found_at))
            inside = eval_condition(c.weakness.condition, new.rule_features())
            n_in = int(inside.sum())
            if n_in < self.confirm_trades or len(new) - n_in < self.confirm_trades:
                continue  # not enough new trades yet: the one look waits for them
            del self.candidates[key]
            confirmation = confirm_weakness(new, c.weakness.condition, level=self.alpha)
            if confirmation.holds:
                self.counters["candidates_confirmed"] += 1
                self.confirmed[key] = (c.weakness, confirmation, c)
            else:
                self.counters["candidates_dropped"] += 1

    def _taken(self) -> set[bytes]:
        active = {msgspec.msgpack.encode(r.condition) for r in self.book.rules}
        in_flight = {
            msgspec.msgpack.encode(p.change.rule.condition)
            for p in self.pending.values()
            if p.change.rule is not None
        }
        return active | in_flight

    def _suppressed(self, key: bytes, session_date: str) -> bool:
        refusal = self._refused.get(key)
        if refusal is None:
            return False
        if refusal.codes & _LASTING:
            return True
        if refusal.codes - {_ACTIVE} and refusal.session_date == session_date:
            return True
        return _ACTIVE in refusal.codes and refusal.book_version == self.book.version

    # -- RETIREMENT ---------------------------------------------------------------------

    def record(self, rule: Rule, *, since: int = 0) -> tuple[np.ndarray, np.ndarray, float]:
        """A rule's record since its deployment (from position ``since`` of the trades
        on): the returns of the trades it acted on (its shadow trades for a skip; its
        scaled trades for a size cut), the returns of the real trades it left alone that
        were entered after it was created, and the P&L of what it prevented (the shadow
        trades' or the unbought parts')."""
        rid = rule.rule_id
        trades = self.trades[since:]
        if isinstance(rule.action, ScaleSize):
            acted = [t for t in trades if t.kind == "real" and rid in t.rule_ids]
            first = trades[0].exit_ts if trades else 0
            prevented_pnl = sum(
                t.pnl for t in self.scaled if rid in t.rule_ids and t.exit_ts >= first
            )
        else:
            acted = [t for t in trades if t.kind == "skipped" and rid in t.rule_ids]
            prevented_pnl = sum(t.pnl for t in acted)
        kept = [
            t
            for t in trades
            if t.kind == "real" and t.entry_ts >= rule.created_ts and rid not in t.rule_ids
        ]
        return (
            np.array([t.return_pct for t in acted], dtype=np.float64),
            np.array([t.return_pct for t in kept], dtype=np.float64),
            float(prevented_pnl),
        )

    def _retirements(self, trigger: str, session_date: str) -> list[Proposal]:
        out: list[Proposal] = []
        in_flight = {p.change.rule_id for p in self.pending.values()}
        for rule in self.book.rules:
            if len(out) >= self.max_proposals:
                break
            if rule.rule_id in in_flight or not isinstance(
                rule.action, SkipTrade | ScaleSize | RequireConfidence
            ):
                continue
            rec = self.records.setdefault(rule.rule_id, _RuleRecord())
            prevented, kept, prevented_pnl = self.record(rule, since=rec.since)
            # Each look reads a window of its own, twice as long as the last: a weakness
            # that went away is not averaged with the time it was there.
            n = prevented.size
            need = self.confirm_trades * 2**rec.looks
            if n < need or kept.size < self.confirm_trades:
                continue
            undo = _RuleRecord(rec.effect, rec.looks, rec.since)
            rec.looks += 1
            rec.since = len(self.trades)
            self.counters["retirement_looks"] += 1
            level = spending(rec.looks, self.alpha)
            test = retirement_test(prevented, kept, margin=max(rec.effect, 0.0))
            if test.p_value > level:
                continue
            change, what = self._relaxation(rule)
            evidence: dict[str, float | int | str | bool | None] = {
                "test": "welch_t_noninferiority",
                "prevented_n": test.n,
                "prevented_mean_return": test.mean_return,
                "kept_n": test.kept_n,
                "kept_mean_return": test.kept_mean_return,
                "margin": test.margin,
                "statistic": test.statistic,
                "p_value": test.p_value,
                "look": rec.looks,
                "look_level": level,
                "alpha": self.alpha,
                "prevented_pnl": prevented_pnl,
                "retires": rule.rule_id,
            }
            self.counters[
                "relaxations_proposed" if change.kind == "replace_rule" else "retirements_proposed"
            ] += 1
            self._retire_undo[f"P{self._seq + 1}-{session_date}"] = undo
            out.append(
                self.propose_modification(
                    change,
                    reason=(
                        f"{rule.rule_id} {what}: the {test.n} trades it acted on since its "
                        f"deployment returned {test.mean_return:+.3%} on average against "
                        f"{test.kept_mean_return:+.3%} for the {test.kept_n} it left alone; "
                        f"it no longer helps by {test.margin:.3%} (p = {test.p_value:.2g} at "
                        f"level {level:.2g}, look {rec.looks})"
                    ),
                    evidence=evidence,
                    trigger=trigger,
                    session_date=session_date,
                )
            )
        return out

    def _relaxation(self, rule: Rule) -> tuple[Change, str]:
        """Retire a rule; a size cut is relaxed half way to 1 first (removed once the
        relaxed factor would pass ``RELAX_LIMIT``)."""
        action = rule.action
        if isinstance(action, ScaleSize):
            factor = round((1.0 + action.factor) / 2.0, 6)
            if factor <= RELAX_LIMIT:
                self._seq += 1
                relaxed = Rule(
                    rule_id=f"{rule.rule_id.split('~')[0]}~{self._seq}",
                    condition=rule.condition,
                    action=ScaleSize(factor),
                    provenance=f"{rule.rule_id} relaxed from {action.factor:g} to {factor:g}",
                    created_ts=rule.created_ts,
                )
                change = Change(kind="replace_rule", rule=relaxed, rule_id=rule.rule_id)
                return change, f"relaxed to ScaleSize({factor:g})"
        return Change(kind="remove_rule", rule_id=rule.rule_id), "retired"

    # -- PROPOSALS ----------------------------------------------------------------------

    def _propose_confirmed(
        self, trigger: str, session_date: str, ts: int, room: int
    ) -> list[Proposal]:
        out: list[Proposal] = []
        active = {msgspec.msgpack.encode(r.condition) for r in self.book.rules}
        in_flight = self._taken() - active
        for key, (w, confirmation, c) in list(self.confirmed.items()):
            if len(out) >= room:
                break
            if key in active:
                del self.confirmed[key]
                continue
            if key in in_flight:
                continue  # the guardian has it: kept until it decides
            if self._suppressed(key, session_date):
                self.counters["suppressed"] += 1
                continue
            self._seq += 1
            rule, evidence = weakness_to_rule(
                w,
                rule_id=f"R{self.book.version + 1}-{self._seq}",
                created_ts=ts,
                provenance=(
                    f"weakness found at look {c.look} of {c.found_at} trades, confirmed on "
                    f"{confirmation.n + confirmation.rest_n} later trades ({trigger})"
                ),
            )
            evidence.update(
                {
                    "look": c.look,
                    "look_level": c.level,
                    "alpha": self.alpha,
                    "found_at_trades": c.found_at,
                    "confirm_n": confirmation.n,
                    "confirm_rest_n": confirmation.rest_n,
                    "confirm_test": confirmation.test,
                    "confirm_p": confirmation.p_value,
                    "confirm_mean_return": confirmation.mean_return,
                    "confirm_rest_mean_return": confirmation.rest_mean_return,
                    "confirm_se": confirmation.se,
                }
            )
            out.append(
                self.propose_modification(
                    Change(kind="add_rule", rule=rule, rule_id=rule.rule_id),
                    reason=(
                        f"{w.label}: worse than the rest at look {c.look} (q = "
                        f"{w.q_value:.2g} at level {c.level:.2g}) and again on "
                        f"{confirmation.n} later trades (p = {confirmation.p_value:.2g})"
                    ),
                    evidence=evidence,
                    trigger=trigger,
                    session_date=session_date,
                )
            )
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

    def settle(
        self, proposal_id: str, approved: bool, violations: list[str] | None = None
    ) -> Proposal | None:
        """The guardian decided; forget the proposal as pending, and remember a refusal
        and why (the same change is not proposed again while its reason stands)."""
        p = self.pending.pop(proposal_id, None)
        if p is None or approved:
            return p
        codes = frozenset(v.split(":", 1)[0] for v in violations or ())
        lasting = bool(codes & _LASTING)
        if p.change.kind == "add_rule" and p.change.rule is not None:
            key = msgspec.msgpack.encode(p.change.rule.condition)
            self._refused[key] = _Refusal(codes, p.session_date, self.book.version)
            if lasting:
                self.confirmed.pop(key, None)  # the change itself breaks the constitution
        elif p.change.kind in ("remove_rule", "replace_rule"):
            # A retirement refused for a limit of the day is taken up again at the next
            # analysis, on the same window (the look is given back).
            undo = self._retire_undo.pop(proposal_id, None)
            if undo is not None and not lasting:
                self.records[p.change.rule_id] = undo
        return p

    def deployed(self, p: Proposal) -> None:
        """An approved change was deployed (call before the book moves on): a new rule
        starts its record with the effect it was confirmed with, a relaxed one with its
        predecessor's; a retired rule's slice is remembered."""
        self._retire_undo.pop(p.proposal_id, None)
        change = p.change
        if change.kind == "add_rule" and change.rule is not None:
            self.confirmed.pop(msgspec.msgpack.encode(change.rule.condition), None)
        if change.rule is None:
            self.records.pop(change.rule_id, None)
            for rule in self.book.rules:
                if rule.rule_id == change.rule_id:
                    self.retired[msgspec.msgpack.encode(rule.condition)] = len(self.trades)
            return
        if change.kind == "replace_rule":
            before = self.records.pop(change.rule_id, _RuleRecord())
            self.records[change.rule.rule_id] = _RuleRecord(
                effect=before.effect, since=len(self.trades)
            )
            return
        # The effect the rule is held to: the lower 95 % bound of the effect measured on
        # the confirmation's trades (the estimate itself is biased up: only candidates
        # that passed got measured).
        mean = p.evidence.get("confirm_mean_return")
        rest = p.evidence.get("confirm_rest_mean_return")
        se = p.evidence.get("confirm_se")
        effect = (
            float(rest) - float(mean) - 1.645 * (float(se) if isinstance(se, int | float) else 0.0)
            if isinstance(mean, int | float) and isinstance(rest, int | float)
            else 0.0
        )
        self.records[change.rule.rule_id] = _RuleRecord(
            effect=effect if math.isfinite(effect) else 0.0, since=len(self.trades)
        )

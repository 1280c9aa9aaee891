"""Rule sets compiled to one vectorised function, and the interpreter they must agree with.

``compile_ruleset`` turns a whole rule set into Python/numpy source, generated from the
typed rule tree only (numbers are written with ``repr`` of a float or int; symbol lists and
other strings never enter the source — they are bound as constants), compiles it once, and
caches the function by the rule set's hash. Identical conditions shared by several rules are
computed once. ``interpret`` evaluates the same rules node by node; a property test holds
the two to the same answers.

Both return an ``Effects`` over the candidates: which to skip, the size multiplier, and the
stop, target, max-hold and minimum-confidence overrides (NaN / -1 where no rule applies),
combined as described in ``sovereign.domain.rules``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sovereign.domain.regimes import REGIME_NAMES
from sovereign.domain.rules import (
    AdjustStop,
    AdjustTarget,
    And,
    ATRPercentAbove,
    Condition,
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
    ruleset_hash,
)


@dataclass(frozen=True, slots=True)
class RuleFeatures:
    """Per-candidate features, all arrays of the same length."""

    regime: np.ndarray  # uint8 regime codes
    volume_pct: np.ndarray  # float, NaN when unknown
    sr_score: np.ndarray  # int
    atr_pct: np.ndarray  # float, ATR / close * 100
    minute: np.ndarray  # int, New York minute of the day
    symbol: np.ndarray  # str names
    confidence: np.ndarray  # float
    losses: np.ndarray  # int, current losing streak

    @property
    def n(self) -> int:
        return len(self.regime)


@dataclass(slots=True)
class Effects:
    skip: np.ndarray
    scale: np.ndarray
    stop_mult: np.ndarray
    target_mult: np.ndarray
    max_hold: np.ndarray
    min_confidence: np.ndarray

    def equals(self, other: Effects) -> bool:
        return (
            np.array_equal(self.skip, other.skip)
            and np.allclose(self.scale, other.scale, rtol=1e-12, atol=0)
            and np.array_equal(self.stop_mult, other.stop_mult, equal_nan=True)
            and np.array_equal(self.target_mult, other.target_mult, equal_nan=True)
            and np.array_equal(self.max_hold, other.max_hold)
            and np.array_equal(self.min_confidence, other.min_confidence, equal_nan=True)
        )


# -- INTERPRETER ------------------------------------------------------------------------


def eval_condition(c: Condition, f: RuleFeatures) -> np.ndarray:
    """A boolean per candidate, node by node."""
    match c:
        case And(items=items):
            out = np.ones(f.n, dtype=bool)
            for i in items:
                out &= eval_condition(i, f)
            return out
        case Or(items=items):
            out = np.zeros(f.n, dtype=bool)
            for i in items:
                out |= eval_condition(i, f)
            return out
        case Not(item=i):
            return ~eval_condition(i, f)
    with np.errstate(invalid="ignore"):
        return _eval_leaf(c, f)


def _eval_leaf(c: Condition, f: RuleFeatures) -> np.ndarray:
    match c:
        case RegimeIs(regime=r):
            code = REGIME_NAMES.index(r) if r in REGIME_NAMES else -1
            return f.regime == code
        case VolumeBelow(percentile=p):
            return f.volume_pct < p
        case VolumeAbove(percentile=p):
            return f.volume_pct >= p
        case SRScoreBelow(score=s):
            return f.sr_score < s
        case SRScoreAbove(score=s):
            return f.sr_score >= s
        case ATRPercentAbove(percent=p):
            return f.atr_pct >= p
        case TimeOfDayBetween(start_minute=a, end_minute=b):
            return (f.minute >= a) & (f.minute < b)
        case SymbolIn(symbols=s):
            return np.isin(f.symbol, np.array(s, dtype=object))
        case ConfidenceBelow(confidence=x):
            return f.confidence < x
        case ConsecutiveLossesAbove(losses=n):
            return f.losses >= n
    raise TypeError(f"not a condition: {c!r}")


def _empty(n: int) -> Effects:
    return Effects(
        skip=np.zeros(n, dtype=bool),
        scale=np.ones(n),
        stop_mult=np.full(n, np.inf),
        target_mult=np.full(n, np.inf),
        max_hold=np.full(n, np.iinfo(np.int64).max, dtype=np.int64),
        min_confidence=np.full(n, -np.inf),
    )


def _finish(e: Effects) -> Effects:
    e.stop_mult[np.isinf(e.stop_mult)] = np.nan
    e.target_mult[np.isinf(e.target_mult)] = np.nan
    e.max_hold[e.max_hold == np.iinfo(np.int64).max] = -1
    e.min_confidence[np.isinf(e.min_confidence)] = np.nan
    return e


def interpret(rules: Sequence[Rule], f: RuleFeatures) -> Effects:
    e = _empty(f.n)
    for rule in rules:
        m = eval_condition(rule.condition, f)
        match rule.action:
            case SkipTrade():
                e.skip |= m
            case ScaleSize(factor=x):
                e.scale = np.where(m, e.scale * x, e.scale)
            case AdjustStop(atr_mult=x):
                e.stop_mult = np.where(m, np.minimum(e.stop_mult, x), e.stop_mult)
            case AdjustTarget(atr_mult=x):
                e.target_mult = np.where(m, np.minimum(e.target_mult, x), e.target_mult)
            case MaxHold(bars=b):
                e.max_hold = np.where(m, np.minimum(e.max_hold, b), e.max_hold)
            case RequireConfidence(minimum=x):
                e.min_confidence = np.where(m, np.maximum(e.min_confidence, x), e.min_confidence)
    return _finish(e)


# -- COMPILER ---------------------------------------------------------------------------


class _Emitter:
    """Writes the body of the compiled function, one line per distinct sub-condition."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.constants: dict[str, Any] = {}
        self._memo: dict[bytes, str] = {}

    @staticmethod
    def _lit(x: float) -> str:
        if isinstance(x, float) and not math.isfinite(x):
            return "_nan" if math.isnan(x) else ("_inf" if x > 0 else "-_inf")
        return repr(float(x)) if isinstance(x, float) else repr(int(x))

    def cond(self, c: Condition) -> str:
        import msgspec

        key = msgspec.msgpack.encode(c)
        name = self._memo.get(key)
        if name is not None:
            return name
        expr = self._expr(c)
        name = f"c{len(self._memo)}"
        self._memo[key] = name
        self.lines.append(f"    {name} = {expr}")
        return name

    def _expr(self, c: Condition) -> str:
        lit = self._lit
        match c:
            case RegimeIs(regime=r):
                code = REGIME_NAMES.index(r) if r in REGIME_NAMES else -1
                return f"regime == {code}"
            case VolumeBelow(percentile=p):
                return f"vol < {lit(float(p))}"
            case VolumeAbove(percentile=p):
                return f"vol >= {lit(float(p))}"
            case SRScoreBelow(score=s):
                return f"sr < {lit(int(s))}"
            case SRScoreAbove(score=s):
                return f"sr >= {lit(int(s))}"
            case ATRPercentAbove(percent=p):
                return f"atr >= {lit(float(p))}"
            case TimeOfDayBetween(start_minute=a, end_minute=b):
                return f"(minute >= {lit(int(a))}) & (minute < {lit(int(b))})"
            case SymbolIn(symbols=s):
                const = f"_S{len(self.constants)}"
                self.constants[const] = np.array(s, dtype=object)
                return f"_isin(sym, {const})"
            case ConfidenceBelow(confidence=x):
                return f"conf < {lit(float(x))}"
            case ConsecutiveLossesAbove(losses=n):
                return f"losses >= {lit(int(n))}"
            case And(items=items):
                parts = [self.cond(i) for i in items]
                return " & ".join(parts) if parts else "_ones(n, dtype=_bool)"
            case Or(items=items):
                parts = [self.cond(i) for i in items]
                return " | ".join(parts) if parts else "_zeros(n, dtype=_bool)"
            case Not(item=i):
                return f"~{self.cond(i)}"
        raise TypeError(f"not a condition: {c!r}")


def generate_source(rules: Sequence[Rule]) -> tuple[str, dict[str, Any]]:
    """The Python source of a rule set's function, and the constants it needs."""
    em = _Emitter()
    actions: list[str] = []
    for rule in rules:
        m = em.cond(rule.condition)
        lit = em._lit
        match rule.action:
            case SkipTrade():
                actions.append(f"    skip |= {m}")
            case ScaleSize(factor=x):
                actions.append(f"    scale = _where({m}, scale * {lit(float(x))}, scale)")
            case AdjustStop(atr_mult=x):
                actions.append(f"    stop = _where({m}, _min(stop, {lit(float(x))}), stop)")
            case AdjustTarget(atr_mult=x):
                actions.append(f"    target = _where({m}, _min(target, {lit(float(x))}), target)")
            case MaxHold(bars=b):
                actions.append(f"    hold = _where({m}, _min(hold, {lit(int(b))}), hold)")
            case RequireConfidence(minimum=x):
                actions.append(
                    f"    minconf = _where({m}, _max(minconf, {lit(float(x))}), minconf)"
                )
    head = [
        "def ruleset(f):",
        "    n = f.regime.shape[0]",
        "    regime, vol, sr, atr = f.regime, f.volume_pct, f.sr_score, f.atr_pct",
        "    minute, sym, conf, losses = f.minute, f.symbol, f.confidence, f.losses",
        "    e = _empty(n)",
        "    skip, scale, stop, target = e.skip, e.scale, e.stop_mult, e.target_mult",
        "    hold, minconf = e.max_hold, e.min_confidence",
    ]
    tail = [
        "    e.skip, e.scale, e.stop_mult, e.target_mult = skip, scale, stop, target",
        "    e.max_hold, e.min_confidence = hold, minconf",
        "    return _finish(e)",
    ]
    source = "\n".join([*head, *em.lines, *actions, *tail]) + "\n"
    return source, em.constants


CompiledRuleset = Callable[[RuleFeatures], Effects]
_CACHE: dict[str, CompiledRuleset] = {}
_CACHE_LIMIT = 256


def compile_ruleset(rules: Sequence[Rule]) -> CompiledRuleset:
    """The compiled function of a rule set, cached by its hash."""
    key = ruleset_hash(tuple(rules), {})
    fn = _CACHE.get(key)
    if fn is not None:
        return fn
    source, constants = generate_source(rules)
    namespace: dict[str, Any] = {
        "__builtins__": {},
        "_empty": _empty,
        "_finish": _finish,
        "_where": np.where,
        "_min": np.minimum,
        "_max": np.maximum,
        "_isin": np.isin,
        "_ones": np.ones,
        "_zeros": np.zeros,
        "_bool": np.bool_,
        "_nan": math.nan,
        "_inf": math.inf,
        **constants,
    }
    code = compile(source, f"<ruleset {key[:12]}>", "exec")
    with np.errstate(invalid="ignore"):
        exec(code, namespace)
    raw = namespace["ruleset"]

    def run(f: RuleFeatures) -> Effects:
        with np.errstate(invalid="ignore"):
            return raw(f)

    if len(_CACHE) >= _CACHE_LIMIT:
        _CACHE.pop(next(iter(_CACHE)))
    _CACHE[key] = run
    return run

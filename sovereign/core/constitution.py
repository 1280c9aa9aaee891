"""The constitution: risk limits that nothing inside the system can loosen.

A frozen object. Configuration may tighten a limit (``Constitution.tightened``); a value
that would loosen one raises ``ConstitutionError`` naming the field, the value and the
limit. The sha256 ``fingerprint`` over the canonical encoding identifies the exact limits a
decision was made under.
"""

from __future__ import annotations

import hashlib
import math

import msgspec


class ConstitutionError(ValueError):
    """An attempt to build a constitution looser than the default, or an invalid one."""


# For each limit: does a *smaller* value make it stricter? (min confidence: larger is stricter)
_STRICTER_IS_SMALLER: dict[str, bool] = {
    "max_position_size": True,
    "max_daily_loss": True,
    "max_drawdown": True,
    "min_confidence_for_trade": False,
    "max_rule_changes_per_day": True,
    "max_active_rules": True,
}

FORBIDDEN_MODIFICATIONS: frozenset[str] = frozenset(
    {"max_drawdown", "constitution", "forbidden_modifications"}
)


class Constitution(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The immutable risk limits.

    Parameters
    ----------
    max_position_size
        Largest position, as a fraction of current equity, after the fill. 0.05.
    max_daily_loss
        Loss since the day's starting equity above which new positions stop. 0.03.
    max_drawdown
        Drawdown from the high-water mark above which all trading halts. 0.10.
    min_confidence_for_trade
        Entries with a lower calibrated confidence are refused. 0.40.
    max_rule_changes_per_day
        Self-modifications deployed per trading day. 3.
    max_active_rules
        Active rules at any time. 50.
    forbidden_modifications
        What no proposal may change, ever.
    """

    max_position_size: float = 0.05
    max_daily_loss: float = 0.03
    max_drawdown: float = 0.10
    min_confidence_for_trade: float = 0.40
    max_rule_changes_per_day: int = 3
    max_active_rules: int = 50
    forbidden_modifications: frozenset[str] = FORBIDDEN_MODIFICATIONS

    def __post_init__(self) -> None:
        for name in ("max_position_size", "max_daily_loss", "max_drawdown"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0 < value < 1):
                raise ConstitutionError(f"{name} must be in (0, 1), got {value!r}")
        if not (
            math.isfinite(self.min_confidence_for_trade) and 0 <= self.min_confidence_for_trade <= 1
        ):
            raise ConstitutionError(
                f"min_confidence_for_trade must be in [0, 1], got {self.min_confidence_for_trade!r}"
            )
        if self.max_rule_changes_per_day < 0 or self.max_active_rules < 0:
            raise ConstitutionError("rule limits must be >= 0")
        if not self.forbidden_modifications >= FORBIDDEN_MODIFICATIONS:
            raise ConstitutionError("forbidden_modifications may not be reduced")

    @classmethod
    def default(cls) -> Constitution:
        return cls()

    def tightened(self, **overrides: float | int) -> Constitution:
        """A copy with some limits made stricter.

        Raises
        ------
        ConstitutionError
            If a field is unknown or forbidden, or a value would loosen its limit.
        """
        for name, value in overrides.items():
            if name not in _STRICTER_IS_SMALLER:
                raise ConstitutionError(f"{name} is not a constitutional limit that can be set")
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConstitutionError(f"{name} must be a number, got {value!r}")
            limit = getattr(self, name)
            smaller = _STRICTER_IS_SMALLER[name]
            looser = value > limit if smaller else value < limit
            if looser or (isinstance(value, float) and not math.isfinite(value)):
                bound = "at most" if smaller else "at least"
                raise ConstitutionError(
                    f"{name} = {value!r} would loosen the constitution; it must be {bound} "
                    f"{limit!r}"
                )
        return msgspec.structs.replace(self, **overrides)

    def canonical_bytes(self) -> bytes:
        """Deterministic encoding: sorted keys, sorted sets, JSON."""
        data = msgspec.structs.asdict(self)
        data["forbidden_modifications"] = sorted(self.forbidden_modifications)
        return msgspec.json.encode(dict(sorted(data.items())))

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.canonical_bytes()).hexdigest()

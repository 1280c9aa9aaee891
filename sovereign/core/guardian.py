"""The trading-state machine: the kill conditions of the constitution.

States, computed on equity including unrealised P&L at every account observation (and
consulted before every approval):

``ACTIVE``
    Entries and exits allowed.
``NO_NEW_POSITIONS``
    The loss since the day's starting equity exceeded ``max_daily_loss`` (3 %). Exits are
    allowed; entries are refused until the next trading session, when the state returns
    to ACTIVE. The day's starting equity is the equity at the end of the previous session
    (the initial capital on the first day), so an overnight gap counts against the day.
``HALTED``
    Drawdown from the high-water mark exceeded ``max_drawdown`` (10 %). The high-water
    mark is the highest *confirmed* equity: an observation counts towards it only as far
    as the next one holds it (the lower of two consecutive equities), so a one-bar spike
    of a bad price never sets a peak; a real rise sets it one observation later. Everything but
    flattening is refused. Only an audited ``sovereign resume --confirm --reason`` leaves
    this state: no message, command or proposal inside the system can.

Losing streaks: after ``review_after_losses`` consecutive losing trades the machine asks
for a rule evaluation (and starts counting again).

The machine is pure: equity and the session date arrive as arguments; it never reads a
clock. Its whole state is a small document persisted by the guardian after every change.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

from sovereign.core.constitution import Constitution


class TradingState(StrEnum):
    ACTIVE = "ACTIVE"
    NO_NEW_POSITIONS = "NO_NEW_POSITIONS"
    HALTED = "HALTED"


_STATE_OF = {s.value: s for s in TradingState}


@dataclass(slots=True)
class GuardianState:
    """The persisted document."""

    state: str = TradingState.ACTIVE.value
    high_water_mark: float = 0.0
    day_start_equity: float = 0.0
    session_date: str = ""
    last_equity: float = 0.0
    consecutive_losses: int = 0
    worst_drawdown: float = 0.0
    halted_reason: str = ""
    halted_ts: int = 0
    halted_equity: float = 0.0
    resumed: list[dict[str, Any]] = field(default_factory=list)
    version: int = 1
    # The audit entry that recorded the last change of ``state`` (its sequence number and
    # hash): the stored state must agree with the audit log (``memory.account``).
    audit_seq: int = 0
    audit_hash: str = ""
    # Orders the guardian itself sent (flattening on a halt) are numbered from here: a
    # restarted guardian must not reuse an id.
    flatten_seq: int = 0
    # The account as last seen, for operators who ask while no session runs.
    last_cash: float = 0.0
    last_gross_exposure: float = 0.0
    last_open_positions: int = 0
    last_ts: int = 0

    def to_dict(self) -> dict[str, Any]:
        # Called every bar: a flat copy (the only container, ``resumed``, holds flat
        # dicts), several times cheaper than dataclasses.asdict's deep recursion.
        doc = {name: getattr(self, name) for name in self.__dataclass_fields__}
        doc["resumed"] = [dict(r) for r in self.resumed]
        return doc

    def limit_figures(self) -> tuple[object, ...]:
        """Everything but the account as last seen (``last_*``): what the limits depend on.
        ``resumed`` only ever grows, so its length stands for it (the list itself is
        changed in place and would compare equal to itself)."""
        return (*_LIMIT_FIELDS(self), len(self.resumed))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GuardianState:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        state = cls(**known)
        if state.state not in TradingState.__members__:
            raise ValueError(f"stored trading state {state.state!r} is not a trading state")
        return state

    @classmethod
    def fresh(cls, equity: float) -> GuardianState:
        return cls(high_water_mark=equity, day_start_equity=equity, last_equity=equity)


_LIMIT_FIELDS = operator.attrgetter(
    *(
        name
        for name in GuardianState.__dataclass_fields__
        if not name.startswith("last_") and name != "resumed"
    )
)


@dataclass(frozen=True, slots=True)
class Transition:
    previous: TradingState
    state: TradingState
    reason: str
    equity: float
    high_water_mark: float
    day_start_equity: float
    drawdown: float
    day_loss: float
    session_date: str


class TradingStateMachine:
    """ACTIVE / NO_NEW_POSITIONS / HALTED from equity observations."""

    def __init__(
        self, constitution: Constitution, state: GuardianState, *, review_after_losses: int = 3
    ) -> None:
        if review_after_losses < 1:
            raise ValueError("review_after_losses must be >= 1")
        self.constitution = constitution
        self.s = state
        self.review_after_losses = review_after_losses

    @property
    def state(self) -> TradingState:
        # A dict lookup: the Enum constructor is several times slower, and this is read
        # several times per bar. The stored name was checked when the state was loaded.
        return _STATE_OF[self.s.state]

    def drawdown(self, equity: float) -> float:
        hwm = self.s.high_water_mark
        return 0.0 if hwm <= 0 else max(0.0, 1.0 - equity / hwm)

    def day_loss(self, equity: float) -> float:
        start = self.s.day_start_equity
        return 0.0 if start <= 0 else max(0.0, 1.0 - equity / start)

    def observe(self, equity: float, session_date: str, ts: int) -> list[Transition]:
        """Take an equity observation; return the transitions it caused (oldest first)."""
        s = self.s
        out: list[Transition] = []
        if not math.isfinite(equity):
            # Corrupt input: refuse to trade on it rather than guess.
            return self._move(TradingState.HALTED, f"non-finite equity {equity!r}", equity, out, ts)
        if session_date and session_date != s.session_date:
            if s.session_date:
                # The previous session's closing equity is the new day's starting point.
                s.day_start_equity = s.last_equity
            elif s.day_start_equity <= 0:
                s.day_start_equity = equity
            s.session_date = session_date
            if self.state is TradingState.NO_NEW_POSITIONS:
                self._move(TradingState.ACTIVE, f"new session {session_date}", equity, out, ts)
        # The high-water mark rises only on equity confirmed by the next observation: a
        # price that spikes for one bar and comes straight back (a bad print) must not
        # set a peak that the next, true bar then reads as a drawdown.
        s.high_water_mark = max(s.high_water_mark, min(equity, s.last_equity))
        s.last_equity = equity
        dd = self.drawdown(equity)
        s.worst_drawdown = max(s.worst_drawdown, dd)
        limit = self.constitution
        if self.state is not TradingState.HALTED and dd > limit.max_drawdown:
            self._move(
                TradingState.HALTED,
                f"drawdown {dd:.2%} from the high-water mark {s.high_water_mark:,.2f} exceeds "
                f"{limit.max_drawdown:.0%}",
                equity,
                out,
                ts,
            )
        elif self.state is TradingState.ACTIVE and self.day_loss(equity) > limit.max_daily_loss:
            self._move(
                TradingState.NO_NEW_POSITIONS,
                f"loss {self.day_loss(equity):.2%} since the day's start "
                f"{s.day_start_equity:,.2f} exceeds {limit.max_daily_loss:.0%}",
                equity,
                out,
                ts,
            )
        return out

    def observe_path(self, equity: np.ndarray, day: np.ndarray, dates: list[str]) -> int:
        """Observe consecutive account snapshots at once (a speculative chunk's bar closes):
        ``equity`` (float64) and ``day`` (an index into ``dates``, the session date of each
        snapshot). If ``observe``, called on each in turn, would move the trading state at
        none of them, the state is advanced exactly as those calls would advance it and -1
        is returned; otherwise nothing changes and the index of the first snapshot that
        would move it, or has a non-finite equity, is returned (the caller then observes
        them one at a time)."""
        n = int(equity.shape[0])
        if n == 0:
            return -1
        s = self.s
        state = self.state
        bad = ~np.isfinite(equity)
        first = int(np.argmax(bad)) if bad.any() else n
        # Session dates: where each new one starts, and the day's starting equity it sets.
        change = np.flatnonzero(np.r_[dates[int(day[0])] != s.session_date, day[1:] != day[:-1]])
        change = change[[bool(dates[int(day[i])]) for i in change.tolist()]]
        day_start = np.full(n, s.day_start_equity)
        previous_date, start = s.session_date, s.day_start_equity
        last = s.last_equity
        for i in change.tolist():
            if previous_date:
                start = last if i == 0 else float(equity[i - 1])
            elif start <= 0:
                start = float(equity[i])
            previous_date = dates[int(day[i])]
            day_start[i:] = start
            if state is TradingState.NO_NEW_POSITIONS:
                first = min(first, i)  # a new session ends the day's stop
                break
        confirmed = np.minimum(equity, np.r_[s.last_equity, equity[:-1]])
        hwm = np.maximum.accumulate(np.r_[s.high_water_mark, confirmed])[1:]
        with np.errstate(invalid="ignore", divide="ignore"):
            drawdown = np.where(hwm <= 0, 0.0, np.maximum(0.0, 1.0 - equity / hwm))
            loss = np.where(day_start <= 0, 0.0, np.maximum(0.0, 1.0 - equity / day_start))
        limit = self.constitution
        if state is not TradingState.HALTED:
            over = drawdown[:first] > limit.max_drawdown
            if over.any():
                first = int(np.argmax(over))
        if state is TradingState.ACTIVE:
            over = loss[:first] > limit.max_daily_loss
            if over.any():
                first = int(np.argmax(over))
        if first < n:
            return first
        s.high_water_mark = float(hwm[-1])
        s.last_equity = float(equity[-1])
        s.worst_drawdown = max(s.worst_drawdown, float(drawdown.max()))
        if change.size:
            s.session_date = previous_date
            s.day_start_equity = start
        return -1

    def _move(
        self, to: TradingState, reason: str, equity: float, out: list[Transition], ts: int
    ) -> list[Transition]:
        previous = self.state
        if previous is to:
            return out
        s = self.s
        s.state = to.value
        if to is TradingState.HALTED:
            s.halted_reason = reason
            s.halted_ts = ts
            s.halted_equity = equity
        out.append(
            Transition(
                previous=previous,
                state=to,
                reason=reason,
                equity=equity,
                high_water_mark=s.high_water_mark,
                day_start_equity=s.day_start_equity,
                drawdown=self.drawdown(equity) if math.isfinite(equity) else 1.0,
                day_loss=self.day_loss(equity) if math.isfinite(equity) else 1.0,
                session_date=s.session_date,
            )
        )
        return out

    def entry_refusal(self) -> tuple[str, str] | None:
        """Why an entry must be refused now, or None if entries are allowed."""
        match self.state:
            case TradingState.HALTED:
                return "HALTED", f"trading is halted: {self.s.halted_reason}"
            case TradingState.NO_NEW_POSITIONS:
                return (
                    "DAILY_LOSS_LIMIT",
                    f"no new positions until the next session after a "
                    f"{self.day_loss(self.s.last_equity):.2%} loss today",
                )
        return None

    def on_trade_closed(self, pnl: float) -> bool:
        """Count a closed trade; True when a losing streak asks for a rule evaluation."""
        self.s.consecutive_losses, review = streak_step(
            self.s.consecutive_losses, pnl, self.review_after_losses
        )
        return review

    def first_review(self, pnl: np.ndarray) -> int:
        """Which of these closed trades (P&L in the order they close) would be the first
        to ask for a rule evaluation (-1: none), counted as ``on_trade_closed`` counts
        them, without counting them."""
        count = self.s.consecutive_losses
        for k, x in enumerate(pnl.tolist()):
            count, review = streak_step(count, x, self.review_after_losses)
            if review:
                return k
        return -1


def streak_step(count: int, pnl: float, review_after: int) -> tuple[int, bool]:
    """A losing streak after one more closed trade, and whether it asks for a rule
    evaluation (``review_after`` losses in a row; the count starts again after it)."""
    if pnl < 0:
        count += 1
        if count >= review_after:
            return 0, True
        return count, False
    return 0, False


def replacement_refusal(old: GuardianState, new: GuardianState) -> str | None:
    """Why ``new`` must not overwrite the stored ``old`` (None: it may).

    A writer that knows less than the store is stale (another session, or a guardian that
    Ray restarted and has not caught up): it may not undo a later state change, nor a
    resume it has not adopted. And nothing leaves HALTED but a resume: a document that
    is not HALTED replaces a HALTED one only if it records one more resume."""
    if new.audit_seq < old.audit_seq:
        return (
            f"the stored state records a later change (audit entry {old.audit_seq}, "
            f"{old.state}) than this writer knows ({new.audit_seq})"
        )
    if len(new.resumed) < len(old.resumed):
        return "the stored state records a resume this writer has not adopted"
    if (
        old.state == TradingState.HALTED.value
        and new.state != TradingState.HALTED.value
        and len(new.resumed) <= len(old.resumed)
    ):
        return "only `sovereign resume --confirm` leaves HALTED"
    return None


def halted_from(state: GuardianState | None, reason: str) -> GuardianState:
    """A state that cannot be trusted, failed closed: HALTED, keeping whatever could be
    read of it (its resumes, its high-water mark, its order numbering)."""
    old = state or GuardianState()
    return dataclasses.replace(
        old,
        state=TradingState.HALTED.value,
        halted_reason=reason,
        resumed=[dict(r) for r in old.resumed],
    )


def rebuild(
    state: GuardianState | None, *, reason: str, operator: str, ts: int, problem: str
) -> tuple[GuardianState, dict[str, Any]]:
    """Start an account again whose stored state was lost or failed its checks (the
    operator's explicit, audited decision). What survives of the old state is kept for the
    record; the limits start afresh from the broker's next account snapshot (a high-water
    mark and day start of 0 are taken from the first equity observed)."""
    if not reason.strip():
        raise ValueError("a reason is required to resume trading")
    old = state or GuardianState()
    record = {
        "ts": ts,
        "operator": operator,
        "reason": reason,
        "rebuilt": True,
        "problem": problem,
        "halted_reason": old.halted_reason,
        "halted_ts": old.halted_ts,
        "high_water_mark_before": old.high_water_mark,
        "equity": old.last_equity,
    }
    fresh = GuardianState(
        worst_drawdown=old.worst_drawdown,
        resumed=[*old.resumed, record],
        audit_seq=old.audit_seq,
        audit_hash=old.audit_hash,
        flatten_seq=old.flatten_seq,
    )
    return fresh, record


def resume(state: GuardianState, *, reason: str, operator: str, ts: int) -> dict[str, Any]:
    """Leave HALTED (the operator's explicit, audited decision).

    The high-water mark and the day's start are reset to the last equity: the operator has
    accepted the loss, and the next drawdown is measured from here.
    """
    if not reason.strip():
        raise ValueError("a reason is required to resume trading")
    if state.state != TradingState.HALTED.value:
        raise ValueError(f"trading is {state.state}, not HALTED: nothing to resume")
    record = {
        "ts": ts,
        "operator": operator,
        "reason": reason,
        "halted_reason": state.halted_reason,
        "halted_ts": state.halted_ts,
        "high_water_mark_before": state.high_water_mark,
        "equity": state.last_equity,
    }
    state.state = TradingState.ACTIVE.value
    state.high_water_mark = state.last_equity
    state.day_start_equity = state.last_equity
    state.halted_reason = ""
    state.resumed.append(record)
    return record

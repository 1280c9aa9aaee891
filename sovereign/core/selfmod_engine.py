"""The self-modification engine: it finds weaknesses in an account's trades, proposes the
confirmed ones as rules, and retires the rules whose record stops supporting them. The
rule book, the proposals and the constitutional check are in ``sovereign.core.selfmod``."""

from __future__ import annotations

import math

import msgspec
import numpy as np

from sovereign.core.codegen import eval_condition
from sovereign.core.selfmod import (
    ACTIVE_LIMIT,
    LASTING_REFUSALS,
    Change,
    EvidenceTrade,
    Proposal,
    RuleBook,
    evidence_trade,
)
from sovereign.core.selfmod_evidence import Candidate, Refusal, RuleRecord, ledger_doc, read_ledger
from sovereign.core.weakness import TradeSample, Weakness, find_weaknesses, weakness_to_rule
from sovereign.core.weakness_looks import Confirmation, confirm_weakness, retirement_test, spending
from sovereign.domain.rules import RequireConfidence, Rule, ScaleSize, SkipTrade

__all__ = ["RELAX_LIMIT", "SelfModEngine"]

RELAX_LIMIT = 0.9
"""A size cut relaxed past this factor is removed instead (``_relaxation``)."""


class SelfModEngine:
    """Finds weaknesses in its trades, turns the confirmed ones into proposals, and
    retires the rules whose record stops supporting them.

    Discovery: a look at all the trades (``core.weakness.find_weaknesses``) at the share
    of the account's error budget ``alpha`` that the look may spend
    (``core.weakness_looks.spending``); a look is taken when the trades have grown by
    ``look_growth`` since the last one, so looks are few and each sees much new data.
    The trades are the real ones and the shadow trades of skipped entries: what the
    strategy would have traded, whatever the rules let through.
    Confirmation: a weakness found at a look is proposed only after it holds again on at
    least ``confirm_trades`` trades (inside the slice, and outside it) that closed after
    it was found (``core.weakness_looks.confirm_weakness``); otherwise it is dropped.
    Retirement: every active rule is tested on its record since its deployment
    (``core.weakness_looks.retirement_test``), in windows of its own: look ``k`` reads the
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
        self.candidates: dict[bytes, Candidate] = {}
        self.confirmed: dict[bytes, tuple[Weakness, Confirmation, Candidate]] = {}
        self.records: dict[str, RuleRecord] = {}
        # Conditions of rules retired, with where in the trades they were.
        self.retired: dict[bytes, int] = {}
        # A retirement's record before its look, until the guardian decides.
        self._retire_undo: dict[str, RuleRecord] = {}
        self._seq = 0
        self._refused: dict[bytes, Refusal] = {}
        # Trades already in the account's store (``unsaved_trades``).
        self._stored = 0
        self._stored_scaled = 0
        # The population as columns, extended as trades arrive: rebuilding it from every
        # record at each analysis made a long session's analyses quadratic.
        self._sample = TradeSample.from_records([])
        self._sample_of = self.trades
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
        return {
            "looks": self.looks,
            "look_at": self._look_at,
            "analysed_at": self._analysed_at,
            "seq": self._seq,
            **ledger_doc(
                self.candidates, self.confirmed, self.records, self.retired, self._refused
            ),
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
        looks = doc.get("looks", 0)
        self.looks = int(looks) if isinstance(looks, int) else 0
        self._look_at = int(doc.get("look_at", 0))  # type: ignore[call-overload]
        self._analysed_at = int(doc.get("analysed_at", 0))  # type: ignore[call-overload]
        self._seq = int(doc.get("seq", 0))  # type: ignore[call-overload]
        read_ledger(doc, self.candidates, self.confirmed, self.records, self.retired, self._refused)

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
        sample = self._population()
        free = self._uncovered(sample)
        self._confirm(sample, free)
        out += self._propose_confirmed(trigger, session_date, ts, self.max_proposals - len(out))
        n = len(self.trades)
        if n >= 2 * self.min_trades and n >= self.look_growth * self._look_at:
            self._look(sample, free, n)
        return out

    def _population(self) -> TradeSample:
        """``TradeSample.from_records(self.trades)``, built once per trade (the trades are
        immutable and only ever appended)."""
        have = len(self._sample)
        if self._sample_of is not self.trades or have > len(self.trades):
            # The population was replaced: start again.
            self._sample, self._sample_of, have = TradeSample.from_records([]), self.trades, 0
        self._sample = self._sample.extended(self.trades[have:])
        return self._sample

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
            self.candidates[key] = Candidate(w, found_at=n, look=self.looks, level=level)
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
        if refusal.codes & LASTING_REFUSALS:
            return True
        if refusal.codes - {ACTIVE_LIMIT} and refusal.session_date == session_date:
            return True
        return ACTIVE_LIMIT in refusal.codes and refusal.book_version == self.book.version

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
            rec = self.records.setdefault(rule.rule_id, RuleRecord())
            prevented, kept, prevented_pnl = self.record(rule, since=rec.since)
            # Each look reads a window of its own, twice as long as the last: a weakness
            # that went away is not averaged with the time it was there.
            n = prevented.size
            need = self.confirm_trades * 2**rec.looks
            if n < need or kept.size < self.confirm_trades:
                continue
            undo = RuleRecord(rec.effect, rec.looks, rec.since)
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
        lasting = bool(codes & LASTING_REFUSALS)
        if p.change.kind == "add_rule" and p.change.rule is not None:
            key = msgspec.msgpack.encode(p.change.rule.condition)
            self._refused[key] = Refusal(codes, p.session_date, self.book.version)
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
            before = self.records.pop(change.rule_id, RuleRecord())
            self.records[change.rule.rule_id] = RuleRecord(
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
        self.records[change.rule.rule_id] = RuleRecord(
            effect=effect if math.isfinite(effect) else 0.0, since=len(self.trades)
        )

"""Self-modification messages: rule sets, proposals, the guardian's decisions, rollbacks."""

from __future__ import annotations

from typing import Literal

import msgspec

from sovereign.domain.rules import Rule
from sovereign.messages.base import Message

EvidenceValue = float | int | str | bool | None


class RuleSetSnapshot(Message, frozen=True, gc=False):
    """The complete active rule set and tuned parameters, version-numbered.

    Shards replace whatever they had with it (a snapshot, not a delta), so a lost or
    repeated snapshot never leaves a shard with half a rule set.
    """

    version: int
    rules: list[Rule]
    parameters: dict[str, float]
    ruleset_hash: str
    modification_id: str = ""


class ModificationProposal(Message, frozen=True, gc=False):
    """A change the self-modification engine wants, with the evidence for it.

    ``kind`` is ``add_rule`` (``rule``), ``remove_rule`` (``rule_id``),
    ``replace_rule`` (``rule`` takes the place of ``rule_id``: a relaxation) or
    ``set_parameter`` (``parameter`` = ``value``).
    """

    proposal_id: str
    kind: Literal["add_rule", "remove_rule", "replace_rule", "set_parameter"]
    reason: str
    session_date: str
    rule: Rule | None = None
    rule_id: str = ""
    parameter: str = ""
    value: float = 0.0
    evidence: dict[str, EvidenceValue] = msgspec.field(default_factory=dict)
    trigger: str = ""


class ModificationDecision(Message, frozen=True, gc=False):
    """The guardian's constitutional verdict on a proposal.

    ``violations`` names every limit the proposal breaks (empty when approved);
    ``fingerprint`` is the constitution it was checked against.
    """

    proposal_id: str
    approved: bool
    violations: list[str]
    fingerprint: str
    changes_today: int
    active_rules: int


class RollbackRequest(Message, frozen=True, gc=False):
    """An operator asks to undo a deployed modification."""

    modification_id: str
    reason: str
    requested_by: str

"""The self-modification engine's evidence that outlives a session, besides its trades:
the candidates waiting for confirmation, the confirmed weaknesses not yet proposed, the
deployed rules' records, the retired slices and the standing refusals, and their stored
form (``SelfModEngine.evidence``)."""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from sovereign.core.weakness import Weakness
from sovereign.core.weakness_looks import Confirmation

__all__ = ["Candidate", "Refusal", "RuleRecord", "ledger_doc", "read_ledger"]


@dataclass(frozen=True, slots=True)
class Candidate:
    """A weakness found at a look, waiting for trades it was not found on."""

    weakness: Weakness
    found_at: int  # trades in memory when it was found
    look: int
    level: float


@dataclass(frozen=True, slots=True)
class Refusal:
    """A change the guardian refused: its violation codes, the day and the rule book."""

    codes: frozenset[str]
    session_date: str
    book_version: int


@dataclass(slots=True)
class RuleRecord:
    """What the engine knows of a deployed rule's record: the effect it was confirmed
    with (its lower 95 % bound: the retirement margin), its own looks, and where in the trades
    the window of its next look starts."""

    effect: float = 0.0
    looks: int = 0
    since: int = 0


def ledger_doc(
    candidates: dict[bytes, Candidate],
    confirmed: dict[bytes, tuple[Weakness, Confirmation, Candidate]],
    records: dict[str, RuleRecord],
    retired: dict[bytes, int],
    refused: dict[bytes, Refusal],
) -> dict[str, object]:
    """The stored form of the candidates, the confirmed ones, the rules' records, the
    retired slices and the refusals (keyed as in ``SelfModEngine.evidence``)."""
    enc = msgspec.msgpack.encode
    return {
        "candidates": [
            {
                "weakness": enc(c.weakness).hex(),
                "found_at": c.found_at,
                "look": c.look,
                "level": c.level,
            }
            for c in candidates.values()
        ],
        "confirmed": [
            {
                "weakness": enc(w).hex(),
                "confirmation": enc(cf).hex(),
                "found_at": c.found_at,
                "look": c.look,
                "level": c.level,
            }
            for w, cf, c in confirmed.values()
        ],
        "records": {rule_id: [r.effect, r.looks, r.since] for rule_id, r in records.items()},
        "retired": {key.hex(): at for key, at in retired.items()},
        "refused": [
            {
                "condition": key.hex(),
                "codes": sorted(r.codes),
                "session_date": r.session_date,
                "book_version": r.book_version,
            }
            for key, r in refused.items()
        ],
    }


def read_ledger(
    doc: dict[str, object],
    candidates: dict[bytes, Candidate],
    confirmed: dict[bytes, tuple[Weakness, Confirmation, Candidate]],
    records: dict[str, RuleRecord],
    retired: dict[bytes, int],
    refused: dict[bytes, Refusal],
) -> None:
    """Fill the dicts from a stored ``ledger_doc``, in its order: a doc that stops reading
    part way raises, and leaves in them what was read before."""
    dec_w = msgspec.msgpack.Decoder(Weakness)
    dec_c = msgspec.msgpack.Decoder(Confirmation)
    for c in doc.get("candidates", []):  # type: ignore[attr-defined]
        w = dec_w.decode(bytes.fromhex(c["weakness"]))
        key = msgspec.msgpack.encode(w.condition)
        candidates[key] = Candidate(w, int(c["found_at"]), int(c["look"]), float(c["level"]))
    for c in doc.get("confirmed", []):  # type: ignore[attr-defined]
        w = dec_w.decode(bytes.fromhex(c["weakness"]))
        cf = dec_c.decode(bytes.fromhex(c["confirmation"]))
        key = msgspec.msgpack.encode(w.condition)
        cand = Candidate(w, int(c["found_at"]), int(c["look"]), float(c["level"]))
        confirmed[key] = (w, cf, cand)
    for rule_id, (effect, looks_, at) in dict(doc.get("records", {})).items():  # type: ignore[call-overload]
        records[str(rule_id)] = RuleRecord(float(effect), int(looks_), int(at))
    for key, at in dict(doc.get("retired", {})).items():  # type: ignore[call-overload]
        retired[bytes.fromhex(key)] = int(at)
    for r in doc.get("refused", []):  # type: ignore[attr-defined]
        refused[bytes.fromhex(r["condition"])] = Refusal(
            frozenset(r["codes"]), str(r["session_date"]), int(r["book_version"])
        )

"""How the governance file stores things: its tables, and a rule-set change as the JSON
document kept in a decision and a modification (``sovereign.memory.governance`` writes and
reads them).
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

from sovereign.core.selfmod import Change

SCHEMA = """
CREATE TABLE IF NOT EXISTS rule_sets (
    scope           TEXT    NOT NULL,
    version         INTEGER NOT NULL,
    ts_ns           INTEGER NOT NULL,
    doc             TEXT    NOT NULL,
    hash            TEXT    NOT NULL,
    modification_id TEXT    NOT NULL DEFAULT '',
    PRIMARY KEY (scope, version)
);
CREATE TABLE IF NOT EXISTS modifications (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    scope           TEXT    NOT NULL,
    ts_ns           INTEGER NOT NULL,
    session_date    TEXT    NOT NULL,
    kind            TEXT    NOT NULL,
    status          TEXT    NOT NULL,
    summary         TEXT    NOT NULL,
    change          TEXT    NOT NULL,
    evidence        TEXT    NOT NULL,
    violations      TEXT    NOT NULL,
    trigger         TEXT    NOT NULL,
    version_before  INTEGER,
    version_after   INTEGER,
    rolled_back_ts  INTEGER,
    rolled_back_by  TEXT,
    rollback_reason TEXT
);
CREATE INDEX IF NOT EXISTS modifications_scope ON modifications (scope, id);
CREATE TABLE IF NOT EXISTS decisions (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    scope           TEXT    NOT NULL,
    proposal_id     TEXT    NOT NULL,
    session_date    TEXT    NOT NULL,
    ts_ns           INTEGER NOT NULL,
    approved        INTEGER NOT NULL,
    change          TEXT    NOT NULL,
    violations      TEXT    NOT NULL,
    modification_id INTEGER
);
CREATE INDEX IF NOT EXISTS decisions_scope_day ON decisions (scope, session_date);
CREATE TABLE IF NOT EXISTS evidence (
    scope           TEXT    PRIMARY KEY,
    ts_ns           INTEGER NOT NULL,
    doc             TEXT    NOT NULL
);
CREATE TABLE IF NOT EXISTS evidence_trades (
    scope           TEXT    NOT NULL,
    seq             INTEGER NOT NULL,
    trade           BLOB    NOT NULL,
    PRIMARY KEY (scope, seq)
);
"""
# ``evidence`` and ``evidence_trades`` are a named account's self-modification evidence
# (``core.selfmod_engine.SelfModEngine.evidence``): the budget spent, the candidates, the rules'
# records, and every trade it learned from, real and shadow, so it goes on where the last
# session stopped.


def change_from_doc(doc: dict[str, Any]) -> Change:
    """The change a stored document (``change_doc``, parsed) describes."""
    from sovereign.domain.rules import Rule

    rule = msgspec.convert(doc["rule"], Rule) if doc.get("rule") is not None else None
    return Change(
        kind=doc["kind"],
        rule=rule,
        rule_id=doc.get("rule_id", ""),
        parameter=doc.get("parameter", ""),
        value=float(doc.get("value", 0.0)),
    )


def change_doc(change: Change) -> str:
    """The change as stored: JSON with sorted keys, so equal changes store equal text."""
    return json.dumps(
        {
            "kind": change.kind,
            "rule": msgspec.to_builtins(change.rule) if change.rule is not None else None,
            "rule_id": change.rule_id or (change.rule.rule_id if change.rule else ""),
            "parameter": change.parameter,
            "value": change.value,
        },
        sort_keys=True,
    )

"""Plain-text answers to operator commands, shared by the Telegram bot and the CLI.

The facts come from ``sovereign.operations``; these functions only lay them out. Plain
text (no Markdown or HTML) so that nothing an operator reads — a rule's reason, a symbol —
can break the markup or be refused by Telegram.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sovereign.operations import (
    COMMANDS,
    Capital,
    ConstitutionView,
    HistoryPage,
    Readiness,
    RuleView,
)

# Telegram refuses longer messages; replies are split below it, on line boundaries.
TELEGRAM_LIMIT = 4096


def when(ts_ns: int) -> str:
    if not ts_ns:
        return "-"
    return datetime.fromtimestamp(ts_ns / 1e9, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")


def help_text() -> str:
    lines = ["Sovereign operator commands"]
    lines += [f"/{name} - {what}" for name, what in COMMANDS.items()]
    return "\n".join(lines)


def constitution_text(view: ConstitutionView) -> str:
    lim = view.limits
    lines = [
        "Constitution (immutable; configuration may only tighten it)",
        f"  max_position_size         {lim['max_position_size']:.2%} of equity",
        f"  max_daily_loss            {lim['max_daily_loss']:.2%} (then no new positions today)",
        f"  max_drawdown              {lim['max_drawdown']:.2%} (then all trading halts)",
        f"  min_confidence_for_trade  {lim['min_confidence_for_trade']:.2f}",
        f"  max_rule_changes_per_day  {lim['max_rule_changes_per_day']}",
        f"  max_active_rules          {lim['max_active_rules']}",
        f"  forbidden_modifications   {', '.join(lim['forbidden_modifications'])}",
        f"  fingerprint (sha256)      {view.fingerprint}",
        f"Trading state: {view.trading_state}",
    ]
    if view.halted_reason:
        lines.append(f"  halted: {view.halted_reason}")
    return "\n".join(lines)


def capital_text(c: Capital) -> str:
    return "\n".join(
        [
            f"Capital of {c.scope} (as of {when(c.as_of_ts)})",
            f"  equity          {c.equity:,.2f}",
            f"  cash            {c.cash:,.2f}",
            f"  day P&L         {c.day_pnl:+,.2f} ({c.day_return:+.2%})",
            f"  drawdown        {c.drawdown:.2%} from the peak {c.high_water_mark:,.2f}",
            f"  exposure        {c.gross_exposure:,.2f} ({c.exposure:.1%} of equity)",
            f"  open positions  {c.open_positions}",
        ]
    )


def rules_text(scope: str, version: int, rules: list[RuleView], params: dict[str, float]) -> str:
    lines = [f"Active rules of {scope} (rule set v{version})"]
    if not rules:
        lines.append("  none")
    for rule in rules:
        lines.append(f"  {rule.rule_id}  {rule.text}")
        if rule.provenance:
            lines.append(f"      from {rule.provenance}")
    if params:
        lines.append("Tuned parameters")
        lines += [f"  {k} = {v:g}" for k, v in sorted(params.items())]
    return "\n".join(lines)


def modification_lines(r: Any) -> list[str]:
    """One governance record (a ``ModificationRecord``): what, when, and its evidence."""
    lines = [f"  #{r.id} {when(r.ts_ns)}  {r.status}  {r.summary}"]
    lines += [f"      violates {v}" for v in r.violations]
    if r.rolled_back_ts:
        lines.append(f"      rolled back by {r.rolled_back_by}: {r.rollback_reason}")
    q = r.evidence.get("q_value")
    if q is not None:
        lines.append(
            f"      evidence: n={r.evidence.get('n')}, win rate "
            f"{r.evidence.get('win_rate', 0):.1%}, q={q:.3g}, trigger {r.trigger}"
        )
    return lines


def history_text(scope: str, page: HistoryPage) -> str:
    lines = [
        f"Modifications of {scope}, newest first "
        f"(page {page.page} of {page.pages}, {page.total} in all)"
    ]
    for r in page.entries:
        lines += modification_lines(r)
    if not page.entries:
        lines.append("  none")
    elif page.page < page.pages:
        lines.append(f"/history {page.page + 1} for older ones")
    return "\n".join(lines)


def readiness_text(r: Readiness) -> str:
    verdict = "READY for a live account" if r.ready else "NOT READY for a live account yet"
    lines = [f"Live readiness: {verdict}"]
    lines += [f"  [{'x' if c.passed else ' '}] {c.name}: {c.detail}" for c in r.checks]
    return "\n".join(lines)


def rollback_text(modification_id: int, result: Any) -> str:
    undone = ", ".join(f"#{i}" for i in result.undone)
    return (
        f"Rolled back #{modification_id} in {result.scope}: rule set v{result.book.version} "
        f"restores the rules from before it ({len(result.book.rules)} active); undone: "
        f"{undone}. A running session adopts it at its next step."
    )


def split_message(text: str, limit: int = TELEGRAM_LIMIT) -> list[str]:
    """Split ``text`` into parts of at most ``limit`` characters, on line boundaries when
    possible (a single longer line is cut); no part is empty."""
    if limit < 1:
        raise ValueError("limit must be >= 1")
    if text.strip() and len(text) <= limit:
        return [text]
    parts: list[str] = []
    current = ""
    for line in text.split("\n"):
        while len(line) > limit:
            if current:
                parts.append(current)
                current = ""
            parts.append(line[:limit])
            line = line[limit:]
        candidate = line if not current else f"{current}\n{line}"
        if len(candidate) > limit:
            parts.append(current)
            current = line
        else:
            current = candidate
    if current.strip():
        parts.append(current)
    return [p for p in parts if p.strip()] or ["(empty)"]

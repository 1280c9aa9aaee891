"""Splitting replies for Telegram, and per-channel notification modes."""

from __future__ import annotations

import io

from hypothesis import given
from hypothesis import strategies as st

from sovereign.comms.console import ConsoleNotifier
from sovereign.comms.telegram import ChannelFilter, FanOut
from sovereign.comms.text import split_message
from sovereign.config import parse_config
from sovereign.messages import Notification

lines = st.lists(st.text(alphabet=st.characters(blacklist_characters="\n"), max_size=60))


@given(lines, st.integers(min_value=10, max_value=200))
def test_parts_fit_the_limit_and_keep_every_line(text_lines: list[str], limit: int) -> None:
    text = "\n".join(text_lines)
    parts = split_message(text, limit)
    assert parts and all(0 < len(p) <= limit for p in parts)
    # Nothing visible is lost, duplicated or reordered (only blank lines may go).
    if text.strip():
        assert "".join("".join(parts).split()) == "".join(text.split())
    # A text that fits is sent as it is.
    if text.strip() and len(text) <= limit:
        assert parts == [text]


def test_a_line_longer_than_the_limit_is_cut() -> None:
    assert split_message("a" * 10_000) == ["a" * 4096, "a" * 4096, "a" * 1808]


def note(kind: str) -> Notification:
    return Notification(
        msg_id=kind, ts_event=1, ts_init=1, kind=kind, level="info", title=kind, text=""
    )


def test_each_channel_applies_its_own_modes() -> None:
    config = parse_config(
        {"notifications": {"console": {"trade_closed": "off", "daily_summary": "silent"}}}
    )
    out = io.StringIO()
    console = ChannelFilter(ConsoleNotifier(out), config, "console")

    class Broken:
        def notify(self, n: Notification) -> None:
            raise RuntimeError("a failing channel must not stop the others")

    fan = FanOut(Broken(), console)
    for kind in ("trade_closed", "daily_summary", "trading_state", "fill"):
        fan.notify(note(kind))
    printed = out.getvalue()
    assert "daily_summary" in printed and "trading_state" in printed
    assert "trade_closed" not in printed and "fill" not in printed  # fills are off by default
    defaults = parse_config({}).notifications
    assert defaults.mode("console", "daily_summary") == "off"
    assert defaults.mode("telegram", "daily_summary") == "on"
    assert defaults.mode("telegram", "trade_closed") == "silent"

"""The console notifier: the default way operators hear from Sovereign."""

from __future__ import annotations

from typing import TextIO

from sovereign.messages import Notification

_LEVEL = {"info": "info", "warning": "WARN", "critical": "CRIT"}


class ConsoleNotifier:
    """Writes each notification as one line (two with details) to a stream."""

    def __init__(self, stream: TextIO, *, clear_line: bool = False) -> None:
        self.stream = stream
        # On a terminal a progress bar may own the current line: start on a clean one.
        self._prefix = "\r\x1b[K" if clear_line else ""
        self.sent = 0

    def notify(self, note: Notification) -> None:
        level = _LEVEL.get(note.level, note.level)
        line = f"{self._prefix}{level:>4} {note.title}"
        if note.text:
            line += f"\n       {note.text}"
        self.stream.write(line + "\n")
        self.stream.flush()
        self.sent += 1

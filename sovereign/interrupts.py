"""Ctrl-C in a running session: the first ends it cleanly, the second at once."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any


@contextlib.contextmanager
def graceful_interrupts(out: Any, when: str) -> Iterator[Callable[[Any], None]]:
    """While a paper or live session runs: its first Ctrl-C ends it after the step in
    progress (``when``), as if the data ended there — that step's orders still reach the
    broker and the report is written; a second one interrupts at once. Yields the hook
    that hands it the session's engine; the previous handler is back afterwards, however
    the session ends (and an ignored SIGINT, as in a background job, stays ignored)."""
    import os
    import signal

    previous = signal.getsignal(signal.SIGINT)
    engines: list[Any] = []

    def on_interrupt(signum: int, frame: object) -> None:
        if not engines or engines[0].stop_requested:
            raise KeyboardInterrupt
        engines[0].request_stop()
        # os.write, not the stream: the handler may interrupt a write to it (the
        # progress bar's), and a buffered stream refuses a reentrant call.
        with contextlib.suppress(Exception):
            os.write(out.fileno(), f"\nstopping {when} (Ctrl-C again to abort)\n".encode())

    if previous is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield engines.append
    finally:
        signal.signal(signal.SIGINT, previous)

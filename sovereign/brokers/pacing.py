"""Reconnection backoff and IB's historical-data pacing, as pure state machines.

Both take the time as an argument (seconds), so they are tested without sleeping and
behave identically in a replay.

IB's documented pacing rules for historical data, which a violation of locks the session
for minutes: no more than 60 requests in any 10-minute window; no identical request within
15 seconds; no more than 6 requests for the same contract, exchange and tick type within
2 seconds. ``HistoricalPacer`` keeps inside them with a margin (50 per 10 minutes, 5 per
2 seconds).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass(slots=True)
class Backoff:
    """Exponential backoff: initial, initial*factor, ... capped at ``maximum`` seconds."""

    initial: float = 1.0
    factor: float = 2.0
    maximum: float = 60.0
    _delay: float = 0.0
    _next_at: float = 0.0
    attempts: int = 0

    def due(self, now: float) -> bool:
        """Whether another attempt may be made now."""
        return now >= self._next_at

    def failed(self, now: float) -> float:
        """Record a failed attempt; return the delay before the next one."""
        self.attempts += 1
        self._delay = (
            self.initial if self._delay == 0 else min(self._delay * self.factor, self.maximum)
        )
        self._next_at = now + self._delay
        return self._delay

    def succeeded(self) -> None:
        self._delay = 0.0
        self._next_at = 0.0
        self.attempts = 0


@dataclass(slots=True)
class HistoricalPacer:
    """How long to wait before a historical-data request keeps to IB's pacing rules."""

    max_requests: int = 50
    window_s: float = 600.0
    identical_cooldown_s: float = 15.0
    burst: int = 5
    burst_window_s: float = 2.0
    _all: deque[float] = field(default_factory=deque)
    _identical: dict[str, float] = field(default_factory=dict)
    _per_contract: dict[str, deque[float]] = field(default_factory=dict)
    waited: int = 0

    def wait_for(self, request_key: str, contract_key: str, now: float) -> float:
        """Seconds to wait before sending this request (0: send now)."""
        self._forget(now)
        waits = [0.0]
        if len(self._all) >= self.max_requests:
            waits.append(self._all[0] + self.window_s - now)
        last = self._identical.get(request_key)
        if last is not None:
            waits.append(last + self.identical_cooldown_s - now)
        recent = self._per_contract.get(contract_key)
        if recent is not None and len(recent) >= self.burst:
            waits.append(recent[0] + self.burst_window_s - now)
        wait = max(waits)
        if wait > 0:
            self.waited += 1
        return max(0.0, wait)

    def record(self, request_key: str, contract_key: str, now: float) -> None:
        self._all.append(now)
        self._identical[request_key] = now
        self._per_contract.setdefault(contract_key, deque()).append(now)

    def _forget(self, now: float) -> None:
        while self._all and self._all[0] <= now - self.window_s:
            self._all.popleft()
        for q in self._per_contract.values():
            while q and q[0] <= now - self.burst_window_s:
                q.popleft()
        stale = [k for k, t in self._identical.items() if t <= now - self.identical_cooldown_s]
        for k in stale:
            del self._identical[k]

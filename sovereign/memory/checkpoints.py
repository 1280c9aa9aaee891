"""Checkpoints of actors in paper and live sessions, so that an actor Ray restarts goes on
where it was instead of starting empty.

After each of its calls an actor that keeps a checkpoint (``Actor.snapshot``) has it
written to the state store (SQLite or Redis: a cluster's nodes share it) under
``checkpoint/<run id>/<actor name>``; its constructor, rerun by Ray after a crash, finds
it there (``Actor.restore``). Checkpoints are pickles, so they are sealed with an HMAC
under the audit key: a checkpoint anyone could write would run their code in the actor.
They live as long as their session (``drop``); a backtest keeps none (it stops at a lost
step instead).
"""

from __future__ import annotations

import base64
import hmac
from dataclasses import dataclass
from pathlib import Path

from sovereign.memory.state_store import open_state_store


class CheckpointError(RuntimeError):
    """A checkpoint that does not verify: it is never restored."""


@dataclass(frozen=True, slots=True)
class Checkpoints:
    """Where a session's actors keep their checkpoints (picklable: it travels in the
    actor's spec to its process)."""

    state_dir: str
    run_id: str
    key: bytes
    redis_url: str = ""


def _name(run_id: str, actor: str) -> str:
    return f"checkpoint/{run_id}/{actor}"


class CheckpointStore:
    """One actor's checkpoint."""

    def __init__(self, where: Checkpoints, actor: str) -> None:
        self.where = where
        self.name = _name(where.run_id, actor)
        self._store = open_state_store(where.state_dir, where.redis_url)

    def _mac(self, blob: bytes) -> str:
        return hmac.new(self.where.key, self.name.encode() + b"\0" + blob, "sha256").hexdigest()

    def load(self) -> bytes | None:
        doc = self._store.get(self.name)
        if doc is None:
            return None
        try:
            blob = base64.b64decode(str(doc["blob"]), validate=True)
            mac = str(doc["mac"])
        except (KeyError, ValueError) as exc:
            raise CheckpointError(f"{self.name} is unreadable: {exc}") from None
        if not hmac.compare_digest(mac.encode("utf-8", "replace"), self._mac(blob).encode()):
            raise CheckpointError(f"{self.name} does not match its seal: it is not restored")
        return blob

    def save(self, blob: bytes) -> None:
        self._store.put(
            self.name, {"blob": base64.b64encode(blob).decode(), "mac": self._mac(blob)}
        )

    def close(self) -> None:
        self._store.close()


def drop_checkpoints(state_dir: str | Path, run_id: str, redis_url: str = "") -> int:
    """Delete a finished session's checkpoints; how many there were."""
    from contextlib import closing

    with closing(open_state_store(state_dir, redis_url)) as store:
        keys = store.keys(f"checkpoint/{run_id}/")
        for key in keys:
            store.delete(key)
    return len(keys)

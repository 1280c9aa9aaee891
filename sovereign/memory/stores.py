"""The stores an actor keeps its state in, handed to it from outside.

An actor is given a ``Stores``, never a path: it does not decide where its state lives or
how a store is opened, a test can hand it stores of its own (a subclass), and it pickles to
a Ray worker as three small fields, whose process then opens the stores itself (SQLite
connections and Redis clients do not cross processes).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sovereign.memory.audit import AuditLog, Ledger, connect, governance_path
from sovereign.memory.governance import GovernanceStore
from sovereign.memory.state_store import LazyStateStore
from sovereign.memory.trade_memory import ShardTradeStore, shard_path


@dataclass(frozen=True, slots=True)
class Stores:
    """Where an account's stores are (``state_dir``; the state store in Redis when
    ``redis_url`` is set) and the key that seals its safety state and its audit log
    (``audit_key``; None: read from the state directory)."""

    state_dir: str
    redis_url: str = ""
    audit_key: bytes | None = None

    def state(self) -> LazyStateStore:
        """The state store, opened at its first use and kept open until closed."""
        return LazyStateStore(self.state_dir, self.redis_url)

    def audit(self) -> AuditLog:
        return AuditLog(governance_path(self.state_dir), key=self.audit_key)

    def governance(self, audit_key: bytes | None = None) -> GovernanceStore:
        return GovernanceStore(self.state_dir, audit_key=audit_key or self.audit_key)

    def seal_key(self) -> bytes:
        """The key that seals the account's safety state (the audit log's)."""
        if self.audit_key is not None:
            return self.audit_key
        conn = connect(governance_path(self.state_dir))
        try:
            return Ledger(self.state_dir).key(conn)
        finally:
            conn.close()

    def shard_trades(self, shard: int, *, batch_size: int, write_behind: bool) -> ShardTradeStore:
        """A shard's trade memory: one SQLite file per shard (no writer waits on another)."""
        return ShardTradeStore(
            shard_path(self.state_dir, shard),
            shard,
            batch_size=batch_size,
            write_behind=write_behind,
        )

    def shard_trades_path(self, shard: int) -> Path:
        return shard_path(self.state_dir, shard)

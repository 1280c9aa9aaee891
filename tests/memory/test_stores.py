"""Actors keep their state in the stores they are handed, and open nothing by path."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import Any

from sovereign.actors.guardian import GuardianActor
from sovereign.core.constitution import Constitution
from sovereign.core.guardian import TradingState
from sovereign.core.risk import SizingPolicy
from sovereign.memory.account import guardian_state_key
from sovereign.memory.state_store import SqliteStateStore, state_path
from sovereign.memory.stores import Stores
from tests.kit import SECRET, cash_account

T0 = 1_704_205_800 * 1_000_000_000


class MemoryState:
    """A state store in a dict: what a test (or another backend) can hand an actor."""

    def __init__(self) -> None:
        self.docs: dict[str, dict[str, Any]] = {}
        self.closed = False

    def __call__(self) -> MemoryState:
        return self

    def get(self, key: str) -> dict[str, Any] | None:
        return self.docs.get(key)

    def put(self, key: str, value: dict[str, Any]) -> None:
        self.docs[key] = value

    def update(self, key: str, change: Any) -> dict[str, Any] | None:
        old = self.docs.get(key)
        new = change(old)
        if new is not None:
            self.docs[key] = new
        return old if new is None else new

    def close(self) -> None:
        self.closed = True


@dataclass(frozen=True, slots=True)
class MemoryStores(Stores):
    memory: MemoryState | None = None

    def state(self) -> Any:
        return self.memory


def test_the_guardian_keeps_its_trading_state_in_the_store_it_is_handed(tmp_path) -> None:
    memory = MemoryState()
    stores = MemoryStores(str(tmp_path), memory=memory)
    g = GuardianActor(
        0, Constitution(), SizingPolicy(), SECRET, 300, stores=stores, state_scope="run/s"
    )
    g.receive([cash_account(T0, 100_000.0), cash_account(T0 + 1, 85_000.0)])
    assert g.machine is not None and g.machine.state is TradingState.HALTED
    doc = memory.docs[guardian_state_key("run/s")]
    assert doc["state"] == "HALTED"
    # Not in the SQLite state store the path names (which holds only the audit log's
    # anchor: the audit log keeps that next to itself, whatever the state store is).
    sqlite = SqliteStateStore(state_path(tmp_path))
    try:
        assert sqlite.get(guardian_state_key("run/s")) is None
    finally:
        sqlite.close()
    # A guardian restarted on the same stores comes back halted.
    again = GuardianActor(
        0, Constitution(), SizingPolicy(), SECRET, 300, stores=stores, state_scope="run/s"
    )
    assert again.machine is not None and again.machine.state is TradingState.HALTED
    g.close()
    assert memory.closed


def test_stores_cross_to_another_process_as_where_they_are() -> None:
    stores = Stores("/var/lib/sovereign", "redis://127.0.0.1:6379/0", b"k" * 32)
    assert pickle.loads(pickle.dumps(stores)) == stores

"""What every actor is: a small class with state and one inbox.

``receive`` takes the batch of messages delivered to the actor for one step and returns
the messages it sends. The runtime decides where they go; an actor never calls another
actor and never reaches into another actor's state. Actors hold no trading logic of their
own: they turn messages into calls into ``sovereign.core`` and results back into messages.
"""

from __future__ import annotations

import logging
import typing
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar, Generic, TypeVar

from sovereign.messages import ActorStats, IdSource, Message

if TYPE_CHECKING:
    from sovereign.memory.state_store import LazyStateStore


Inbox = TypeVar("Inbox", bound=Message)


def accepting(inbox: object) -> frozenset[type[Message]]:
    """The message types of an inbox: the members of a union (``A | B``), or one type."""
    members = typing.get_args(inbox) or (inbox,)
    if not all(isinstance(t, type) and issubclass(t, Message) for t in members):
        raise TypeError(f"an inbox is a union of message types, not {inbox!r}")
    return frozenset(members)  # type: ignore[arg-type]


class Actor(Generic[Inbox]):
    """Base class: identity, deterministic message ids, counters.

    An actor's inbox is a union of message types (``Actor[BarBatch | SessionEnded]``):
    ``receive`` takes a list of those, and ``accepts = accepting(TheInbox)`` tells the
    runtimes to deliver only those (None: everything). Over the wire the others are not
    even decoded, which is most of a watcher's inbox. Both runtimes filter alike, so a
    type missing from the inbox is missing in every test, not only on Ray.
    """

    role: ClassVar[str] = "actor"
    accepts: ClassVar[frozenset[type[Message]] | None] = None

    def __init__(self, index: int = 0) -> None:
        self.index = index
        self.ids = IdSource(f"{self.role}/{index}")
        self.counters: dict[str, int] = {}
        self.log = logging.getLogger(f"sovereign.{self.role}.{index}")

    @property
    def name(self) -> str:
        return f"sovereign/{self.role}/{self.index}"

    def __repr__(self) -> str:
        return self.name

    def receive(self, messages: list[Inbox]) -> list[Message]:
        raise NotImplementedError

    state: LazyStateStore | None = None
    """The actor's state store, if it keeps state outside its checkpoints (opened at its
    first use, closed with the actor)."""

    def close(self) -> None:
        """Release what the actor holds outside its process (sockets, its state store);
        the runtime calls it when the session's actors are shut down."""
        try:
            self.release()
        finally:
            if self.state is not None:
                self.state.close()

    def release(self) -> None:
        """What a subclass holds besides its state store (a broker's connection)."""

    # -- RESTARTS --------------------------------------------------------------------------
    # In a paper or live session on Ray, the host writes ``snapshot()`` to the state store
    # after every call and, when Ray reruns the constructor after a crash, hands the last
    # one to ``restore`` before any call (``memory.checkpoints``). An actor that keeps no
    # checkpoint starts afresh.

    def snapshot(self) -> bytes | None:
        """The actor's state to restore after a restart; None: nothing to keep now."""
        return None

    def restore(self, blob: bytes) -> None:
        """Go on from ``snapshot()``'s state (called instead of starting afresh)."""

    persist: Callable[[], None] | None = None
    """Set by the host when checkpoints are kept: writes ``snapshot()`` now. The gateway
    calls it before an order leaves for a real broker (write-ahead), so that an order a
    crash interrupts is known to the restarted gateway, which then asks the broker."""

    def count(self, key: str, n: int = 1) -> None:
        self.counters[key] = self.counters.get(key, 0) + n

    def stats(self, ts: int) -> ActorStats:
        return ActorStats(
            msg_id=self.ids.next(),
            ts_event=ts,
            ts_init=ts,
            role=self.role,
            index=self.index,
            counters=dict(sorted(self.counters.items())),
        )

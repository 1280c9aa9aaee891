"""The steps as data: which actor takes whose results, from this step or the last.

One bar time through the actor graph is the table :data:`BAR_STEP`, a speculative chunk
of bar times :data:`CHUNK_STEP`, a live session's last word with its broker
:data:`POLL_STEP` then :data:`DELIVER_STEP`; each is read in order by :func:`run_step` for
both runtimes (``LocalRuntime`` calls the actors in order;
``RayRuntime`` sends each call at once with the results it waits on as references, so
the table's order is also the order of the calls' dependencies). A node names its result,
the actor that produces it, and its inputs:

* ``In(BARS)``: the step's bars (every shard's batch); ``In(OWN_BARS)``: a shard's own;
* ``In(PENDING)``: results handed over from outside the table (a committed speculative
  chunk's closed trades, which the guardian counts in its next call);
* ``In("name")``: the result of an earlier node of this step — strict: on Ray a call
  waits for it, and in a backtest a failed input fails the call;
* ``In("name", prev=True)``: the result of that node at the previous step — carried as
  the session carries its inputs (a backtest strictly; a paper or live session leniently,
  so the next step runs without what a failed call would have produced).

A node runs only when its ``when`` holds (``regime``: a regime model is configured;
``selfmod``: self-modification is on; ``merged``: a backtest hands the gateway a step's
approved orders together with the next step's bars; ``split``: they go in a call of their
own; ``last``: the session's last step). An input from a node that does not run in this
session is not passed at all. ``shards`` is one call per shard. Adding an actor to the
step is a row here (in each table it takes part in), its class, and its spec in
``specs.build_specs``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Graph:
    """Handles of the actors of one session, by role (the tables' ``actor``)."""

    shards: list[Any]
    regime: Any
    guardian: Any
    gateway: Any
    selfmod: Any
    monitor: Any
    operator: Any


BARS = "@bars"
OWN_BARS = "@own-bars"
PENDING = "@pending"


@dataclass(frozen=True, slots=True)
class In:
    """One input of a call: a node's result (this step's or, ``prev``, the last one's)
    or one of the step's own inputs (``BARS``, ``OWN_BARS``, ``PENDING``)."""

    source: str
    prev: bool = False


@dataclass(frozen=True, slots=True)
class Node:
    """One call of the step: ``actor`` (a role of the graph) on ``inputs``, its result
    named ``name``; run only when ``when`` (a flag of the session or step) is on."""

    name: str
    actor: str
    inputs: tuple[In, ...]
    when: str = ""


BAR_STEP: tuple[Node, ...] = (
    Node("regime", "regime", (In(BARS),), when="regime"),
    # The gateway's answer starts with the acks of the previous step's orders, which is
    # where the shards and the guardian read them when orders travel with the bars.
    Node("gateway", "gateway", (In("verdicts", prev=True), In(BARS)), when="merged"),
    Node("gateway", "gateway", (In(BARS),), when="split"),
    Node(
        "shards",
        "shards",
        (
            In("verdicts", prev=True),
            In("acks", prev=True),
            In("selfmod", prev=True),
            In("gateway"),
            In("regime"),
            In(OWN_BARS),
        ),
    ),
    Node(
        "verdicts",
        "guardian",
        (In("acks", prev=True), In(PENDING), In("selfmod", prev=True), In("gateway"), In("shards")),
    ),
    Node("acks", "gateway", (In("verdicts"),), when="split"),
    # The last step's orders: the broker takes them before the session ends.
    Node("final", "gateway", (In("verdicts"),), when="last"),
    Node("selfmod", "selfmod", (In("gateway"), In("verdicts"), In("shards")), when="selfmod"),
)
"""One bar time through the graph."""

CHUNK_STEP: tuple[Node, ...] = (
    # The orders approved at the last bar-by-bar step go to the broker first, so that
    # their acknowledgements reach the shards and the guardian before the chunk (when
    # orders travel with the bars; otherwise the last step sent them, and its ``acks``
    # are carried).
    Node("acks", "gateway", (In("verdicts", prev=True),), when="orders"),
    # Each shard's regimes after every bar time of the chunk (they depend on the bars
    # alone, so the regime models run the chunk for real, committed or not).
    Node("regime", "regime", (In(BARS),), when="regime"),
    Node(
        "shards",
        "shards",
        (
            In("verdicts", prev=True),
            In("acks", prev=True),
            In("acks"),
            In("regime"),
            In(OWN_BARS),
        ),
    ),
    # The conditional approval; the guardian also takes the last chunk's closed trades.
    Node("approved", "guardian", (In("acks", prev=True), In("acks"), In(PENDING), In("shards"))),
    Node("executed", "gateway", (In("approved"), In(BARS))),
    # Where self-modification would review the rules in the chunk (on the shards'
    # speculated trades): the guardian cuts the chunk there.
    Node("horizon", "selfmod", (In("shards"), In("executed")), when="selfmod"),
    Node("verdict", "guardian", (In("executed"), In("horizon"))),
    # Commit or discard, everywhere: the shards (with the commissions in the report) and
    # the gateway. The shards' closed trades reach the guardian in its next call...
    Node("settles", "shards", (In("executed"), In("verdict"))),
    Node("settled", "gateway", (In("verdict"),)),
    # ...or, with self-modification, now: its losing streaks' review requests, then the
    # chunk's sessions, requests and trades to self-modification, whose review (at the
    # chunk's last bar) the next step carries as the bar by bar step would.
    Node("reviewed", "guardian", (In("settles"),), when="selfmod"),
    Node(
        "selfmod",
        "selfmod",
        (In("executed"), In("verdict"), In("reviewed"), In("settles")),
        when="selfmod",
    ),
)
"""One speculative chunk of bar times through the graph (``core.chunks``): ``BARS`` are
the shards' bar chunks, ``OWN_BARS`` a shard's own."""

CHUNK_WATCHED: tuple[str, ...] = ("acks", "shards", "approved", "settles", "settled")
"""What the watchers see of every chunk (the shards' first answers may hold trades closed
by the acknowledgements, booked before the chunk); a committed one's ``executed`` and
``verdict`` follow, then (with self-modification) ``reviewed`` and ``selfmod``."""

POLL_STEP: tuple[Node, ...] = (Node("polled", "gateway", ()),)
"""A live session's end: ask the broker for what is still on its way."""

DELIVER_STEP: tuple[Node, ...] = (
    Node("shards", "shards", (In(PENDING),)),
    Node("guardian", "guardian", (In(PENDING), In("shards"))),
)
"""...and hand what it said (``PENDING``: the poll) to the shards and the guardian."""

WATCHED: tuple[str, ...] = ("gateway", "verdicts", "acks", "final", "selfmod", "shards")
"""The results the watchers (monitor, operator) see, in the order they see them."""

CARRIED: tuple[str, ...] = ("verdicts", "acks", "selfmod")
"""The results a later step reads (``prev``)."""


def results_of(results: dict[str, Any], names: Sequence[str], table: Sequence[Node]) -> list[Any]:
    """The named results of a step that made them, in ``names``' order, one per call (a
    node on the shards made one per shard)."""
    per_shard = {n.name for n in table if n.actor == "shards"}
    out: list[Any] = []
    for name in names:
        if name in results:
            out.extend(results[name] if name in per_shard else [results[name]])
    return out


def produced(flags: dict[str, bool], table: Sequence[Node] = BAR_STEP) -> set[str]:
    """The results a step with these flags produces."""
    return {n.name for n in table if not n.when or flags.get(n.when, False)}


def run_step(
    table: Sequence[Node],
    tell: Callable[..., Any],
    actors: Callable[[str], Any],
    flags: dict[str, bool],
    *,
    bars: list[Any] | None = None,
    own_bars: Sequence[Any] = (),
    pending: list[Any] | None = None,
    prev: dict[str, Any] | None = None,
    carry: Callable[[Any], Any] = lambda x: x,
) -> dict[str, Any]:
    """Run one step of ``table``; return its results by name (``shards``: a list).

    ``tell(handle, *inputs)`` is the runtime's call; ``actors(role)`` a role's handle (a
    list for ``shards``); ``prev`` the results carried from the last step (an input from
    one that is not there is not passed); ``own_bars[i]`` shard i's batch (None: no bar).
    ``flags`` say which nodes run (see the module docstring)."""
    made = produced(flags, table)
    per_shard = {n.name for n in table if n.actor == "shards"}
    bars, pending, prev = bars or [], pending or [], prev or {}
    out: dict[str, Any] = {}
    for node in table:
        if node.when and not flags.get(node.when, False):
            continue
        handles = actors(node.actor)
        if node.actor == "shards":
            out[node.name] = [
                tell(
                    h,
                    *_inputs(
                        node,
                        made,
                        out,
                        prev,
                        carry,
                        bars,
                        own_bars[i] if own_bars else None,
                        pending,
                        per_shard,
                    ),
                )
                for i, h in enumerate(handles)
            ]
        else:
            out[node.name] = tell(
                handles, *_inputs(node, made, out, prev, carry, bars, None, pending, per_shard)
            )
    return out


def _inputs(
    node: Node,
    made: set[str],
    out: dict[str, Any],
    prev: dict[str, Any],
    carry: Callable[[Any], Any],
    bars: list[Any],
    own: Any,
    pending: list[Any],
    per_shard: set[str],
) -> list[Any]:
    """A node's inputs, in its order (a node on the shards gave one result per shard)."""
    args: list[Any] = []
    for i in node.inputs:
        if i.source == BARS:
            args.append(bars)
        elif i.source == OWN_BARS:
            args.append([own] if own is not None else [])
        elif i.source == PENDING:
            args.extend(pending)
        elif i.prev:
            if i.source in prev:
                args.append(carry(prev[i.source]))
        elif i.source not in made:
            continue  # that node does not run in this session
        else:
            value = out[i.source]
            args.extend(value if i.source in per_shard else [value])
    return args

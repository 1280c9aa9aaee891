"""The bar step as data (``sovereign.stepgraph``): the table is well formed, and the one
interpreter makes exactly the calls the engine's step is known to need."""

from __future__ import annotations

import dataclasses
from typing import Any

from sovereign.stepgraph import (
    BAR_STEP,
    BARS,
    CARRIED,
    CHUNK_STEP,
    CHUNK_WATCHED,
    DELIVER_STEP,
    OWN_BARS,
    PENDING,
    POLL_STEP,
    WATCHED,
    Graph,
    In,
    Node,
    produced,
)
from sovereign.stepgraph import run_step as run


def test_every_input_is_a_result_made_before_it_or_carried_from_the_last_step() -> None:
    roles = {f.name for f in dataclasses.fields(Graph)}
    for table, watched in (
        (BAR_STEP, WATCHED),
        (CHUNK_STEP, CHUNK_WATCHED),
        (POLL_STEP, ()),
        (DELIVER_STEP, ()),
    ):
        seen: set[str] = set()
        for node in table:
            assert node.actor in roles
            for i in node.inputs:
                if i.source in (BARS, OWN_BARS, PENDING):
                    continue
                if i.prev:
                    assert i.source in CARRIED, f"{node.name} reads {i.source} from the last step"
                else:
                    assert i.source in seen, f"{node.name} reads {i.source} before it is made"
            seen.add(node.name)
        assert set(watched) <= seen
    assert set(CARRIED) <= {n.name for n in BAR_STEP}


def record(
    flags: dict[str, bool],
    table: tuple[Node, ...] = BAR_STEP,
    prev: dict[str, Any] | None = None,
    own_bars: list[Any] | None = None,
) -> list[tuple]:
    """The calls of one step, each as (actor, its inputs named). The last step (``prev``)
    is by default one of the same kind: it carried what such a step makes."""
    calls: list[tuple] = []
    if prev is None:
        last = {"verdicts": "<v-1>", "acks": "<a-1>", "selfmod": "<s-1>"}
        prev = {k: v for k, v in last.items() if k in produced(flags, table)}

    def tell(handle: str, *inputs: Any) -> str:
        calls.append((handle, inputs))
        return f"<{handle}#{len(calls)}>"

    def actors(role: str) -> Any:
        return ["shard0", "shard1"] if role == "shards" else role

    run(
        table,
        tell,
        actors,
        flags,
        bars=["bar0", "bar1"],
        own_bars=["bar0", None] if own_bars is None else own_bars,
        pending=["<closed>"],
        prev=prev,
        carry=lambda x: ("carried", x),
    )
    return calls


def test_a_backtest_step_hands_the_gateway_the_last_orders_with_the_bars() -> None:
    flags = {"regime": True, "selfmod": True, "merged": True, "split": False, "last": False}
    calls = record(flags)
    bars = ["bar0", "bar1"]
    c = ("carried", "<v-1>")
    s = ("carried", "<s-1>")
    assert calls == [
        ("regime", (bars,)),
        ("gateway", (c, bars)),
        ("shard0", (c, s, "<gateway#2>", "<regime#1>", ["bar0"])),
        ("shard1", (c, s, "<gateway#2>", "<regime#1>", [])),
        ("guardian", ("<closed>", s, "<gateway#2>", "<shard0#3>", "<shard1#4>")),
        ("selfmod", ("<gateway#2>", "<guardian#5>", "<shard0#3>", "<shard1#4>")),
    ]
    # The last step sends its orders in a call of their own: the session ends after it.
    last = record({**flags, "last": True})
    assert ("gateway", ("<guardian#5>",)) in last


def test_a_paper_step_sends_the_orders_at_once_and_leaves_out_what_is_off() -> None:
    flags = {"regime": False, "selfmod": False, "merged": False, "split": True, "last": False}
    calls = record(flags)
    bars = ["bar0", "bar1"]
    v, a = ("carried", "<v-1>"), ("carried", "<a-1>")
    assert calls == [
        ("gateway", (bars,)),
        ("shard0", (v, a, "<gateway#1>", ["bar0"])),
        ("shard1", (v, a, "<gateway#1>", [])),
        ("guardian", (a, "<closed>", "<gateway#1>", "<shard0#2>", "<shard1#3>")),
        ("gateway", ("<guardian#4>",)),
    ]


def test_an_actor_joins_the_step_with_one_row() -> None:
    """A new actor (here a risk reporter reading the verdicts and the shards) is a row:
    the interpreter calls it with its inputs, in the step's order."""
    row = Node("report", "reporter", (In("verdicts"), In("shards"), In("selfmod", prev=True)))
    flags = {"regime": False, "selfmod": True, "merged": False, "split": True, "last": False}
    calls = record(flags, (*BAR_STEP, row))
    assert calls[-1] == (
        "reporter",
        ("<guardian#4>", "<shard0#2>", "<shard1#3>", ("carried", "<s-1>")),
    )


def test_a_chunk_after_a_backtest_step_sends_the_last_orders_first() -> None:
    """Orders travel with the bars: the last bar-by-bar step's verdicts go to the broker
    before the chunk, and their acknowledgements reach the shards and the guardian."""
    chunks = ["chunk0", "chunk1"]
    calls = record({"orders": True}, CHUNK_STEP, prev={"verdicts": "<v-1>"}, own_bars=chunks)
    v = ("carried", "<v-1>")
    assert calls == [
        ("gateway", (v,)),
        ("shard0", (v, "<gateway#1>", ["chunk0"])),
        ("shard1", (v, "<gateway#1>", ["chunk1"])),
        ("guardian", ("<gateway#1>", "<closed>", "<shard0#2>", "<shard1#3>")),
        ("gateway", ("<guardian#4>", ["bar0", "bar1"])),
        ("guardian", ("<gateway#5>",)),
        ("shard0", ("<gateway#5>", "<guardian#6>")),
        ("shard1", ("<gateway#5>", "<guardian#6>")),
        ("gateway", ("<guardian#6>",)),
    ]
    # Nothing approved at the last step: no call to send it.
    quiet = record({"orders": False}, CHUNK_STEP, prev={"verdicts": []}, own_bars=chunks)
    assert quiet[0] == ("shard0", (("carried", []), ["chunk0"]))


def test_a_chunk_after_a_step_that_sent_its_orders_reads_that_steps_acks() -> None:
    calls = record(
        {"orders": False},
        CHUNK_STEP,
        prev={"verdicts": "<v-1>", "acks": "<a-1>"},
        own_bars=["chunk0", "chunk1"],
    )
    v, a = ("carried", "<v-1>"), ("carried", "<a-1>")
    assert calls[0] == ("shard0", (v, a, ["chunk0"]))
    assert calls[2] == ("guardian", (a, "<closed>", "<shard0#1>", "<shard1#2>"))


def test_draining_a_live_broker_hands_its_events_to_the_shards_then_the_guardian() -> None:
    assert record({}, POLL_STEP, prev={}) == [("gateway", ())]
    calls = record({}, DELIVER_STEP, prev={})
    assert calls == [
        ("shard0", ("<closed>",)),
        ("shard1", ("<closed>",)),
        ("guardian", ("<closed>", "<shard0#1>", "<shard1#2>")),
    ]

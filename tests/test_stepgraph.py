"""The bar step as data (``sovereign.stepgraph``): the table is well formed, and the one
interpreter makes exactly the calls the engine's step is known to need."""

from __future__ import annotations

import dataclasses
from typing import Any

from sovereign.engine import Graph
from sovereign.stepgraph import BAR_STEP, BARS, CARRIED, OWN_BARS, PENDING, WATCHED, In, Node
from sovereign.stepgraph import run_step as run


def test_every_input_is_a_result_made_before_it_or_carried_from_the_last_step() -> None:
    roles = {f.name for f in dataclasses.fields(Graph)}
    seen: set[str] = set()
    for node in BAR_STEP:
        assert node.actor in roles
        for i in node.inputs:
            if i.source in (BARS, OWN_BARS, PENDING):
                continue
            if i.prev:
                assert i.source in CARRIED, f"{node.name} reads {i.source} from the last step"
            else:
                assert i.source in seen, f"{node.name} reads {i.source} before it is made"
        seen.add(node.name)
    assert set(CARRIED) <= seen and set(WATCHED) <= seen


def record(flags: dict[str, bool], table: tuple[Node, ...] = BAR_STEP) -> list[tuple]:
    """The calls of one step, each as (actor, its inputs named)."""
    calls: list[tuple] = []

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
        own_bars=["bar0", None],
        pending=["<closed>"],
        prev={"verdicts": "<v-1>", "acks": "<a-1>", "selfmod": "<s-1>"},
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

"""A speculative chunk cannot put an order at the broker without the guardian.

The gateway executes a chunk only on the guardian's signed batch approval, exactly as
signed and only once, only on a broker that can take the execution back, and books it
only on the guardian's signed verdict. Anything else leaves the broker untouched."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sovereign.actors.gateway import GatewayActor
from sovereign.actors.guardian import GuardianActor
from sovereign.actors.shard import ShardActor
from sovereign.brokers.sim import SimBroker
from sovereign.config import Config, breakout_preset
from sovereign.core.risk import SizingPolicy
from sovereign.data.feeds import ReplayFeed
from sovereign.data.loaders import load_ohlcv
from sovereign.memory.stores import Stores
from sovereign.messages import (
    ApprovedChunk,
    BarChunk,
    ChunkExecution,
    ChunkVerdict,
    IntentChunk,
    NDArray,
    SessionStarted,
)

SECRET = b"chunk-test-secret-0123456789abcdef"
CONFIG = breakout_preset(Config())
DATA = load_ohlcv("synthetic:6x400", seed=5)
SYMBOLS = sorted(DATA.symbols)


@dataclass
class Graph:
    shard: ShardActor
    guardian: GuardianActor
    gateway: GatewayActor
    chunk: list[BarChunk]
    approved: ApprovedChunk


def broker_state(gw: GatewayActor) -> tuple:
    b = gw.broker
    p = b.portfolio
    return (
        p.cash,
        sorted((s, q.quantity) for s, q in p.positions.items()),
        sorted(b._working),
        b.counters["fills"],
    )


def build(tmp_path, *, broker_factory=None, length: int = 200, tamper=None) -> Graph:
    """Shard, guardian and gateway after bar-by-bar steps up to bar 120, with positions
    open, and the guardian's approval of the chunk of the next ``length`` bars."""
    state = str(tmp_path)
    factory = broker_factory or functools.partial(
        SimBroker, CONFIG.sim, CONFIG.engine.initial_capital, position_cap=0.05
    )
    shard = ShardActor(0, SYMBOLS, CONFIG.strategy, Stores(state))
    guardian = GuardianActor(
        0,
        CONFIG.build_constitution(),
        SizingPolicy(entry_limit_buffer=CONFIG.risk.entry_limit_buffer),
        SECRET,
        300,
        stores=Stores(state),
        state_scope="test",
        shard_of=dict.fromkeys(SYMBOLS, 0),
    )
    gateway = GatewayActor(0, factory, SECRET, stores=Stores(state))
    feed = ReplayFeed(DATA.frame, [SYMBOLS], DATA.interval_s)
    start = SessionStarted(
        msg_id="s",
        ts_event=0,
        ts_init=0,
        run_id="r",
        mode="backtest",
        symbols=NDArray.from_numpy(np.array([s.encode() for s in SYMBOLS])),
        initial_capital=CONFIG.engine.initial_capital,
    )
    for actor in (shard, guardian, gateway):
        actor.receive([start])
    verdicts: list = []
    for step in range(120):
        bars = [b for b in feed.batches(step) if b is not None]
        gw_out = gateway.receive(verdicts + bars)
        intents = shard.receive(verdicts + gw_out + bars)
        verdicts = guardian.receive(gw_out + intents)
    acks = gateway.receive(verdicts)
    chunk = feed.chunk(120, length, 1)
    intents = shard.receive(verdicts + acks + chunk)
    if tamper is not None:
        intents = [tamper(m) if isinstance(m, IntentChunk) else m for m in intents]
    (approved,) = [m for m in guardian.receive(acks + intents) if isinstance(m, ApprovedChunk)]
    if tamper is not None:
        return Graph(shard, guardian, gateway, chunk, approved)
    assert not approved.refused and len(approved) > 0
    return Graph(shard, guardian, gateway, chunk, approved)


def execute(g: Graph, approval: ApprovedChunk) -> ChunkExecution:
    (report,) = [
        m for m in g.gateway.receive([approval, *g.chunk]) if isinstance(m, ChunkExecution)
    ]
    return report


def test_the_genuine_chunk_executes_and_books_on_the_guardians_verdict(tmp_path) -> None:
    g = build(tmp_path)
    before = broker_state(g.gateway)
    report = execute(g, g.approved)
    assert report.diverged == "" and report.fills > 0
    assert broker_state(g.gateway) == before  # on paper only, until the verdict
    (verdict,) = [m for m in g.guardian.receive([report]) if isinstance(m, ChunkVerdict)]
    assert verdict.valid and verdict.signature
    g.gateway.receive([verdict])
    assert broker_state(g.gateway) != before
    assert g.gateway.broker.counters["fills"] == before[3] + report.fills
    # The same approval again: refused whole.
    again = execute(g, g.approved)
    assert again.diverged == "APPROVAL_REPLAYED"


def _tampered(approved: ApprovedChunk, field: str, position: int, flip: int) -> ApprovedChunk:
    col: NDArray = getattr(approved, field)
    raw = bytearray(col.data)
    raw[position % len(raw)] ^= 1 + flip % 255
    return msgspec.structs.replace(
        approved, **{field: NDArray(dtype=col.dtype, shape=col.shape, data=bytes(raw))}
    )


COLUMNS = ("symbol", "shard", "bar", "side", "quantity", "limit_price", "seq", "expires_ns")


@pytest.fixture(scope="module")
def graph_factory(tmp_path_factory):
    def make():
        return build(tmp_path_factory.mktemp("chunk"))

    return make


@settings(max_examples=40, deadline=None)
@given(
    what=st.sampled_from([*COLUMNS, "expects", "quantities", "chunk", "signature", "refused"]),
    position=st.integers(0, 10_000),
    flip=st.integers(0, 254),
)
def test_a_changed_approval_puts_nothing_at_the_broker(graph_factory, what, position, flip) -> None:
    g = graph_factory()
    a = g.approved
    if what in COLUMNS:
        forged = _tampered(a, what, position, flip)
    elif what == "expects":
        forged = msgspec.structs.replace(
            a,
            expects=[*a.expects, f"X-{position}"],
            expects_quantity=[*a.expects_quantity, 100],
        )
    elif what == "quantities":
        # What a working order is expected to fill, changed (or invented).
        quantities = [q + 1 + position for q in a.expects_quantity]
        forged = msgspec.structs.replace(
            a, expects=a.expects or ["X-1"], expects_quantity=quantities or [position]
        )
    elif what == "chunk":
        forged = msgspec.structs.replace(a, chunk=a.chunk + 1 + position)
        forged_chunk = [msgspec.structs.replace(b, chunk=forged.chunk) for b in g.chunk]
        g.chunk = forged_chunk
    elif what == "signature":
        sig = bytearray(a.signature)
        sig[position % len(sig)] ^= 1 + flip % 255
        forged = msgspec.structs.replace(a, signature=bytes(sig))
    else:
        forged = msgspec.structs.replace(a, refused="", signature=b"\0" * 32)
    before = broker_state(g.gateway)
    report = execute(g, forged)
    assert report.diverged, what
    assert report.fills == 0
    # Even the guardian's genuine verdict on the genuine approval cannot book it now.
    g.gateway.receive(
        [
            ChunkVerdict(
                msg_id="v",
                ts_event=0,
                ts_init=0,
                chunk=forged.chunk,
                valid=True,
                signature=b"\0" * 32,
            )
        ]
    )
    assert broker_state(g.gateway) == before


def test_a_verdict_the_guardian_did_not_sign_books_nothing(tmp_path) -> None:
    g = build(tmp_path)
    before = broker_state(g.gateway)
    report = execute(g, g.approved)
    assert report.diverged == ""
    forged = ChunkVerdict(
        msg_id="v", ts_event=0, ts_init=0, chunk=report.chunk, valid=True, signature=b"x" * 32
    )
    g.gateway.receive([forged])
    assert broker_state(g.gateway) == before
    assert g.gateway.counters["chunks_discarded"] == 1


def test_an_invalid_verdict_books_nothing(tmp_path) -> None:
    g = build(tmp_path)
    before = broker_state(g.gateway)
    report = execute(g, g.approved)
    g.gateway.receive(
        [ChunkVerdict(msg_id="v", ts_event=0, ts_init=0, chunk=report.chunk, valid=False)]
    )
    assert broker_state(g.gateway) == before


def test_a_broker_that_cannot_take_an_execution_back_refuses_chunks(tmp_path) -> None:
    class Firm(SimBroker):
        speculative = False

    factory = functools.partial(Firm, CONFIG.sim, CONFIG.engine.initial_capital, position_cap=0.05)
    g = build(tmp_path, broker_factory=factory)
    before = broker_state(g.gateway)
    report = execute(g, g.approved)
    assert report.diverged.startswith("SPECULATION_UNSUPPORTED")
    assert broker_state(g.gateway) == before


def test_the_guardian_validates_only_what_it_approved(tmp_path) -> None:
    """A report for another chunk, or one that claims less than the orders it executed,
    is not validated."""
    g = build(tmp_path)
    report = execute(g, g.approved)
    other = msgspec.structs.replace(report, chunk=report.chunk + 1)
    (v,) = [m for m in g.guardian.receive([other]) if isinstance(m, ChunkVerdict)]
    assert not v.valid and not v.signature


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -0.5, 1.5])
def test_a_chunk_confidence_that_is_no_probability_is_refused_at_the_message(bad: float) -> None:
    """As an OrderIntent's: a chunk's confidence column must hold probabilities."""
    ok = NDArray.from_numpy(np.array([0.5]))
    column = NDArray.from_numpy(np.array([bad]))
    fields = {
        "msg_id": "c",
        "ts_event": 0,
        "ts_init": 0,
        "chunk": 1,
        "shard": 0,
        "symbols": NDArray.from_numpy(np.array([b"AAA"])),
        "bar_close": NDArray.from_numpy(np.array([1], dtype="<i8")),
        "bar": NDArray.from_numpy(np.array([0], dtype="<i8")),
        "index": NDArray.from_numpy(np.array([0], dtype="<i8")),
        "side": NDArray.from_numpy(np.array([1], dtype="|u1")),
        "quantity": NDArray.from_numpy(np.array([10], dtype="<i8")),
        "ref_price": NDArray.from_numpy(np.array([10.0])),
        "seq": NDArray.from_numpy(np.array([1], dtype="<i8")),
        "pending": [],
    }
    IntentChunk(**fields, confidence=ok)
    with pytest.raises(ValueError, match="confidence"):
        IntentChunk(**fields, confidence=column)


@pytest.mark.parametrize("bad", [float("nan"), 0.1])
def test_a_chunk_entry_below_the_confidence_floor_is_refused_as_bar_by_bar(
    tmp_path, bad: float
) -> None:
    """Bar by bar an entry below the constitution's minimum confidence is denied
    (LOW_CONFIDENCE); the chunk's batch approval refuses it alike. NaN, which compares
    false against the minimum, slipped through the chunk's check; a shard cannot send it
    (the message refuses it), and the guardian refuses it all the same."""

    def with_bad_confidence(m: IntentChunk) -> IntentChunk:
        confidence = m.confidence.to_numpy().copy()
        buys = np.flatnonzero(m.side.to_numpy() == 1)
        assert buys.size, "the chunk has no entry to spoil"
        confidence[buys[0]] = bad
        spoiled = msgspec.structs.replace(m)
        # Past the message's own check (as a bug in this process could): the guardian's.
        msgspec.structs.force_setattr(spoiled, "confidence", NDArray.from_numpy(confidence))
        return spoiled

    g = build(tmp_path, tamper=with_bad_confidence)
    assert g.approved.refused == "LOW_CONFIDENCE" and not g.approved.signature

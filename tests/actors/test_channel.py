"""Step channels: ordering, inputs, failures and refusals, on real sockets.

The servers here run in this process (one thread each, as in an actor process); the
Ray tests at the end open channels to real Ray actors and kill one mid-session.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sovereign.actors import channel as channel_module
from sovereign.actors.base import Actor
from sovereign.actors.channel import ChannelError, ChannelServer, ChannelWorker
from sovereign.actors.channel_driver import ChannelCall, Channels, connect, wait_all
from sovereign.actors.runtime import ActorCallError, ActorSpec, Lenient, RayRuntime
from sovereign.messages import BarBatch, Message, SessionEnded
from tests.kit import bars

KEY = b"k" * 32
FAIL = b"FAIL"
MIN = 60_000_000_000


@dataclass
class Fake:
    """An actor process's side: what ran, in order, and what the channel counted."""

    name: str
    ran: list[tuple[bytes | None, ...]]
    events: list[str]
    server: ChannelServer | None = None
    worker: ChannelWorker | None = None
    gate: threading.Event | None = None
    threads: set[int] = field(default_factory=set)

    def handle(self, inputs: list[bytes | None]) -> bytes:
        if self.gate is not None:
            self.gate.wait(10)
        self.threads.add(threading.get_ident())
        self.ran.append(tuple(inputs))
        if FAIL in inputs:
            raise RuntimeError("asked to fail")
        return output(self.name, inputs)

    def event(self, counter: str, text: str) -> None:
        self.events.append(counter)


def output(name: str, inputs: list[bytes | None] | tuple[bytes | None, ...]) -> bytes:
    return name.encode() + b"(" + b",".join(b"-" if x is None else x for x in inputs) + b")"


def serve(name: str, key: bytes = KEY, host: str | None = None) -> Fake:
    fake = Fake(name, [], [])
    fake.worker = ChannelWorker(fake.handle, fake.event)
    fake.server = ChannelServer(key, fake.worker, host=host)
    return fake


@pytest.fixture
def three() -> Iterator[tuple[Channels, list[Fake]]]:
    channels = Channels()
    fakes = [serve(f"a{i}") for i in range(3)]
    for fake in fakes:
        assert fake.server is not None
        channels.attach(fake.name, connect(fake.server.address, KEY))
    yield channels, fakes
    channels.close()


def test_a_call_gets_its_inputs_bytes_and_its_output_comes_back(three) -> None:
    channels, (a, b, _) = three
    first = channels.call("a0", [b"x", b"y"])
    second = channels.call("a1", [(first, False), b"z"])
    assert wait_all([first, second], 5) == 2
    assert first.error is None and first.value == b"a0(x,y)"
    assert second.value == b"a1(a0(x,y),z)"
    assert a.ran == [(b"x", b"y")] and b.ran == [(b"a0(x,y)", b"z")]


def test_a_call_waits_for_its_input_and_holds_up_later_calls_to_its_actor(three) -> None:
    channels, (a, b, _) = three
    a.gate = threading.Event()
    slow = channels.call("a0", [b"slow"])
    waiting = channels.call("a1", [(slow, False)])
    later = channels.call("a1", [b"later"])
    time.sleep(0.2)
    # Nothing ran on a1: its first call waits for a0, and the second waits behind it.
    assert b.ran == [] and not later.done.is_set()
    a.gate.set()
    assert wait_all([slow, waiting, later], 5) == 3
    assert b.ran == [(b"a0(slow)",), (b"later",)]


def test_a_raising_call_fails_alone_and_its_plain_dependants_never_run(three) -> None:
    channels, (a, b, c) = three
    bad = channels.call("a0", [FAIL])
    plain = channels.call("a1", [(bad, False)])
    lenient = channels.call("a2", [(bad, True), b"kept"])
    after = channels.call("a0", [b"fine"])
    assert wait_all([bad, plain, lenient, after], 5) == 4
    assert bad.error is not None and "asked to fail" in bad.error
    assert plain.error is not None and "input" in plain.error
    assert b.ran == []
    # The lenient call ran without the lost input (None on the wire) ...
    assert c.ran == [(None, b"kept")] and lenient.error is None
    # ... and the actor whose call raised goes on serving.
    assert after.value == b"a0(fine)" and a.ran == [(FAIL,), (b"fine",)]


def test_one_reply_can_release_calls_on_a_channel_twice_over(three) -> None:
    """A failure settles a call on a channel already served in the same pass, which
    releases more calls on it: they all leave, in order (the send lock of a channel is
    taken once however often it is served; taken twice, it deadlocked)."""
    channels, (a, b, c) = three
    c.gate = threading.Event()
    failing = channels.call("a2", [FAIL])
    blocked = channels.call("a1", [(failing, False)])
    first = channels.call("a0", [(failing, True)])
    second = channels.call("a0", [(blocked, True)])
    c.gate.set()
    assert wait_all([failing, blocked, first, second], 5) == 4
    assert blocked.error is not None and b.ran == []
    assert a.ran == [(None,), (None,)] and second.error is None


def test_a_channel_over_tcp_works_as_one_over_a_unix_socket() -> None:
    """The transport to an actor on another node: the same handshake and calls."""
    fake = Fake("a0", [], [])
    fake.server = ChannelServer(KEY, ChannelWorker(fake.handle, fake.event), host="127.0.0.1")
    host, port = fake.server.address
    assert host == "127.0.0.1" and port > 0
    channels = Channels()
    try:
        channels.attach("a0", connect([host, port], KEY))  # as it arrives through Ray
        first = channels.call("a0", [b"x"])
        second = channels.call("a0", [(first, False)])
        assert wait_all([first, second], 5) == 2
        assert second.value == b"a0(a0(x))" and fake.events == []
    finally:
        channels.close()


def test_a_wrong_key_is_refused_and_counted_and_the_right_one_still_gets_in() -> None:
    fake = serve("a0")
    assert fake.server is not None
    with pytest.raises(ChannelError, match="refused"):
        connect(fake.server.address, b"w" * 32)
    assert fake.events == ["channel_refused"]
    channels = Channels()
    try:
        channels.attach("a0", connect(fake.server.address, KEY))
        call = channels.call("a0", [b"x"])
        assert wait_all([call], 5) == 1 and call.value == b"a0(x)"
    finally:
        channels.close()


# What a stalled stranger sends before falling silent: nothing, part of a frame's length
# header, or a header announcing 100 bytes and 3 of them.
STALLS = {
    "nothing": b"",
    "half a header": b"\x00\x00",
    "3 of 100 bytes": struct.pack("!i", 100) + b"abc",
}


def stall(address: Any, sends: bytes) -> socket.socket:
    """Connect as a stranger, send ``sends`` and stay connected and silent."""
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(address if isinstance(address, str) else tuple(address))
    sock.sendall(sends)
    return sock


def hung_up_on(sock: socket.socket, within: float) -> bool:
    """Whether the actor closes ``sock`` within ``within`` seconds (what it sent before,
    the challenge, is skipped)."""
    sock.settimeout(within)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return False
    except OSError:
        pass  # reset: hung up on too
    finally:
        sock.close()
    return True


def answered(fake: Fake, timeout: float) -> bool:
    """Whether the driver gets in within ``timeout`` and a call is answered."""
    assert fake.server is not None
    channels = Channels()
    try:
        channels.attach(fake.name, connect(fake.server.address, KEY, timeout=timeout))
        call = channels.call(fake.name, [b"x"])
        return wait_all([call], 5) == 1 and call.value == output(fake.name, [b"x"])
    finally:
        channels.close()


@pytest.mark.parametrize("host", [None, "127.0.0.1"], ids=["unix", "tcp"])
@pytest.mark.parametrize("sends", STALLS.values(), ids=STALLS.keys())
def test_a_stalled_handshake_times_out_and_is_counted_and_the_driver_still_gets_in(
    host: str | None, sends: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stranger that stops mid-handshake is hung up on once the handshake's time is
    up, and counted; the actor goes on listening (it once waited on the stranger's
    frame for ever, and no driver could get in again)."""
    monkeypatch.setattr(channel_module, "HANDSHAKE_TIMEOUT_S", 0.5)
    fake = serve("a0", host=host)
    assert fake.server is not None
    assert hung_up_on(stall(fake.server.address, sends), within=5)
    assert fake.events == ["channel_refused"]
    assert answered(fake, timeout=5)
    assert fake.events == ["channel_refused"] and len(fake.ran) == 1


@pytest.mark.parametrize("host", [None, "127.0.0.1"], ids=["unix", "tcp"])
@pytest.mark.parametrize("sends", STALLS.values(), ids=STALLS.keys())
def test_a_stalled_stranger_does_not_hold_up_the_driver(
    host: str | None, sends: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The driver that comes after a stalled stranger gets in at once, not after the
    stranger's handshake has timed out; the stranger is then refused and counted."""
    monkeypatch.setattr(channel_module, "HANDSHAKE_TIMEOUT_S", 30.0)
    fake = serve("a0", host=host)
    assert fake.server is not None
    stranger = stall(fake.server.address, sends)
    time.sleep(0.1)  # first in line
    started = time.monotonic()
    try:
        assert answered(fake, timeout=2)
        assert time.monotonic() - started < 2
        assert hung_up_on(stranger, within=5)
    finally:
        stranger.close()
    assert fake.events == ["channel_refused"] and len(fake.ran) == 1


def test_a_crowd_of_stalled_strangers_does_not_shut_the_driver_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """More stalled strangers than the actor keeps handshakes open with: the oldest are
    hung up on to make room, so the driver still gets in at once; all are counted."""
    monkeypatch.setattr(channel_module, "HANDSHAKE_TIMEOUT_S", 30.0)
    fake = serve("a0", host="127.0.0.1")
    assert fake.server is not None
    crowd = [stall(fake.server.address, STALLS["3 of 100 bytes"]) for _ in range(40)]
    try:
        time.sleep(0.2)
        assert answered(fake, timeout=2)
        assert all(hung_up_on(stranger, within=5) for stranger in crowd)
    finally:
        for stranger in crowd:
            stranger.close()
    assert fake.events == ["channel_refused"] * len(crowd)


@pytest.mark.parametrize("sends", STALLS.values(), ids=STALLS.keys())
def test_the_driver_gives_up_on_an_actor_that_stalls_mid_handshake(sends: bytes) -> None:
    """The driver's half of the handshake has a deadline too: whatever answers on the
    address and then stalls, ``connect`` fails in time instead of hanging the session."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    outcome: list[BaseException | None] = []

    def driver() -> None:
        try:
            connect(listener.getsockname(), KEY, timeout=0.5).close()
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=driver, daemon=True)
    thread.start()
    peer, _ = listener.accept()
    try:
        peer.sendall(sends)
        thread.join(5)
        assert not thread.is_alive(), "connect hung on a stalled handshake"
    finally:
        peer.close()
        listener.close()
    assert len(outcome) == 1 and isinstance(outcome[0], ChannelError)


def test_every_channel_of_a_process_runs_its_calls_on_one_thread() -> None:
    """A driver that opens a new channel to a live actor reaches the same thread, the one
    the actor was built on: what the actor holds that is bound to a thread's event loop
    (an IB connection) still works (the Ray test is in tests/test_live_brokers.py)."""
    fake = serve("a0")
    assert fake.server is not None and fake.worker is not None
    for round_ in range(3):
        channels = Channels()
        server = fake.server if round_ == 0 else ChannelServer(KEY, fake.worker)
        channels.attach("a0", connect(server.address, KEY))
        call = channels.call("a0", [b"x"])
        assert wait_all([call], 5) == 1 and call.error is None
        channels.close()
    assert len(fake.ran) == 3 and len(fake.threads) == 1
    # What the worker runs between channels (the actor's construction) runs there too.
    assert fake.threads == {fake.worker.call(threading.get_ident)}
    with pytest.raises(ZeroDivisionError):
        fake.worker.call(lambda: 1 / 0)


def test_an_undecodable_frame_closes_the_channel_and_is_counted() -> None:
    fake = serve("a0")
    assert fake.server is not None
    conn = connect(fake.server.address, KEY)
    conn.send_bytes(b"\xc1 not msgpack")
    with pytest.raises(EOFError):
        conn.recv_bytes()
    conn.close()
    assert fake.events == ["channel_errors"] and fake.ran == []


def test_losing_the_channel_fails_what_was_pending_and_nothing_after_it_is_sent() -> None:
    fake = serve("a0")
    assert fake.server is not None
    fake.gate = threading.Event()
    channels = Channels()
    channels.attach("a0", connect(fake.server.address, KEY))
    running = channels.call("a0", [b"x"])
    queued_input = channels.call("a0", [(running, False)])
    time.sleep(0.1)
    channels.close()  # as when the actor's process dies: the stream ends
    assert wait_all([running, queued_input], 5) == 2
    assert running.error is not None and queued_input.error is not None
    assert not channels.alive("a0")
    dead = channels.call("a0", [b"y"])
    assert dead.error is not None and "no channel" in dead.error
    fake.gate.set()


# -- THE SEMANTICS, AGAINST A MODEL --------------------------------------------------------

# A program: calls in order, each to one of three actors, with inputs that are literals
# (FAIL makes the call raise) or earlier calls' results (plain or lenient).
_input = st.one_of(
    st.sampled_from([b"p", b"q", FAIL]),
    st.tuples(st.integers(min_value=0, max_value=40), st.booleans()),
)
_program = st.lists(
    st.tuples(st.integers(min_value=0, max_value=2), st.lists(_input, max_size=3)),
    min_size=1,
    max_size=14,
)


def model(program: list[tuple[int, list[Any]]]) -> tuple[list[Any], list[list[Any]]]:
    """What each call must end as (a value, or None for a failure), and what each
    actor must run, in order."""
    results: list[bytes | None] = []
    ran: list[list[Any]] = [[], [], []]
    for actor, inputs in program:
        wire: list[bytes | None] = []
        blocked = False
        for item in inputs:
            if isinstance(item, bytes):
                wire.append(item)
                continue
            source, lenient = item
            value = results[source % len(results)] if results else b"none"
            if value is None and not lenient:
                blocked = True
            wire.append(value)
        if blocked:
            results.append(None)
            continue
        ran[actor].append(tuple(wire))
        results.append(None if FAIL in wire else output(f"a{actor}", wire))
    return results, ran


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program=_program)
def test_channels_run_any_program_as_the_model_says(program) -> None:
    """Order per actor, inputs, failures and lenient losses, for any program: the
    channels must run exactly what the model runs, in the model's order."""
    channels = Channels()
    fakes = [serve(f"a{i}") for i in range(3)]
    try:
        for fake in fakes:
            assert fake.server is not None
            channels.attach(fake.name, connect(fake.server.address, KEY))
        calls: list[ChannelCall] = []
        for actor, inputs in program:
            wire: list[Any] = []
            for item in inputs:
                if isinstance(item, bytes):
                    wire.append(item)
                elif calls:
                    source, lenient = item
                    wire.append((calls[source % len(calls)], lenient))
                else:
                    wire.append(b"none")
            calls.append(channels.call(f"a{actor}", wire))
        assert wait_all(calls, 20) == len(calls)
        expected, ran = model(program)
        assert [c.value if c.error is None else None for c in calls] == expected
        assert [f.ran for f in fakes] == ran
    finally:
        channels.close()


# -- ON RAY --------------------------------------------------------------------------------


class Counting(Actor):
    role = "counting"
    accepts = frozenset({BarBatch, SessionEnded})

    def receive(self, messages: list[Message]) -> list[Message]:
        self.count("calls")
        if any(isinstance(m, SessionEnded) for m in messages):
            return [self.stats(0)]
        return [m for m in messages if isinstance(m, BarBatch)]


@pytest.mark.ray
def test_ray_channel_reopens_after_the_actor_is_restarted_and_runs_no_call_twice(
    ray_session,
) -> None:
    from tests.actors.test_shard_and_runtime import end

    rt = RayRuntime(channel=True)
    try:
        handle = rt.spawn(ActorSpec(Counting))
        batch = bars(MIN, ["AAA"], [10], [11], [9], [10], [100])
        first = rt.tell(handle, [batch])
        assert rt.fetch([first]) == [[batch]]
        ray_session.kill(handle, no_restart=False)
        # The old process may take calls for a moment yet; calls made while the actor is
        # down fail (none is retried: an order must never be sent twice); once Ray has
        # restarted it, the next call reopens the channel.
        outcomes: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and outcomes[-2:] != ["failed", "ran"]:
            try:
                rt.fetch([rt.tell(handle, [batch])])
            except ActorCallError:
                if outcomes[-1:] != ["failed"]:
                    outcomes.append("failed")
                time.sleep(0.02)
            else:
                outcomes.append("ran")
        assert outcomes[-2:] == ["failed", "ran"], outcomes
        (stats,) = rt.fetch([rt.tell(handle, [end()])])[0]
        # The restarted actor counts the call that ran and the end: nothing ran twice.
        assert stats.counters == {"calls": 2}
    finally:
        rt.shutdown()


@pytest.mark.ray
def test_ray_channel_refuses_a_stranger_and_the_actor_counts_it(ray_session) -> None:
    from tests.actors.test_shard_and_runtime import end

    rt = RayRuntime(channel=True)
    try:
        handle = rt.spawn(ActorSpec(Counting))
        address = ray_session.get(handle.open_channel.remote(b"s" * 32, "another-node"))
        # Another node's driver would get a TCP address; a stranger without the key
        # gets nothing in either case.
        with pytest.raises(ChannelError):
            connect(address, KEY)
        (stats,) = rt.fetch([rt.tell(handle, [end()])])[0]
        assert stats.counters == {"calls": 1, "channel_refused": 1}
        with pytest.raises(TypeError, match="step channel"):
            rt.tell(handle, Lenient(object()))
    finally:
        rt.shutdown()


@settings(max_examples=40, deadline=None)
@given(answer=st.binary(max_size=80), frames=st.lists(st.binary(max_size=64), max_size=3))
def test_no_stranger_gets_a_call_run_whatever_it_sends(answer: bytes, frames) -> None:
    """Without the key, whatever answer to the challenge and whatever frames after it,
    nothing runs on the actor: the connection is refused, and counted."""
    import socket
    from multiprocessing.connection import Connection

    fake = serve("a0")
    assert fake.server is not None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(fake.server.address)
    conn = Connection(sock.detach())
    try:
        assert conn.poll(5)
        conn.recv_bytes()  # the challenge
        try:
            conn.send_bytes(answer)
            for frame in frames:
                conn.send_bytes(frame)
        except OSError:
            pass  # hung up on already
        with pytest.raises((EOFError, OSError)):
            while conn.poll(5):
                conn.recv_bytes()
            raise AssertionError("the actor neither refused nor hung up")
    finally:
        conn.close()
    assert fake.ran == [] and fake.events == ["channel_refused"]

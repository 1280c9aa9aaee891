"""Step channels: an actor's calls over a direct socket from the driver instead of Ray calls.

A plain Ray actor call costs about one bare actor ping here (0.8 ms back to back, 1.5 to
2 ms when the processes have idled), and a session's step is four calls in a row, so Ray's
calls alone cost four to five pings a step. A channel is one stream socket from the driver
to one actor process (a Unix socket on the driver's machine, TCP to another node), opened
through a Ray call and authenticated with a key only the driver and its actors know; on
it a step's four calls cost about half a ping (see BENCHMARKS.md). Ray still starts,
names, places, restarts and kills the actors; only the calls made with the runtime's
``tell`` travel on the channel.

The channel keeps every property of Ray calls the engine relies on:

- calls to one actor run in the order they were made, one at a time;
- a call runs once all its inputs (the results of earlier calls) are finished, and gets
  their bytes as the producer encoded them;
- a call whose input failed never runs and fails too, unless the input is lenient: then
  the actor counts a lost input and runs without it;
- when an actor dies, the calls pending on it fail, and the next call to it reopens its
  channel once Ray has restarted it.

Frames are msgpack: a call is ``[seq, [input bytes or nil for a lost input, ...]]``, a
reply ``[seq, ok, output bytes or error text]``. A peer that fails the handshake is
refused and counted; an undecodable frame closes the channel (counted) and the driver
fails what was pending on it.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import queue
import socket
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, TypeVar

import msgspec

log = logging.getLogger("sovereign.channel")

T = TypeVar("T")

# How long an actor waits for the driver to connect after opening its channel, and how
# long either side waits for the other's half of the handshake.
ACCEPT_TIMEOUT_S = 30.0
HANDSHAKE_TIMEOUT_S = 5.0
_PURPOSE = b"sovereign step channel v1"
_NONCE_BYTES = 32
_OK = b"ok"

_ENCODER = msgspec.msgpack.Encoder()
_CALL = msgspec.msgpack.Decoder(tuple[int, list[bytes | None]])
_REPLY = msgspec.msgpack.Decoder(tuple[int, bool, bytes])


class ChannelError(RuntimeError):
    """A channel could not be opened, or broke."""


def _proof(key: bytes, nonce: bytes) -> bytes:
    return hmac.new(key, _PURPOSE + nonce, hashlib.sha256).digest()


def _connection(sock: socket.socket) -> Connection:
    sock.settimeout(None)
    if sock.family != socket.AF_UNIX:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return Connection(sock.detach())


# -- THE ACTOR'S SIDE ---------------------------------------------------------------------


class ChannelWorker:
    """The one thread of an actor process that runs its channel calls, whichever channel
    they arrive on: a library bound to the event loop of the thread that first used it
    (ib_async's connection) sees one thread for the actor's whole life, even when the
    driver opens a new channel.

    ``handler`` runs one call: it takes the call's inputs (``None`` for a lost lenient
    input) and returns the output bytes; what it raises fails that call only.
    ``on_event(counter, text)`` counts and logs what a channel refused or dropped.
    """

    def __init__(
        self,
        handler: Callable[[list[bytes | None]], bytes],
        on_event: Callable[[str, str], None],
    ) -> None:
        self._handler, self.on_event = handler, on_event
        self._work: queue.SimpleQueue[Connection | tuple[Callable[[], Any], Future[Any]]]
        self._work = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="sovereign-calls", daemon=True)
        self._thread.start()

    def serve(self, conn: Connection) -> None:
        """Serve ``conn`` (authenticated) once the channel before it has closed."""
        self._work.put(conn)

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on this thread, between channels, and return what it returns (the
        actor is built this way, so that what it opens is bound to this thread)."""
        future: Future[T] = Future()
        self._work.put((fn, future))
        return future.result()

    def _run(self) -> None:
        while True:
            item = self._work.get()
            if isinstance(item, Connection):
                with item:
                    self._serve(item)
                continue
            fn, future = item
            try:
                future.set_result(fn())
            except BaseException as exc:  # handed to the caller, who raises it
                future.set_exception(exc)

    def _serve(self, conn: Connection) -> None:
        while True:
            try:
                frame = conn.recv_bytes()
            except (EOFError, OSError):
                return
            try:
                seq, inputs = _CALL.decode(frame)
            except msgspec.DecodeError as exc:
                # The stream can no longer be trusted to be in step with the driver.
                self.on_event("channel_errors", f"closed the channel on an undecodable call: {exc}")
                return
            try:
                reply = (seq, True, self._handler(inputs))
            except Exception as exc:  # the call fails; the actor and its channel live on
                reply = (seq, False, f"{type(exc).__name__}: {exc}".encode())
            try:
                conn.send_bytes(_ENCODER.encode(reply))
            except OSError:
                return


class ChannelServer:
    """One driver's channel into this actor process: listens, accepts one connection
    that proves the key, stops listening, and hands it to the process's ``worker``."""

    def __init__(self, key: bytes, worker: ChannelWorker, *, host: str | None = None) -> None:
        self._key, self._worker = key, worker
        self._dir: str | None = None
        if host is None:
            # A private directory: only this user can reach the socket at all.
            self._dir = tempfile.mkdtemp(prefix="sovereign-channel-")
            path = str(Path(self._dir) / "s")
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._sock.bind(path)
            self.address: Any = path
        else:
            self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self._sock.bind((host, 0))
            self.address = self._sock.getsockname()
        self._sock.listen(4)
        self._sock.settimeout(ACCEPT_TIMEOUT_S)
        self._thread = threading.Thread(target=self._run, name="sovereign-channel", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            conn = self._accept()
        finally:
            self._sock.close()
            if self._dir is not None:
                for leftover in Path(self._dir).iterdir():
                    leftover.unlink()
                os.rmdir(self._dir)
        if conn is not None:
            self._worker.serve(conn)

    def _accept(self) -> Connection | None:
        while True:
            try:
                sock, _ = self._sock.accept()
            except TimeoutError:
                log.warning("nobody connected to the channel in %.0f s", ACCEPT_TIMEOUT_S)
                return None
            except OSError:
                return None
            conn = _connection(sock)
            if self._authenticated(conn):
                return conn
            # Counted before hanging up: whoever was refused may look at once.
            self._worker.on_event(
                "channel_refused", "refused a connection that failed the handshake"
            )
            conn.close()

    def _authenticated(self, conn: Connection) -> bool:
        nonce = os.urandom(_NONCE_BYTES)
        try:
            conn.send_bytes(nonce)
            if not conn.poll(HANDSHAKE_TIMEOUT_S):
                return False
            answer = conn.recv_bytes(maxlength=256)
            if not hmac.compare_digest(answer, _proof(self._key, nonce)):
                return False
            conn.send_bytes(_OK)
        except (OSError, EOFError):
            return False
        return True


# -- THE DRIVER'S SIDE --------------------------------------------------------------------


def connect(address: Any, key: bytes, timeout: float = HANDSHAKE_TIMEOUT_S) -> Connection:
    """Connect to an actor's channel and prove the key."""
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(address if isinstance(address, str) else tuple(address))
    except OSError as exc:
        sock.close()
        raise ChannelError(f"cannot reach the channel at {address!r}: {exc}") from exc
    conn = _connection(sock)
    try:
        if not conn.poll(timeout):
            raise ChannelError("the actor did not start the handshake")
        nonce = conn.recv_bytes(maxlength=256)
        conn.send_bytes(_proof(key, nonce))
        try:
            answer = conn.recv_bytes(maxlength=16) if conn.poll(timeout) else b""
        except EOFError:
            answer = b""  # it hung up on us
        if answer != _OK:
            raise ChannelError("the actor refused the handshake")
    except (OSError, EOFError, ChannelError) as exc:
        conn.close()
        if isinstance(exc, ChannelError):
            raise
        raise ChannelError(f"the handshake broke: {exc}") from exc
    return conn


class ChannelCall:
    """The result of one call made over a channel: the channel's counterpart of a Ray
    object reference. Finished once ``done`` is set; then ``error`` is None and ``value``
    holds the output bytes, or ``error`` says why the call failed."""

    __slots__ = ("actor", "done", "error", "inputs", "seq", "value")

    def __init__(self, actor: str, seq: int, inputs: list[Any] | None) -> None:
        self.actor, self.seq = actor, seq
        self.inputs = inputs
        self.done = threading.Event()
        self.value = b""
        self.error: str | None = None

    def _finish(self, value: bytes, error: str | None) -> None:
        self.value, self.error, self.inputs = value, error, None
        self.done.set()

    def wait(self, timeout: float | None = None) -> bool:
        return self.done.wait(timeout)

    def __repr__(self) -> str:
        state = "pending" if not self.done.is_set() else self.error or "ok"
        return f"ChannelCall({self.actor}#{self.seq}: {state})"


class _Link:
    """The driver's end of one actor's channel."""

    def __init__(self, name: str, conn: Connection) -> None:
        self.name, self.conn = name, conn
        self.alive = True
        self.queue: deque[ChannelCall] = deque()  # made, not yet sent (waiting for inputs)
        self.sent: deque[ChannelCall] = deque()  # sent, not yet answered
        self.send_lock = threading.Lock()
        # Held to close the stream or to hang it up, so that neither touches a
        # descriptor number the other has already given back.
        self.fd_lock = threading.Lock()


class _InputFailedError(Exception):
    pass


class Channels:
    """The driver's channels to its actors, and the calls in flight on them.

    A call's inputs are bytes, or ``(call, lenient)`` for the result of an earlier call.
    Calls wait in their actor's queue until every input has finished, and leave it in the
    order they were made; one reader thread per channel takes the replies, and whoever
    finishes a call sends the calls it was holding up.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._links: dict[str, _Link] = {}
        self._seq = 0

    def alive(self, name: str) -> bool:
        link = self._links.get(name)
        return link is not None and link.alive

    def attach(self, name: str, conn: Connection) -> None:
        """Use ``conn`` for ``name`` from now on (its old channel, if any, is gone)."""
        link = _Link(name, conn)
        with self._lock:
            old = self._links.get(name)
            self._links[name] = link
        if old is not None:
            self._lost(old, "replaced by a new channel")
        threading.Thread(
            target=self._read, args=(link,), name=f"channel-{name}", daemon=True
        ).start()

    def failed(self, name: str, error: str) -> ChannelCall:
        """A call that failed before it could be made."""
        with self._lock:
            self._seq += 1
            call = ChannelCall(name, self._seq, None)
        call._finish(b"", error)
        return call

    def call(self, name: str, inputs: list[Any]) -> ChannelCall:
        with self._lock:
            self._seq += 1
            call = ChannelCall(name, self._seq, inputs)
            link = self._links.get(name)
            if link is None or not link.alive:
                call._finish(b"", f"no channel to {name}")
                return call
            link.queue.append(call)
            sends = self._pump()
        self._send(sends)
        return call

    def close(self) -> None:
        with self._lock:
            links = list(self._links.values())
            self._links.clear()
        for link in links:
            self._lost(link, "the runtime shut down")

    # -- internals ------------------------------------------------------------------------

    @staticmethod
    def _resolve(call: ChannelCall) -> list[bytes | None] | None:
        """The call's inputs as they go on the wire, or None while one is unfinished."""
        out: list[bytes | None] = []
        for item in call.inputs or ():
            if isinstance(item, bytes | bytearray):
                out.append(bytes(item))
                continue
            source, lenient = item
            if not source.done.is_set():
                return None
            if source.error is None:
                out.append(source.value)
            elif lenient:
                out.append(None)
            else:
                raise _InputFailedError(f"an input of {call.actor} failed: {source.error}")
        return out

    def _pump(self) -> list[tuple[_Link, list[bytes]]]:
        """Take every call whose inputs are all finished off the front of its queue
        (under ``_lock``): the frames to send, each link's send lock held so that frames
        leave in the order they were taken whichever thread sends them."""
        # A link may be taken from in several passes: its frames are gathered, and its
        # send lock (not reentrant) taken once, at the end.
        taken: dict[str, tuple[_Link, list[bytes]]] = {}
        changed = True
        while changed:
            changed = False
            for link in self._links.values():
                frames = taken[link.name][1] if link.name in taken else []
                while link.queue:
                    call = link.queue[0]
                    try:
                        inputs = self._resolve(call)
                    except _InputFailedError as exc:
                        link.queue.popleft()
                        call._finish(b"", str(exc))
                        changed = True  # the failure may settle a call on another link
                        continue
                    if inputs is None:
                        break
                    link.queue.popleft()
                    frames.append(_ENCODER.encode((call.seq, inputs)))
                    call.inputs = None
                    link.sent.append(call)
                if frames and link.name not in taken:
                    taken[link.name] = (link, frames)
        for link, _ in taken.values():
            link.send_lock.acquire()
        return list(taken.values())

    def _send(self, sends: list[tuple[_Link, list[bytes]]]) -> None:
        broken: list[tuple[_Link, str]] = []
        for link, frames in sends:
            try:
                for frame in frames:
                    link.conn.send_bytes(frame)
            except OSError as exc:
                broken.append((link, f"sending to {link.name} failed: {exc}"))
            finally:
                link.send_lock.release()
        for link, why in broken:
            self._lost(link, why)

    def _read(self, link: _Link) -> None:
        try:
            while True:
                seq, ok, payload = _REPLY.decode(link.conn.recv_bytes())
                with self._lock:
                    call = link.sent.popleft() if link.sent else None
                    if call is None or call.seq != seq:
                        raise ChannelError(f"{link.name} answered call {seq} out of turn")
                    if ok:
                        call._finish(payload, None)
                    else:
                        call._finish(b"", f"{link.name} raised {payload.decode(errors='replace')}")
                    sends = self._pump()
                self._send(sends)
        except (EOFError, OSError, msgspec.DecodeError, ChannelError) as exc:
            self._lost(link, f"the channel to {link.name} closed: {str(exc) or type(exc).__name__}")
        finally:
            # Closed here, by its only reader: closed from another thread, the descriptor
            # could be reused while this one still reads it.
            with link.fd_lock:
                link.conn.close()

    def _lost(self, link: _Link, why: str) -> None:
        with self._lock:
            if not link.alive:
                return
            link.alive = False
            pending = [*link.sent, *link.queue]
            link.sent.clear()
            link.queue.clear()
            for call in pending:
                call._finish(b"", why)
            sends = self._pump()
        if pending:
            log.error("%s; %d call(s) on it failed", why, len(pending))
        _hang_up(link)
        self._send(sends)


def _hang_up(link: _Link) -> None:
    """End the stream both ways, which wakes its reader thread (it then closes it)."""
    with link.fd_lock:
        if link.conn.closed:
            return
        sock = socket.socket(fileno=os.dup(link.conn.fileno()))
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        finally:
            sock.close()


def wait_all(calls: Sequence[ChannelCall], timeout: float | None) -> int:
    """How many of ``calls``, from the front, finish within ``timeout`` (None: all)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    n = 0
    for call in calls:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not call.wait(left):
            break
        n += 1
    return n

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

Every read of the handshake, on both sides, has a deadline: a peer that connects and
then stalls, mid-frame or before it, is hung up on once its time is up. The actor runs
the handshakes of all who connect side by side on its one accepting thread, so a stalled
stranger does not delay the driver at all.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import queue
import selectors
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, TypeVar

import msgspec

log = logging.getLogger("sovereign.channel")

T = TypeVar("T")

# How long an actor waits for the driver to connect after opening its channel, and how
# long a whole handshake may take, on either side.
ACCEPT_TIMEOUT_S = 30.0
HANDSHAKE_TIMEOUT_S = 5.0
# Handshakes an actor keeps open at once: past it, the oldest is hung up on. The driver's
# takes a round trip, a stalled stranger's its whole timeout, so it is the strangers who
# make room; the bound keeps a crowd of them from exhausting the process's descriptors.
MAX_PENDING_HANDSHAKES = 16
_PURPOSE = b"sovereign step channel v1"
_NONCE_BYTES = 32
_MAX_HANDSHAKE_FRAME = 256
OK = b"ok"
# multiprocessing.connection's frame header: the payload's length, a signed 32-bit int
# (-1 announces a longer frame, which no handshake needs).
_HEADER = struct.Struct("!i")

ENCODER = msgspec.msgpack.Encoder()
_CALL = msgspec.msgpack.Decoder(tuple[int, list[bytes | None]])
REPLY = msgspec.msgpack.Decoder(tuple[int, bool, bytes])


class ChannelError(RuntimeError):
    """A channel could not be opened, or broke."""


def proof(key: bytes, nonce: bytes) -> bytes:
    return hmac.new(key, _PURPOSE + nonce, hashlib.sha256).digest()


def no_delay(sock: socket.socket) -> None:
    if sock.family != socket.AF_UNIX:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def as_connection(sock: socket.socket) -> Connection:
    """The call loop's blocking stream, once the handshake has succeeded on ``sock``."""
    sock.settimeout(None)
    return Connection(sock.detach())


def frame(payload: bytes) -> bytes:
    return _HEADER.pack(len(payload)) + payload


class FrameReader:
    """One handshake frame, read in whatever pieces arrive and never past its end: what
    follows it belongs to the call loop's Connection."""

    __slots__ = ("_buf", "_size")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._size: int | None = None

    def want(self) -> int:
        """How many more bytes to read."""
        return (_HEADER.size if self._size is None else self._size) - len(self._buf)

    def feed(self, data: bytes) -> bytes | None:
        """Take what was read (at most ``want()`` bytes): the frame, once it is whole."""
        if not data:
            raise ChannelError("the peer hung up mid-handshake")
        self._buf += data
        if self._size is None and len(self._buf) == _HEADER.size:
            (size,) = _HEADER.unpack(self._buf)
            if not 0 <= size <= _MAX_HANDSHAKE_FRAME:
                raise ChannelError(f"a handshake frame cannot be {size} bytes long")
            self._size = size
            self._buf.clear()
        if self._size is not None and len(self._buf) == self._size:
            return bytes(self._buf)
        return None


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
                conn.send_bytes(ENCODER.encode(reply))
            except OSError:
                return


class _Handshake:
    """The actor's half of one peer's handshake: send a nonce, read the proof, send ok."""

    __slots__ = ("deadline", "nonce", "out", "proven", "reader", "sock")

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock, self.deadline = sock, deadline
        self.nonce = os.urandom(_NONCE_BYTES)
        self.out = frame(self.nonce)  # still to send
        self.reader = FrameReader()
        self.proven = False


class ChannelServer:
    """One driver's channel into this actor process: listens, accepts one connection
    that proves the key, stops listening, and hands it to the process's ``worker``.

    The handshakes run on one thread, non-blocking and side by side, each against its
    own deadline: no peer can hold up another's, however it stalls.
    """

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
        self._sock.listen(MAX_PENDING_HANDSHAKES)
        self._sock.setblocking(False)
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
        listen_until = time.monotonic() + ACCEPT_TIMEOUT_S
        pending: dict[socket.socket, _Handshake] = {}
        with selectors.DefaultSelector() as selector:
            selector.register(self._sock, selectors.EVENT_READ)
            try:
                while True:
                    now = time.monotonic()
                    for late in [h for h in pending.values() if h.deadline <= now]:
                        self._refuse(selector, pending, late, "its handshake timed out")
                    if now >= listen_until:
                        log.warning("nobody connected to the channel in %.0f s", ACCEPT_TIMEOUT_S)
                        return None
                    wake = min([listen_until, *(h.deadline for h in pending.values())])
                    for key, _ in selector.select(wake - now):
                        if key.fileobj is self._sock:
                            if not self._take(selector, pending):
                                return None
                            continue
                        shake: _Handshake = key.data
                        # One refused earlier in this batch (made room for) is gone.
                        if pending.get(shake.sock) is shake and self._step(
                            selector, pending, shake
                        ):
                            del pending[shake.sock]
                            selector.unregister(shake.sock)
                            return as_connection(shake.sock)
            finally:
                for left in list(pending.values()):
                    self._refuse(selector, pending, left, "the channel is no longer open to it")

    def _take(
        self, selector: selectors.BaseSelector, pending: dict[socket.socket, _Handshake]
    ) -> bool:
        """Accept whoever is waiting and start their handshakes; False once the
        listening socket is unusable."""
        while True:
            try:
                sock, _ = self._sock.accept()
            except BlockingIOError:
                return True
            except OSError:
                return False
            sock.setblocking(False)
            no_delay(sock)
            if len(pending) >= MAX_PENDING_HANDSHAKES:
                oldest = min(pending.values(), key=lambda h: h.deadline)
                self._refuse(selector, pending, oldest, "too many handshakes at once")
            shake = _Handshake(sock, time.monotonic() + HANDSHAKE_TIMEOUT_S)
            pending[sock] = shake
            selector.register(sock, selectors.EVENT_WRITE, shake)

    def _step(
        self,
        selector: selectors.BaseSelector,
        pending: dict[socket.socket, _Handshake],
        shake: _Handshake,
    ) -> bool:
        """Move ``shake`` on as far as its socket allows; True once it has succeeded."""
        try:
            if shake.out:
                shake.out = shake.out[shake.sock.send(shake.out) :]
                if shake.out:
                    return False
                if shake.proven:
                    return True
                selector.modify(shake.sock, selectors.EVENT_READ, shake)
                return False
            answer = shake.reader.feed(shake.sock.recv(shake.reader.want()))
        except (BlockingIOError, InterruptedError):
            return False
        except (OSError, ChannelError) as exc:
            self._refuse(selector, pending, shake, f"its handshake broke: {exc}")
            return False
        if answer is None:
            return False
        if not hmac.compare_digest(answer, proof(self._key, shake.nonce)):
            self._refuse(selector, pending, shake, "it failed the handshake")
            return False
        shake.proven, shake.out = True, frame(OK)
        selector.modify(shake.sock, selectors.EVENT_WRITE, shake)
        return False

    def _refuse(
        self,
        selector: selectors.BaseSelector,
        pending: dict[socket.socket, _Handshake],
        shake: _Handshake,
        why: str,
    ) -> None:
        del pending[shake.sock]
        selector.unregister(shake.sock)
        # Counted before hanging up: whoever was refused may look at once.
        self._worker.on_event("channel_refused", f"refused a connection: {why}")
        shake.sock.close()

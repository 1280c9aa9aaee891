"""Step channels, the driver's side: connect to an actor's channel, send calls whose
inputs are earlier calls' results, and wait for them (``actors.channel`` tells the whole
story and holds the actor's side and the framing both sides share)."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

import msgspec

from sovereign.actors.channel import (
    ENCODER,
    HANDSHAKE_TIMEOUT_S,
    OK,
    REPLY,
    ChannelError,
    FrameReader,
    as_connection,
    frame,
    no_delay,
    proof,
)

log = logging.getLogger("sovereign.channel")


def connect(address: Any, key: bytes, timeout: float = HANDSHAKE_TIMEOUT_S) -> Connection:
    """Connect to an actor's channel and prove the key, all within ``timeout``."""
    deadline = time.monotonic() + timeout
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(address if isinstance(address, str) else tuple(address))
    except OSError as exc:
        sock.close()
        raise ChannelError(f"cannot reach the channel at {address!r}: {exc}") from exc
    no_delay(sock)
    try:
        try:
            nonce = _recv_frame(sock, deadline)
        except (OSError, ChannelError) as exc:
            raise ChannelError(f"the actor did not start the handshake: {exc}") from exc
        _send_frame(sock, proof(key, nonce), deadline)
        try:
            answer = _recv_frame(sock, deadline)
        except (OSError, ChannelError):
            answer = b""  # it hung up on us, or never answered
        if answer != OK:
            raise ChannelError("the actor refused the handshake")
    except (OSError, ChannelError) as exc:
        sock.close()
        if isinstance(exc, ChannelError):
            raise
        raise ChannelError(f"the handshake broke: {exc}") from exc
    return as_connection(sock)


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the handshake timed out")
    return left


def _recv_frame(sock: socket.socket, deadline: float) -> bytes:
    reader = FrameReader()
    while True:
        sock.settimeout(_left(deadline))
        frame = reader.feed(sock.recv(reader.want()))
        if frame is not None:
            return frame


def _send_frame(sock: socket.socket, payload: bytes, deadline: float) -> None:
    sock.settimeout(_left(deadline))
    sock.sendall(frame(payload))


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
                    frames.append(ENCODER.encode((call.seq, inputs)))
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
                seq, ok, payload = REPLY.decode(link.conn.recv_bytes())
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

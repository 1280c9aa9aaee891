"""Runtimes: the same actor classes in one process or as named Ray actors.

Both runtimes offer the same four operations, and the engine is written against them:

``spawn(spec)``
    create the actor described by an ``ActorSpec`` and return a handle;
``tell(handle, *inputs)``
    deliver the concatenation of ``inputs`` to the actor as one batch and return a
    *result*: each input is a list of messages built by the driver or the result of an
    earlier ``tell``, so actors feed each other without the driver touching the data;
``fetch(results)``
    the messages of finished results;
``ready(results, timeout)``
    which of the results are finished.

``LocalRuntime`` delivers synchronously, in call order, in this process (optionally
through the msgpack wire, to prove the messages survive it). ``RayRuntime`` runs each
actor as a named Ray actor ``sovereign/<role>/<n>`` in namespace ``sovereign``; inputs
and outputs travel as msgpack bytes, one object per call. Its calls travel on a step
channel to each actor (``sovereign.actors.channel``: a direct socket, about a tenth of a
Ray call's cost) or, with ``channel=False``, as Ray actor calls whose results are object
references passed straight from one call into the next. Either way calls from the driver
to an actor execute in submission order, so a replay is deterministic on both runtimes.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sovereign.actors.base import Actor
from sovereign.actors.channel import ChannelError, ChannelServer, ChannelWorker
from sovereign.actors.channel_driver import ChannelCall, Channels, connect, wait_all
from sovereign.memory.checkpoints import Checkpoints, CheckpointStore
from sovereign.messages import WIRE, Message, MessageDecodeError

log = logging.getLogger("sovereign.runtime")

NAMESPACE = "sovereign"


class ActorCallError(RuntimeError):
    """An actor call did not complete (the actor died, or raised)."""


@dataclass(frozen=True, slots=True)
class Lenient:
    """An input the receiver can do without: if the call that produces it failed (say,
    its actor was killed and is restarting), the receiver counts the loss and goes on,
    instead of failing too. Used for inputs that come from the previous step."""

    value: Any


@dataclass(frozen=True, slots=True)
class ActorSpec:
    """How to build one actor: its class and constructor arguments (picklable)."""

    cls: type[Actor]
    index: int = 0
    kwargs: dict[str, Any] = field(default_factory=dict)
    spread: bool = False
    # Paper and live sessions: where the actor keeps its checkpoint (restored after Ray
    # restarts it); None keeps none.
    checkpoints: Checkpoints | None = None

    @property
    def name(self) -> str:
        return f"sovereign/{self.cls.role}/{self.index}"

    def build(self) -> Actor:
        return self.cls(index=self.index, **self.kwargs)


def _decode_inputs(actor: Actor, blobs: Sequence[bytes]) -> list[Message]:
    messages: list[Message] = []
    accepts = actor.accepts
    for blob in blobs:
        try:
            messages.extend(
                WIRE.decode_batch(blob) if accepts is None else WIRE.decode_batch_of(blob, accepts)
            )
        except MessageDecodeError as exc:
            # A bad payload is counted and dropped; the actor and its state are untouched.
            actor.count("decode_errors")
            actor.log.error("%s dropped an undecodable batch: %s", actor.name, exc)
    return messages


# -- LOCAL ------------------------------------------------------------------------------


class _Wired(list):  # type: ignore[type-arg]
    """A result that went through the wire: its messages, and the bytes they came from."""

    __slots__ = ("blob",)

    def __init__(self, messages: list[Message], blob: bytes) -> None:
        super().__init__(messages)
        self.blob = blob


class LocalRuntime:
    """Everything in this process, delivered synchronously in call order."""

    name = "local"

    def __init__(self, *, wire: bool = False) -> None:
        self.wire = wire
        self.actors: dict[str, Actor] = {}

    def spawn(self, spec: ActorSpec) -> Actor:
        actor = spec.build()
        self.actors[spec.name] = actor
        return actor

    def tell(self, handle: Actor, *inputs: list[Message] | Lenient) -> list[Message]:
        batches = [x.value if type(x) is Lenient else x for x in inputs]
        if self.wire:
            # As on Ray: a result is encoded once, by its producer, and each consumer
            # decodes it; only the driver's own lists are encoded here.
            blobs = [b.blob if isinstance(b, _Wired) else WIRE.encode_batch(b) for b in batches]
            out = handle.receive(_decode_inputs(handle, blobs))
            blob = WIRE.encode_batch(out)
            return _Wired(WIRE.decode_batch(blob), blob)
        messages: list[Message] = []
        accepts = handle.accepts
        for batch in batches:
            if not batch:
                continue
            if accepts is None:
                messages += batch
            else:
                messages += [m for m in batch if type(m) in accepts]
        return handle.receive(messages)

    def fetch(self, results: Sequence[list[Message]]) -> list[list[Message]]:
        return list(results)

    def ready(self, results: Sequence[list[Message]], timeout: float | None = 0) -> int:
        return len(results)

    def shutdown(self) -> None:
        for actor in self.actors.values():
            try:
                actor.close()
            except Exception as exc:  # one actor's failure to let go must not keep the rest
                log.error("%s did not close cleanly: %r", actor.name, exc)
        self.actors.clear()


# -- RAY --------------------------------------------------------------------------------


_EMPTY = WIRE.encode_batch([])

# How long opening a channel may wait for its actor (Ray may be restarting it).
CHANNEL_OPEN_TIMEOUT_S = 120.0


class _Host:
    """The body of every Ray actor: decode, deliver to the actor, encode."""

    def __init__(self, spec: ActorSpec, channel: bool = False) -> None:
        import sovereign  # noqa: F401  (pins threads in the worker before numpy work)

        logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
        # Calls come from Ray's thread and from the step channel's: one at a time.
        self._lock = threading.Lock()
        self.calls: list[tuple[float, float]] | None = None
        self._worker: ChannelWorker | None = None
        self._checkpoint: CheckpointStore | None = None
        if channel:
            # Built on the thread that will run its channel calls: what the actor opens
            # here and is bound to its thread's event loop (ib_async's connection to TWS)
            # is used from that thread only.
            self._worker = ChannelWorker(self._channel_call, self._channel_event)
            self.actor = self._worker.call(lambda: self._build(spec))
        else:
            self.actor = self._build(spec)
        # The process is this actor's alone and what it holds now (modules, models) lives
        # as long as it does: the garbage collector need not walk it again (see Engine).
        gc.freeze()

    def _build(self, spec: ActorSpec) -> Actor:
        """Build the actor; if this is Ray restarting it mid-session, restore it from its
        checkpoint first."""
        actor = spec.build()
        if spec.checkpoints is None:
            return actor
        self._checkpoint = CheckpointStore(spec.checkpoints, spec.name)
        blob = self._checkpoint.load()
        if blob is not None:
            actor.restore(blob)
            actor.count("restored_from_checkpoint")
            actor.log.warning("%s restarted: restored from its checkpoint", actor.name)
        actor.persist = self._persist
        return actor

    def _persist(self) -> None:
        if self._checkpoint is not None:
            blob = self.actor.snapshot()
            if blob is not None:
                self._checkpoint.save(blob)

    def receive(self, *args: bytes | list[Any]) -> bytes:
        with self._lock:
            if self.calls is None:
                out = self._receive(*args)
                self._persist()
                return out
            started = time.perf_counter()
            try:
                out = self._receive(*args)
                self._persist()
                return out
            finally:
                self.calls.append((started, time.perf_counter()))

    def open_channel(self, key: bytes, driver_node: str) -> Any:
        """Listen for the driver's step channel; its address (a Unix socket path on the
        driver's node, else this node's address and a port)."""
        import ray

        host = None
        if ray.get_runtime_context().get_node_id() != driver_node:
            host = ray.util.get_node_ip_address()
        if self._worker is None:
            # Its actor was built on Ray's thread, where its calls must stay.
            raise RuntimeError(f"{self.actor.name} was started for Ray calls, not a channel")
        return ChannelServer(key, self._worker, host=host).address

    def _channel_call(self, inputs: list[bytes | None]) -> bytes:
        blobs: list[bytes] = []
        for blob in inputs:
            if blob is None:
                # A lenient input whose call failed: counted as on Ray's path.
                with self._lock:
                    self.actor.count("lost_inputs")
                self.actor.log.error("%s lost an input from a failed call", self.actor.name)
                blob = _EMPTY
            blobs.append(blob)
        return self.receive(*blobs)

    def _channel_event(self, counter: str, text: str) -> None:
        with self._lock:
            self.actor.count(counter)
        self.actor.log.error("%s: %s", self.actor.name, text)

    def time_calls(self) -> None:
        """From now on, note when each call starts and ends (the latency probe's split
        of a step into our actors' work and Ray's)."""
        with self._lock:
            self.calls = []

    def call_times(self) -> list[tuple[float, float]]:
        with self._lock:
            return list(self.calls or [])

    def _receive(self, *args: bytes | list[Any]) -> bytes:
        wrapped = [a[0] for a in args if not isinstance(a, bytes | bytearray)]
        fetched = self._lenient(wrapped) if wrapped else {}
        blobs = [a if isinstance(a, bytes | bytearray) else fetched[a[0]] for a in args]
        return WIRE.encode_batch(self.actor.receive(_decode_inputs(self.actor, blobs)))

    def _lenient(self, refs: list[Any]) -> dict[Any, bytes]:
        # A reference inside a list is not resolved by Ray before the call: fetch it here
        # and survive the failure of the call that was to produce it. All at once (one
        # round trip to their owner), one by one only if one of them failed.
        import ray

        empty = _EMPTY
        try:
            values = ray.get(refs)
        except ray.exceptions.RayError:
            pass
        else:
            return {
                ref: value if isinstance(value, bytes) and value else empty
                for ref, value in zip(refs, values, strict=True)
            }
        out: dict[Any, bytes] = {}
        for ref in refs:
            try:
                value = ray.get(ref)
            except ray.exceptions.RayError as exc:
                self.actor.count("lost_inputs")
                self.actor.log.error(
                    "%s lost an input from a failed call: %s", self.actor.name, exc
                )
                value = b""
            out[ref] = value if isinstance(value, bytes) and value else empty
        return out

    def ping(self) -> bytes:
        return b""

    def pid(self) -> int:
        return os.getpid()

    def __repr__(self) -> str:
        return self.actor.name


class RayRuntime:
    """Each actor a named Ray actor; messages cross as msgpack bytes, batched per call.

    ``channel``: the calls made with ``tell`` travel on a step channel to each actor
    (opened on its first call, reopened after Ray restarts the actor) instead of as Ray
    calls; their results are ``ChannelCall``s instead of object references.
    """

    name = "ray"

    def __init__(
        self,
        *,
        address: str = "",
        dashboard: bool = True,
        num_cpus: int = 0,
        max_restarts: int = 3,
        channel: bool = True,
    ) -> None:
        import ray

        self._ray = ray
        self.max_restarts = max_restarts
        self._owns_ray = False
        self.dashboard_url: str | None = None
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {
                "namespace": NAMESPACE,
                "logging_level": logging.WARNING,
                "log_to_driver": True,
            }
            if address:
                kwargs["address"] = address
            else:
                kwargs["include_dashboard"] = dashboard
                if num_cpus > 0:
                    kwargs["num_cpus"] = num_cpus
                kwargs["runtime_env"] = {
                    "env_vars": {
                        k: os.environ.get(k, "1")
                        for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
                    }
                }
            context = ray.init(**kwargs)
            self.dashboard_url = context.dashboard_url or None
            self._owns_ray = True
        self._remote_classes: dict[type[Actor], Any] = {}
        self.handles: dict[str, Any] = {}
        self._channels = Channels() if channel else None
        # Known only to this driver and its actors (handed over on Ray's own connection).
        self._channel_key = os.urandom(32)
        self._node = ray.get_runtime_context().get_node_id()
        self._names: dict[int, str] = {}

    @property
    def channel(self) -> bool:
        return self._channels is not None

    @property
    def namespace(self) -> str:
        return self._ray.get_runtime_context().namespace

    def spawn(self, spec: ActorSpec) -> Any:
        options: dict[str, Any] = {
            "name": spec.name,
            "namespace": NAMESPACE,
            "max_restarts": self.max_restarts,
            # Scheduling needs no CPU reservation: actors are small and mostly idle; on a
            # two-core machine reserving one each would leave no room for the graph.
            "num_cpus": 0,
        }
        if spec.spread:
            options["scheduling_strategy"] = "SPREAD"
        handle = self._remote_class(spec.cls).options(**options).remote(spec, self.channel)
        self.handles[spec.name] = handle
        self._names[id(handle)] = spec.name
        return handle

    def _remote_class(self, cls: type[Actor]) -> Any:
        # One host subclass per actor class, named after it, so the dashboard and
        # `ray list actors` show ShardActor, GuardianActor, ... rather than one host name.
        remote = self._remote_classes.get(cls)
        if remote is None:
            host = type(cls.__name__, (_Host,), {"__qualname__": cls.__name__})
            remote = self._remote_classes[cls] = self._ray.remote(host)
        return remote

    def tell(self, handle: Any, *inputs: Any) -> Any:
        if self._channels is not None:
            return self._tell_on_channel(handle, inputs)
        ref_type = self._ray.ObjectRef
        pending = [
            x.value for x in inputs if isinstance(x, Lenient) and isinstance(x.value, ref_type)
        ]
        finished = self._finished(list(dict.fromkeys(pending))) if pending else {}
        args: list[Any] = []
        for x in inputs:
            if isinstance(x, Lenient):
                x = x.value
                if not isinstance(x, ref_type):
                    args.append(WIRE.encode_batch(x))
                else:
                    # A finished input travels with the call: the actor then need not ask
                    # the driver for it (a round trip each, on the step's critical path).
                    args.append(finished.get(x) or [x])
            else:
                args.append(WIRE.encode_batch(x) if isinstance(x, list) else x)
        return handle.receive.remote(*args)

    def _tell_on_channel(self, handle: Any, inputs: Sequence[Any]) -> ChannelCall:
        channels = self._channels
        assert channels is not None
        name = self._names.get(id(handle))
        if name is None:
            raise TypeError(f"{handle!r} was not spawned by this runtime")
        args: list[Any] = []
        for x in inputs:
            lenient = type(x) is Lenient
            value = x.value if lenient else x
            if isinstance(value, ChannelCall):
                args.append((value, lenient))
            elif isinstance(value, list):
                args.append(WIRE.encode_batch(value))
            elif isinstance(value, bytes):
                args.append(value)  # an encoded batch, as on Ray's path
            else:
                raise TypeError(
                    f"a call on a step channel takes message lists, encoded batches and "
                    f"ChannelCalls, not {type(value).__name__}"
                )
        if not channels.alive(name):
            error = self._open_channel(name, handle)
            if error is not None:
                return channels.failed(name, error)
        return channels.call(name, args)

    def _open_channel(self, name: str, handle: Any) -> str | None:
        """Open (or reopen) the channel to an actor: None, or why it could not be."""
        assert self._channels is not None
        try:
            address = self._ray.get(
                handle.open_channel.remote(self._channel_key, self._node),
                timeout=CHANNEL_OPEN_TIMEOUT_S,
            )
            conn = connect(address, self._channel_key)
        except (self._ray.exceptions.RayError, ChannelError) as exc:
            why = f"cannot open the channel to {name}: {str(exc).splitlines()[0]}"
            log.error("%s", why)
            return why
        self._channels.attach(name, conn)
        return None

    def _finished(self, refs: list[Any]) -> dict[Any, bytes]:
        """The values of those ``refs`` whose calls already succeeded (a failed one is
        left to the receiving actor, which counts and logs the loss)."""
        ray = self._ray
        done, _ = ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)
        out: dict[Any, bytes] = {}
        for ref in done:
            try:
                value = ray.get(ref, timeout=0)
            except ray.exceptions.RayError:
                continue
            if isinstance(value, bytes) and value:
                out[ref] = value
        return out

    def fetch(self, results: Sequence[Any]) -> list[list[Message]]:
        if self._channels is not None:
            return [WIRE.decode_batch(self._value(r)) for r in results]
        try:
            blobs = self._ray.get(list(results))
        except self._ray.exceptions.RayError as exc:
            raise ActorCallError(str(exc).splitlines()[0]) from exc
        return [WIRE.decode_batch(b) for b in blobs]

    @staticmethod
    def _value(result: ChannelCall) -> bytes:
        result.wait()
        if result.error is not None:
            raise ActorCallError(result.error)
        return result.value

    def ready(self, results: Sequence[Any], timeout: float | None = 0) -> int:
        """How many of ``results``, from the front, are finished."""
        if not results:
            return 0
        if self._channels is not None:
            return wait_all(results, timeout)
        done, _ = self._ray.wait(list(results), num_returns=len(results), timeout=timeout)
        finished = set(done)
        n = 0
        for ref in results:
            if ref not in finished:
                break
            n += 1
        return n

    def wait_first(self, result: Any) -> None:
        if self._channels is not None:
            result.wait()
        else:
            self._ray.wait([result], num_returns=1)

    def ping_all(self) -> None:
        self._ray.get([h.ping.remote() for h in self.handles.values()])

    def time_calls(self) -> None:
        """Every actor notes the start and end of each later call (CLOCK_MONOTONIC, which
        the driver and every actor process on this machine share)."""
        self._ray.get([h.time_calls.remote() for h in self.handles.values()])

    def call_times(self) -> dict[str, list[tuple[float, float]]]:
        """Each actor's calls since ``time_calls``, by actor name."""
        names = list(self.handles)
        times = self._ray.get([self.handles[n].call_times.remote() for n in names])
        return dict(zip(names, times, strict=True))

    def shutdown(self) -> None:
        if self._channels is not None:
            self._channels.close()
        for handle in self.handles.values():
            self._ray.kill(handle, no_restart=True)
        self.handles.clear()
        self._names.clear()
        if self._owns_ray:
            self._ray.shutdown()
            self._owns_ray = False

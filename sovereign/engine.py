"""The engine: builds the actor graph from config and runs the clock.

One step is one bar time. The wiring of a step (every arrow is one ``tell``; on Ray each
is a call on the actor's step channel, or a Ray actor call, whose inputs are earlier
calls' results, handed on as soon as they are finished without the driver decoding them):

    feed ──bars──> RegimeActor ───────────────regime────────────────┐
    feed ──bars──> GatewayActor (fills at the open, marks, account) ─┤
                          │                                          v
                          └──events──> ShardActor xN <──verdicts, acks of step t-1
                                              │ intents, trades
                                              v
                                        GuardianActor ──approved SubmitOrder──> GatewayActor
                                              │
                        MonitorActor, OperatorActor <── everything of the step

In a backtest the approved orders of step t travel to the gateway with the bars of step
t+1, in one call (the simulated broker fills them at that bar's open either way), so a
step is three calls in a row instead of four; paper and live sessions send them at once.
Actors declare the message types they act on (``Actor.accepts``) and are handed only
those; on Ray the rest of an input is skipped without being decoded.

The clock is a replay clock: timestamps come from the data. In a paper session the driver
paces steps against the wall clock, scaled by ``speed``.
"""

from __future__ import annotations

import functools
import gc
import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from sovereign.actors.gateway import GatewayActor
from sovereign.actors.guardian import GuardianActor
from sovereign.actors.monitor import MonitorActor
from sovereign.actors.operator import OperatorActor
from sovereign.actors.regime import RegimeActor
from sovereign.actors.runtime import (
    ActorCallError,
    ActorSpec,
    Lenient,
    LocalRuntime,
    RayRuntime,
)
from sovereign.actors.selfmod import SelfModActor
from sovereign.actors.shard import ShardActor
from sovereign.brokers.sim import SimBroker
from sovereign.config import Config
from sovereign.core.risk import SizingPolicy
from sovereign.core.shadow import ShadowCosts
from sovereign.data.feeds import ReplayFeed, deal_symbols
from sovereign.data.loaders import LoadedData
from sovereign.domain.service_settings import NOTIFICATION_KINDS
from sovereign.memory.account import sim_account_key
from sovereign.memory.checkpoints import Checkpoints
from sovereign.messages import (
    AccountSnapshot,
    ActorStats,
    ChunkVerdict,
    EquityCurve,
    Message,
    NDArray,
    Notification,
    OrderAccepted,
    OrderCanceled,
    OrderFilled,
    OrderRejected,
    SessionEnded,
    SessionStarted,
    ShardReport,
)

log = logging.getLogger("sovereign.engine")

Runtime = LocalRuntime | RayRuntime


class BacktestStepError(ActorCallError):
    """A backtest lost a step (an actor died or raised) and stopped there."""


Mode = Literal["backtest", "paper"]


@dataclass(frozen=True, slots=True)
class Graph:
    """Handles of the actors of one session."""

    shards: list[Any]
    regime: Any
    guardian: Any
    gateway: Any
    selfmod: Any
    monitor: Any
    operator: Any


@dataclass(frozen=True, slots=True)
class Progress:
    step: int
    total: int
    ts: int
    notifications: int
    elapsed_s: float


@dataclass(slots=True)
class SessionResult:
    """Everything a report needs from a finished session."""

    run_id: str
    mode: str
    runtime: str
    steps: int
    bars: int
    wall_seconds: float
    engine_seconds: float
    shard_symbols: list[list[str]]
    ts: np.ndarray
    equity: np.ndarray
    cash: np.ndarray
    gross_exposure: np.ndarray
    counters: dict[str, int]
    shard_reports: list[ShardReport]
    actor_stats: list[ActorStats]
    final_account: AccountSnapshot | None
    notifications: int
    actor_names: list[str] = field(default_factory=list)


def ib_settings(config: Config, *, data: bool = False) -> Any:
    from sovereign.brokers.ib import IBSettings

    ib = config.ib
    return IBSettings(
        host=ib.host,
        port=ib.port,
        client_id=ib.data_client_id if data else ib.client_id,
        account=ib.account,
        connect_timeout_s=ib.connect_timeout_s,
        max_requests=ib.max_requests,
        historical_pacing=ib.historical_pacing,
        backoff_initial_s=ib.reconnect_initial_s,
        backoff_max_s=ib.reconnect_max_s,
    )


def alpaca_settings(config: Config) -> Any:
    from sovereign.brokers.alpaca import AlpacaSettings

    base = AlpacaSettings.from_env(paper=config.alpaca.paper)
    return AlpacaSettings(
        paper=base.paper,
        base_url=base.base_url,
        data_url=base.data_url,
        stream_url=base.stream_url,
        feed=config.alpaca.feed,
    )


def make_broker_factory(config: Config, position_cap: float) -> Callable[[], Any]:
    """A picklable factory: the broker is built inside the gateway actor's process."""
    kind = config.broker.kind
    if kind == "sim":
        return functools.partial(
            SimBroker, config.sim, config.engine.initial_capital, position_cap=position_cap
        )
    if kind == "ib":
        from sovereign.brokers.ib import IBBroker

        return functools.partial(IBBroker, ib_settings(config))
    if kind == "alpaca":
        from sovereign.brokers.alpaca import AlpacaBroker

        return functools.partial(AlpacaBroker, alpaca_settings(config))
    return functools.partial(
        _failover, ib_settings(config), alpaca_settings(config), config.broker.failover_after_s
    )


class BrokerAccountError(RuntimeError):
    """The broker's account cannot be identified (unreachable, or ambiguous)."""


def broker_account_id(config: Config) -> str:
    """The identity of the broker account a live session would trade, as the broker
    reports it: ``ib:<account>`` (IB's managed account; ``[ib] account`` picks one of
    several), ``alpaca:<account number>``, or both for ``ib+alpaca``. A real account's
    trading state belongs to this identity, whatever the session is called."""
    kind = config.broker.kind
    parts: list[str] = []
    if kind in ("ib", "ib+alpaca"):
        parts.append(f"ib:{_ib_account(config)}")
    if kind in ("alpaca", "ib+alpaca"):
        parts.append(f"alpaca:{_alpaca_account(config)}")
    if not parts:
        raise BrokerAccountError(f"the {kind} broker has no account of its own")
    return "+".join(parts)


def _ib_account(config: Config) -> str:
    from ib_async import IB

    ib = IB()
    settings = ib_settings(config)
    try:
        # The order connection's client id: the gateway takes it over right after.
        ib.connect(
            settings.host,
            settings.port,
            clientId=settings.client_id,
            timeout=settings.connect_timeout_s,
            readonly=True,
        )
        managed = [a for a in ib.managedAccounts() if a]
    except Exception as exc:
        if settings.account:
            # Declared by the operator: the gateway trades that account once IB is up.
            log.warning("IB unreachable (%r); the account is [ib] account", exc)
            return settings.account
        raise BrokerAccountError(
            f"cannot reach IB at {settings.host}:{settings.port} to identify the account "
            f"({exc!r}); name it with [ib] account to start without IB"
        ) from None
    finally:
        ib.disconnect()
    if settings.account:
        if settings.account not in managed:
            raise BrokerAccountError(
                f"[ib] account {settings.account!r} is not one of the login's accounts "
                f"({', '.join(managed) or 'none'})"
            )
        return settings.account
    if len(managed) != 1:
        raise BrokerAccountError(
            f"the IB login manages {len(managed)} accounts ({', '.join(managed) or 'none'}): "
            "name the one to trade with [ib] account"
        )
    return managed[0]


def _alpaca_account(config: Config) -> str:
    from alpaca.trading.client import TradingClient

    settings = alpaca_settings(config)
    try:
        key, secret = settings.keys()
        client = TradingClient(
            key, secret, paper=settings.paper, url_override=settings.base_url or None
        )
        account = client.get_account()
    except Exception as exc:
        raise BrokerAccountError(f"cannot identify the Alpaca account: {exc}") from None
    number = str(getattr(account, "account_number", "") or getattr(account, "id", ""))
    if not number:
        raise BrokerAccountError("Alpaca reported an account without a number")
    return number


def _failover(ib: Any, alpaca: Any, after_s: float) -> Any:
    from sovereign.brokers.alpaca import AlpacaBroker
    from sovereign.brokers.failover import FailoverBroker
    from sovereign.brokers.ib import IBBroker

    return FailoverBroker(IBBroker(ib), AlpacaBroker(alpaca), failover_after_s=after_s)


def make_live_feed(config: Config, symbols: list[str]) -> Any:
    """The feed of a live session on ``config.broker.kind``: polled, or streamed."""
    from sovereign.data.live import FailoverBarSource, PollingFeed, StreamingFeed

    kind = config.broker.kind
    interval = config.broker.bar_interval_s
    if config.broker.feed == "stream":
        shards = deal_symbols(symbols, config.engine.shards)
        if kind == "ib":
            from sovereign.brokers.ib import IBStreamSource

            stream: Any = IBStreamSource(
                ib_settings(config, data=True),
                symbols,
                interval,
                what_to_show=config.ib.what_to_show,
                use_rth=config.ib.use_rth,
                warmup_bars=config.broker.warmup_bars,
            )
        elif kind == "alpaca":
            from sovereign.brokers.alpaca import AlpacaStreamSource

            stream = AlpacaStreamSource(
                alpaca_settings(config), symbols, interval, warmup_bars=config.broker.warmup_bars
            )
        else:
            raise ValueError("streaming bars need one broker (ib or alpaca); ib+alpaca polls")
        return StreamingFeed(stream, shards, interval, grace_s=config.broker.stream_grace_s)
    sources = []
    if kind in ("ib", "ib+alpaca"):
        from sovereign.brokers.ib import IBBarSource

        sources.append(
            IBBarSource(
                ib_settings(config, data=True),
                interval,
                what_to_show=config.ib.what_to_show,
                use_rth=config.ib.use_rth,
                warmup_bars=config.broker.warmup_bars,
            )
        )
    if kind in ("alpaca", "ib+alpaca"):
        from sovereign.brokers.alpaca import AlpacaBarSource

        sources.append(
            AlpacaBarSource(
                alpaca_settings(config), interval, warmup_bars=config.broker.warmup_bars
            )
        )
    source = sources[0] if len(sources) == 1 else FailoverBarSource(sources[0], sources[1])
    return PollingFeed(
        source,
        deal_symbols(symbols, config.engine.shards),
        interval,
        poll_interval_s=config.broker.poll_interval_s,
    )


def state_scope(config: Config, run_id: str) -> str:
    """Whose guardian state this is: a named account's, or this run's alone."""
    return f"account/{config.engine.account}" if config.engine.account else f"run/{run_id}"


def build_specs(
    config: Config,
    shard_symbols: list[list[str]],
    state_dir: Path,
    secret: bytes,
    *,
    run_id: str,
    notify_fills: bool = False,
    daily_summary: bool = False,
    audit_key: bytes | None = None,
    checkpoints: Checkpoints | None = None,
    replay_window: int = 0,
) -> dict[str, Any]:
    """The actor graph as specs (role -> spec or list of specs). ``audit_key`` seals the
    account's safety state and keys the audit log (None: each actor reads it from the
    state directory). ``checkpoints`` (paper and live sessions): where the shards and the
    gateway keep the checkpoints they are restored from after a crash; ``replay_window``:
    how many of its calls' order events the gateway sends again with each output."""
    constitution = config.build_constitution()
    policy = SizingPolicy(
        volatile_scale=config.risk.volatile_scale,
        max_gross_exposure=config.risk.max_gross_exposure,
        entry_limit_buffer=config.risk.entry_limit_buffer,
    )
    broker_factory = make_broker_factory(config, constitution.max_position_size)
    shard_of = {s: i for i, symbols in enumerate(shard_symbols) for s in symbols}
    account = config.engine.account
    return {
        "shards": [
            ActorSpec(
                ShardActor,
                index=i,
                kwargs={
                    "symbols": symbols,
                    "strategy": config.strategy,
                    "state_dir": str(state_dir),
                    "account": account,
                    "redis_url": config.state.redis_url,
                    "replay_window": replay_window,
                    # Self-modification learns from the trades its rules prevent.
                    "shadow": ShadowCosts(constitution, policy, config.sim)
                    if config.selfmod.enabled
                    else None,
                    # A real broker's positions may be the owner's own: never sold unasked.
                    "adopt_carried": bool(account) and config.broker.kind == "sim",
                },
                spread=True,
                checkpoints=checkpoints,
            )
            for i, symbols in enumerate(shard_symbols)
        ],
        "regime": ActorSpec(
            RegimeActor, kwargs={"shard_symbols": shard_symbols, "config": config.regime}
        ),
        "guardian": ActorSpec(
            GuardianActor,
            kwargs={
                "constitution": constitution,
                "policy": policy,
                "secret": secret,
                "approval_ttl_s": config.engine.approval_ttl_s,
                "state_dir": str(state_dir),
                "state_scope": state_scope(config, run_id),
                "shard_of": shard_of,
                "flatten_on_halt": config.risk.flatten_on_halt,
                "review_after_losses": config.risk.review_after_losses,
                "redis_url": config.state.redis_url,
                "audit_key": audit_key,
            },
        ),
        "gateway": ActorSpec(
            GatewayActor,
            kwargs={
                "broker_factory": broker_factory,
                "secret": secret,
                "state_dir": str(state_dir),
                "account_key": sim_account_key(account) if account else "",
                "redis_url": config.state.redis_url,
                "audit_key": audit_key,
                "replay_window": replay_window,
            },
            checkpoints=checkpoints,
        ),
        "selfmod": ActorSpec(
            SelfModActor,
            kwargs={
                "state_dir": str(state_dir),
                "scope": state_scope(config, run_id),
                "enabled": config.selfmod.enabled,
                "min_trades": config.selfmod.min_trades,
                "alpha": config.selfmod.alpha,
                "look_growth": config.selfmod.look_growth,
                "confirm_trades": config.selfmod.confirm_trades,
                "min_new_trades": config.selfmod.min_new_trades,
                "max_proposals": config.selfmod.max_proposals,
                "audit_key": audit_key,
            },
        ),
        "monitor": ActorSpec(MonitorActor),
        "operator": ActorSpec(
            OperatorActor,
            kwargs={
                "notify_fills": notify_fills or config.notifications.wants("fill"),
                "daily_summary": daily_summary,
                "muted": sorted(k for k in NOTIFICATION_KINDS if not config.notifications.wants(k)),
            },
        ),
    }


DRAIN_QUIET_S = 0.25
DRAIN_MAX_S = 3.0
_ORDER_EVENTS = (OrderAccepted, OrderCanceled, OrderFilled, OrderRejected)

CHUNK_MIN_BARS = 16
"""No chunk is shorter: below this the calls of a chunk cost more than the bars save."""
CHUNK_MAX_BARS = 8_192
CHUNK_TARGET_BARS = 1 << 20
"""Bars (bar times x symbols) an automatically sized chunk aims at."""


@dataclass(slots=True)
class _Loop:
    """The engine's running state over one session's steps."""

    rt: Runtime
    g: Graph
    total: int
    batch: int
    window: int
    merged: bool
    regime_on: bool
    selfmod_on: bool
    carry: Callable[[Any], Any]
    prev_selfmod: Any
    last_ts: int
    engine_start: float
    first_ts: int = 0
    steps: int = 0
    bars: int = 0
    notified: int = 0
    prev_verdicts: Any = field(default_factory=list)
    prev_acks: Any = field(default_factory=list)
    # Results the guardian takes in its next call (a committed chunk's closed trades).
    for_guardian: list[Any] = field(default_factory=list)
    watched: list[Any] = field(default_factory=list)
    watched_steps: int = 0
    in_flight: deque[tuple[int, int, Any]] = field(default_factory=deque)
    chunk_counters: dict[str, int] = field(
        default_factory=lambda: {"chunks_committed": 0, "chunks_replayed": 0, "chunked_steps": 0}
    )


class Engine:
    """Runs one session (a backtest or a paper session) over replayed data."""

    def __init__(
        self,
        config: Config,
        data: LoadedData | None,
        runtime: Runtime,
        *,
        mode: Mode = "backtest",
        run_id: str,
        state_dir: str | Path,
        speed: float = 0.0,
        max_steps: int | None = None,
        on_notification: Callable[[Notification], None] | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        notify_fills: bool = False,
        daily_summary: bool = False,
        feed: Any | None = None,
        symbols: list[str] | None = None,
        interval_s: int | None = None,
        audit_key: bytes | None = None,
        lease: Any | None = None,
    ) -> None:
        """Replay ``data``, or run a live ``feed`` (with its ``symbols`` and ``interval_s``).

        ``lease``: the account's lock (``memory.account.AccountLock``); its ``check`` is
        called every step, so a session that lost its account stops trading."""
        if feed is None and (data is None or data.frame.empty):
            raise ValueError("no bars to replay: the data is empty after validation and filters")
        self.config = config
        self.data = data
        self.runtime = runtime
        self.mode = mode
        self.run_id = run_id
        self.state_dir = Path(state_dir)
        self.speed = speed
        self.max_steps = max_steps
        self.on_notification = on_notification
        self.on_progress = on_progress
        self.notify_fills = notify_fills
        self.daily_summary = daily_summary
        self.audit_key = audit_key
        self.lease = lease
        self.failed_steps = 0
        self.fail_fast = False
        self.stop_requested = False
        # Set to a list to time each step (see the latency benchmark); None: not timed.
        self.step_latencies: list[float] | None = None
        # With the probe: the pause before each timed step, as bars come apart in a paper
        # session (the processes idle between bars); 0: steps back to back.
        self.step_gap_s = 0.0
        # With the probe on Ray: when each timed step started, and each actor's calls
        # (start, end), to split a step's latency into our actors' work and Ray's.
        self.step_starts: list[float] = []
        self.call_times: dict[str, list[tuple[float, float]]] = {}
        if feed is None:
            assert data is not None
            self.symbols = data.symbols
            self.interval_s = data.interval_s
            self.shard_symbols = deal_symbols(self.symbols, config.engine.shards)
            self.feed: Any = ReplayFeed(data.frame, self.shard_symbols, data.interval_s)
        else:
            if not symbols or not interval_s:
                raise ValueError("a live feed needs its symbols and bar interval")
            self.symbols = sorted(symbols)
            self.interval_s = interval_s
            self.shard_symbols = list(feed.shard_symbols)
            self.feed = feed
        self.live = feed is not None

    def run(self) -> SessionResult:
        wall_start = time.perf_counter()
        rt = self.runtime
        specs = build_specs(
            self.config,
            self.shard_symbols,
            self.state_dir,
            os.urandom(32),
            run_id=self.run_id,
            notify_fills=self.notify_fills,
            daily_summary=self.daily_summary,
            audit_key=self.audit_key,
            checkpoints=self._checkpoints(),
            # The calls that may fail together when an actor dies (those in flight), and
            # a margin: two gateway calls a step in a paper or live session.
            replay_window=0
            if self._replays_steps()
            else 2 * (self.config.engine.max_in_flight_steps + 4),
        )
        shards = [rt.spawn(s) for s in specs["shards"]]
        regime = rt.spawn(specs["regime"])
        guardian = rt.spawn(specs["guardian"])
        gateway = rt.spawn(specs["gateway"])
        selfmod = rt.spawn(specs["selfmod"])
        monitor = rt.spawn(specs["monitor"])
        operator = rt.spawn(specs["operator"])
        names = [s.name for s in specs["shards"]] + [
            specs[k].name
            for k in ("regime", "guardian", "gateway", "selfmod", "monitor", "operator")
        ]
        everyone = [*shards, regime, guardian, gateway, selfmod, monitor, operator]
        try:
            return self._run(
                rt,
                Graph(shards, regime, guardian, gateway, selfmod, monitor, operator),
                everyone,
                names,
                wall_start,
            )
        finally:
            gc.unfreeze()
            rt.shutdown()

    def request_stop(self) -> None:
        """End the session after the step in progress, as if the data ended there: its
        orders still reach the broker, every actor ends the session, the report is
        written. Safe from a signal handler or another thread (it only sets a flag)."""
        self.stop_requested = True

    def _replays_steps(self) -> bool:
        """A backtest replays its data: a lost step stops it (it is run again), so its
        actors keep no checkpoints."""
        return not self.live and self.mode == "backtest"

    def _checkpoints(self) -> Checkpoints | None:
        if self._replays_steps() or self.audit_key is None:
            return None
        return Checkpoints(
            state_dir=str(self.state_dir),
            run_id=self.run_id,
            key=self.audit_key,
            redis_url=self.config.state.redis_url,
        )

    def _run(
        self, rt: Runtime, g: Graph, everyone: list[Any], names: list[str], wall_start: float
    ) -> SessionResult:
        if self.live:
            total = self.max_steps or 0
            first_ts = time.time_ns()  # a live session starts now
        else:
            n = len(self.feed)
            total = n if self.max_steps is None else min(n, self.max_steps)
            first_ts = int(self.feed.timestamps[0])
        symbols_col = NDArray.from_numpy(np.array([s.encode() for s in self.symbols], dtype="S"))
        started = SessionStarted(
            msg_id=f"engine/{self.run_id}:start",
            ts_event=first_ts,
            ts_init=first_ts,
            run_id=self.run_id,
            mode=self.mode,
            symbols=symbols_col,
            initial_capital=self.config.engine.initial_capital,
        )
        start_results = [rt.tell(a, [started]) for a in everyone]
        # Every actor has started (on Ray: its process is up, its imports and models
        # loaded) before the first bar: a failure to start surfaces here, not steps later,
        # and the engine's clock times the session, not the start-up of its processes.
        self._deliver(rt.fetch(start_results)[-1])
        probe_calls = self.step_latencies is not None and hasattr(rt, "time_calls")
        # Everything alive now (the bars, the actors and their models, the modules) lives
        # as long as the session: frozen, the garbage collector stops walking it at every
        # collection the session's own allocations trigger (a sixth of a chunked backtest's
        # time on (b) went there). Unfrozen when the session ends.
        gc.freeze()
        if probe_calls:
            rt.time_calls()  # type: ignore[attr-defined]
        # The self-modification actor answers the start with the rule set in force. Switched
        # off, it answers nothing, ever: it is then left out of the steps.
        selfmod_on = self.config.selfmod.enabled
        # The monitor and operator only watch (nothing they return feeds a later step), so a
        # backtest hands them several steps per call; a paper or live session, every step.
        batch = (
            1 if self.live or self.mode != "backtest" else self.config.engine.observer_batch_steps
        )
        # A backtest hands the gateway a step's approved orders together with the next
        # step's bars, in one call: the simulated broker fills market orders at the next
        # bar's open, so the orders only have to be at the broker before those bars, and
        # a step is then one call shorter. Paper and live sessions send orders as soon as
        # they are approved; so does the latency probe, which times exactly that.
        merged = (
            self.config.engine.submit_with_next_bars
            and not self.live
            and self.mode == "backtest"
            and self.step_latencies is None
        )
        # How a step takes the previous step's outputs. A backtest passes them as plain
        # results: on Ray, references the runtime resolves before the call, which saves
        # the actor a round trip to the driver per input (about a millisecond a step with
        # two shards). A failed call then fails every later step that depends on it, and
        # the backtest stops at the first failed step (see ``_complete``): a replay with a
        # lost step is not the replay of the data, and rerunning it costs nothing but time.
        # No order is sent after the failure either: the gateway's later calls wait on the
        # failed verdicts and are never run. Paper and live sessions go on past a failed
        # step (an actor died and restarts): they take those inputs leniently, so the next
        # step runs without what the failed one would have produced.
        # The latency probe times a step as a paper session runs it, so it carries
        # inputs as paper sessions do.
        self.fail_fast = not self.live and self.mode == "backtest" and self.step_latencies is None
        loop = _Loop(
            rt=rt,
            g=g,
            total=total,
            batch=batch,
            window=max(1, self.config.engine.max_in_flight_steps // batch),
            merged=merged,
            regime_on=self.config.regime.model != "none",
            selfmod_on=selfmod_on,
            carry=(lambda x: x) if self.fail_fast else Lenient,
            prev_selfmod=start_results[everyone.index(g.selfmod)] if selfmod_on else [],
            last_ts=first_ts,
            first_ts=first_ts,
            engine_start=time.perf_counter(),
        )
        if self.live:
            for step, (ts, batches) in enumerate(self._steps(total)):
                if self.stop_requested:
                    break
                self._bar_step(loop, step, ts, batches)
        else:
            self._replay(loop)
        if self.stop_requested and loop.steps < total:
            log.info("session stopped on request after %d of %d steps", loop.steps, total)
            if loop.merged and loop.prev_verdicts:
                # The last step's orders, which the next step's bars would have carried.
                loop.watched.append(rt.tell(g.gateway, loop.carry(loop.prev_verdicts)))
        if loop.watched:  # the feed ended before `total` steps
            rt.tell(g.monitor, *loop.watched)
            loop.in_flight.append(
                (loop.steps - 1, loop.last_ts, rt.tell(g.operator, *loop.watched))
            )
        while loop.in_flight:
            loop.notified += self._complete(
                rt, loop.in_flight.popleft(), total, loop.engine_start, loop.notified
            )
        if self.live:
            self._drain(loop)
        if probe_calls:
            self.call_times = rt.call_times()  # type: ignore[attr-defined]
        last_ts, steps, notified = loop.last_ts, loop.steps, loop.notified

        end_ts = last_ts + self.interval_s * 1_000_000_000
        ended = SessionEnded(
            msg_id=f"engine/{self.run_id}:end",
            ts_event=end_ts,
            ts_init=end_ts,
            run_id=self.run_id,
            steps=steps,
        )
        final = rt.fetch([rt.tell(a, [ended]) for a in everyone])
        # The clock stops when every actor has ended the session: trades a backtest's
        # trade memory still had to write (write-behind) are written by then.
        engine_seconds = time.perf_counter() - loop.engine_start
        flat = [m for batch in final for m in batch]
        notified += self._deliver([m for m in final[-1] if isinstance(m, Notification)])
        curve = next(m for m in flat if isinstance(m, EquityCurve))
        return SessionResult(
            run_id=self.run_id,
            mode=self.mode,
            runtime=rt.name,
            steps=steps,
            bars=loop.bars,
            wall_seconds=time.perf_counter() - wall_start,
            engine_seconds=engine_seconds,
            shard_symbols=self.shard_symbols,
            ts=np.array(curve.ts.to_numpy()),
            equity=np.array(curve.equity.to_numpy()),
            cash=np.array(curve.cash.to_numpy()),
            gross_exposure=np.array(curve.gross_exposure.to_numpy()),
            counters={
                **curve.counters,
                "failed_steps": self.failed_steps,
                **{k: v for k, v in loop.chunk_counters.items() if v},
            },
            shard_reports=sorted(
                (m for m in flat if isinstance(m, ShardReport)), key=lambda r: r.shard
            ),
            actor_stats=[m for m in flat if isinstance(m, ActorStats)],
            final_account=next((m for m in flat if isinstance(m, AccountSnapshot)), None),
            notifications=notified,
            actor_names=names,
        )

    def _bar_step(self, loop: _Loop, step: int, ts: int, batches: list[Any]) -> None:
        """One bar time through the graph (see the module docstring)."""
        rt, g, carry = loop.rt, loop.g, loop.carry
        loop.last_ts, loop.steps = ts, step + 1
        if not self.live:
            self._pace(ts, loop.first_ts, loop.engine_start)
        if self.step_latencies is not None and self.step_gap_s:
            time.sleep(self.step_gap_s)
        step_started = time.perf_counter()
        present = [b for b in batches if b is not None]
        loop.bars += sum(len(b) for b in present)
        # Without a regime model the regime actor answers nothing: no call per step.
        regime_r = rt.tell(g.regime, present) if loop.regime_on else []
        if loop.merged:
            # Its answer starts with the acks of the previous step's orders, which is
            # where the shards and the guardian read them otherwise too.
            gw_r = rt.tell(g.gateway, carry(loop.prev_verdicts), present)
            acks: tuple[Any, ...] = ()
        else:
            gw_r = rt.tell(g.gateway, present)
            acks = (carry(loop.prev_acks),)
        shard_rs = [
            rt.tell(
                shard,
                carry(loop.prev_verdicts),
                *acks,
                carry(loop.prev_selfmod),
                gw_r,
                regime_r,
                [batches[i]] if batches[i] is not None else [],
            )
            for i, shard in enumerate(g.shards)
        ]
        verdicts_r = rt.tell(
            g.guardian, *acks, *loop.for_guardian, carry(loop.prev_selfmod), gw_r, *shard_rs
        )
        loop.for_guardian = []
        loop.watched.extend((gw_r, verdicts_r))
        if not loop.merged:
            acks_r = loop.prev_acks = rt.tell(g.gateway, verdicts_r)
            loop.watched.append(acks_r)
        elif step + 1 == loop.total:
            # The last step's orders: the broker takes them before the session ends.
            loop.watched.append(rt.tell(g.gateway, carry(verdicts_r)))
        if loop.selfmod_on:
            loop.prev_selfmod = rt.tell(g.selfmod, gw_r, verdicts_r, *shard_rs)
            loop.watched.append(loop.prev_selfmod)
        loop.watched.extend(shard_rs)
        loop.prev_verdicts = verdicts_r
        if self.step_latencies is not None:
            # Latency probe: one step at a time, timed from the bar's arrival to the
            # gateway having sent the step's orders to the broker.
            rt.ready([acks_r], timeout=None)
            self.step_latencies.append(time.perf_counter() - step_started)
            self.step_starts.append(step_started)
        self._watch(loop, step, ts, 1)

    def _drain(self, loop: _Loop) -> None:
        """A live session's last word with its broker: events still on their way (the
        fill of an order sent at the last step, a cancel) reach the shards and the
        guardian before the session ends, so that the books close on what the broker
        holds. The broker is polled until it has been quiet for ``DRAIN_QUIET_S`` (at most
        ``DRAIN_MAX_S``); whatever comes later, the next session's reconciliation finds."""
        rt, g = loop.rt, loop.g
        deadline = time.monotonic() + DRAIN_MAX_S
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            polled = rt.tell(g.gateway)
            try:
                events = rt.fetch([polled])[0]
            except ActorCallError as exc:
                log.error("draining the broker at the session's end failed: %s", exc)
                return
            if any(isinstance(m, _ORDER_EVENTS) for m in events):
                shard_rs = [rt.tell(shard, polled) for shard in g.shards]
                watched = [polled, rt.tell(g.guardian, polled, *shard_rs), *shard_rs]
                rt.tell(g.monitor, *watched)
                loop.notified += self._deliver(rt.fetch([rt.tell(g.operator, *watched)])[0])
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= DRAIN_QUIET_S:
                return
            else:
                time.sleep(0.02)

    def _watch(self, loop: _Loop, step: int, ts: int, steps: int) -> None:
        """Hand the watchers what the last steps produced, ``batch`` steps per call, and
        deliver notifications as steps finish (at most ``window`` calls in flight)."""
        rt, g = loop.rt, loop.g
        if self.lease is not None:
            self.lease.check()
        loop.watched_steps += steps
        if loop.watched_steps < loop.batch and step + 1 < loop.total:
            return
        rt.tell(g.monitor, *loop.watched)
        loop.in_flight.append((step, ts, rt.tell(g.operator, *loop.watched)))
        loop.watched, loop.watched_steps = [], 0
        while loop.in_flight and (
            len(loop.in_flight) > loop.window or rt.ready([loop.in_flight[0][2]], timeout=0) == 1
        ):
            loop.notified += self._complete(
                rt, loop.in_flight.popleft(), loop.total, loop.engine_start, loop.notified
            )

    # -- SPECULATIVE CHUNKS -----------------------------------------------------------------

    def chunk_limit(self) -> int:
        """The longest chunk this session replays at once (``core.chunks``); 0: none.

        Chunks need a replayed backtest on the simulated broker (whose executions can be
        taken back), a strategy that runs in chunks (the breakout, with a fixed quantity),
        no model or learner that would act between two bars (regime model, self-
        modification) and nobody waiting for each fill. Slippage would move every fill off
        the open the shards assume, so with slippage there are no chunks either."""
        c = self.config
        if (
            self.live
            or self.mode != "backtest"
            or self.step_latencies is not None
            or not isinstance(self.feed, ReplayFeed)
            or c.engine.chunk_bars == 1
            or c.broker.kind != "sim"
            or c.strategy.kind != "breakout"
            or c.strategy.fixed_quantity <= 0
            or c.regime.model != "none"
            or c.selfmod.enabled
            or self.notify_fills
            or c.notifications.wants("fill")
            or c.sim.slippage_bps != 0
        ):
            return 0
        if c.engine.chunk_bars:
            return c.engine.chunk_bars
        # About a million bars per chunk: long enough that a chunk's fixed costs (its
        # calls, its checkpoints, its checks) vanish, short enough that one replayed bar by
        # bar costs little and its columns stay small (~40 MB of bars).
        size = 1 << int(math.log2(max(1.0, CHUNK_TARGET_BARS / max(1, len(self.symbols)))))
        return max(CHUNK_MIN_BARS * 4, min(CHUNK_MAX_BARS, size))

    def _replay(self, loop: _Loop) -> None:
        """Replay the feed: in speculative chunks where the data and the state allow, bar
        by bar everywhere else (and wherever a chunk turns out invalid)."""
        feed, total = self.feed, loop.total
        limit = self.chunk_limit()
        length = min(limit, CHUNK_MIN_BARS * 4)
        step = 0
        chunk = 0
        while step < total and not self.stop_requested:
            # The first bar time goes bar by bar: the guardian learns the account from it.
            run = min(length, feed.clean_run(step), total - step) if limit and step else 0
            # No chunk is shorter than CHUNK_MIN_BARS but the last, which ends the data.
            if run >= CHUNK_MIN_BARS or (run > 1 and step + run == total):
                chunk += 1
                if self._chunk_step(loop, chunk, step, run):
                    step += run
                    length = min(limit, length * 2)
                    continue
                length = max(CHUNK_MIN_BARS, length // 4)
                for s in range(step, step + run):
                    self._bar_step(loop, s, int(feed.timestamps[s]), feed.batches(s))
                step += run
                continue
            self._bar_step(loop, step, int(feed.timestamps[step]), feed.batches(step))
            step += 1
        if loop.for_guardian:
            # The last chunk's closed trades: the guardian counts its losing streak on them.
            loop.watched.append(loop.rt.tell(loop.g.guardian, *loop.for_guardian))
            loop.for_guardian = []

    def _chunk_step(self, loop: _Loop, chunk: int, step: int, length: int) -> bool:
        """One speculative chunk of ``length`` bar times from ``step``: the shards run it,
        the guardian approves it on condition, the gateway executes it on paper, the
        guardian validates it. True if it was committed; False if it was discarded (the
        caller then replays those bar times one by one, from the same state)."""
        rt, g = loop.rt, loop.g
        bar_chunks = self.feed.chunk(step, length, chunk)
        # The orders approved at the last bar-by-bar step go to the broker first, so that
        # their acknowledgements reach the shards and the guardian before the chunk.
        if loop.merged:
            acks: Any = rt.tell(g.gateway, loop.prev_verdicts) if loop.prev_verdicts else []
            if loop.prev_verdicts:
                loop.watched.append(acks)
        else:
            acks = loop.prev_acks  # sent (and watched) by the last step
        shard_rs = [
            rt.tell(shard, loop.prev_verdicts, acks, [bar_chunks[i]])
            for i, shard in enumerate(g.shards)
        ]
        approved = rt.tell(g.guardian, acks, *loop.for_guardian, *shard_rs)
        executed = rt.tell(g.gateway, approved, bar_chunks)
        verdict_r = rt.tell(g.guardian, executed)
        try:
            verdict = next(m for m in rt.fetch([verdict_r])[0] if isinstance(m, ChunkVerdict))
        except ActorCallError as exc:
            raise BacktestStepError(
                f"backtest stopped at the chunk of steps {step + 1}-{step + length}: an actor "
                f"call failed ({exc}); a replay that lost a step is not the replay of its data"
            ) from exc
        # Commit or discard, everywhere: the shards (with the commissions in the report)
        # and the gateway. The shards' closed trades reach the guardian in its next call.
        settles = [rt.tell(shard, executed, verdict_r) for shard in g.shards]
        gateway_settled = rt.tell(g.gateway, verdict_r)
        loop.prev_verdicts, loop.prev_acks = [], []
        loop.for_guardian = list(settles)
        # The shards' first answers may hold trades closed by the acknowledgements (booked
        # before the chunk); the chunk's own follow, then its account path and verdict.
        loop.watched.extend(shard_rs)
        loop.watched.append(approved)  # the guardian's notes on the trades it took in
        loop.watched.extend(settles)
        loop.watched.append(gateway_settled)
        counters = loop.chunk_counters
        if not verdict.valid:
            counters["chunks_replayed"] += 1
            log.debug(
                "chunk %d (steps %d-%d) replayed bar by bar: %s (bar %d)",
                chunk,
                step + 1,
                step + length,
                verdict.reason,
                verdict.bar,
            )
            return False
        counters["chunks_committed"] += 1
        counters["chunked_steps"] += length
        loop.watched.extend((executed, verdict_r))
        last = step + length - 1
        loop.last_ts, loop.steps = int(self.feed.timestamps[last]), last + 1
        loop.bars += length * len(self.symbols)
        self._watch(loop, last, loop.last_ts, length)
        return True

    def _steps(self, total: int) -> Iterator[tuple[int, list[Any]]]:
        if self.live:
            yield from self.feed.steps(total or None)
            return
        for step in range(total):
            yield int(self.feed.timestamps[step]), self.feed.batches(step)

    def _complete(
        self, rt: Runtime, item: tuple[int, int, Any], total: int, start: float, notified: int
    ) -> int:
        """Collect a finished step: deliver its notifications, count it if it failed."""
        step, ts, ref = item
        try:
            delivered = self._deliver(rt.fetch([ref])[0])
        except ActorCallError as exc:
            # An actor of this step died (Ray restarts it). Nothing it did not finish was
            # sent on: the gateway only acts on the guardian's completed output.
            if self.fail_fast:
                raise BacktestStepError(
                    f"backtest stopped at step {step + 1}: an actor call failed ({exc}); "
                    "a replay that lost a step is not the replay of its data: run it again"
                ) from exc
            self.failed_steps += 1
            log.error("step %d failed: %s", step, exc)
            delivered = 0
        self._report_progress(step, ts, total, notified + delivered, start)
        return delivered

    def _pace(self, ts: int, first_ts: int, engine_start: float) -> None:
        if self.speed <= 0:
            return
        due = engine_start + (ts - first_ts) / 1e9 / self.speed
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)

    def _deliver(self, messages: list[Message]) -> int:
        n = 0
        for m in messages:
            if isinstance(m, Notification):
                n += 1
                if self.on_notification is not None:
                    self.on_notification(m)
        return n

    def _report_progress(self, step: int, ts: int, total: int, notified: int, start: float) -> None:
        if self.on_progress is not None:
            self.on_progress(
                Progress(
                    step=step + 1,
                    total=total,
                    ts=ts,
                    notifications=notified,
                    elapsed_s=time.perf_counter() - start,
                )
            )


def make_runtime(kind: str, config: Config, *, wire: bool = False) -> Runtime:
    """Build the runtime named on the command line."""
    if kind == "local":
        return LocalRuntime(wire=wire)
    if kind == "ray":
        return RayRuntime(
            address=config.ray.address,
            dashboard=config.ray.dashboard,
            num_cpus=config.ray.num_cpus,
            channel=config.ray.channel,
        )
    raise ValueError(f"unknown runtime {kind!r}; use local or ray")

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

import gc
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from sovereign.actors.runtime import (
    ActorCallError,
    Lenient,
    LocalRuntime,
    RayRuntime,
)
from sovereign.config import Config
from sovereign.data.feeds import ReplayFeed, deal_symbols
from sovereign.data.loaders import LoadedData
from sovereign.memory.checkpoints import Checkpoints
from sovereign.messages import (
    AccountSnapshot,
    ActorStats,
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
from sovereign.replay import BacktestStepError, ChunkedReplay, Runtime, StepLoop
from sovereign.specs import build_specs
from sovereign.stepgraph import (
    BAR_STEP,
    DELIVER_STEP,
    POLL_STEP,
    WATCHED,
    Graph,
    results_of,
    run_step,
)

log = logging.getLogger("sovereign.engine")


Mode = Literal["backtest", "paper"]


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


DRAIN_QUIET_S = 0.25
DRAIN_MAX_S = 3.0
_ORDER_EVENTS = (OrderAccepted, OrderCanceled, OrderFilled, OrderRejected)


class Engine(ChunkedReplay):
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
        start_results = self._start_session(rt, everyone, first_ts)
        probe_calls = self.step_latencies is not None and hasattr(rt, "time_calls")
        # Everything alive now (the bars, the actors and their models, the modules) lives
        # as long as the session: frozen, the garbage collector stops walking it at every
        # collection the session's own allocations trigger (a sixth of a chunked backtest's
        # time on (b) went there). Unfrozen when the session ends.
        gc.freeze()
        if probe_calls:
            rt.time_calls()  # type: ignore[attr-defined]
        loop = self._new_loop(rt, g, total, first_ts, start_results[everyone.index(g.selfmod)])
        self._steps_of_session(loop)
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
        return self._end_session(rt, everyone, names, loop, wall_start)

    def _start_session(self, rt: Runtime, everyone: list[Any], first_ts: int) -> list[Any]:
        """Every actor's answer to the session's start, once all have started."""
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
        return start_results

    def _new_loop(
        self, rt: Runtime, g: Graph, total: int, first_ts: int, selfmod_start: Any
    ) -> StepLoop:
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
        return StepLoop(
            rt=rt,
            g=g,
            total=total,
            batch=batch,
            window=max(1, self.config.engine.max_in_flight_steps // batch),
            merged=merged,
            regime_on=self.config.regime.model != "none",
            selfmod_on=selfmod_on,
            carry=(lambda x: x) if self.fail_fast else Lenient,
            prev_selfmod=selfmod_start if selfmod_on else [],
            last_ts=first_ts,
            first_ts=first_ts,
            engine_start=time.perf_counter(),
        )

    def _end_session(
        self,
        rt: Runtime,
        everyone: list[Any],
        names: list[str],
        loop: StepLoop,
        wall_start: float,
    ) -> SessionResult:
        """End the session in every actor and gather what the report needs."""
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

    def _steps_of_session(self, loop: StepLoop) -> None:
        """Every step of the session: the live feed's as its bars come, a replay's in
        chunks where they hold; up to the end of the data or a stop request."""
        if self.live:
            for step, (ts, batches) in enumerate(self._steps(loop.total)):
                if self.stop_requested:
                    break
                self._bar_step(loop, step, ts, batches)
        else:
            self._replay(loop)
        if self.stop_requested and loop.steps < loop.total:
            log.info("session stopped on request after %d of %d steps", loop.steps, loop.total)
            if loop.merged and loop.prev_verdicts:
                # The last step's orders, which the next step's bars would have carried.
                gateway = loop.rt.tell(loop.g.gateway, loop.carry(loop.prev_verdicts))
                loop.watched.append(gateway)

    def _bar_step(self, loop: StepLoop, step: int, ts: int, batches: list[Any]) -> None:
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
        flags = {
            "regime": loop.regime_on,
            "selfmod": loop.selfmod_on,
            "merged": loop.merged,
            "split": not loop.merged,
            "last": loop.merged and step + 1 == loop.total,
        }
        prev = {"verdicts": loop.prev_verdicts}
        if not loop.merged:
            prev["acks"] = loop.prev_acks
        if loop.selfmod_on:
            prev["selfmod"] = loop.prev_selfmod
        r = run_step(
            BAR_STEP,
            rt.tell,
            lambda role: getattr(g, role),
            flags,
            bars=present,
            own_bars=batches,
            pending=loop.for_guardian,
            prev=prev,
            carry=carry,
        )
        loop.for_guardian = []
        loop.watched.extend(results_of(r, WATCHED, BAR_STEP))
        loop.prev_verdicts = r["verdicts"]
        loop.prev_acks = r.get("acks", [])
        if loop.selfmod_on:
            loop.prev_selfmod = r["selfmod"]
        if self.step_latencies is not None:
            # Latency probe: one step at a time, timed from the bar's arrival to the
            # gateway having sent the step's orders to the broker.
            rt.ready([r["acks"]], timeout=None)
            self.step_latencies.append(time.perf_counter() - step_started)
            self.step_starts.append(step_started)
        self._watch(loop, step, ts, 1)

    def _drain(self, loop: StepLoop) -> None:
        """A live session's last word with its broker: events still on their way (the
        fill of an order sent at the last step, a cancel) reach the shards and the
        guardian before the session ends, so that the books close on what the broker
        holds. The broker is polled until it has been quiet for ``DRAIN_QUIET_S`` (at most
        ``DRAIN_MAX_S``); whatever comes later, the next session's reconciliation finds."""
        rt, g = loop.rt, loop.g

        def roles(role: str) -> Any:
            return getattr(g, role)

        deadline = time.monotonic() + DRAIN_MAX_S
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            polled = run_step(POLL_STEP, rt.tell, roles, {})["polled"]
            try:
                events = rt.fetch([polled])[0]
            except ActorCallError as exc:
                log.error("draining the broker at the session's end failed: %s", exc)
                return
            if any(isinstance(m, _ORDER_EVENTS) for m in events):
                r = run_step(DELIVER_STEP, rt.tell, roles, {}, pending=[polled])
                watched = [polled, r["guardian"], *r["shards"]]
                rt.tell(g.monitor, *watched)
                loop.notified += self._deliver(rt.fetch([rt.tell(g.operator, *watched)])[0])
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= DRAIN_QUIET_S:
                return
            else:
                time.sleep(0.02)

    def _watch(self, loop: StepLoop, step: int, ts: int, steps: int) -> None:
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
        # In short naps, so that a stop request (Ctrl-C) is not kept waiting for a bar.
        while not self.stop_requested and (delay := due - time.perf_counter()) > 0:
            time.sleep(min(delay, 0.1))

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

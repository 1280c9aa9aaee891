"""A replayed backtest in speculative chunks where they hold, bar by bar elsewhere.

The engine's replay (``ChunkedReplay``, a part of ``Engine``) and the state its loop over a
session's steps keeps (``StepLoop``). A chunk goes through the graph as the table
``stepgraph.CHUNK_STEP`` says; what a chunk is and why its results are the replay's bar by
bar is ``core.chunks``'s story.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sovereign.actors.runtime import ActorCallError, LocalRuntime, RayRuntime
from sovereign.config import Config
from sovereign.data.feeds import ReplayFeed
from sovereign.messages import ChunkVerdict, ModificationProposal, RuleSetSnapshot
from sovereign.stepgraph import CHUNK_STEP, CHUNK_WATCHED, Graph, results_of, run_step

log = logging.getLogger("sovereign.engine")

Runtime = LocalRuntime | RayRuntime


class BacktestStepError(ActorCallError):
    """A backtest lost a step (an actor died or raised) and stopped there."""


CHUNK_MIN_BARS = 16
"""No chunk is shorter: below this the calls of a chunk cost more than the bars save."""
BACKOFF_DOUBLINGS = 6
"""After this many speculations in a row that committed nothing, the wait before the next
stops growing (CHUNK_MIN_BARS x 63 bar times): a state where chunks keep failing (an
account the guardian sizes otherwise at almost every bar, say) costs about one wasted
speculation in a thousand bar times, and one that turns favourable is found again."""
CHUNK_MAX_BARS = 8_192
CHUNK_TARGET_BARS = 1 << 20
"""Bars (bar times x symbols) an automatically sized chunk aims at."""
SIZING_ROUNDS = 10
"""Speculations of the same bars with the guardian's sizes from the one before, at most:
each makes the entries up to the first wrong one exact, and on most chunks the first
round already sizes every entry as bar by bar will."""

Sizes = dict[tuple[bytes, int], int]


def _before_last_denials(length: int, sizes: Sizes | None) -> int:
    """The longest chunk of at most ``length`` bars whose last bar decides no entry the
    guardian denies (its verdict would come after the chunk)."""
    denied = {bar for (_, bar), q in (sizes or {}).items() if q <= 0}
    while length - 1 in denied:
        length -= 1
    return length


def _sized(sizes: Sizes | None, verdict: ChunkVerdict) -> Sizes:
    """The sizes of a verdict's entries (symbol, bar) over those known before."""
    out = dict(sizes or {})
    assert verdict.sized_symbols is not None and verdict.sized_bars is not None
    assert verdict.sized_quantities is not None
    names = verdict.sized_symbols.to_numpy().tolist()
    bars = verdict.sized_bars.to_numpy().tolist()
    quantities = verdict.sized_quantities.to_numpy().tolist()
    out.update(zip(zip(names, bars, strict=True), quantities, strict=True))
    return out


@dataclass(slots=True)
class StepLoop:
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
        default_factory=lambda: {
            "chunks_committed": 0,
            "chunks_replayed": 0,
            "chunked_steps": 0,
            "chunk_prefixes_committed": 0,
            "chunks_resized": 0,
        }
    )


class ChunkedReplay:
    """The engine's replay of its feed (``Engine`` is one; these are the attributes and
    steps of it that a replay uses)."""

    config: Config
    feed: Any
    live: bool
    mode: str
    notify_fills: bool
    symbols: list[str]
    step_latencies: list[float] | None
    stop_requested: bool
    # The engine's own steps (declared, not defined: ``Engine`` has them).
    _bar_step: Callable[[StepLoop, int, int, list[Any]], None]
    _watch: Callable[[StepLoop, int, int, int], None]

    def chunk_limit(self) -> int:
        """The longest chunk this session replays at once (``core.chunks``); 0: none.

        Chunks need a replayed backtest on the simulated broker (whose executions can be
        taken back) and nobody waiting for each fill. Both strategies run in chunks (the
        baseline with its rules, the breakout preset with a fixed quantity or sized by the
        guardian), and self-modification, which reviews the rules when a session changes:
        a chunk is cut at a review (``ChunkHorizon``). The
        regime models run in chunks (their answers depend on the bars alone), and so does
        slippage (the shards book market sells where the fill model fills them); entries
        the guardian cuts, denies or sizes are speculated with its sizes (``_replay``)."""
        c = self.config
        if (
            self.live
            or self.mode != "backtest"
            or self.step_latencies is not None
            or not isinstance(self.feed, ReplayFeed)
            or c.engine.chunk_bars == 1
            or c.broker.kind != "sim"
            or self.notify_fills
            or c.notifications.wants("fill")
        ):
            return 0
        if c.engine.chunk_bars:
            return c.engine.chunk_bars
        # About a million bars per chunk: long enough that a chunk's fixed costs (its
        # calls, its checkpoints, its checks) vanish, short enough that one replayed bar by
        # bar costs little and its columns stay small (~40 MB of bars).
        size = 1 << int(math.log2(max(1.0, CHUNK_TARGET_BARS / max(1, len(self.symbols)))))
        return max(CHUNK_MIN_BARS * 4, min(CHUNK_MAX_BARS, size))

    def _replay(self, loop: StepLoop) -> None:
        """Replay the feed: in speculative chunks where the data and the state allow, bar
        by bar everywhere else (and wherever a chunk turns out invalid)."""
        feed, total = self.feed, loop.total
        limit = self.chunk_limit()
        length = min(limit, CHUNK_MIN_BARS * 4)
        step = 0
        chunk = 0
        # Speculations in a row that committed nothing, and the step at which the next
        # may start: a state that keeps failing chunks is tried ever less often.
        misses, resume_at = 0, 0
        while step < total and not self.stop_requested:
            # The first bar time goes bar by bar: the guardian learns the account from it.
            quiet = limit and step >= max(1, resume_at) and self._selfmod_quiet(loop)
            run = min(length, feed.clean_run(step), total - step) if quiet else 0
            # No chunk is shorter than CHUNK_MIN_BARS but the last, which ends the data.
            if run >= CHUNK_MIN_BARS or (run > 1 and step + run == total):
                chunk += 1
                verdict = self._chunk_step(loop, chunk, step, run)
                sizes: Sizes | None = None
                rounds = 0
                while not verdict.valid and verdict.sized_bars is not None:
                    # The guardian sizes entries otherwise than speculated: the same bars
                    # again with its sizes (a denial too), but for an entry it denies at
                    # the last bar (its verdict would come after the chunk).
                    sizes = _sized(sizes, verdict)
                    shorter = _before_last_denials(run, sizes)
                    if rounds == SIZING_ROUNDS or (
                        shorter < CHUNK_MIN_BARS and not (shorter > 1 and step + shorter == total)
                    ):
                        break
                    rounds, run, chunk = rounds + 1, shorter, chunk + 1
                    loop.chunk_counters["chunks_resized"] += 1
                    verdict = self._chunk_step(loop, chunk, step, run, sizes)
                if verdict.valid:
                    step += run
                    length = min(limit, length * 2)
                    misses = 0
                    continue
                length = max(CHUNK_MIN_BARS, length // 4)
                chunk, done, good = self._prefix(loop, chunk, step, run, verdict, sizes)
                step, run = step + done, run - done
                misses = 0 if done else misses + 1
                # The bars through the wrong one (all of them when it is not known), for at
                # least a shortest chunk's worth of bars, and then, after misses in a row,
                # twice as many bar times as the last wait before the next speculation.
                through = run if good < 0 else min(run, max(good + 1, CHUNK_MIN_BARS))
                for s in range(step, step + through):
                    self._bar_step(loop, s, int(feed.timestamps[s]), feed.batches(s))
                step += through
                resume_at = step + CHUNK_MIN_BARS * ((1 << min(misses, BACKOFF_DOUBLINGS)) - 1)
                continue
            self._bar_step(loop, step, int(feed.timestamps[step]), feed.batches(step))
            step += 1
        if loop.for_guardian:
            # The last chunk's closed trades: the guardian counts its losing streak on them.
            loop.watched.append(loop.rt.tell(loop.g.guardian, *loop.for_guardian))
            loop.for_guardian = []

    def _prefix(
        self,
        loop: StepLoop,
        chunk: int,
        step: int,
        run: int,
        verdict: ChunkVerdict,
        sizes: Sizes | None,
    ) -> tuple[int, int, int]:
        """After an invalid chunk: what it did before its first wrong bar holds, so those
        bars go again as a chunk of their own (validated as any chunk). Returns the last
        chunk number, the bar times committed, and the first wrong bar after them (-1:
        not known)."""
        good = verdict.bar if 0 <= verdict.bar < run else -1
        good = _before_last_denials(good, sizes) if good > 0 else good
        done = 0
        while good >= CHUNK_MIN_BARS:
            # The first wrong bar found is the first for the check that found it; a check
            # made later in the validation may find an earlier one in the shorter chunk:
            # then that one's bars before it, and so on.
            chunk += 1
            verdict = self._chunk_step(loop, chunk, step + done, good, sizes)
            if verdict.valid:
                loop.chunk_counters["chunk_prefixes_committed"] += 1
                done, good = done + good, 0
            else:
                good = verdict.bar if 0 <= verdict.bar < good else -1
                good = _before_last_denials(good, sizes) if good > 0 else good
        return chunk, done, good

    def _selfmod_quiet(self, loop: StepLoop) -> bool:
        """Whether the last step left self-modification with nothing for the next one (a
        proposal for the guardian, a rule set for the shards): a chunk starts only then
        (what it carries would reach its actors at the chunk's end, not the next bar)."""
        if not loop.selfmod_on:
            return True
        messages = loop.rt.fetch([loop.prev_selfmod])[0]
        return not any(isinstance(m, RuleSetSnapshot | ModificationProposal) for m in messages)

    def _chunk_step(
        self, loop: StepLoop, chunk: int, step: int, length: int, sizes: Sizes | None = None
    ) -> ChunkVerdict:
        """One speculative chunk of ``length`` bar times from ``step``: the shards run it,
        the guardian approves it on condition, the gateway executes it on paper, the
        guardian validates it. The guardian's verdict: valid, the chunk was committed; not,
        it was discarded (everyone is back in the state before it) and ``bar`` is its first
        bar that bar by bar would not have gone as speculated (-1: not known)."""
        rt, g = loop.rt, loop.g
        bar_chunks = self.feed.chunk(step, length, chunk, sizes)
        prev = {"verdicts": loop.prev_verdicts}
        if not loop.merged:
            prev["acks"] = loop.prev_acks  # sent (and watched) by the last step
        r = run_step(
            CHUNK_STEP,
            rt.tell,
            lambda role: getattr(g, role),
            {
                "orders": loop.merged and bool(loop.prev_verdicts),
                "regime": loop.regime_on,
                "selfmod": loop.selfmod_on,
            },
            bars=bar_chunks,
            own_bars=bar_chunks,
            pending=loop.for_guardian,
            prev=prev,
            carry=lambda x: x,
        )
        try:
            verdict = next(m for m in rt.fetch([r["verdict"]])[0] if isinstance(m, ChunkVerdict))
        except ActorCallError as exc:
            raise BacktestStepError(
                f"backtest stopped at the chunk of steps {step + 1}-{step + length}: an actor "
                f"call failed ({exc}); a replay that lost a step is not the replay of its data"
            ) from exc
        loop.prev_verdicts, loop.prev_acks = [], []
        # With self-modification the guardian took the closed trades in the step itself.
        loop.for_guardian = [] if loop.selfmod_on else list(r["settles"])
        loop.watched.extend(results_of(r, CHUNK_WATCHED, CHUNK_STEP))
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
            return verdict
        counters["chunks_committed"] += 1
        counters["chunked_steps"] += length
        loop.watched.extend((r["executed"], r["verdict"]))
        if loop.selfmod_on:
            loop.watched.extend((r["reviewed"], r["selfmod"]))
            loop.prev_selfmod = r["selfmod"]
        last = step + length - 1
        loop.last_ts, loop.steps = int(self.feed.timestamps[last]), last + 1
        loop.bars += self.feed.bars_in(step, length)
        self._watch(loop, last, loop.last_ts, length)
        return verdict

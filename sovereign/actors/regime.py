"""RegimeActor: the regime of every symbol after each bar, for the shards.

With ``[regime] model = "blend"`` (the default) each shard's symbols have an HMM
(``core.regime.HmmRegimeModel``, filtered online) and the foundation model
(``core.foundation.FoundationRegime``). Their probabilities are blended as

    p = (1 - w) * p_hmm + w * p_foundation        (w = foundation_weight, default 0.35)

where both are ready; where only one is, it is used alone. The label is the blended
argmax passed through hysteresis (``core.regime.Hysteresis``), so it does not flicker. With
``hmm_scope = "market"`` one HMM runs on the equal-weight index of the whole universe and
every symbol gets its probabilities.

A speculative chunk (``BarChunk``, one per shard) is run bar time by bar time through the
same code, and answered with one ``RegimeChunk`` per shard. Regimes depend on the bars
alone, so a chunk's answers stand whether the chunk is committed or not: they are kept
until the session moves past them, and a bar time run again (a discarded chunk replayed
bar by bar, or its valid part as a chunk of its own) is answered from them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sovereign.actors.base import Actor, accepting
from sovereign.config import RegimeConfig
from sovereign.core.bars import clean_rows
from sovereign.core.regime import BaselineRegimeClassifier, HmmRegimeModel, Hysteresis
from sovereign.core.universe import Universe
from sovereign.messages import (
    BarBatch,
    BarChunk,
    Message,
    NDArray,
    RegimeChunk,
    RegimeUpdate,
    SessionEnded,
)


def bundled_foundation_path() -> Path:
    import importlib.resources

    return Path(str(importlib.resources.files("sovereign.models") / "foundation-v1.pt"))


def load_foundation(spec: str) -> Any | None:
    """The foundation checkpoint named by ``[regime] foundation_checkpoint``, or None."""
    if not spec:
        return None
    from sovereign.training.foundation import load_checkpoint

    path = bundled_foundation_path() if spec == "bundled" else Path(spec)
    return load_checkpoint(path)


class _ShardModels:
    """The models of one shard's universe."""

    def __init__(self, universe: Universe, config: RegimeConfig, foundation: Any | None) -> None:
        n = len(universe)
        self.universe = universe
        self.baseline = BaselineRegimeClassifier(n, config) if config.model == "baseline" else None
        self.hmm = (
            HmmRegimeModel(
                n,
                window=config.hmm_window,
                min_bars=config.hmm_min_bars,
                refit_every=config.hmm_refit_every,
                n_iter=config.hmm_iter,
            )
            if config.model != "baseline" and config.hmm_scope == "symbol"
            else None
        )
        self.foundation = None
        if config.model == "blend" and foundation is not None:
            from sovereign.core.foundation import FoundationRegime

            self.foundation = FoundationRegime(foundation, n)
        self.foundation_interval = int(getattr(foundation, "interval_s", 0) or 0)
        self.hysteresis = Hysteresis(
            n, min_dwell=config.min_dwell, strong=config.strong_probability
        )
        self.weight = config.foundation_weight
        self.codes = np.full(n, 255, dtype=np.uint8)
        self.probs = np.full((n, 4), 0.25, dtype=np.float32)
        self.last_ts = -1


RegimeInbox = BarBatch | BarChunk | SessionEnded


class RegimeActor(Actor[RegimeInbox]):
    role = "regime"
    accepts = accepting(RegimeInbox)

    def __init__(self, index: int, shard_symbols: list[list[str]], config: RegimeConfig) -> None:
        super().__init__(index)
        self.config = config
        foundation = (
            load_foundation(config.foundation_checkpoint) if config.model == "blend" else None
        )
        if config.model == "blend" and foundation is None:
            self.log.warning("no foundation checkpoint configured: the HMM alone decides")
        # No models at all with ``none``: the actor stays in the graph and answers nothing.
        self.models = (
            []
            if config.model == "none"
            else [_ShardModels(Universe(s), config, foundation) for s in shard_symbols]
        )
        self._symbol_columns = [NDArray.from_numpy(m.universe.array) for m in self.models]
        self.market = (
            HmmRegimeModel(
                1,
                window=config.hmm_window,
                min_bars=config.hmm_min_bars,
                refit_every=config.hmm_refit_every,
                n_iter=config.hmm_iter,
            )
            if config.model in ("blend", "hmm") and config.hmm_scope == "market"
            else None
        )
        self._index_level = 1.0
        self._last_close: dict[str, float] = {}
        # Answers of bar times a chunk ran, by (shard, bar start), while they may be asked
        # again (``_on_chunks``).
        self._answers: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, str]] = {}
        self._keep_answers = False

    def receive(self, messages: list[RegimeInbox]) -> list[Message]:
        chunks = [m for m in messages if isinstance(m, BarChunk)]
        if chunks:
            return list(self._on_chunks(chunks)) if self.models else []
        out: list[Message] = []
        if self._answers:
            bars = [m for m in messages if isinstance(m, BarBatch)]
            if bars and not self._keep_answers:  # a chunk's own bars keep its answers
                self._forget_before(min(b.ts for b in bars))
            ran = {id(m) for m in bars if (m.shard, m.ts) in self._answers}
            out.extend(self._answer_again(m) for m in bars if id(m) in ran)
            messages = [m for m in messages if id(m) not in ran]
        batches = [m for m in messages if isinstance(m, BarBatch)]
        if self.market is not None and batches:
            self._update_market(batches)
        # Every shard's bar first, then the foundation model once for all of them (its
        # fixed cost per call, a few dozen small torch operations, is most of its time).
        # A round holds one bar per shard: a shard's next bar waits for the next round,
        # so each update says what its own bar left.
        taken: list[_Step | None] = []
        for msg in messages:
            match msg:
                case BarBatch() if 0 <= msg.shard < len(self.models):
                    if any(t is not None and t.batch.shard == msg.shard for t in taken):
                        self._finish_round(taken, out)
                    taken.append(self._take(msg))
                case BarBatch() if self.config.model == "none":
                    pass
                case BarBatch():
                    self.count("batches_for_unknown_shard")
                case SessionEnded():
                    self._finish_round(taken, out)
                    self.counters["hmm_fits"] = sum(
                        m.hmm.fits for m in self.models if m.hmm is not None
                    ) + (self.market.fits if self.market is not None else 0)
                    out.append(self.stats(msg.ts_event))
                case BarChunk():
                    pass  # a call with chunks was answered whole, above
                case _:
                    pass
        self._finish_round(taken, out)
        return out

    def _on_chunks(self, chunks: list[BarChunk]) -> list[RegimeChunk]:
        """Every shard's chunk, one bar time at a time through ``receive`` (the bar path
        itself), answered as one ``RegimeChunk`` per shard."""
        ts = chunks[0].ts.to_numpy()
        if any(not np.array_equal(c.ts.to_numpy(), ts) for c in chunks):
            raise ValueError("the shards' chunks are not of the same bar times")
        self._forget_before(int(ts[0]))
        k = ts.size
        shards = [c.shard for c in chunks]
        codes = {s: np.empty((k, len(self.models[s].universe)), np.uint8) for s in shards}
        probs = {s: np.empty((k, len(self.models[s].universe), 4), np.float32) for s in shards}
        model = ""
        columns = {c.shard: _chunk_columns(c) for c in chunks}
        self._keep_answers = True
        try:
            for t in range(k):
                kept = [self._answers.get((s, int(ts[t]))) for s in shards]
                if all(a is not None for a in kept):
                    # Asked again (a re-speculation): what it said then, without messages.
                    for s, a in zip(shards, kept, strict=True):
                        assert a is not None
                        codes[s][t], probs[s][t], model = a
                    self.count("bars_answered_again", len(shards))
                    continue
                batches = [_bar_of(c, columns[c.shard], t) for c in chunks]
                for u in self.receive(batches):
                    if isinstance(u, RegimeUpdate):
                        codes[u.shard][t] = u.codes.to_numpy()
                        probs[u.shard][t] = u.probabilities.to_numpy()
                        model = u.model
        finally:
            self._keep_answers = False
        ts_col = NDArray.from_numpy(np.ascontiguousarray(ts, dtype=np.int64))
        return [
            RegimeChunk(
                msg_id=self.ids.next(),
                ts_event=c.ts_event,
                ts_init=c.ts_event,
                correlation_id=c.msg_id,
                chunk=c.chunk,
                shard=c.shard,
                ts=ts_col,
                symbols=self._symbol_columns[c.shard],
                codes=NDArray.from_numpy(codes[c.shard]),
                probabilities=NDArray.from_numpy(probs[c.shard]),
                model=model,
            )
            for c in chunks
        ]

    def _answer_again(self, batch: BarBatch) -> RegimeUpdate:
        self.count("bars_answered_again")
        return self._update(batch, *self._answers[(batch.shard, batch.ts)])

    def _update(
        self, batch: BarBatch, codes: np.ndarray, probs: np.ndarray, model: str
    ) -> RegimeUpdate:
        """A shard's regimes after its bar at ``batch.ts``."""
        return RegimeUpdate(
            msg_id=self.ids.next(),
            ts_event=batch.ts_event,
            ts_init=batch.ts_event,
            correlation_id=batch.msg_id,
            ts=batch.ts,
            symbols=self._symbol_columns[batch.shard],
            codes=NDArray.from_numpy(codes),
            probabilities=NDArray.from_numpy(probs),
            market=_market_label(codes),
            model=model,
            shard=batch.shard,
        )

    def _forget_before(self, ts: int) -> None:
        """The session never goes back before the bar time it is at: older answers go
        (they were kept in the order of their bar times)."""
        while self._answers:
            key = next(iter(self._answers))
            if key[1] >= ts:
                break
            del self._answers[key]

    def _finish_round(self, taken: list[_Step | None], out: list[Message]) -> None:
        steps = [t for t in taken if t is not None]
        self._infer(steps)
        out.extend(self._finish(t) for t in steps)
        taken.clear()

    def _update_market(self, batches: list[BarBatch]) -> None:
        """Advance the equal-weight index by the mean log return of this bar's symbols."""
        returns = []
        for b in batches:
            closes = b.close.to_numpy()
            for sym, c in zip(b.symbols.to_numpy().tolist(), closes.tolist(), strict=True):
                prev = self._last_close.get(sym)
                if prev is not None and prev > 0 and c > 0 and np.isfinite(c):
                    returns.append(np.log(c / prev))
                if c > 0 and np.isfinite(c):
                    self._last_close[sym] = c
        if returns:
            self._index_level *= float(np.exp(np.mean(returns)))
        assert self.market is not None
        self.market.update(np.ones(1, dtype=bool), np.array([self._index_level]))

    def _take(self, batch: BarBatch) -> _Step | None:
        """A shard's bar into its models, up to the foundation model's inference."""
        m = self.models[batch.shard]
        if m.foundation is not None and m.foundation_interval not in (0, batch.interval_s):
            # Its statistics are per bar: a model trained on daily bars cannot read minutes.
            self.log.warning(
                "the foundation model was trained on %d s bars, not %d s: the HMM alone decides",
                m.foundation_interval,
                batch.interval_s,
            )
            self.count("foundation_interval_mismatch")
            m.foundation = None
        if batch.ts <= m.last_ts:
            self.count("stale_batches")
            return None
        m.last_ts = batch.ts
        n = len(m.universe)
        idx = m.universe.locate(batch.symbols.to_numpy())
        close, volume = batch.close.to_numpy(), batch.volume.to_numpy()
        good, _ = clean_rows(
            batch.open.to_numpy(), batch.high.to_numpy(), batch.low.to_numpy(), close, volume
        )
        take = good & (idx >= 0)
        mask = np.zeros(n, dtype=bool)
        mask[idx[take]] = True
        full_close = np.full(n, np.nan)
        full_close[idx[take]] = close[take]
        full_volume = np.full(n, np.nan)
        full_volume[idx[take]] = volume[take]
        step = _Step(batch, m, mask)
        if m.baseline is not None:
            m.baseline.update(mask, full_close)
        elif m.hmm is not None:
            m.hmm.update(mask, full_close)
        if m.baseline is None and m.foundation is not None:
            step.window = m.foundation.prepare(mask, full_close, full_volume)
        return step

    def _infer(self, steps: list[_Step]) -> None:
        """The foundation model over every shard's ready windows, in one call."""
        waiting = [
            (s.models.foundation, s.window)
            for s in steps
            if s.window is not None and s.models.foundation is not None
        ]
        if not waiting:
            return
        # Every shard's model holds the same checkpoint: any of them reads every window.
        vol, probs = waiting[0][0].infer(np.concatenate([w[1] for _, w in waiting]))
        at = 0
        for foundation, (run, _) in waiting:
            foundation.apply(run, vol[at : at + run.size], probs[at : at + run.size])
            at += run.size

    def _finish(self, step: _Step) -> RegimeUpdate:
        batch, m = step.batch, step.models
        model_name = self._blend(m, step.mask)
        if self._keep_answers:
            self._answers[(batch.shard, batch.ts)] = (m.codes, m.probs, model_name)
        return self._update(batch, m.codes, m.probs, model_name)

    def _blend(self, m: _ShardModels, mask: np.ndarray) -> str:
        """The shard's probabilities and labels after this bar (its models are updated)."""
        if m.baseline is not None:
            m.codes = m.baseline.codes.copy()
            m.probs = m.baseline.probabilities.copy()
            return m.baseline.name
        n = len(m.universe)
        if m.hmm is not None:
            p_hmm, r_hmm = m.hmm.probabilities, m.hmm.ready
        else:
            assert self.market is not None
            p_hmm = np.repeat(self.market.probabilities, n, axis=0)
            r_hmm = np.repeat(self.market.ready, n)
        probs = p_hmm.astype(np.float64)
        ready = r_hmm.copy()
        name = "hmm" if m.hmm is not None else "hmm-market"
        if m.foundation is not None:
            p_fm, r_fm = m.foundation.probabilities.astype(np.float64), m.foundation.ready
            both = r_hmm & r_fm
            w = m.weight
            probs = np.where(both[:, None], (1 - w) * p_hmm + w * p_fm, probs)
            only_fm = r_fm & ~r_hmm
            probs[only_fm] = p_fm[only_fm]
            ready = r_hmm | r_fm
            name += "+foundation"
        m.probs = np.where(ready[:, None], probs, 0.25).astype(np.float32)
        m.codes = m.hysteresis.update(mask, m.probs, ready).copy()
        return name


@dataclass(slots=True)
class _Step:
    """One shard's bar between its models' update and its RegimeUpdate."""

    batch: BarBatch
    models: _ShardModels
    mask: np.ndarray
    window: tuple[np.ndarray, np.ndarray] | None = None


def _market_label(codes: np.ndarray) -> str:
    from sovereign.messages import REGIME_NAMES

    known = codes[codes != 255]
    if known.size == 0:
        return "Unknown"
    return REGIME_NAMES[int(np.bincount(known, minlength=4).argmax())]


def _chunk_columns(chunk: BarChunk) -> dict[str, np.ndarray]:
    return {k: getattr(chunk, k).to_numpy() for k in ("open", "high", "low", "close", "volume")}


def _bar_of(chunk: BarChunk, columns: dict[str, np.ndarray], t: int) -> BarBatch:
    """Bar time ``t`` of a shard's chunk, as the shard's batch of that bar time."""
    ts = int(chunk.ts.to_numpy()[t])
    close_ns = ts + chunk.interval_s * 1_000_000_000
    return BarBatch(
        msg_id=chunk.msg_id,
        ts_event=close_ns,
        ts_init=close_ns,
        ts=ts,
        interval_s=chunk.interval_s,
        symbols=chunk.symbols,
        shard=chunk.shard,
        **{k: NDArray.from_numpy(np.ascontiguousarray(v[t])) for k, v in columns.items()},
    )

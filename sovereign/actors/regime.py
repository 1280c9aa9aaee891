"""RegimeActor: classifies every symbol's regime after each bar and tells the shards."""

from __future__ import annotations

import numpy as np

from sovereign.actors.base import Actor
from sovereign.config import RegimeConfig
from sovereign.core.bars import clean_rows
from sovereign.core.regime import BaselineRegimeClassifier
from sovereign.core.universe import Universe
from sovereign.messages import BarBatch, Message, NDArray, RegimeUpdate, SessionEnded


class RegimeActor(Actor):
    role = "regime"

    def __init__(self, index: int, shard_symbols: list[list[str]], config: RegimeConfig) -> None:
        super().__init__(index)
        self.universes = [Universe(symbols) for symbols in shard_symbols]
        self.models = [BaselineRegimeClassifier(len(u), config) for u in self.universes]
        self._symbol_columns = [NDArray.from_numpy(u.array) for u in self.universes]
        self._last_ts = [-1] * len(self.universes)

    def receive(self, messages: list[Message]) -> list[Message]:
        out: list[Message] = []
        for msg in messages:
            match msg:
                case BarBatch() if 0 <= msg.shard < len(self.universes):
                    update = self._on_bars(msg)
                    if update is not None:
                        out.append(update)
                case BarBatch():
                    self.count("batches_for_unknown_shard")
                case SessionEnded():
                    out.append(self.stats(msg.ts_event))
                case _:
                    pass
        return out

    def _on_bars(self, batch: BarBatch) -> RegimeUpdate | None:
        s = batch.shard
        if batch.ts <= self._last_ts[s]:
            self.count("stale_batches")
            return None
        self._last_ts[s] = batch.ts
        universe, model = self.universes[s], self.models[s]
        idx = universe.locate(batch.symbols.to_numpy())
        close = batch.close.to_numpy()
        good, _ = clean_rows(
            batch.open.to_numpy(),
            batch.high.to_numpy(),
            batch.low.to_numpy(),
            close,
            batch.volume.to_numpy(),
        )
        take = good & (idx >= 0)
        mask = np.zeros(len(universe), dtype=bool)
        mask[idx[take]] = True
        full_close = np.full(len(universe), np.nan)
        full_close[idx[take]] = close[take]
        model.update(mask, full_close)
        return RegimeUpdate(
            msg_id=self.ids.next(),
            ts_event=batch.ts_event,
            ts_init=batch.ts_event,
            correlation_id=batch.msg_id,
            ts=batch.ts,
            symbols=self._symbol_columns[s],
            codes=NDArray.from_numpy(model.codes),
            probabilities=NDArray.from_numpy(model.probabilities),
            market=model.market_regime(),
            model=model.name,
            shard=s,
        )

"""A strategy (the breakout preset, the baseline with its rules) over a speculative chunk
leaves exactly the state, intents and trades of the same bars run one at a time, in the
world the chunk assumes (every intent approved as asked, every order filled in full at the
next bar's open)."""

from __future__ import annotations

import dataclasses
import itertools

import msgspec
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from sovereign.config import Config, breakout_preset
from sovereign.core.chunk_state import checkpoint, restore
from sovereign.core.chunk_trades import ClosedColumns, commit_trades
from sovereign.core.chunks import (
    SIDE_BUY,
    SIDE_SELL,
    ChunkBars,
    strategy_chunk,
    strategy_state_names,
)
from sovereign.core.signals import ShardStrategy
from sovereign.core.trades import ClosedTrade
from sovereign.core.universe import Universe
from sovereign.domain.rules import (
    AdjustStop,
    AdjustTarget,
    ATRPercentAbove,
    MaxHold,
    RegimeIs,
    RequireConfidence,
    Rule,
    ScaleSize,
    SkipTrade,
    SRScoreAbove,
    SymbolIn,
    TimeOfDayBetween,
    VolumeBelow,
)
from sovereign.messages import REGIME_NAMES, REGIME_UNKNOWN


def make_bars(seed: int, t: int, n: int, cents: bool) -> ChunkBars:
    rng = np.random.default_rng(seed)
    vol = np.exp(rng.normal(-4.5, 0.6, (t, n)))
    close = 50 * np.exp(np.cumsum(rng.normal(0.0003, 1, (t, n)) * vol, axis=0))
    open_ = close * np.exp(rng.normal(0, 0.3, (t, n)) * vol)
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0, 0.6, (t, n))) * vol)
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0, 0.6, (t, n))) * vol)
    volume = np.round(rng.lognormal(8, 0.7, (t, n)))
    if cents:
        open_, high, low, close = (np.round(x, 2) for x in (open_, high, low, close))
    ts = 1_600_000_000_000_000_000 + np.arange(t, dtype=np.int64) * 60_000_000_000
    return ChunkBars(ts=ts, open=open_, high=high, low=low, close=close, volume=volume)


def strategy(
    n: int,
    max_hold: int = 50,
    *,
    on_regime_change: bool = False,
    fixed_quantity: int = 100,
    per_regime: bool = False,
) -> ShardStrategy:
    """The breakout preset's strategy; with ``per_regime``, the baseline's exits by regime
    (wider stops and quicker exits in Volatile, tighter targets in Ranging)."""
    config = breakout_preset(Config())
    cfg = msgspec.structs.replace(
        config.strategy,
        max_hold_bars=max_hold,
        exit_on_regime_change=on_regime_change,
        fixed_quantity=fixed_quantity,
        per_regime=Config().strategy.per_regime if per_regime else {},
    )
    return ShardStrategy(Universe([f"S{j:02d}" for j in range(n)]), cfg, shard=0)


def regime_path(seed: int, t: int, n: int) -> np.ndarray:
    """Each symbol's regime code after each bar: persistent, with the odd unknown bar."""
    rng = np.random.default_rng(seed + 1)
    codes = np.zeros((t, n), dtype=np.uint8)
    codes[0] = rng.integers(0, len(REGIME_NAMES), n)
    for k in range(1, t):
        move = rng.random(n) < 0.08
        codes[k] = np.where(move, rng.integers(0, len(REGIME_NAMES), n), codes[k - 1])
    codes[rng.random((t, n)) < 0.02] = REGIME_UNKNOWN
    return codes


def rows(bars: ChunkBars, a: int, b: int) -> ChunkBars:
    columns = (getattr(bars, f.name) for f in dataclasses.fields(bars))
    return ChunkBars(*(None if c is None else np.ascontiguousarray(c[a:b]) for c in columns))


def step_by_step(
    s: ShardStrategy,
    bars: ChunkBars,
    codes: np.ndarray,
    sizes: np.ndarray | None = None,
    probs: np.ndarray | None = None,
):
    """The bars one at a time, every order approved and filled at the next open: an entry
    for the strategy's quantity, or for ``sizes[t, j]`` shares if given (what the guardian
    sized an entry decided at bar t for symbol j at; 0: denied, which the shard hears
    before the next bar). ``probs`` (K, n, 4): the regime probabilities of each bar."""
    n = bars.close.shape[1]
    mask = np.ones(n, dtype=bool)
    if probs is None:
        probs = np.full((len(bars), n, len(REGIME_NAMES)), 0.25, dtype=np.float32)
    intents, trades = [], []
    codes = np.broadcast_to(codes, bars.close.shape)
    denied: list[str] = []
    for t in range(len(bars)):
        for order_id in denied:
            s.on_denied(order_id, int(bars.ts[t]))
        denied = []
        for order_id, order in list(s.orders.items()):
            i = order.index
            q = order.quantity if order.purpose == "OPEN" else int(s.quantity[i])
            closed = s.on_fill(order_id, q, float(bars.open[t, i]), 0.0, 0, int(bars.ts[t]))
            if closed is not None:
                trades.append((t, closed))
        entries, exits, cancels = s.on_bars(
            int(bars.ts[t]),
            mask,
            bars.high[t],
            bars.low[t],
            bars.close[t],
            bars.volume[t],
            codes[t],
            probs[t],
        )
        assert not cancels
        for x in exits:
            intents.append((t, x.index, SIDE_SELL, x.quantity, x.ref_price, x.intent_id))
        for e in entries:
            q = e.quantity if sizes is None else int(sizes[t, e.index])
            s.orders[e.intent_id].quantity = q  # the guardian's verdict, as the shard books it
            if q == 0:
                denied.append(e.intent_id)
            intents.append((t, e.index, SIDE_BUY, q, e.ref_price, e.intent_id))
    return intents, trades


def chunked(
    s: ShardStrategy,
    bars: ChunkBars,
    codes: np.ndarray,
    scalar: bool | None = None,
    sizes: np.ndarray | None = None,
    probs: np.ndarray | None = None,
):
    out = strategy_chunk(s, bars, codes, regime_probs=probs, scalar=scalar, sizes=sizes)
    names = s.universe.symbols
    intents = [
        (int(b), int(j), int(side), int(q), float(p), f"{names[j]}-{seq}")
        for b, j, side, q, p, seq in zip(
            out.intents.bar,
            out.intents.index,
            out.intents.side,
            out.intents.quantity,
            out.intents.ref_price,
            out.intents.seq,
            strict=True,
        )
    ]
    return intents, out


def state_of(s: ShardStrategy) -> dict:
    """Everything a chunk may change, as plain comparable values."""
    out = {}
    for name in strategy_state_names():
        value = getattr(s, name)
        if isinstance(value, np.ndarray):
            out[name] = value.tolist()
        elif name == "orders":  # in the order they were decided
            out[name] = {k: dataclasses.asdict(v) for k, v in value.items()}
        elif name == "trades":
            out[name] = {k: dataclasses.asdict(v) for k, v in sorted(value.items())}
        elif name == "_seq":
            out[name] = dict(sorted(value.items()))
        elif dataclasses.is_dataclass(value):
            out[name] = dataclasses.asdict(value)
        else:
            out[name] = plain(value)
    return out


def plain(value, depth: int = 0):
    """An indicator (and the ring buffers inside it) as plain comparable values."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    slots = getattr(type(value), "__slots__", None)
    if depth < 3 and (hasattr(value, "__dict__") or slots):
        names = list(vars(value)) if hasattr(value, "__dict__") else list(slots)
        return {k: plain(getattr(value, k), depth + 1) for k in names if k != "_reduce"}
    return repr(value) if depth else value


def same(a, b) -> bool:
    # NaN-aware equality of nested plain values.
    return repr(a) == repr(b)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(1, 6),
    t=st.integers(30, 400),
    cuts=st.lists(st.floats(0.0, 1.0), max_size=4),
    cents=st.booleans(),
    max_hold=st.sampled_from([3, 12, 50]),
    scalar=st.booleans(),
    regimes=st.booleans(),
    sized=st.booleans(),
)
def test_a_chunk_leaves_what_the_bars_one_at_a_time_leave(
    seed, n, t, cuts, cents, max_hold, scalar, regimes, sized
):
    """Both walks (vectorised across symbols, and one symbol at a time); with
    ``regimes``, each bar has its regime and a trade leaves when its regime changes; with
    ``sized``, each entry fills the shares the guardian sized it at (given to the chunk as
    the sizes of an earlier speculation), not the strategy's own."""
    bars = make_bars(seed, t, n, cents)
    sizes = None
    edges = sorted({0, t, *(int(c * t) for c in cuts)})
    if sized:
        # Some entries denied (0), never at a chunk's last bar (its verdict would come after).
        rng = np.random.default_rng(seed)
        sizes = np.where(rng.random((t, n)) < 0.2, 0, rng.integers(1, 150, (t, n)))
        sizes[[b - 1 for b in edges[1:]]] = 100
    codes = regime_path(seed, t, n) if regimes else np.full((t, n), REGIME_UNKNOWN, np.uint8)
    # With regimes, entries in Volatile and Ranging exit by their own stops, targets and
    # holds (the strategy's per-regime exits).
    ref = strategy(n, max_hold, on_regime_change=regimes, per_regime=regimes)
    mine = strategy(n, max_hold, on_regime_change=regimes, per_regime=regimes)
    for a, b in itertools.pairwise(edges):
        part = rows(bars, a, b)
        part_sizes = None if sizes is None else sizes[a:b]
        want_intents, want_trades = step_by_step(ref, part, codes[a:b], part_sizes)
        got_intents, out = chunked(mine, part, codes[a:b], scalar, part_sizes)
        assert got_intents == want_intents
        closed = records(commit_trades(mine, out))
        assert sorted(closed, key=lambda c: (c.exit_ts, c.symbol)) == [
            c for _, c in sorted(want_trades, key=lambda x: (x[1].exit_ts, x[1].symbol))
        ]
        assert [c.trade_id for c in closed] == [c.trade_id for _, c in want_trades]
        assert same(state_of(mine), state_of(ref))


def test_a_chunk_leaves_trades_on_a_change_of_regime_as_the_bars_do() -> None:
    """The walk asks the one exit definition with each bar's regime: trades leave on a
    change of regime inside the chunk, on the same bars as bar by bar."""
    t, n = 400, 6
    bars, codes = make_bars(11, t, n, True), regime_path(11, t, n)
    ref = strategy(n, 50, on_regime_change=True, per_regime=True)
    mine = strategy(n, 50, on_regime_change=True, per_regime=True)
    want_intents, want_trades = step_by_step(ref, bars, codes)
    got_intents, out = chunked(mine, bars, codes, False)
    assert got_intents == want_intents
    closed = records(commit_trades(mine, out))
    assert sorted(c.trade_id for c in closed) == sorted(c.trade_id for _, c in want_trades)
    reasons = [c.exit_reason for c in closed]
    assert reasons.count("regime_change") >= 5, reasons
    # Entries in Volatile held at most its 10 bars; some of them exited on that hold.
    volatile = [c for c in closed if c.regime == "Volatile"]
    assert volatile and max(c.bars_held for c in volatile) <= 10
    assert reasons == [c.exit_reason for _, c in want_trades]


def records(cols: ClosedColumns) -> list[ClosedTrade]:
    """The columns as the strategy's ``ClosedTrade`` records, row by row."""
    fields = [getattr(cols, name) for name in ClosedTrade._fields]
    plain = [f.tolist() if isinstance(f, np.ndarray) else f for f in fields]
    return [ClosedTrade(*row) for row in zip(*plain, strict=True)]


def test_a_chunk_speculates_the_entries_the_guardian_cuts_and_denies() -> None:
    """Given the guardian's sizes from an earlier speculation, a chunk fills each entry
    with them and leaves a denied one's symbol flat, free to enter again from the next
    bar: the intents, trades and state of the bars one at a time."""
    t, n = 400, 6
    bars = make_bars(7, t, n, True)
    codes = np.full((t, n), REGIME_UNKNOWN, np.uint8)
    rng = np.random.default_rng(7)
    sizes = np.where(rng.random((t, n)) < 0.3, 0, rng.integers(1, 150, (t, n)))
    sizes[-1] = 100
    for scalar in (False, True):
        ref, mine = strategy(n), strategy(n)
        want_intents, want_trades = step_by_step(ref, bars, codes, sizes)
        got_intents, out = chunked(mine, bars, codes, scalar, sizes)
        assert got_intents == want_intents
        assert records(commit_trades(mine, out)) == [c for _, c in want_trades]
        assert same(state_of(mine), state_of(ref))
        assert mine.counters.denied >= 5
        asked = {q for *_, side, q, _, _ in got_intents if side == SIDE_BUY}
        assert 0 in asked and len(asked) > 5  # denials, and many sizes


def test_entries_the_guardian_sizes_are_speculated_at_its_sizes() -> None:
    """With no fixed quantity the guardian sizes every entry: a first speculation
    assumes one share each (asking for none), and given the guardian's sizes the chunk is
    the bars one at a time with them."""
    t, n = 300, 5
    bars = make_bars(3, t, n, True)
    codes = np.full((t, n), REGIME_UNKNOWN, np.uint8)
    unsized = strategy(n, fixed_quantity=0)
    first = strategy_chunk(unsized, bars, codes)
    buys = first.intents.side == SIDE_BUY
    assert buys.sum() > 5
    assert set(first.intents.quantity[buys].tolist()) == {1}
    assert set(first.intents.asked[buys].tolist()) == {0}
    sizes = np.random.default_rng(3).integers(1, 400, (t, n))
    ref, mine = strategy(n, fixed_quantity=0), strategy(n, fixed_quantity=0)
    want_intents, want_trades = step_by_step(ref, bars, codes, sizes)
    got_intents, out = chunked(mine, bars, codes, None, sizes)
    assert got_intents == want_intents
    assert records(commit_trades(mine, out)) == [c for _, c in want_trades]
    assert same(state_of(mine), state_of(ref))


def test_a_restored_checkpoint_is_the_state_before_the_chunk() -> None:
    bars = make_bars(5, 300, 4, True)
    codes = np.full(4, REGIME_UNKNOWN, dtype=np.uint8)
    s = strategy(4)
    strategy_chunk(s, rows(bars, 0, 150), codes)
    before = state_of(s)
    saved = checkpoint(s, strategy_state_names())
    out = strategy_chunk(s, rows(bars, 150, 300), codes)
    assert len(out.intents) > 0
    assert not same(state_of(s), before)
    restore(s, saved)
    assert same(state_of(s), before)


def test_an_entry_the_guardian_approved_for_less_fills_what_was_approved() -> None:
    """An entry still working when a chunk begins fills what the guardian approved (here
    one share fewer than asked, the position limit binding at the decision), as the
    broker fills it: the shard books that, not the strategy's quantity, and tells the
    broker's speculation so."""
    from sovereign.core.chunk_state import assumed_fills

    bars = make_bars(5, 300, 4, True)
    codes = np.full(4, REGIME_UNKNOWN, dtype=np.uint8)
    ref, mine = strategy(4), strategy(4)
    t = 0
    while not any(o.purpose == "OPEN" for o in ref.orders.values()):
        t += 1
        step_by_step(ref, rows(bars, t - 1, t), codes)
        step_by_step(mine, rows(bars, t - 1, t), codes)
    for s in (ref, mine):
        entry = next(o for o in s.orders.values() if o.purpose == "OPEN")
        assert entry.quantity == s.config.fixed_quantity  # asked for
        entry.quantity = s.config.fixed_quantity - 1  # what the guardian approved
    assert set(assumed_fills(mine).values()) == {mine.config.fixed_quantity - 1}
    want_intents, want_trades = step_by_step(ref, rows(bars, t, t + 64), codes)
    got_intents, out = chunked(mine, rows(bars, t, t + 64), codes)
    assert got_intents == want_intents
    closed = records(commit_trades(mine, out))
    assert closed[0].quantity == mine.config.fixed_quantity - 1
    assert closed == [c for _, c in want_trades]
    assert same(state_of(mine), state_of(ref))


def test_the_first_guess_of_a_guardian_size_is_the_open_trades_notional() -> None:
    """Before the guardian has sized a chunk's entries, each is guessed at the median
    notional of the trades open, at its bar's close (one share with none open, or where
    the close is unknown): a guess close to the guardian's saves speculations."""
    from types import SimpleNamespace

    from sovereign.core.chunk_walk import _first_guess
    from sovereign.core.trades import Trade

    def trade(cost: float) -> Trade:
        return Trade("T", 0, 1.0, 1.0, {}, entry_qty=10, entry_cost=cost, filled_once=True)

    close = np.array([[10.0, 40.0, np.nan], [3000.0, 7.0, 20.0]])
    none_open = SimpleNamespace(trades={})
    assert _first_guess(none_open, close).tolist() == [[1, 1, 1], [1, 1, 1]]
    st_ = SimpleNamespace(trades={0: trade(1000.0), 1: trade(2000.0), 2: trade(9000.0)})
    assert _first_guess(st_, close).tolist() == [[200, 50, 1], [1, 285, 100]]


def baseline(n: int, volume_confirmation: bool, max_hold: int) -> ShardStrategy:
    """The default strategy, with short windows so that short series trade."""
    cfg = msgspec.structs.replace(
        Config().strategy,
        atr_period=5,
        breakout_window=8,
        volume_window=10,
        sr_swing=2,
        sr_memory=6,
        volume_threshold=40.0,
        volume_confirmation=volume_confirmation,
        max_hold_bars=max_hold,
        entry_regimes=("TrendingUp", "Ranging"),
    )
    return ShardStrategy(Universe([f"S{j:02d}" for j in range(n)]), cfg, shard=0)


RULES = [
    Rule(rule_id="LOWVOL", condition=VolumeBelow(percentile=60.0), action=SkipTrade(reason="t")),
    Rule(rule_id="HALF", condition=SRScoreAbove(score=0), action=ScaleSize(factor=0.5)),
    Rule(
        rule_id="WIDE",
        condition=RegimeIs(regime="Ranging"),
        action=AdjustStop(atr_mult=3.0),
    ),
    Rule(rule_id="NEAR", condition=ATRPercentAbove(percent=0.5), action=AdjustTarget(atr_mult=1.0)),
    Rule(rule_id="QUICK", condition=SymbolIn(symbols=("S01", "S03")), action=MaxHold(bars=4)),
    Rule(
        rule_id="SURE",
        condition=TimeOfDayBetween(start_minute=0, end_minute=720),
        action=RequireConfidence(minimum=0.62),
    ),
]


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(1, 6),
    t=st.integers(30, 300),
    cuts=st.lists(st.floats(0.0, 1.0), max_size=3),
    rules=st.lists(st.sampled_from(RULES), max_size=4, unique_by=lambda r: r.rule_id),
    volume_confirmation=st.booleans(),
    max_hold=st.sampled_from([3, 20]),
    scalar=st.booleans(),
)
def test_the_baseline_in_chunks_leaves_what_its_bars_one_at_a_time_leave(
    seed, n, t, cuts, rules, volume_confirmation, max_hold, scalar
):
    """The default strategy: its regimes (entries in some, exits on a change), the
    regime probabilities its entries record, its rules (skip, scale, stops, targets, holds,
    a confidence floor), every entry sized by the guardian (some denied): intents, closed
    trades with every feature, and state, as the bars one at a time."""
    bars = make_bars(seed, t, n, True)
    edges = sorted({0, t, *(int(c * t) for c in cuts)})
    rng = np.random.default_rng(seed)
    sizes = np.where(rng.random((t, n)) < 0.15, 0, rng.integers(1, 300, (t, n)))
    sizes[[b - 1 for b in edges[1:]]] = 50  # never a denial at a chunk's last bar
    codes = regime_path(seed, t, n)
    probs = rng.dirichlet(np.ones(len(REGIME_NAMES)), (t, n)).astype(np.float32)
    ref = baseline(n, volume_confirmation, max_hold)
    mine = baseline(n, volume_confirmation, max_hold)
    for s in (ref, mine):
        s.set_rules(3, list(rules), {})
    for a, b in itertools.pairwise(edges):
        part = rows(bars, a, b)
        want_intents, want_trades = step_by_step(ref, part, codes[a:b], sizes[a:b], probs[a:b])
        got_intents, out = chunked(mine, part, codes[a:b], scalar, sizes[a:b], probs[a:b])
        assert got_intents == want_intents
        closed = records(commit_trades(mine, out))
        assert same(
            sorted(closed, key=lambda c: (c.exit_ts, c.symbol)),
            [c for _, c in sorted(want_trades, key=lambda x: (x[1].exit_ts, x[1].symbol))],
        )
        assert same(state_of(mine), state_of(ref))
        assert mine.counters == ref.counters


def test_the_baseline_chunks_trade_and_their_rules_act() -> None:
    """The property above is not vacuous: over these bars the baseline enters, exits,
    is denied, and its rules skip and scale entries."""
    t, n = 400, 6
    bars = make_bars(3, t, n, True)
    rng = np.random.default_rng(3)
    sizes = np.where(rng.random((t, n)) < 0.3, 0, rng.integers(1, 300, (t, n)))
    sizes[-1] = 50
    codes = regime_path(3, t, n)
    probs = rng.dirichlet(np.ones(len(REGIME_NAMES)), (t, n)).astype(np.float32)
    ref, mine = baseline(n, True, 20), baseline(n, True, 20)
    for s in (ref, mine):
        s.set_rules(1, RULES[:2], {})
    want_intents, want_trades = step_by_step(ref, bars, codes, sizes, probs)
    got_intents, out = chunked(mine, bars, codes, None, sizes, probs)
    assert got_intents == want_intents
    closed = records(commit_trades(mine, out))
    assert same(closed, [c for _, c in want_trades])
    assert mine.counters == ref.counters
    assert mine.counters.rule_skips > 0 and mine.counters.denied > 0 and len(closed) > 5
    assert 0.5 in {c.features["size_scale"] for c in closed}
    assert all(c.features["regime_probability"] is not None for c in closed)


def test_a_chunk_speculated_again_takes_its_indicators_from_the_first_time(monkeypatch) -> None:
    """A chunk speculated again with the guardian's sizes (from the state restored to
    before it) reads its indicators' blocks and end state from the first speculation,
    without running their recursions again, and does what a fresh speculation does."""
    from sovereign.core.support_resistance import SupportResistance

    runs: list[int] = []
    block = SupportResistance.block

    def counted(self, *args):
        runs.append(1)
        return block(self, *args)

    monkeypatch.setattr(SupportResistance, "block", counted)
    t, n = 300, 5
    bars = make_bars(11, t, n, True)
    rng = np.random.default_rng(11)
    codes = regime_path(11, t, n)
    probs = rng.dirichlet(np.ones(len(REGIME_NAMES)), (t, n)).astype(np.float32)
    first = rng.integers(1, 300, (t, n))
    again = np.where(rng.random((t, n)) < 0.3, 0, rng.integers(1, 300, (t, n)))
    again[-1] = 50
    mine, fresh = baseline(n, True, 20), baseline(n, True, 20)
    saved = checkpoint(mine, strategy_state_names())
    chunked(mine, bars, codes, None, first, probs)
    restore(mine, saved)
    got_intents, got = chunked(mine, bars, codes, None, again, probs)
    assert len(runs) == 1  # the second speculation ran no recursion
    want_intents, want = chunked(fresh, bars, codes, None, again, probs)
    assert got_intents == want_intents
    assert same(records(commit_trades(mine, got)), records(commit_trades(fresh, want)))
    assert same(state_of(mine), state_of(fresh))

"""Messages of speculative chunks (``sovereign.core.chunks``): a backtest's bar times
handed to the actors K at a time, as columns.

The path of a chunk: the engine sends each shard a ``BarChunk``; each shard answers with an
``IntentChunk`` (its intents, assuming every one approved and filled at the next open);
the guardian turns them into one ``ApprovedChunk`` (a conditional approval, signed once
for the batch); the gateway executes it on the simulated broker without committing and
reports a ``ChunkExecution`` (the account at every bar close); the guardian validates the
chunk against that path and answers with a ``ChunkVerdict``, which the shards and the
gateway obey: commit, or discard (the engine then replays those bar times one by one).
"""

from __future__ import annotations

import msgspec

from sovereign.messages.account import BookOrder
from sovereign.messages.base import Message, NDArray


def _column(owner: str, name: str, col: NDArray, dtype: str, shape: tuple[int, ...]) -> None:
    if col.dtype != dtype or col.shape != shape:
        raise ValueError(
            f"{owner}.{name} must be {dtype} with shape {shape}, got {col.dtype} {col.shape}"
        )


def _symbols(owner: str, name: str, col: NDArray) -> int:
    if len(col.shape) != 1 or not col.dtype.startswith("|S"):
        raise ValueError(f"{owner}.{name} must be a 1-D fixed-width byte string column")
    return col.shape[0]


class BarChunk(Message, frozen=True, gc=False):
    """K consecutive bar times of one shard: every symbol of its universe at every time.

    ``ts`` is ``<i8`` (K,), the bar starts, strictly increasing; the prices and volume are
    ``<f8`` (K, n), row t the bar time ``ts[t]``. Only clean runs are chunked: every bar
    passes the shard's bar checks, and the same symbols have a bar at every bar time (a
    symbol without one, not listed yet or no more, has NaN columns throughout; the engine
    replays any other bar time with a missing or rejected bar one at a time).
    ``ts_event`` is the last bar's close. ``sizes`` (optional, ``<i8`` (K, n)): the shares
    the guardian sized an entry decided at that bar and symbol at, on an earlier
    speculation of the same bars (0: the guardian denies it; -1: not known, the shard
    speculates its own quantity).
    """

    chunk: int
    shard: int
    interval_s: int
    ts: NDArray
    symbols: NDArray
    open: NDArray
    high: NDArray
    low: NDArray
    close: NDArray
    volume: NDArray
    sizes: NDArray | None = None

    def __post_init__(self) -> None:
        n = _symbols("BarChunk", "symbols", self.symbols)
        if len(self.ts.shape) != 1 or self.ts.shape[0] < 1:
            raise ValueError("BarChunk.ts must hold at least one bar time")
        k = self.ts.shape[0]
        _column("BarChunk", "ts", self.ts, "<i8", (k,))
        for name in ("open", "high", "low", "close", "volume"):
            _column("BarChunk", name, getattr(self, name), "<f8", (k, n))
        if self.sizes is not None:
            _column("BarChunk", "sizes", self.sizes, "<i8", (k, n))
        if self.interval_s <= 0:
            raise ValueError(f"BarChunk.interval_s must be positive, got {self.interval_s}")

    def __len__(self) -> int:
        return self.ts.shape[0]


class RegimeChunk(Message, frozen=True, gc=False):
    """The regime actor's answer to a chunk, for one shard: what its ``RegimeUpdate``
    would have said after each of the chunk's bar times (the models run over the chunk's
    bars one bar time at a time, as bar by bar; regimes depend on the bars alone, so a
    chunk later discarded does not change them).

    ``codes`` is ``|u1`` (K, n) and ``probabilities`` ``<f4`` (K, n, 4), row t after the
    bar time ``ts[t]``, in the order of the shard's ``symbols``. Empty (no bar times) when
    no regime model runs.
    """

    chunk: int
    shard: int
    ts: NDArray
    symbols: NDArray
    codes: NDArray
    probabilities: NDArray
    model: str

    def __post_init__(self) -> None:
        n = _symbols("RegimeChunk", "symbols", self.symbols)
        if len(self.ts.shape) != 1:
            raise ValueError("RegimeChunk.ts must be 1-D")
        k = self.ts.shape[0]
        _column("RegimeChunk", "ts", self.ts, "<i8", (k,))
        _column("RegimeChunk", "codes", self.codes, "|u1", (k, n))
        _column("RegimeChunk", "probabilities", self.probabilities, "<f4", (k, n, 4))

    def __len__(self) -> int:
        return self.ts.shape[0]


class IntentChunk(Message, frozen=True, gc=False):
    """A shard's intents over a chunk, as columns (one row per intent, in the order the
    shard decided them: by bar, exits first, then by universe index).

    ``bar`` is the index in the chunk of the bar time whose close decided the intent;
    ``side`` is 1 for an entry (a BUY opening a position) and 2 for an exit (a SELL
    closing one); ``seq`` numbers the symbol's intents (the intent and order id is
    ``<symbol>-<seq>``). ``pending`` names the orders the shard had working before the
    chunk, which it assumed fill at the chunk's first open, ``pending_quantity`` (the same
    order) the quantity it assumed each fills. ``refused`` says why the shard could not
    speculate this chunk (its columns are then empty). ``quantity`` is what the shard
    speculates each order fills; ``asked`` (optional, the same when absent) what the
    intent would ask bar by bar (an entry the strategy's quantity, which the guardian may
    cut: ``quantity`` is then the guardian's size from an earlier speculation; 0: the
    guardian sizes it); ``regime`` (optional) each intent's regime code at its decision;
    ``size_scale`` (optional, 1 when absent) the rules' scale of an entry's size.
    ``closed_bar`` and ``closed_pnl`` (optional, together): the trades the chunk closes,
    in the order their fills close them: the bar whose open filled the exit and the P&L
    with the commissions the fill model charges (the guardian counts losing streaks on
    them before the chunk is committed).
    """

    chunk: int
    shard: int
    symbols: NDArray
    bar_close: NDArray
    bar: NDArray
    index: NDArray
    side: NDArray
    quantity: NDArray
    ref_price: NDArray
    confidence: NDArray
    seq: NDArray
    pending: list[str]
    refused: str = ""
    pending_quantity: list[int] = msgspec.field(default_factory=list)
    asked: NDArray | None = None
    regime: NDArray | None = None
    size_scale: NDArray | None = None
    closed_bar: NDArray | None = None
    closed_pnl: NDArray | None = None

    def __post_init__(self) -> None:
        _symbols("IntentChunk", "symbols", self.symbols)
        if len(self.pending_quantity) != len(self.pending):
            raise ValueError("IntentChunk.pending_quantity must match pending")
        if len(self.bar_close.shape) != 1:
            raise ValueError("IntentChunk.bar_close must be 1-D")
        _column("IntentChunk", "bar_close", self.bar_close, "<i8", self.bar_close.shape)
        m = self.bar.shape
        if len(m) != 1:
            raise ValueError("IntentChunk.bar must be 1-D")
        for name, dtype in (
            ("bar", "<i8"),
            ("index", "<i8"),
            ("side", "|u1"),
            ("quantity", "<i8"),
            ("ref_price", "<f8"),
            ("confidence", "<f8"),
            ("seq", "<i8"),
        ):
            _column("IntentChunk", name, getattr(self, name), dtype, m)
        if self.asked is not None:
            _column("IntentChunk", "asked", self.asked, "<i8", m)
        if self.regime is not None:
            _column("IntentChunk", "regime", self.regime, "|u1", m)
        if (self.closed_bar is None) != (self.closed_pnl is None):
            raise ValueError("IntentChunk's closed columns come together")
        if self.closed_bar is not None and self.closed_pnl is not None:
            c = self.closed_bar.shape
            if len(c) != 1:
                raise ValueError("IntentChunk.closed_bar must be 1-D")
            _column("IntentChunk", "closed_bar", self.closed_bar, "<i8", c)
            _column("IntentChunk", "closed_pnl", self.closed_pnl, "<f8", c)
        if self.size_scale is not None:
            _column("IntentChunk", "size_scale", self.size_scale, "<f8", m)
            scale = self.size_scale.to_numpy()
            if scale.size and not ((scale >= 0.0) & (scale <= 1.0)).all():
                raise ValueError("IntentChunk.size_scale must be in [0, 1]")
        confidence = self.confidence.to_numpy()
        if confidence.size and not ((confidence >= 0.0) & (confidence <= 1.0)).all():
            # As OrderIntent: a confidence is a probability; NaN is none.
            raise ValueError("IntentChunk.confidence must be in [0, 1]")

    def __len__(self) -> int:
        return self.bar.shape[0]


class ApprovedChunk(Message, frozen=True, gc=False):
    """The guardian's conditional approval of a chunk's orders, for a simulated broker.

    One row per order, in the order they are to be submitted (by bar; at each bar exits
    first, then by symbol, as the guardian decides bar by bar). ``limit_price`` is NaN
    for a market order. ``expects`` names the orders the shards assumed were working
    before the chunk (they must fill at its first open), ``expects_quantity`` the quantity
    each must fill (the same order). ``signature`` is an HMAC-SHA256
    under the run's secret over every column and ``expires_ns``; the gateway refuses the
    batch whole if it does not verify, was seen before, or its broker cannot take back a
    speculative execution. An empty ``refused`` means approved; otherwise it says why
    the chunk cannot be approved speculatively (nothing is signed then).
    """

    chunk: int
    symbol: NDArray
    shard: NDArray
    bar: NDArray
    side: NDArray
    quantity: NDArray
    limit_price: NDArray
    seq: NDArray
    expires_ns: NDArray
    expects: list[str]
    signature: bytes
    refused: str = ""
    expects_quantity: list[int] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        m = (_symbols("ApprovedChunk", "symbol", self.symbol),)
        for name, dtype in (
            ("shard", "<i8"),
            ("bar", "<i8"),
            ("side", "|u1"),
            ("quantity", "<i8"),
            ("limit_price", "<f8"),
            ("seq", "<i8"),
            ("expires_ns", "<i8"),
        ):
            _column("ApprovedChunk", name, getattr(self, name), dtype, m)

    def __len__(self) -> int:
        return self.symbol.shape[0]


class ChunkExecution(Message, frozen=True, gc=False):
    """What the simulated broker did with an approved chunk, not yet committed.

    ``diverged`` is empty when every order filled as the shards assumed (in full, at its
    next bar's open, at the open price); otherwise it says what differed, from ``bar`` on.
    The account at every bar close: ``ts`` (``<i8``, the bar's close), ``equity``,
    ``cash``, ``gross_exposure`` (``<f8``), ``open_positions`` (``<i8``) and ``day`` (an
    index into ``session_dates``). ``held`` is, for each approved order, the position in
    its symbol at the close of its decision bar. The fills, in the order they happened:
    ``fill_symbol``, ``fill_seq``, ``fill_shard``, ``fill_bar``, ``fill_price`` and
    ``fill_commission``. ``positions`` and ``position_symbols`` are the book at the end,
    ``working`` the orders still working.
    """

    chunk: int
    diverged: str
    bar: int
    ts: NDArray
    equity: NDArray
    cash: NDArray
    gross_exposure: NDArray
    open_positions: NDArray
    day: NDArray
    session_dates: list[str]
    held: NDArray
    fill_symbol: NDArray
    fill_seq: NDArray
    fill_shard: NDArray
    fill_bar: NDArray
    fill_price: NDArray
    fill_commission: NDArray
    position_symbols: NDArray
    positions: NDArray
    working: list[BookOrder]

    def __post_init__(self) -> None:
        k = self.ts.shape
        if len(k) != 1:
            raise ValueError("ChunkExecution.ts must be 1-D")
        for name, dtype in (
            ("ts", "<i8"),
            ("equity", "<f8"),
            ("cash", "<f8"),
            ("gross_exposure", "<f8"),
            ("open_positions", "<i8"),
            ("day", "<i8"),
        ):
            _column("ChunkExecution", name, getattr(self, name), dtype, k)
        if len(self.held.shape) != 1:
            raise ValueError("ChunkExecution.held must be 1-D")
        _column("ChunkExecution", "held", self.held, "<i8", self.held.shape)
        f = (_symbols("ChunkExecution", "fill_symbol", self.fill_symbol),)
        for name, dtype in (
            ("fill_seq", "<i8"),
            ("fill_shard", "<i8"),
            ("fill_bar", "<i8"),
            ("fill_price", "<f8"),
            ("fill_commission", "<f8"),
        ):
            _column("ChunkExecution", name, getattr(self, name), dtype, f)
        p = (_symbols("ChunkExecution", "position_symbols", self.position_symbols),)
        _column("ChunkExecution", "positions", self.positions, "<i8", p)
        if k[0] and self.day.shape[0]:
            days = self.day.to_numpy()
            if days.min() < 0 or days.max() >= len(self.session_dates):
                raise ValueError("ChunkExecution.day indexes past session_dates")

    @property
    def fills(self) -> int:
        return self.fill_symbol.shape[0]


class ChunkHorizon(Message, frozen=True, gc=False):
    """Where self-modification would act in a chunk, on the trades its shards speculate:
    ``changes`` (``<i8``), the chunk's bars at which a new session begins after an earlier
    one (each is a review of the rules if one is due); ``due`` the first of them at which
    a review is due whatever the losing streaks do (enough new trades, or a review asked
    for before the chunk), -1 if none. The guardian adds the reviews its losing streaks
    would ask for, and a chunk whose review would come before its last bar is cut there."""

    chunk: int
    changes: NDArray
    due: int = -1

    def __post_init__(self) -> None:
        c = self.changes.shape
        if len(c) != 1:
            raise ValueError("ChunkHorizon.changes must be 1-D")
        _column("ChunkHorizon", "changes", self.changes, "<i8", c)


class ChunkVerdict(Message, frozen=True, gc=False):
    """The guardian's last word on a chunk: ``valid`` (commit it) or not (discard it; the
    engine replays its bar times one at a time). ``reason`` and ``bar`` say what made it
    invalid; ``approved`` and ``fills`` count its orders and fills when it is valid, and
    ``denied`` the entries the guardian denies in it (speculated as denied).
    ``signature`` (valid verdicts only) is the guardian's HMAC over the chunk and its
    approval's signature: the gateway books a chunk on nothing less.

    ``sized_*`` (an invalid verdict only, when the guardian would size entries otherwise
    than the chunk speculated): each entry's symbol, bar and the shares the guardian
    would approve on the speculated path (0: denied), for the engine to speculate the
    same bars again with them."""

    chunk: int
    valid: bool
    reason: str = ""
    bar: int = -1
    approved: int = 0
    fills: int = 0
    signature: bytes = b""
    denied: int = 0
    sized_symbols: NDArray | None = None
    sized_bars: NDArray | None = None
    sized_quantities: NDArray | None = None

    def __post_init__(self) -> None:
        given = [
            x is not None for x in (self.sized_symbols, self.sized_bars, self.sized_quantities)
        ]
        if any(given) and not all(given):
            raise ValueError("ChunkVerdict's sized columns come together")
        if self.sized_symbols is not None:
            m = (_symbols("ChunkVerdict", "sized_symbols", self.sized_symbols),)
            _column("ChunkVerdict", "sized_bars", self.sized_bars, "<i8", m)  # type: ignore[arg-type]
            _column("ChunkVerdict", "sized_quantities", self.sized_quantities, "<i8", m)  # type: ignore[arg-type]

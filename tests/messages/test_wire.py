"""The wire: every message round-trips; hostile bytes only ever raise MessageDecodeError."""

from __future__ import annotations

import contextlib

import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sovereign.domain.rules import (
    MAX_TREE_DEPTH,
    MAX_TREE_NODES,
    And,
    RegimeIs,
    Rule,
    SkipTrade,
    VolumeBelow,
)
from sovereign.messages import (
    ALL_MESSAGES,
    WIRE,
    Approval,
    ApprovedChunk,
    BarBatch,
    BarChunk,
    BookOrder,
    CancelOrder,
    ChunkExecution,
    ChunkHorizon,
    ChunkVerdict,
    DailySummary,
    EquityCurve,
    IntentChunk,
    Message,
    MessageDecodeError,
    ModificationProposal,
    NDArray,
    OrderCanceled,
    OrderFilled,
    OrderIntent,
    OrderRejected,
    RecentOrderEvents,
    RegimeChunk,
    RegimeUpdate,
    RuleSetSnapshot,
    SessionStarted,
    SubmitOrder,
    TradeClosed,
    TradesClosed,
)
from tests.strategies import rule, rules

i64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
ts = st.integers(min_value=0, max_value=2**62)
text = st.text(max_size=20)
finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
price = st.floats(min_value=0.01, max_value=1e6, allow_nan=False)
symbols = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=1, max_size=6)


def envelope() -> dict[str, st.SearchStrategy[object]]:
    return {"msg_id": text, "ts_event": ts, "ts_init": ts, "correlation_id": text}


@st.composite
def arrays(draw: st.DrawFn, dtype: str | None = None, shape: tuple[int, ...] | None = None):
    dtype = dtype or draw(st.sampled_from(["<f8", "<f4", "<i8", "<i4", "|u1", "|b1", "|S4"]))
    shape = shape if shape is not None else (draw(st.integers(0, 5)),)
    n = int(np.prod(shape))
    raw = draw(
        st.binary(min_size=n * np.dtype(dtype).itemsize, max_size=n * np.dtype(dtype).itemsize)
    )
    return NDArray(dtype=dtype, shape=shape, data=raw)


@st.composite
def bar_batches(draw: st.DrawFn) -> BarBatch:
    n = draw(st.integers(0, 6))
    col = lambda: draw(st.lists(finite, min_size=n, max_size=n))  # noqa: E731
    return BarBatch.from_arrays(
        msg_id=draw(text),
        ts=draw(ts),
        interval_s=draw(st.integers(1, 86_400)),
        symbols=np.array(draw(st.lists(symbols, min_size=n, max_size=n)), dtype="S6"),
        open=np.array(col()),
        high=np.array(col()),
        low=np.array(col()),
        close=np.array(col()),
        volume=np.array(col()),
        shard=draw(st.integers(-1, 64)),
    )


@st.composite
def regime_updates(draw: st.DrawFn) -> RegimeUpdate:
    n = draw(st.integers(0, 6))
    return RegimeUpdate(
        **{k: draw(v) for k, v in envelope().items()},
        ts=draw(ts),
        symbols=draw(arrays("|S6", (n,))),
        codes=draw(arrays("|u1", (n,))),
        probabilities=draw(arrays("<f4", (n, 4))),
        market=draw(text),
        model=draw(text),
        shard=draw(st.integers(-1, 64)),
    )


@st.composite
def daily_summaries(draw: st.DrawFn) -> DailySummary:
    # The two chart columns must have the same length, which st.builds cannot express.
    n = draw(st.integers(0, 5))
    any_float = st.floats(width=64)
    return DailySummary(
        **{k: draw(v) for k, v in envelope().items()},
        kind=draw(text),
        level=draw(st.sampled_from(["info", "warning", "critical"])),
        title=draw(text),
        text=draw(text),
        data=draw(
            st.dictionaries(text, st.none() | st.booleans() | i64 | finite | text, max_size=3)
        ),
        session_date=draw(text),
        start_equity=draw(any_float),
        end_equity=draw(any_float),
        high_water_mark=draw(any_float),
        drawdown=draw(any_float),
        trades=draw(i64),
        wins=draw(i64),
        pnl=draw(any_float),
        complete=draw(st.booleans()),
        equity_ts=draw(arrays("<i8", (n,))),
        equity=draw(arrays("<f8", (n,))),
    )


@st.composite
def bar_chunks(draw: st.DrawFn) -> BarChunk:
    k, n = draw(st.integers(1, 4)), draw(st.integers(0, 4))
    return BarChunk(
        **{key: draw(v) for key, v in envelope().items()},
        chunk=draw(i64),
        shard=draw(st.integers(0, 64)),
        interval_s=draw(st.integers(1, 86_400)),
        ts=draw(arrays("<i8", (k,))),
        symbols=draw(arrays("|S4", (n,))),
        **{c: draw(arrays("<f8", (k, n))) for c in ("open", "high", "low", "close", "volume")},
        sizes=draw(st.none() | arrays("<i8", (k, n))),
    )


@st.composite
def regime_chunks(draw: st.DrawFn) -> RegimeChunk:
    k, n = draw(st.integers(0, 4)), draw(st.integers(0, 4))
    return RegimeChunk(
        **{key: draw(v) for key, v in envelope().items()},
        chunk=draw(i64),
        shard=draw(st.integers(0, 64)),
        ts=draw(arrays("<i8", (k,))),
        symbols=draw(arrays("|S4", (n,))),
        codes=draw(arrays("|u1", (k, n))),
        probabilities=draw(arrays("<f4", (k, n, 4))),
        model=draw(text),
    )


def _pending(draw: st.DrawFn, name: str) -> dict[str, list]:
    """Order ids and the quantity each is to fill, as two lists of one length."""
    pairs = draw(st.lists(st.tuples(text, st.integers(0, 10**9)), max_size=3))
    quantity = "pending_quantity" if name == "pending" else "expects_quantity"
    return {name: [o for o, _ in pairs], quantity: [q for _, q in pairs]}


@st.composite
def intent_chunks(draw: st.DrawFn) -> IntentChunk:
    m = draw(st.integers(0, 5))
    return IntentChunk(
        **{key: draw(v) for key, v in envelope().items()},
        chunk=draw(i64),
        shard=draw(st.integers(0, 64)),
        symbols=draw(arrays("|S4", (draw(st.integers(0, 4)),))),
        bar_close=draw(arrays("<i8", (draw(st.integers(0, 4)),))),
        bar=draw(arrays("<i8", (m,))),
        index=draw(arrays("<i8", (m,))),
        side=draw(arrays("|u1", (m,))),
        quantity=draw(arrays("<i8", (m,))),
        ref_price=draw(arrays("<f8", (m,))),
        # Probabilities, as IntentChunk (like OrderIntent) requires.
        confidence=NDArray.from_numpy(
            np.array(draw(st.lists(st.floats(0, 1), min_size=m, max_size=m)), dtype="<f8")
        ),
        seq=draw(arrays("<i8", (m,))),
        **_pending(draw, "pending"),
        refused=draw(text),
        asked=draw(st.none() | arrays("<i8", (m,))),
        regime=draw(st.none() | arrays("|u1", (m,))),
        size_scale=draw(
            st.none()
            | st.builds(
                lambda x: NDArray.from_numpy(np.array(x, dtype="<f8")),
                st.lists(st.floats(0, 1), min_size=m, max_size=m),
            )
        ),
        **_closed(draw),
    )


def _closed(draw: st.DrawFn) -> dict[str, NDArray]:
    """A chunk's closed trades (bar, P&L), or none."""
    if not draw(st.booleans()):
        return {}
    c = draw(st.integers(0, 4))
    return {"closed_bar": draw(arrays("<i8", (c,))), "closed_pnl": draw(arrays("<f8", (c,)))}


@st.composite
def chunk_horizons(draw: st.DrawFn) -> ChunkHorizon:
    return ChunkHorizon(
        **{key: draw(v) for key, v in envelope().items()},
        chunk=draw(i64),
        changes=draw(arrays("<i8", (draw(st.integers(0, 4)),))),
        due=draw(i64),
    )


@st.composite
def chunk_verdicts(draw: st.DrawFn) -> ChunkVerdict:
    sized = {}
    if draw(st.booleans()):
        m = draw(st.integers(0, 4))
        sized = {
            "sized_symbols": draw(arrays("|S4", (m,))),
            "sized_bars": draw(arrays("<i8", (m,))),
            "sized_quantities": draw(arrays("<i8", (m,))),
        }
    return ChunkVerdict(
        **{key: draw(v) for key, v in envelope().items()},
        chunk=draw(i64),
        valid=draw(st.booleans()),
        reason=draw(text),
        bar=draw(i64),
        approved=draw(i64),
        fills=draw(i64),
        signature=draw(st.binary(max_size=32)),
        denied=draw(i64),
        **sized,
    )


@st.composite
def trades_closed(draw: st.DrawFn) -> TradesClosed:
    m = draw(st.integers(0, 5))
    rows = lambda strategy: draw(st.lists(strategy, min_size=m, max_size=m))  # noqa: E731
    feature = st.none() | st.booleans() | i64 | finite | text
    return TradesClosed(
        **{key: draw(v) for key, v in envelope().items()},
        shard=draw(st.integers(0, 64)),
        msg_ids=rows(text),
        trade_id=rows(text),
        symbol=rows(symbols),
        side=rows(st.sampled_from(["LONG", "SHORT"])),
        **{c: draw(arrays("<i8", (m,))) for c in ("quantity", "entry_ts", "exit_ts", "bars_held")},
        **{
            c: draw(arrays("<f8", (m,)))
            for c in (
                "entry_price",
                "exit_price",
                "pnl",
                "commission",
                "return_pct",
                "confidence",
            )
        },
        exit_reason=rows(text),
        regime=rows(text),
        features=rows(st.dictionaries(text, feature, max_size=3)),
    )


@st.composite
def approved_chunks(draw: st.DrawFn) -> ApprovedChunk:
    m = draw(st.integers(0, 5))
    return ApprovedChunk(
        **{key: draw(v) for key, v in envelope().items()},
        chunk=draw(i64),
        symbol=draw(arrays("|S4", (m,))),
        **{c: draw(arrays("<i8", (m,))) for c in ("shard", "bar", "quantity", "seq", "expires_ns")},
        side=draw(arrays("|u1", (m,))),
        limit_price=draw(arrays("<f8", (m,))),
        **_pending(draw, "expects"),
        signature=draw(st.binary(max_size=32)),
        refused=draw(text),
    )


@st.composite
def chunk_executions(draw: st.DrawFn) -> ChunkExecution:
    k, f, p = (draw(st.integers(0, 4)) for _ in range(3))
    dates = draw(st.lists(text, min_size=1, max_size=3))
    return ChunkExecution(
        **{key: draw(v) for key, v in envelope().items()},
        chunk=draw(i64),
        diverged=draw(text),
        bar=draw(i64),
        **{c: draw(arrays("<f8", (k,))) for c in ("equity", "cash", "gross_exposure")},
        ts=draw(arrays("<i8", (k,))),
        open_positions=draw(arrays("<i8", (k,))),
        day=NDArray.from_numpy(
            np.array(draw(st.lists(st.integers(0, len(dates) - 1), min_size=k, max_size=k)), "<i8")
        ),
        session_dates=dates,
        held=draw(arrays("<i8", (draw(st.integers(0, 4)),))),
        fill_symbol=draw(arrays("|S4", (f,))),
        **{c: draw(arrays("<i8", (f,))) for c in ("fill_seq", "fill_shard", "fill_bar")},
        fill_price=draw(arrays("<f8", (f,))),
        fill_commission=draw(arrays("<f8", (f,))),
        position_symbols=draw(arrays("|S4", (p,))),
        positions=draw(arrays("<i8", (p,))),
        working=draw(
            st.lists(
                st.builds(
                    BookOrder,
                    order_id=text,
                    symbol=symbols,
                    side=st.sampled_from(["BUY", "SELL"]),
                    remaining=i64,
                    price=finite,
                    purpose=st.sampled_from(["OPEN", "CLOSE"]),
                ),
                max_size=2,
            )
        ),
    )


approvals = st.builds(
    Approval,
    order_id=text,
    symbol=symbols,
    side=st.sampled_from(["BUY", "SELL"]),
    quantity=st.integers(1, 10**9),
    limit_price=st.none() | price,
    expires_ns=ts,
    signature=st.binary(min_size=32, max_size=32),
)

SPECIAL: dict[type, st.SearchStrategy[Message]] = {
    RuleSetSnapshot: st.builds(
        RuleSetSnapshot,
        **envelope(),
        version=st.integers(0, 10**6),
        rules=rules,
        parameters=st.dictionaries(text, finite, max_size=3),
        ruleset_hash=text,
        modification_id=text,
    ),
    ModificationProposal: st.builds(
        ModificationProposal,
        **envelope(),
        proposal_id=text,
        kind=st.sampled_from(["add_rule", "remove_rule", "set_parameter"]),
        reason=text,
        session_date=text,
        rule=st.none() | rule,
        rule_id=text,
        parameter=text,
        value=finite,
        evidence=st.dictionaries(text, st.none() | st.booleans() | i64 | finite | text, max_size=3),
        trigger=text,
    ),
    BarBatch: bar_batches(),
    BarChunk: bar_chunks(),
    RegimeChunk: regime_chunks(),
    IntentChunk: intent_chunks(),
    ChunkVerdict: chunk_verdicts(),
    ChunkHorizon: chunk_horizons(),
    TradesClosed: trades_closed(),
    ApprovedChunk: approved_chunks(),
    ChunkExecution: chunk_executions(),
    RegimeUpdate: regime_updates(),
    DailySummary: daily_summaries(),
    OrderIntent: st.builds(
        OrderIntent,
        **envelope(),
        intent_id=text,
        shard=st.integers(0, 64),
        symbol=symbols,
        side=st.sampled_from(["BUY", "SELL"]),
        purpose=st.sampled_from(["OPEN", "CLOSE"]),
        quantity=st.integers(0, 10**9),
        ref_price=price,
        confidence=st.floats(0, 1),
        regime=text,
        reason=text,
        order_type=st.just("MARKET"),
        limit_price=st.none() | price,
        stop_price=st.none() | price,
    ),
    SubmitOrder: st.builds(
        SubmitOrder,
        **envelope(),
        order_id=text,
        intent_id=text,
        shard=st.integers(0, 64),
        symbol=symbols,
        side=st.sampled_from(["BUY", "SELL"]),
        quantity=st.integers(1, 10**9),
        order_type=st.just("LIMIT"),
        approval=approvals,
        limit_price=price,
    ),
    SessionStarted: st.builds(
        SessionStarted,
        **envelope(),
        run_id=text,
        mode=st.sampled_from(["backtest", "paper", "live"]),
        symbols=arrays("|S4"),
        initial_capital=finite,
    ),
    EquityCurve: st.builds(
        EquityCurve,
        **envelope(),
        ts=arrays("<i8", (3,)),
        equity=arrays("<f8", (3,)),
        cash=arrays("<f8", (3,)),
        gross_exposure=arrays("<f8", (3,)),
        counters=st.dictionaries(text, i64, max_size=3),
    ),
}


def strategy_for(cls: type[Message]) -> st.SearchStrategy[Message]:
    if cls in SPECIAL:
        return SPECIAL[cls]
    if cls is RecentOrderEvents:
        events = st.one_of(*(strategy_for(c) for c in (OrderFilled, OrderCanceled, OrderRejected)))
        return st.builds(RecentOrderEvents, **envelope(), events=st.lists(events, max_size=4))
    # Simple messages: let hypothesis fill the fields, keeping ints inside msgpack's range.
    hints = msgspec.structs.fields(cls)
    overrides: dict[str, st.SearchStrategy[object]] = {}
    for f in hints:
        if f.type is int:
            overrides[f.name] = i64
        elif f.type is float:
            overrides[f.name] = st.floats(width=64)
        elif f.type == list[str]:
            overrides[f.name] = st.lists(text, max_size=3)
        elif f.name in ("counters", "rejected_bars"):
            overrides[f.name] = st.dictionaries(text, i64, max_size=3)
        elif f.name in ("features", "data"):
            overrides[f.name] = st.dictionaries(
                text, st.none() | st.booleans() | i64 | finite | text, max_size=3
            )
    return st.builds(cls, **overrides)


any_message = st.one_of([strategy_for(cls) for cls in ALL_MESSAGES])


@pytest.mark.parametrize("cls", ALL_MESSAGES, ids=lambda c: c.__name__)
@settings(max_examples=40, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_message_round_trips_byte_for_byte(cls: type[Message], data: st.DataObject) -> None:
    msg = data.draw(strategy_for(cls))
    blob = WIRE.encode(msg)
    back = WIRE.decode(blob)
    assert type(back) is cls
    # Byte equality also covers NaN fields, which never compare equal to themselves.
    assert WIRE.encode(back) == blob


@settings(max_examples=100)
@given(st.lists(any_message, max_size=5))
def test_batches_round_trip(messages: list[Message]) -> None:
    blob = WIRE.encode_batch(messages)
    back = WIRE.decode_batch(blob)
    assert [type(m) for m in back] == [type(m) for m in messages]
    assert WIRE.encode_batch(back) == blob


@settings(max_examples=1000)
@given(st.binary(max_size=512))
def test_random_bytes_only_raise_message_decode_error(blob: bytes) -> None:
    for decode in (WIRE.decode, WIRE.decode_batch):
        with contextlib.suppress(MessageDecodeError):
            decode(blob)


@settings(max_examples=300)
@given(any_message, st.data())
def test_mutated_messages_only_raise_message_decode_error(
    msg: Message, data: st.DataObject
) -> None:
    blob = bytearray(WIRE.encode_batch([msg]))
    if not blob:
        return
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(blob) - 1))
        blob[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(blob)))
    for candidate in (bytes(blob), bytes(blob[:cut])):
        with contextlib.suppress(MessageDecodeError):
            WIRE.decode_batch(candidate)


def test_unknown_tag_is_named() -> None:
    blob = msgspec.msgpack.encode([{"type": "LaunchMissiles", "msg_id": "x"}])
    with pytest.raises(MessageDecodeError, match="LaunchMissiles"):
        WIRE.decode_batch(blob)


def test_wrong_type_is_named() -> None:
    blob = msgspec.msgpack.encode(
        {
            "type": "CancelOrder",
            "msg_id": 5,
            "ts_event": 1,
            "ts_init": 1,
            "order_id": "a",
            "reason": "",
        }
    )
    with pytest.raises(MessageDecodeError, match="msg_id"):
        WIRE.decode(blob)


# -- RULE TREES ---------------------------------------------------------------------------

LEAF = RegimeIs("Volatile")
_enc = msgspec.msgpack.encode


def chain(operators: int) -> bytes:
    """A condition ``operators`` levels of Or, And and Not over one leaf (depth
    ``operators + 1``), as msgpack written out level by level: the nested Python objects
    of a deep one could not be encoded (nor built, once a Rule refuses them)."""
    heads = {
        "Not": b"\x82" + _enc("type") + _enc("Not") + _enc("item"),
        # A one-item array follows the field name.
        "And": b"\x82" + _enc("type") + _enc("And") + _enc("items") + b"\x91",
        "Or": b"\x82" + _enc("type") + _enc("Or") + _enc("items") + b"\x91",
    }
    # Mostly Nots: each And or Or adds an array level msgspec's decoder counts too.
    kinds = ["Or", "And", *["Not"] * max(0, operators - 2)][:operators]
    return b"".join(heads[k] for k in kinds) + _enc(LEAF)


def carrying(cls: type[Message], condition: bytes) -> bytes:
    """A message of ``cls`` whose one rule has ``condition`` (msgpack)."""
    rule = Rule(rule_id="deep", condition=LEAF, action=SkipTrade("deep"))
    head = {"msg_id": "m", "ts_event": 1, "ts_init": 1}
    if cls is RuleSetSnapshot:
        msg: Message = RuleSetSnapshot(
            **head, version=1, rules=[rule], parameters={}, ruleset_hash=""
        )
    else:
        msg = ModificationProposal(
            **head, proposal_id="p", kind="add_rule", reason="", session_date="", rule=rule
        )
    blob = WIRE.encode(msg)
    assert blob.count(_enc(LEAF)) == 1
    return blob.replace(_enc(LEAF), condition)


def rule_of(msg: Message) -> Rule:
    if isinstance(msg, RuleSetSnapshot):
        (rule,) = msg.rules
        return rule
    assert isinstance(msg, ModificationProposal) and msg.rule is not None
    return msg.rule


@pytest.mark.parametrize("cls", [RuleSetSnapshot, ModificationProposal])
def test_a_rule_tree_too_deep_to_compile_is_refused_at_decode(cls: type[Message]) -> None:
    """A 900-deep tree decoded, and then code generation crashed on it (RecursionError):
    the decoder refuses it, as any tree deeper than MAX_TREE_DEPTH."""
    # 900 levels are near msgspec's own recursion guard, which a deeper stack of callers
    # may trip first: refused either way.
    deepest = f"deeper than {MAX_TREE_DEPTH}|recursion depth"
    one_over = f"deeper than {MAX_TREE_DEPTH}"
    for blob, why in (
        (carrying(cls, chain(900)), deepest),
        (carrying(cls, chain(MAX_TREE_DEPTH)), one_over),
    ):
        with pytest.raises(MessageDecodeError, match=why):
            WIRE.decode(blob)
        with pytest.raises(MessageDecodeError, match=why):
            WIRE.decode_batch(b"\x91" + blob)
    assert rule_of(WIRE.decode(carrying(cls, chain(MAX_TREE_DEPTH - 1)))).rule_id == "deep"


@pytest.mark.parametrize("cls", [RuleSetSnapshot, ModificationProposal])
def test_a_rule_tree_with_too_many_nodes_is_refused_at_decode(cls: type[Message]) -> None:
    """A flat And of a few thousand terms is shallow but overflows Python's compiler on
    the generated ``&`` chain: the node count is bounded too."""
    wide = And(tuple(VolumeBelow(i % 100) for i in range(MAX_TREE_NODES)))  # one node over
    with pytest.raises(MessageDecodeError, match=f"more than {MAX_TREE_NODES} nodes"):
        WIRE.decode(carrying(cls, _enc(wide)))
    fits = And(wide.items[1:])
    assert rule_of(WIRE.decode(carrying(cls, _enc(fits)))).condition == fits


def test_truncated_column_is_refused() -> None:
    batch = BarBatch.from_arrays(
        msg_id="b",
        ts=1,
        interval_s=60,
        symbols=np.array([b"AAPL", b"MSFT"]),
        open=np.ones(2),
        high=np.ones(2),
        low=np.ones(2),
        close=np.ones(2),
        volume=np.ones(2),
    )
    raw = msgspec.msgpack.decode(WIRE.encode(batch))
    raw["close"][2] = raw["close"][2][:-1]  # one byte short of two float64s
    with pytest.raises(MessageDecodeError, match="need 16"):
        WIRE.decode(msgspec.msgpack.encode(raw))


def test_a_batch_of_closed_trades_is_its_trades_and_its_columns_must_agree() -> None:
    trades = [
        TradeClosed(
            msg_id=f"shard-1:{i}",
            ts_event=100 + i,
            ts_init=100 + i,
            trade_id=f"SYM{i}-1",
            shard=1,
            symbol=f"SYM{i}",
            side="LONG",
            quantity=100,
            entry_ts=50,
            exit_ts=100 + i,
            entry_price=10.0,
            exit_price=10.0 + i,
            pnl=100.0 * i,
            commission=0.0,
            return_pct=0.1 * i,
            bars_held=i,
            exit_reason="stop",
            regime="Ranging",
            confidence=1.0,
            features={"atr": 0.5 * i, "atr_pct": None},
        )
        for i in range(3)
    ]
    batch = TradesClosed.of(trades, msg_id="shard-1:4", shard=1)
    assert len(batch) == 3 and batch.ts_event == 102
    assert WIRE.decode(WIRE.encode(batch)).trades() == trades
    assert TradesClosed.of([], msg_id="e", shard=0).trades() == []
    raw = msgspec.msgpack.decode(WIRE.encode(batch))
    raw["trade_id"] = raw["trade_id"][:2]  # a row short
    with pytest.raises(MessageDecodeError, match="trade_id"):
        WIRE.decode(msgspec.msgpack.encode(raw))
    raw = msgspec.msgpack.decode(WIRE.encode(batch))
    raw["pnl"] = NDArray.from_numpy(np.zeros(3, dtype="<i8"))  # the wrong dtype
    with pytest.raises(MessageDecodeError, match="pnl"):
        WIRE.decode(msgspec.msgpack.encode(raw))


def test_column_dtype_must_be_little_endian_and_known() -> None:
    with pytest.raises(ValueError, match="unsupported array dtype"):
        NDArray(dtype=">f8", shape=(1,), data=b"\0" * 8)
    with pytest.raises(ValueError, match="unsupported array dtype"):
        NDArray(dtype="|O", shape=(1,), data=b"\0" * 8)


def test_bar_batch_columns_are_raw_bytes_not_python_objects() -> None:
    batch = BarBatch.from_arrays(
        msg_id="b",
        ts=1,
        interval_s=60,
        symbols=np.array([b"AAPL", b"MSFT"]),
        open=np.array([1.0, 2.0]),
        high=np.array([1.5, 2.5]),
        low=np.array([0.5, 1.5]),
        close=np.array([1.2, 2.2]),
        volume=np.array([100.0, 200.0]),
    )
    raw = msgspec.msgpack.decode(WIRE.encode(batch))
    assert raw["close"] == ["<f8", [2], np.array([1.2, 2.2]).tobytes()]
    decoded = WIRE.decode(WIRE.encode(batch))
    assert isinstance(decoded, BarBatch)
    np.testing.assert_array_equal(decoded.close.to_numpy(), [1.2, 2.2])
    assert decoded.symbols.to_numpy().tolist() == [b"AAPL", b"MSFT"]


# -- FILTERED DECODING (an actor's ``accepts``) -----------------------------------------

type_sets = st.sets(st.sampled_from(ALL_MESSAGES), max_size=6).map(frozenset)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(any_message, max_size=8), type_sets)
def test_a_filtered_decode_is_the_full_decode_filtered(
    messages: list[Message], accepts: frozenset[type[Message]]
) -> None:
    blob = WIRE.encode_batch(messages)
    kept = WIRE.decode_batch_of(blob, accepts)
    expected = [m for m in WIRE.decode_batch(blob) if type(m) in accepts]
    assert [type(m) for m in kept] == [type(m) for m in expected]
    assert WIRE.encode_batch(kept) == WIRE.encode_batch(expected)


@settings(max_examples=500)
@given(st.binary(max_size=512), type_sets)
def test_random_bytes_filtered_only_raise_message_decode_error(
    blob: bytes, accepts: frozenset[type[Message]]
) -> None:
    with contextlib.suppress(MessageDecodeError):
        WIRE.decode_batch_of(blob, accepts)


def test_a_filtered_decode_still_refuses_malformed_batches() -> None:
    only_orders = frozenset({SubmitOrder})
    for blob in (
        b"\x93\x01",  # an array that ends early
        msgspec.msgpack.encode([{"type": "LaunchMissiles", "msg_id": "x"}]),
        msgspec.msgpack.encode([7]),
        msgspec.msgpack.encode({"type": "SubmitOrder"}),  # not a batch
    ):
        with pytest.raises(MessageDecodeError):
            WIRE.decode_batch_of(blob, only_orders)
    # An accepted message with a bad field fails the batch, as a full decode does.
    bad = msgspec.msgpack.encode(
        [{"type": "CancelOrder", "msg_id": 5, "ts_event": 1, "ts_init": 1, "order_id": "a"}]
    )
    with pytest.raises(MessageDecodeError, match="msg_id"):
        WIRE.decode_batch_of(bad, frozenset({CancelOrder}))
    # A skipped one is not built, so its fields are not checked: the consumer never reads it.
    assert WIRE.decode_batch_of(bad, only_orders) == []


def test_a_filter_must_name_wire_types() -> None:
    class NotOnTheWire(Message, frozen=True):
        pass

    with pytest.raises(ValueError, match="NotOnTheWire"):
        WIRE.decode_batch_of(WIRE.encode_batch([]), frozenset({NotOnTheWire}))


def test_column_dtype_is_matched_whole() -> None:
    for dtype in ("<f8\n", "<f8 ", "|S100", "|S0", "<f16"):
        with pytest.raises(ValueError, match="unsupported array dtype"):
            NDArray(dtype=dtype, shape=(1,), data=b"\0" * 8)
    # A refused dtype stays refused after an accepted one was seen (the dtype cache).
    NDArray(dtype="<f8", shape=(1,), data=b"\0" * 8)
    with pytest.raises(ValueError, match="unsupported array dtype"):
        NDArray(dtype=">f8", shape=(1,), data=b"\0" * 8)

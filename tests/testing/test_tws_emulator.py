"""The TWS emulator, driven by the real ib_async client through its synchronous API."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import pytest
from ib_async import IB, ExecutionFilter, LimitOrder, MarketOrder, Stock, Trade

from sovereign.data.loaders import LoadedData, load_ohlcv
from sovereign.testing.tws import TwsEmulator

HOST = "127.0.0.1"
NS = 1_000_000_000


# -- HELPERS --------------------------------------------------------------------------


def pump(ib: IB, seconds: float = 0.0) -> None:
    """Let ib_async process what arrived (a socket that drops mid-sleep raises there)."""
    with contextlib.suppress(ConnectionError):
        ib.sleep(seconds)


def wait_for(ib: IB, condition: Callable[[], bool], what: str, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        pump(ib, 0.01)


def wait_gone(emulator: TwsEmulator, client_id: int, timeout: float = 3.0) -> None:
    """Wait until the emulator has noticed a client hang up (reusing its id before is a 326)."""
    deadline = time.monotonic() + timeout
    while client_id in emulator.connected_clients():
        assert time.monotonic() < deadline, f"client {client_id} still connected"
        time.sleep(0.005)


def new_ib(max_client_version: int | None = None) -> IB:
    ib = IB()
    ib.client.MaxRequests = 0  # the emulator has no pacing limit to respect
    if max_client_version is not None:
        ib.client.MaxClientVersion = max_client_version
    return ib


def bar(data: LoadedData, index: int, symbol: str = "AAPL") -> dict[str, float]:
    frame = data.frame
    row = frame[(frame["ts"] == data.timestamps[index]) & (frame["symbol"] == symbol)]
    return row.iloc[0].to_dict()


def utc_text(ns: int) -> str:
    return datetime.fromtimestamp(ns / NS, UTC).strftime("%Y%m%d-%H:%M:%S")


def held(ib: IB) -> dict[str, float]:
    return {p.contract.symbol: p.position for p in ib.positions()}


def placed(ib: IB, trade: Trade) -> Trade:
    wait_for(ib, lambda: trade.orderStatus.status == "Submitted", "the order to be working")
    return trade


@pytest.fixture(scope="module")
def minute() -> LoadedData:
    return load_ohlcv("sample:minute")


@pytest.fixture(scope="module")
def daily() -> LoadedData:
    return load_ohlcv("sample")


@pytest.fixture
def emulator(minute: LoadedData) -> Iterator[TwsEmulator]:
    emu = TwsEmulator(minute)
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()
        alive = [t for t in threading.enumerate() if t.name == "tws-emulator" and t.is_alive()]
        assert not alive, "the emulator's thread outlived stop()"


@pytest.fixture
def connect(emulator: TwsEmulator) -> Iterator[Callable[..., IB]]:
    """Open ib_async connections to the emulator; all are closed after the test."""
    opened: list[IB] = []

    def _connect(client_id: int = 1, ib: IB | None = None, timeout: float = 5) -> IB:
        ib = ib or new_ib()
        opened.append(ib)
        ib.connect(HOST, emulator.port, clientId=client_id, timeout=timeout)
        return ib

    yield _connect
    for ib in opened:
        ib.disconnect()
        pump(ib)  # lets the closed transports finish on ib_async's loop


@pytest.fixture
def aapl() -> Stock:
    return Stock("AAPL", "SMART", "USD")


# -- SESSION --------------------------------------------------------------------------


def test_connect_is_fast_and_sees_the_account_and_next_id(
    emulator: TwsEmulator, connect: Callable[..., IB]
) -> None:
    ib = new_ib()
    next_ids: list[int] = []
    ib.wrapper.nextValidId = next_ids.append  # ib_async's own handler does nothing
    started = time.monotonic()
    connect(client_id=11, ib=ib)
    assert time.monotonic() - started < 2.0
    assert ib.isConnected()
    assert ib.client.serverVersion() == 178
    assert ib.managedAccounts() == ["DU1234567"]
    assert next_ids == [1]
    assert emulator.connected_clients() == [11]
    started = time.monotonic()
    ib.disconnect()
    wait_gone(emulator, 11)
    assert time.monotonic() - started < 2.0


def test_a_client_id_in_use_is_refused(emulator: TwsEmulator, connect: Callable[..., IB]) -> None:
    connect(client_id=4)
    second = new_ib()
    errors: list[int] = []
    second.errorEvent += lambda req_id, code, text, contract: errors.append(code)
    # ib_async does not fail fast on 326: it waits out its timeout, so keep that short.
    with pytest.raises((TimeoutError, ConnectionError)):
        second.connect(HOST, emulator.port, clientId=4, timeout=0.5)
    assert 326 in errors
    assert emulator.connected_clients() == [4]


def test_contracts_qualify_with_a_stable_con_id(
    emulator: TwsEmulator, connect: Callable[..., IB], aapl: Stock
) -> None:
    ib = connect()
    (qualified,) = ib.qualifyContracts(aapl)
    assert qualified.conId > 0 and qualified.primaryExchange
    details = ib.reqContractDetails(Stock(conId=qualified.conId))
    assert [d.contract.symbol for d in details] == ["AAPL"]
    assert ib.qualifyContracts(Stock("NOPE", "SMART", "USD")) == [None]
    other = TwsEmulator(load_ohlcv("sample:minute"))
    with other:
        ib2 = new_ib()
        ib2.connect(HOST, other.port, clientId=1, timeout=5)
        assert ib2.qualifyContracts(Stock("AAPL", "SMART", "USD"))[0].conId == qualified.conId
        ib2.disconnect()
        pump(ib2)


# -- HISTORICAL DATA ------------------------------------------------------------------


def test_midpoint_history_ends_at_the_current_bar_and_follows_the_clock(
    emulator: TwsEmulator, connect: Callable[..., IB], aapl: Stock, minute: LoadedData
) -> None:
    ib = connect()
    bars = ib.reqHistoricalData(aapl, "", "3600 S", "1 min", "MIDPOINT", True, formatDate=2)
    # The clock starts on bar 50: bars 0..50, all inside the hour, and nothing later.
    assert emulator.index == 50
    expected = [int(t) // NS for t in minute.timestamps[:51]]
    assert [int(b.date.timestamp()) for b in bars] == expected
    assert all(b.volume == -1 and b.average == -1 and b.barCount == -1 for b in bars)
    last = bar(minute, 50)
    assert (bars[-1].open, bars[-1].high, bars[-1].low, bars[-1].close) == pytest.approx(
        (last["open"], last["high"], last["low"], last["close"])
    )
    emulator.advance()
    again = ib.reqHistoricalData(aapl, "", "3600 S", "1 min", "MIDPOINT", True, formatDate=2)
    assert len(again) == 52
    assert int(again[-1].date.timestamp()) == emulator.now_ts() // NS


def test_trades_history_has_real_volume_and_text_dates(
    emulator: TwsEmulator, connect: Callable[..., IB], aapl: Stock, minute: LoadedData
) -> None:
    ib = connect()
    bars = ib.reqHistoricalData(aapl, "", "1 D", "1 min", "TRADES", True, formatDate=1)
    assert len(bars) == 51
    assert isinstance(bars[-1].date, datetime) and bars[-1].date.tzinfo is not None
    assert int(bars[-1].date.timestamp()) == emulator.now_ts() // NS
    assert bars[-1].volume == bar(minute, 50)["volume"]
    five = ib.reqHistoricalData(aapl, "", "1 D", "5 mins", "TRADES", True, formatDate=2)
    assert len(five) == 11  # 51 one-minute bars from 09:30: ten full buckets and one forming
    assert sum(b.volume for b in five) == sum(b.volume for b in bars)


def test_daily_history_reports_dates(daily: LoadedData) -> None:
    with TwsEmulator(daily, start_index=100) as emu:
        ib = new_ib()
        ib.connect(HOST, emu.port, clientId=1, timeout=5)
        try:
            bars = ib.reqHistoricalData(
                Stock("IBM", "SMART", "USD"), "", "2 D", "1 day", "MIDPOINT", True, formatDate=2
            )
            assert [type(b.date) for b in bars] == [date, date]
            ny_day = datetime.fromtimestamp(emu.now_ts() / NS, ZoneInfo("America/New_York")).date()
            assert bars[-1].date == ny_day
        finally:
            ib.disconnect()
            pump(ib)


def test_unknown_symbol_history_is_error_200(
    emulator: TwsEmulator, connect: Callable[..., IB]
) -> None:
    ib = connect()
    errors: list[int] = []
    ib.errorEvent += lambda req_id, code, text, contract: errors.append(code)
    bars = ib.reqHistoricalData(
        Stock("NOPE", "SMART", "USD"), "", "1 D", "1 min", "MIDPOINT", True, formatDate=2
    )
    assert list(bars) == []
    assert errors == [200]


def test_keep_up_to_date_streams_each_new_bar(
    emulator: TwsEmulator, connect: Callable[..., IB], aapl: Stock
) -> None:
    ib = connect()
    bars = ib.reqHistoricalData(
        aapl, "", "600 S", "1 min", "MIDPOINT", True, formatDate=2, keepUpToDate=True
    )
    before = len(bars)
    emulator.advance(2)
    wait_for(ib, lambda: len(bars) == before + 2, "two streamed bars")
    assert int(bars[-1].date.timestamp()) == emulator.now_ts() // NS
    ib.cancelHistoricalData(bars)


# -- ORDERS ---------------------------------------------------------------------------


def test_market_order_fills_at_the_next_open_with_commission_and_position(
    emulator: TwsEmulator, connect: Callable[..., IB], aapl: Stock, minute: LoadedData
) -> None:
    ib = connect()
    (contract,) = ib.qualifyContracts(aapl)
    trade = placed(ib, ib.placeOrder(contract, MarketOrder("BUY", 10, orderRef="mkt-1")))
    assert trade.order.permId > 0
    emulator.advance()
    wait_for(
        ib,
        lambda: trade.orderStatus.status == "Filled" and trade.fills != [],
        "the fill",
    )
    fill = trade.fills[0]
    next_open = bar(minute, 51)["open"]
    assert fill.execution.price == pytest.approx(next_open)
    assert fill.execution.shares == 10 and fill.execution.side == "BOT"
    assert fill.execution.orderRef == "mkt-1"
    assert fill.execution.permId == trade.order.permId
    assert int(fill.execution.time.timestamp()) == emulator.now_ts() // NS
    assert fill.commissionReport.execId == fill.execution.execId
    assert fill.commissionReport.commission == pytest.approx(1.0)  # 10 x 0.005 -> the minimum
    wait_for(ib, lambda: held(ib) == {"AAPL": 10}, "the position")
    assert emulator.positions() == {"AAPL": 10}
    (ex,) = emulator.executions()
    assert (ex.execId, ex.permId, ex.orderRef) == (
        fill.execution.execId,
        trade.order.permId,
        "mkt-1",
    )
    assert emulator.cash() == pytest.approx(1_000_000 - 10 * next_open - 1.0)
    (item,) = ib.portfolio()
    assert item.position == 10 and item.marketPrice == pytest.approx(bar(minute, 51)["close"])
    summary = {v.tag: float(v.value) for v in ib.accountSummary() if v.currency == "USD"}
    assert summary["TotalCashValue"] == pytest.approx(emulator.cash(), abs=0.01)
    assert summary["NetLiquidation"] == pytest.approx(
        emulator.cash() + 10 * item.marketPrice, abs=0.01
    )


def test_limit_order_fills_only_when_the_bar_trades_through(
    emulator: TwsEmulator, connect: Callable[..., IB], aapl: Stock, minute: LoadedData
) -> None:
    ib = connect()
    nxt = bar(minute, 51)
    assert nxt["low"] < nxt["open"], "the test needs a bar that trades below its open"
    limit = round((nxt["low"] + nxt["open"]) / 2, 2)
    trade = placed(ib, ib.placeOrder(aapl, LimitOrder("BUY", 3, limit, orderRef="lmt-1")))
    emulator.advance()
    wait_for(ib, lambda: trade.orderStatus.status == "Filled", "the limit fill")
    assert trade.fills[0].execution.price == pytest.approx(limit)  # min(open, limit)


def test_unmarketable_limit_order_stays_working_until_cancelled(
    emulator: TwsEmulator, connect: Callable[..., IB], aapl: Stock
) -> None:
    ib = connect()
    trade = placed(ib, ib.placeOrder(aapl, LimitOrder("BUY", 5, 1.00, orderRef="far")))
    emulator.advance(3)
    pump(ib, 0.05)
    assert trade.orderStatus.status == "Submitted"
    assert [o.status for o in emulator.orders()] == ["Submitted"]
    errors: list[int] = []
    ib.errorEvent += lambda req_id, code, text, contract: errors.append(code)
    ib.cancelOrder(trade.order)
    wait_for(ib, lambda: trade.orderStatus.status == "Cancelled", "the cancel")
    wait_for(ib, lambda: 202 in errors, "error 202")
    assert [o.status for o in emulator.orders()] == ["Cancelled"]
    assert emulator.executions() == [] and emulator.positions() == {}


def test_working_order_is_rebound_after_a_reconnect_and_can_be_cancelled(
    emulator: TwsEmulator, connect: Callable[..., IB], aapl: Stock
) -> None:
    ib = connect(client_id=2)
    trade = placed(ib, ib.placeOrder(aapl, LimitOrder("SELL", 4, 9_999.0, tif="GTC")))
    emulator.drop_connections()
    wait_for(ib, lambda: not ib.isConnected(), "the drop")
    ib.connect(HOST, emulator.port, clientId=2, timeout=5)
    (again,) = ib.openTrades()
    assert (again.order.orderId, again.order.permId) == (trade.order.orderId, trade.order.permId)
    assert again.orderStatus.status == "Submitted"
    ib.cancelOrder(again.order)
    wait_for(ib, lambda: again.orderStatus.status == "Cancelled", "the cancel")


def test_fill_during_a_disconnect_is_recovered_by_req_executions(
    emulator: TwsEmulator, connect: Callable[..., IB], aapl: Stock
) -> None:
    ib = connect(client_id=3)
    trade = placed(ib, ib.placeOrder(aapl, MarketOrder("BUY", 7, orderRef="inflight-1")))
    perm_id = trade.order.permId
    emulator.drop_connections()
    wait_for(ib, lambda: not ib.isConnected(), "the drop")
    emulator.advance()  # the order fills while nobody is connected
    (ex,) = emulator.executions()
    assert ex.permId == perm_id

    ib.connect(HOST, emulator.port, clientId=3, timeout=5)
    fills = ib.reqExecutions(ExecutionFilter(clientId=3))
    assert [(f.execution.execId, f.execution.permId, f.execution.orderRef) for f in fills] == [
        (ex.execId, perm_id, "inflight-1")
    ]
    # connect() already fetched this execution, so ib_async attached the commission to
    # its first Fill (ib.fills()), not to the one this second request returned.
    assert [f.commissionReport.commission for f in ib.fills()] == [ex.commission]
    assert held(ib) == {"AAPL": 7} and emulator.positions() == {"AAPL": 7}
    assert len(emulator.orders()) == 1
    assert [t.order.permId for t in ib.trades()] == [perm_id]
    assert ib.openTrades() == []
    # "yyyymmdd-hh:mm:ss" is UTC; the filter keeps executions at or after it.
    assert len(ib.reqExecutions(ExecutionFilter(time=utc_text(ex.time)))) == 1
    assert ib.reqExecutions(ExecutionFilter(time=utc_text(ex.time + NS))) == []


def test_frozen_orders_wait_for_their_client(
    emulator: TwsEmulator, connect: Callable[..., IB], aapl: Stock, minute: LoadedData
) -> None:
    emulator.fill_while_disconnected(False)
    ib = connect(client_id=8)
    placed(ib, ib.placeOrder(aapl, MarketOrder("BUY", 1)))
    emulator.drop_connections()
    # Reconnecting before ib_async has seen the drop fails: its pending disconnect
    # cancels the new connect() with ConnectionError("Socket disconnect").
    wait_for(ib, lambda: not ib.isConnected(), "the drop")
    emulator.advance()
    assert emulator.executions() == []
    ib.connect(HOST, emulator.port, clientId=8, timeout=5)
    emulator.advance()
    (ex,) = emulator.executions()
    assert ex.price == pytest.approx(bar(minute, 52)["open"])


def test_rejected_order_reports_error_201_and_ends_done(
    emulator: TwsEmulator, connect: Callable[..., IB], aapl: Stock
) -> None:
    ib = connect()
    errors: list[tuple[int, int, str]] = []
    ib.errorEvent += lambda req_id, code, text, contract: errors.append((req_id, code, text))
    emulator.reject_next_order("no margin left")
    trade = ib.placeOrder(aapl, MarketOrder("BUY", 10, orderRef="rej-1"))
    wait_for(ib, lambda: trade.isDone(), "the reject")
    assert trade.orderStatus.status in ("Cancelled", "Inactive")
    assert [(r, c) for r, c, _ in errors] == [(trade.order.orderId, 201)]
    assert "no margin left" in errors[0][2]
    (order,) = emulator.orders()
    assert (order.status, order.orderRef) == ("Inactive", "rej-1")
    # Only the next order is rejected.
    placed(ib, ib.placeOrder(aapl, MarketOrder("BUY", 10, orderRef="ok-1")))


def test_day_order_expires_with_its_session(daily: LoadedData) -> None:
    with TwsEmulator(daily, start_index=100) as emu:
        ib = new_ib()
        ib.connect(HOST, emu.port, clientId=1, timeout=5)
        try:
            ibm = Stock("IBM", "SMART", "USD")
            day = placed(ib, ib.placeOrder(ibm, LimitOrder("BUY", 1, 1.0)))
            gtc = placed(ib, ib.placeOrder(ibm, LimitOrder("BUY", 1, 1.0, tif="GTC")))
            emu.advance()  # the first session the orders can trade in
            pump(ib, 0.05)
            assert day.orderStatus.status == "Submitted"
            emu.advance()
            wait_for(ib, lambda: day.orderStatus.status == "Cancelled", "the DAY expiry")
            assert gtc.orderStatus.status == "Submitted"
        finally:
            ib.disconnect()
            pump(ib)


def test_what_if_order_previews_margin_without_placing(
    emulator: TwsEmulator, connect: Callable[..., IB], aapl: Stock
) -> None:
    ib = connect()
    state = ib.whatIfOrder(aapl, MarketOrder("BUY", 100))
    assert float(state.initMarginChange) > 0 and state.commission == pytest.approx(1.0)
    assert emulator.orders() == []


# -- IDS ------------------------------------------------------------------------------


def test_reset_order_ids_rolls_next_valid_id_back_but_perm_ids_stay_unique(
    emulator: TwsEmulator, connect: Callable[..., IB], aapl: Stock
) -> None:
    ib = new_ib()
    next_ids: list[int] = []
    ib.wrapper.nextValidId = next_ids.append
    connect(client_id=5, ib=ib)
    first = placed(ib, ib.placeOrder(aapl, MarketOrder("BUY", 1, orderRef="before")))
    emulator.advance()
    wait_for(ib, lambda: first.orderStatus.status == "Filled", "the first fill")
    ib.disconnect()
    wait_gone(emulator, 5)
    emulator.reset_order_ids(1)

    connect(client_id=5, ib=ib)
    assert next_ids == [1, 1]
    second = placed(ib, ib.placeOrder(aapl, MarketOrder("BUY", 1, orderRef="after")))
    assert second.order.orderId == first.order.orderId  # the id is reused after the reset
    assert second.order.permId != first.order.permId
    perm_ids = [o.permId for o in emulator.orders()]
    assert len(perm_ids) == len(set(perm_ids)) == 2


def test_without_a_reset_next_valid_id_moves_past_used_ids(
    emulator: TwsEmulator, connect: Callable[..., IB], aapl: Stock
) -> None:
    ib = new_ib()
    next_ids: list[int] = []
    ib.wrapper.nextValidId = next_ids.append
    connect(client_id=6, ib=ib)
    trade = placed(ib, ib.placeOrder(aapl, MarketOrder("BUY", 1)))
    ib.disconnect()
    wait_gone(emulator, 6)
    connect(client_id=6, ib=ib)
    assert next_ids == [1, trade.order.orderId + 1]


# -- FAULTS ---------------------------------------------------------------------------


def test_go_down_refuses_connections_until_come_up(
    emulator: TwsEmulator, connect: Callable[..., IB]
) -> None:
    ib = connect(client_id=1)
    port = emulator.port
    emulator.go_down()
    wait_for(ib, lambda: not ib.isConnected(), "the drop")
    with pytest.raises(OSError):
        new_ib().connect(HOST, port, clientId=2, timeout=2)
    emulator.come_up()
    assert emulator.port == port
    connect(client_id=1, ib=ib)
    assert ib.isConnected()


def test_delayed_replies_slow_the_handshake_but_keep_their_order(
    emulator: TwsEmulator, connect: Callable[..., IB], aapl: Stock
) -> None:
    emulator.set_delay(0.05)
    started = time.monotonic()
    ib = connect()
    # At least four round trips: version, startApi, the start-up requests, executions.
    assert time.monotonic() - started >= 0.2
    emulator.set_delay(0.0)
    assert len(ib.reqHistoricalData(aapl, "", "600 S", "1 min", "MIDPOINT", True, 2)) > 0


def test_wall_clock_advances_on_its_own(minute: LoadedData) -> None:
    # 60-second bars at 1200x: one bar every 50 ms.
    with TwsEmulator(minute, clock="wall", speed=1200.0) as emu:
        start = emu.index
        deadline = time.monotonic() + 3.0
        while emu.index < start + 2:
            assert time.monotonic() < deadline, "the wall clock did not move"
            time.sleep(0.01)


# -- VERSIONS -------------------------------------------------------------------------


@pytest.mark.parametrize("version", [163, 170, 176])
def test_older_server_versions_keep_their_field_layouts(
    emulator: TwsEmulator, connect: Callable[..., IB], aapl: Stock, version: int
) -> None:
    ib = connect(ib=new_ib(max_client_version=version))
    assert ib.client.serverVersion() == version
    (contract,) = ib.qualifyContracts(aapl)
    assert contract.conId > 0
    trade = placed(ib, ib.placeOrder(contract, MarketOrder("SELL", 2, orderRef=f"v{version}")))
    assert trade.order.permId > 0 and trade.order.orderRef == f"v{version}"
    emulator.advance()
    wait_for(ib, lambda: trade.orderStatus.status == "Filled" and trade.fills != [], "the fill")
    assert trade.fills[0].execution.side == "SLD"
    assert trade.fills[0].commissionReport.commission == pytest.approx(1.0)
    assert [t.order.permId for t in ib.reqCompletedOrders(apiOnly=False)] == [trade.order.permId]
    errors: list[int] = []
    ib.errorEvent += lambda req_id, code, text, contract: errors.append(code)
    emulator.reject_next_order()
    rejected = ib.placeOrder(contract, MarketOrder("BUY", 1))
    wait_for(ib, lambda: rejected.isDone(), "the reject")
    assert errors == [201]

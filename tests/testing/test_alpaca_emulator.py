"""The Alpaca emulator, driven through the real alpaca-py clients."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import pytest
import requests
from alpaca.common.exceptions import APIError
from alpaca.data.historical import StockHistoricalDataClient
from alpaca.data.live import StockDataStream
from alpaca.data.models import Bar
from alpaca.data.requests import StockBarsRequest, StockLatestBarRequest
from alpaca.data.timeframe import TimeFrame
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderSide, OrderStatus, QueryOrderStatus, TimeInForce
from alpaca.trading.models import TradeActivity
from alpaca.trading.requests import GetOrdersRequest, LimitOrderRequest, MarketOrderRequest

from sovereign.data.loaders import LoadedData, load_ohlcv
from sovereign.testing.alpaca import AlpacaEmulator

KEY, SECRET = "test-key", "test-secret"
NY = "America/New_York"


@pytest.fixture(scope="module")
def daily() -> LoadedData:
    return load_ohlcv("sample")


@pytest.fixture(scope="module")
def minute() -> LoadedData:
    return load_ohlcv("sample:minute")


@pytest.fixture
def emulator(daily: LoadedData) -> Iterator[AlpacaEmulator]:
    with AlpacaEmulator(daily) as em:
        yield em


def trading(em: AlpacaEmulator, key: str = KEY, secret: str = SECRET) -> TradingClient:
    return TradingClient(key, secret, paper=True, url_override=em.base_url)


def market_data(em: AlpacaEmulator, key: str = KEY) -> StockHistoricalDataClient:
    return StockHistoricalDataClient(key, SECRET, url_override=em.base_url)


def buy(symbol: str, qty: int, client_order_id: str | None = None) -> MarketOrderRequest:
    return MarketOrderRequest(
        symbol=symbol,
        qty=qty,
        side=OrderSide.BUY,
        time_in_force=TimeInForce.DAY,
        client_order_id=client_order_id,
    )


def bar_at(data: LoadedData, index: int, symbol: str) -> pd.Series:
    frame = data.frame
    rows = frame[(frame["ts"] == data.timestamps[index]) & (frame["symbol"] == symbol)]
    return rows.iloc[0]


def fill_activities(em: AlpacaEmulator, **params: Any) -> list[dict[str, Any]]:
    # alpaca-py's TradingClient has no activities call; go through its REST plumbing.
    return trading(em).get("/account/activities/FILL", params or None)


# -- ACCOUNT AND AUTH --


def test_account_parses_with_the_real_client(emulator: AlpacaEmulator) -> None:
    account = trading(emulator).get_account()
    assert account.status == "ACTIVE"
    assert float(account.cash) == pytest.approx(100_000.0)
    assert float(account.buying_power) == pytest.approx(100_000.0)
    clock = trading(emulator).get_clock()
    assert clock.timestamp.timestamp() * 1e9 == pytest.approx(emulator.now_ts())
    assert not clock.is_open  # daily bars: the clock stands at 16:00, after the close


def test_wrong_keys_raise_api_error(emulator: AlpacaEmulator) -> None:
    with pytest.raises(APIError) as trade_err:
        trading(emulator, secret="nope").get_account()
    assert trade_err.value.status_code == 401
    request = StockBarsRequest(symbol_or_symbols="AAPL", timeframe=TimeFrame.Day)
    with pytest.raises(APIError) as data_err:
        market_data(emulator, key="nope").get_stock_bars(request)
    assert data_err.value.status_code == 403


# -- ORDERS --


def test_market_order_fills_at_next_open(emulator: AlpacaEmulator, daily: LoadedData) -> None:
    client = trading(emulator)
    submitted = client.submit_order(buy("AAPL", 10, "coid-1"))
    assert submitted.client_order_id == "coid-1"
    assert submitted.status == OrderStatus.ACCEPTED  # received after the close
    assert float(submitted.filled_qty) == 0

    start = emulator.index
    emulator.advance()
    open_price = float(bar_at(daily, start + 1, "AAPL")["open"])
    order = client.get_order_by_client_id("coid-1")
    assert order.id == submitted.id
    assert order.status == OrderStatus.FILLED
    assert float(order.filled_qty) == 10
    assert float(order.filled_avg_price) == pytest.approx(open_price)
    assert order.filled_at is not None
    assert order.filled_at.timestamp() * 1e9 == daily.timestamps[start + 1]

    positions = {p.symbol: int(p.qty) for p in client.get_all_positions()}
    assert positions == emulator.positions() == {"AAPL": 10}
    assert float(client.get_open_position("AAPL").avg_entry_price) == pytest.approx(open_price)
    assert emulator.cash() == pytest.approx(100_000.0 - 10 * open_price)
    assert float(client.get_account().cash) == pytest.approx(emulator.cash())

    with pytest.raises(APIError) as dup:
        client.submit_order(buy("AAPL", 1, "coid-1"))
    assert dup.value.status_code == 422
    assert dup.value.message == "client_order_id must be unique"
    assert len(emulator.orders()) == 1


def test_fill_activity_parses_and_carries_the_order(emulator: AlpacaEmulator) -> None:
    order = trading(emulator).submit_order(buy("IBM", 5))
    emulator.advance()
    [activity] = fill_activities(emulator)
    parsed = TradeActivity(**activity)
    assert str(parsed.order_id) == str(order.id)
    assert parsed.qty == 5 and parsed.leaves_qty == 0 and parsed.type == "fill"
    assert activity == emulator.fills()[0]


def test_partial_fills_have_unique_activity_ids(daily: LoadedData) -> None:
    volume = float(bar_at(daily, 51, "IBM")["volume"])
    share = 100 / volume  # the next bar fills about 100 shares
    with AlpacaEmulator(daily, max_volume_share=share, initial_cash=10_000_000.0) as em:
        client = trading(em)
        gtc = MarketOrderRequest(
            symbol="IBM", qty=1_000, side=OrderSide.BUY, time_in_force=TimeInForce.GTC
        )
        order = client.submit_order(gtc)
        em.advance()
        first = client.get_order_by_id(order.id)
        assert first.status == OrderStatus.PARTIALLY_FILLED
        assert 0 < float(first.filled_qty) < 1_000
        em.advance(3)
        fills = fill_activities(em, direction="asc")
        assert len(fills) == 4
        assert len({f["id"] for f in fills}) == 4  # what an adapter de-duplicates on
        assert [f["type"] for f in fills] == ["partial_fill"] * 4
        cum = [int(f["cum_qty"]) for f in fills]
        assert cum == sorted(cum)
        assert cum[-1] == sum(int(f["qty"]) for f in fills) == em.positions()["IBM"]
        # Paging by the last seen id returns only what is new.
        newer = fill_activities(em, direction="asc", page_token=fills[1]["id"])
        assert [f["id"] for f in newer] == [f["id"] for f in fills[2:]]


def test_limit_order_rests_until_canceled(emulator: AlpacaEmulator) -> None:
    client = trading(emulator)
    request = LimitOrderRequest(
        symbol="MSFT", qty=3, side=OrderSide.BUY, time_in_force=TimeInForce.GTC, limit_price=1.0
    )
    order = client.submit_order(request)
    emulator.advance(2)
    resting = client.get_order_by_id(order.id)
    assert resting.status == OrderStatus.NEW
    open_ids = [o.id for o in client.get_orders(GetOrdersRequest(status=QueryOrderStatus.OPEN))]
    assert open_ids == [order.id]

    client.cancel_order_by_id(order.id)
    assert client.get_order_by_id(order.id).status == OrderStatus.CANCELED
    assert client.get_orders(GetOrdersRequest(status=QueryOrderStatus.OPEN)) == []
    closed = client.get_orders(GetOrdersRequest(status=QueryOrderStatus.CLOSED))
    assert [o.id for o in closed] == [order.id]
    with pytest.raises(APIError) as again:
        client.cancel_order_by_id(order.id)
    assert again.value.status_code == 422
    assert emulator.positions() == {}


def test_limit_order_fills_when_the_bar_trades_through(
    emulator: AlpacaEmulator, daily: LoadedData
) -> None:
    nxt = bar_at(daily, emulator.index + 1, "MSFT")
    limit = round(float(nxt["low"]) + 0.01, 2)
    request = LimitOrderRequest(
        symbol="MSFT", qty=2, side=OrderSide.BUY, time_in_force=TimeInForce.DAY, limit_price=limit
    )
    order = trading(emulator).submit_order(request)
    emulator.advance()
    filled = trading(emulator).get_order_by_id(order.id)
    assert filled.status == OrderStatus.FILLED
    assert float(filled.filled_avg_price) == pytest.approx(min(float(nxt["open"]), limit))


def test_sub_penny_limit_and_oversell_are_refused(emulator: AlpacaEmulator) -> None:
    client = trading(emulator)
    request = LimitOrderRequest(
        symbol="MSFT", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.DAY, limit_price=10.005
    )
    with pytest.raises(APIError) as penny:
        client.submit_order(request)
    assert penny.value.status_code == 422 and "sub-penny" in penny.value.message
    sell = MarketOrderRequest(
        symbol="AAPL", qty=1, side=OrderSide.SELL, time_in_force=TimeInForce.DAY
    )
    with pytest.raises(APIError) as oversell:
        client.submit_order(sell)
    assert oversell.value.status_code == 403


def test_day_order_expires_after_its_session(emulator: AlpacaEmulator) -> None:
    request = LimitOrderRequest(
        symbol="IBM", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.DAY, limit_price=1.0
    )
    order = trading(emulator).submit_order(request)
    emulator.advance()
    assert trading(emulator).get_order_by_id(order.id).status == OrderStatus.NEW
    emulator.advance()
    expired = trading(emulator).get_order_by_id(order.id)
    assert expired.status == OrderStatus.EXPIRED and expired.expired_at is not None


def test_close_position_sells_at_the_next_open(emulator: AlpacaEmulator) -> None:
    client = trading(emulator)
    client.submit_order(buy("AAPL", 4))
    emulator.advance()
    close = client.close_position("AAPL")
    assert close.side == OrderSide.SELL and float(close.qty) == 4
    emulator.advance()
    assert emulator.positions() == {}
    with pytest.raises(APIError) as missing:
        client.get_open_position("AAPL")
    assert missing.value.status_code == 404


def test_reject_next_order_raises_with_the_message(emulator: AlpacaEmulator) -> None:
    client = trading(emulator)
    emulator.reject_next_order("account is restricted")
    with pytest.raises(APIError) as refused:
        client.submit_order(buy("AAPL", 1, "refused-1"))
    assert refused.value.status_code == 403
    assert refused.value.message == "account is restricted"
    # The refusal is one-shot and the client order id was not consumed.
    assert client.submit_order(buy("AAPL", 1, "refused-1")).status == OrderStatus.ACCEPTED

    emulator.reject_next_order("venue said no", after_accept=True)
    later = client.submit_order(buy("IBM", 1))
    emulator.advance()
    rejected = client.get_order_by_id(later.id)
    assert rejected.status == OrderStatus.REJECTED and rejected.failed_at is not None


# -- MARKET DATA --


def test_historical_bars_stop_at_the_current_bar(
    emulator: AlpacaEmulator, daily: LoadedData
) -> None:
    client = market_data(emulator)
    request = StockBarsRequest(
        symbol_or_symbols=["AAPL", "IBM"],
        timeframe=TimeFrame.Day,
        start=datetime(2000, 1, 1, tzinfo=UTC),
        end=datetime(2030, 1, 1, tzinfo=UTC),  # the future is asked for, never served
    )
    before = client.get_stock_bars(request)
    n = emulator.index + 1
    assert len(before["AAPL"]) == len(before["IBM"]) == n
    last = before["AAPL"][-1]
    row = bar_at(daily, emulator.index, "AAPL")
    assert (last.open, last.close) == (pytest.approx(row["open"]), pytest.approx(row["close"]))
    # Alpaca stamps daily bars at midnight New York of the session date.
    session = pd.Timestamp(daily.timestamps[emulator.index], tz="UTC").tz_convert(NY)
    assert pd.Timestamp(last.timestamp).tz_convert(NY) == session.normalize()

    emulator.advance()
    after = client.get_stock_bars(request)
    assert len(after["AAPL"]) == n + 1
    assert after["AAPL"][-2] == last

    latest = client.get_stock_latest_bar(StockLatestBarRequest(symbol_or_symbols="AAPL"))
    assert latest["AAPL"].close == after["AAPL"][-1].close


def test_bars_paginate_and_aggregate(daily: LoadedData, minute: LoadedData) -> None:
    with AlpacaEmulator(daily, bars_page_limit=20) as em:
        request = StockBarsRequest(
            symbol_or_symbols=["AAPL", "MSFT"],
            timeframe=TimeFrame.Day,
            start=datetime(2000, 1, 1, tzinfo=UTC),
        )
        bars = market_data(em).get_stock_bars(request)  # 6 pages of at most 20
        assert len(bars["AAPL"]) == len(bars["MSFT"]) == em.index + 1
        stamps = [b.timestamp for b in bars["MSFT"]]
        assert stamps == sorted(set(stamps))
    with AlpacaEmulator(minute, start_index=120) as em:
        hourly = StockBarsRequest(
            symbol_or_symbols="AAPL",
            timeframe=TimeFrame.Hour,
            start=datetime(2026, 7, 29, tzinfo=UTC),
        )
        hours = market_data(em).get_stock_bars(hourly)["AAPL"]
        # Bars 09:30..11:30 New York fall in the 09:00, 10:00 and 11:00 hours.
        assert len(hours) == 3
        first = minute.frame.iloc[:30]
        assert hours[0].open == pytest.approx(first["open"].iloc[0])
        assert hours[0].high == pytest.approx(first["high"].max())
        assert hours[0].volume == pytest.approx(first["volume"].sum())


def test_data_stream_delivers_a_bar_after_advance(minute: LoadedData) -> None:
    received: queue.Queue[Bar] = queue.Queue()

    async def on_bar(bar: Bar) -> None:
        received.put(bar)

    with AlpacaEmulator(minute) as em:
        stream = StockDataStream(KEY, SECRET, url_override=em.stream_url)
        stream.subscribe_bars(on_bar, "AAPL")
        thread = threading.Thread(target=stream.run, daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + 5
            while not em.stream_subscriptions() and time.monotonic() < deadline:
                time.sleep(0.02)
            assert em.stream_subscriptions() == [{"bars": ["AAPL"]}]
            em.advance()
            bar = received.get(timeout=5)
            row = bar_at(minute, em.index, "AAPL")
            assert bar.symbol == "AAPL"
            assert bar.timestamp.timestamp() * 1e9 == row["ts"]
            assert bar.open == pytest.approx(row["open"])
            assert bar.close == pytest.approx(row["close"])
            assert received.empty()
        finally:
            stream.stop()
            em.drop_streams()  # unblocks the client's 5 s receive wait
            thread.join(timeout=10)
        assert not thread.is_alive()


# -- FAULTS --


@pytest.mark.parametrize("refuse", [True, False], ids=["refused", "503"])
def test_go_down_fails_fast_and_come_up_recovers(emulator: AlpacaEmulator, refuse: bool) -> None:
    client = trading(emulator)
    client.get_account()  # a kept-alive connection that go_down must also cut
    emulator.go_down(refuse=refuse)
    started = time.monotonic()
    expected = requests.ConnectionError if refuse else APIError
    with pytest.raises(expected):
        client.get_account()
    assert time.monotonic() - started < 2.0
    emulator.advance()  # the market moves on while the API is down
    emulator.come_up()
    assert client.get_account().status == "ACTIVE"


def test_failed_and_delayed_requests(emulator: AlpacaEmulator) -> None:
    client = trading(emulator)
    emulator.fail_next_requests(1, status=500)
    with pytest.raises(APIError) as failed:
        client.get_clock()
    assert failed.value.status_code == 500
    emulator.set_delay(0.3)
    started = time.monotonic()
    client.get_clock()
    assert time.monotonic() - started >= 0.3
    emulator.set_delay(0.0)


def test_wall_clock_moves_on_its_own(minute: LoadedData) -> None:
    # 60 s bars at 600x: one bar every 0.1 s.
    with AlpacaEmulator(minute, clock="wall", speed=600.0) as em:
        start = em.index
        deadline = time.monotonic() + 5
        while em.index < start + 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert em.index >= start + 3

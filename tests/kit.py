"""Test kit: builders for messages and small bar series, shared by the tests."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sovereign.core.risk import sign_approval
from sovereign.messages import AccountSnapshot, BarBatch, IdSource, OrderIntent, SubmitOrder

SECRET = b"test-secret-0123456789abcdef"

CRASH_BAR = 400
CRASH_DATA = f"synthetic:40x600:crash={CRASH_BAR}"
# A strategy that stays invested, so a 30 % crash is a > 10 % drawdown.
HOLDING: dict[str, dict[str, object]] = {
    "regime": {"trend_margin": 0.0005},
    "strategy": {
        "max_hold_bars": 1000,
        "exit_on_regime_change": False,
        "target_atr_mult": 50.0,
        "stop_atr_mult": 20.0,
        "volume_threshold": 0.0,
    },
}
DAY_NS = 86_400 * 1_000_000_000

_ids = IdSource("kit")


def bars(
    ts: int,
    symbols: Sequence[str],
    open: Sequence[float],
    high: Sequence[float],
    low: Sequence[float],
    close: Sequence[float],
    volume: Sequence[float],
    *,
    shard: int = 0,
    interval_s: int = 60,
) -> BarBatch:
    return BarBatch.from_arrays(
        msg_id=_ids.next(),
        ts=ts,
        interval_s=interval_s,
        symbols=np.array([s.encode() for s in symbols]),
        open=np.asarray(open, dtype=float),
        high=np.asarray(high, dtype=float),
        low=np.asarray(low, dtype=float),
        close=np.asarray(close, dtype=float),
        volume=np.asarray(volume, dtype=float),
        shard=shard,
    )


def one_bar(
    ts: int, symbol: str, o: float, h: float, lo: float, c: float, v: float = 1e6, **kw: int
) -> BarBatch:
    return bars(ts, [symbol], [o], [h], [lo], [c], [v], **kw)


def submit(
    order_id: str,
    symbol: str,
    side: str,
    quantity: int,
    *,
    now: int = 0,
    ttl_ns: int = DAY_NS,
    order_type: str = "MARKET",
    limit_price: float | None = None,
    secret: bytes = SECRET,
    shard: int = 0,
    purpose: str = "OPEN",
) -> SubmitOrder:
    approval = sign_approval(
        secret,
        order_id=order_id,
        symbol=symbol,
        side=side,
        quantity=quantity,
        limit_price=limit_price,
        expires_ns=now + ttl_ns,
    )
    return SubmitOrder(
        msg_id=_ids.next(),
        ts_event=now,
        ts_init=now,
        order_id=order_id,
        intent_id=order_id,
        shard=shard,
        symbol=symbol,
        side=side,  # type: ignore[arg-type]
        quantity=quantity,
        order_type=order_type,  # type: ignore[arg-type]
        approval=approval,
        limit_price=limit_price,
        purpose=purpose,  # type: ignore[arg-type]
    )


def intent(
    symbol: str,
    *,
    side: str = "BUY",
    purpose: str = "OPEN",
    quantity: int = 0,
    ref_price: float = 100.0,
    confidence: float = 0.8,
    regime: str = "TrendingUp",
    intent_id: str | None = None,
    ts: int = 0,
) -> OrderIntent:
    return OrderIntent(
        msg_id=_ids.next(),
        ts_event=ts,
        ts_init=ts,
        intent_id=intent_id or _ids.next(),
        shard=0,
        symbol=symbol,
        side=side,  # type: ignore[arg-type]
        purpose=purpose,  # type: ignore[arg-type]
        quantity=quantity,
        ref_price=ref_price,
        confidence=confidence,
        regime=regime,
        reason="test",
    )


def cash_account(ts: int, equity: float, day: str = "2024-01-02") -> AccountSnapshot:
    """An all-cash account snapshot (no positions) on session date ``day``."""
    return AccountSnapshot(
        msg_id=_ids.next(),
        ts_event=ts,
        ts_init=ts,
        cash=equity,
        equity=equity,
        realized_pnl=0.0,
        unrealized_pnl=0.0,
        gross_exposure=0.0,
        net_exposure=0.0,
        commissions=0.0,
        open_positions=0,
        session_date=day,
    )


def at_a_terminal(module: str, *args: str) -> list[str]:
    """The command line of ``python -m module args`` as if typed at a terminal: Ctrl-C
    (SIGINT) reaches it. A process started from a backgrounded shell inherits SIGINT
    ignored (POSIX, for asynchronous lists without job control), and Python then keeps it
    ignored; a CI runner can start the suite that way. So the child puts Python's own
    handler back before it runs the module."""
    import sys

    boot = (
        "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
        f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)"
    )
    return [sys.executable, "-c", boot, *args]

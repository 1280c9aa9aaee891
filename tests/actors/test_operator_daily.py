"""OperatorActor daily summaries: one per finished session date, a partial one at the end."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import numpy as np
import pytest

from sovereign.actors.operator import SUMMARY_MAX_POINTS, SUMMARY_WINDOW_DAYS, OperatorActor
from sovereign.messages import (
    WIRE,
    DailySummary,
    IdSource,
    Message,
    NDArray,
    Notification,
    SessionEnded,
    SessionStarted,
    TradeClosed,
)
from tests.kit import cash_account as snapshot

MIN = 60 * 1_000_000_000
_ids = IdSource("test")


def at(day: str, minute: int) -> int:
    """``minute`` minutes after the 09:30 New York open (14:30 UTC in January)."""
    open_utc = datetime.fromisoformat(f"{day}T14:30:00").replace(tzinfo=UTC)
    return int(open_utc.timestamp()) * 1_000_000_000 + minute * MIN


def closed(exit_ts: int, pnl: float) -> TradeClosed:
    return TradeClosed(
        msg_id=_ids.next(),
        ts_event=exit_ts,
        ts_init=exit_ts,
        trade_id=_ids.next(),
        shard=0,
        symbol="AAA",
        side="LONG",
        quantity=10,
        entry_ts=exit_ts - 5 * MIN,
        exit_ts=exit_ts,
        entry_price=100.0,
        exit_price=100.0 + pnl / 10,
        pnl=pnl,
        commission=1.0,
        return_pct=pnl / 1000,
        bars_held=5,
        exit_reason="target",
        regime="TrendingUp",
        confidence=0.8,
    )


def started(ts: int) -> SessionStarted:
    return SessionStarted(
        msg_id=_ids.next(),
        ts_event=ts,
        ts_init=ts,
        run_id="r",
        mode="backtest",
        symbols=NDArray.from_numpy(np.array([b"AAA"])),
        initial_capital=100_000.0,
    )


def ended(ts: int, steps: int = 0) -> SessionEnded:
    return SessionEnded(msg_id=_ids.next(), ts_event=ts, ts_init=ts, run_id="r", steps=steps)


def run(actor: OperatorActor, steps: list[list[Message]]) -> list[Message]:
    out: list[Message] = []
    for batch in steps:
        out.extend(actor.receive(batch))
    return out


def summaries(messages: list[Message]) -> list[DailySummary]:
    return [m for m in messages if isinstance(m, DailySummary)]


D1, D2, D3 = "2024-01-02", "2024-01-03", "2024-01-04"


def three_days() -> list[list[Message]]:
    """Three session dates of a few steps each, with trades, ending mid-way through D3."""
    return [
        [started(at(D1, 0))],
        [snapshot(at(D1, 0), 100_000.0, D1)],
        [snapshot(at(D1, 1), 101_000.0, D1), closed(at(D1, 1), 500.0)],
        [snapshot(at(D1, 2), 100_500.0, D1), closed(at(D1, 2), -200.0)],
        [snapshot(at(D2, 0), 100_500.0, D2), closed(at(D2, 0), 300.0)],
        [snapshot(at(D2, 1), 102_000.0, D2), closed(at(D2, 1), 100.0)],
        [snapshot(at(D2, 2), 101_000.0, D2)],
        [snapshot(at(D2, 3), 101_500.0, D2), closed(at(D2, 3), -50.0)],
        # This trade arrives ahead of the snapshot that starts its day: it still counts
        # for D3, not for D2, whose summary this snapshot triggers.
        [closed(at(D3, 0), -400.0), snapshot(at(D3, 0), 101_500.0, D3)],
        [snapshot(at(D3, 1), 100_000.0, D3)],
        [ended(at(D3, 2), steps=9)],
    ]


def test_daily_summary_three_days_one_per_finished_day_and_a_partial_last() -> None:
    actor = OperatorActor()
    out = run(actor, three_days())
    day1, day2, day3 = summaries(out)

    assert [s.session_date for s in (day1, day2, day3)] == [D1, D2, D3]
    assert [s.complete for s in (day1, day2, day3)] == [True, True, False]
    assert all(s.kind == "daily_summary" and s.level == "info" for s in (day1, day2, day3))

    assert (day1.start_equity, day1.end_equity, day1.high_water_mark) == (
        100_000.0,
        100_500.0,
        101_000.0,
    )
    assert (day1.trades, day1.wins) == (2, 1)
    assert day1.pnl == pytest.approx(300.0)
    assert day1.drawdown == pytest.approx(1 - 100_500 / 101_000)

    assert (day2.start_equity, day2.end_equity, day2.high_water_mark) == (
        100_500.0,
        101_500.0,
        102_000.0,
    )
    assert (day2.trades, day2.wins) == (3, 2)
    assert day2.pnl == pytest.approx(350.0)
    assert day2.drawdown == pytest.approx(1 - 101_500 / 102_000)

    assert (day3.start_equity, day3.end_equity, day3.high_water_mark) == (
        101_500.0,
        100_000.0,
        102_000.0,
    )
    assert (day3.trades, day3.wins, day3.pnl) == (1, 0, -400.0)
    assert day3.drawdown == pytest.approx(1 - 100_000 / 102_000)

    # The series runs from the first point seen to the summarised day's last point.
    assert [len(s.equity_ts) for s in (day1, day2, day3)] == [3, 7, 9]
    assert [len(s.equity) for s in (day1, day2, day3)] == [3, 7, 9]
    assert day2.equity.to_numpy().tolist() == [
        100_000.0,
        101_000.0,
        100_500.0,
        100_500.0,
        102_000.0,
        101_000.0,
        101_500.0,
    ]
    assert day2.equity_ts.to_numpy()[-1] == at(D2, 3)
    assert day2.equity_ts.to_numpy().dtype == np.int64
    assert day2.data["day_start_ts"] == at(D2, 0)

    # Dated by the day's last point; created when the next day's first snapshot came.
    assert (day1.ts_event, day1.ts_init) == (at(D1, 2), at(D2, 0))
    assert (day3.ts_event, day3.ts_init) == (at(D3, 1), at(D3, 2))
    assert actor.counters["notified_daily_summary"] == 3


def test_daily_summary_title_and_text_are_readable() -> None:
    day1 = summaries(run(OperatorActor(), three_days()))[0]
    assert day1.title == (
        "[2024-01-02 14:32] daily summary 2024-01-02: equity 100,500.00 (+0.50 %), "
        "2 trades (1 won), drawdown 0.50 %"
    )
    lines = day1.text.splitlines()
    assert lines[0] == "session 2024-01-02: complete"
    assert "100,000.00 -> 100,500.00 (+500.00, +0.50 %)" in lines[1]
    assert "net P&L +300.00" in lines[-1]
    last = summaries(run(OperatorActor(), three_days()))[-1]
    assert "(partial)" in last.title


def test_daily_summary_is_delivered_as_a_notification_after_the_day_ends() -> None:
    out = run(OperatorActor(), three_days())
    notes = [m for m in out if isinstance(m, Notification)]
    # Every summary rides the ordinary notification path, and the other notes are kept.
    assert {type(m) for m in notes} == {Notification, DailySummary}
    assert sum(isinstance(m, DailySummary) for m in notes) == 3
    assert sum(m.kind == "trade_closed" for m in notes) == 6
    # The partial summary comes before the "session ended" note.
    assert [m.kind for m in notes[-2:]] == ["daily_summary", "session"]


def test_daily_summary_round_trips_the_wire() -> None:
    summary = summaries(run(OperatorActor(), three_days()))[1]
    back = WIRE.decode(WIRE.encode(summary))
    assert type(back) is DailySummary
    assert back == summary
    np.testing.assert_array_equal(back.equity.to_numpy(), summary.equity.to_numpy())
    np.testing.assert_array_equal(back.equity_ts.to_numpy(), summary.equity_ts.to_numpy())
    # Alongside a plain Notification in one batch, each keeps its own type.
    plain = Notification(
        msg_id="n", ts_event=1, ts_init=1, kind="session", level="info", title="t", text=""
    )
    batch = WIRE.decode_batch(WIRE.encode_batch([plain, summary]))
    assert [type(m) for m in batch] == [Notification, DailySummary]


def test_daily_summary_off_emits_none_and_keeps_the_other_notes() -> None:
    actor = OperatorActor(daily_summary=False)
    out = run(actor, three_days())
    assert summaries(out) == []
    assert "notified_daily_summary" not in actor.counters
    assert sum(isinstance(m, Notification) and m.kind == "trade_closed" for m in out) == 6


def test_muted_trade_notifications_are_not_built_but_the_days_still_count_them() -> None:
    loud, quiet = OperatorActor(), OperatorActor(muted=["trade_closed", "order_rejected"])
    out_loud, out_quiet = run(loud, three_days()), run(quiet, three_days())
    assert sum(isinstance(m, Notification) and m.kind == "trade_closed" for m in out_loud) == 6
    assert not any(isinstance(m, Notification) and m.kind == "trade_closed" for m in out_quiet)
    assert "notified_trade_closed" not in quiet.counters
    # The daily summaries (not muted) are the same: every trade was tallied.
    assert [(s.session_date, s.trades, s.wins, s.pnl) for s in summaries(out_quiet)] == [
        (s.session_date, s.trades, s.wins, s.pnl) for s in summaries(out_loud)
    ]

    # Everything that is not muted is still said, in the same order.
    def rest(out: list[Message]) -> list[tuple[str, str]]:
        return [
            (m.kind, m.title)
            for m in out
            if isinstance(m, Notification) and m.kind != "trade_closed"
        ]

    assert rest(out_quiet) == rest(out_loud) and rest(out_loud)


def test_session_mutes_the_kinds_no_channel_delivers(tmp_path) -> None:
    from sovereign.config import Config, NotificationsConfig
    from sovereign.specs import build_specs

    def muted(config: Config) -> list[str]:
        specs = build_specs(config, [["AAA"]], tmp_path, b"s" * 32, run_id="r")
        return specs["operator"].kwargs["muted"]

    assert "trade_closed" not in muted(Config())  # the console shows trades by default
    assert "fill" in muted(Config())  # off on both channels by default
    off = {"trade_closed": "off"}
    # Telegram still delivers it (silently, by default): it is built.
    assert "trade_closed" not in muted(Config(notifications=NotificationsConfig(console=off)))
    both = NotificationsConfig(console=off, telegram=off)
    assert "trade_closed" in muted(Config(notifications=both))


def test_daily_summary_no_snapshot_no_partial_summary() -> None:
    out = run(OperatorActor(), [[started(at(D1, 0))], [ended(at(D1, 1))]])
    assert summaries(out) == []


def test_daily_summary_undated_snapshot_is_ignored() -> None:
    out = run(
        OperatorActor(),
        [
            [snapshot(at(D1, 0), 100_000.0, D1)],
            [snapshot(at(D1, 1), 90_000.0, "")],
            [ended(at(D1, 2))],
        ],
    )
    (partial,) = summaries(out)
    assert partial.end_equity == 100_000.0
    assert len(partial.equity) == 1


def test_daily_summary_trade_after_its_days_summary_is_counted_as_late() -> None:
    actor = OperatorActor()
    out = run(
        actor,
        [
            [snapshot(at(D1, 0), 100_000.0, D1)],
            [snapshot(at(D2, 0), 100_000.0, D2)],
            [closed(at(D1, 5), 50.0), snapshot(at(D2, 1), 100_050.0, D2)],
            [ended(at(D2, 2))],
        ],
    )
    _, day2 = summaries(out)
    assert (day2.trades, day2.pnl) == (0, 0.0)
    assert actor.counters["daily_summary_late_trades"] == 1


def test_daily_summary_series_keeps_only_the_trailing_session_dates() -> None:
    first = date(2024, 1, 2)
    days = [(first + timedelta(days=i)).isoformat() for i in range(SUMMARY_WINDOW_DAYS + 5)]
    steps = [[snapshot(at(d, m), 100_000.0 + i, d)] for i, d in enumerate(days) for m in (0, 1)]
    actor = OperatorActor()
    out = run(actor, steps)
    last = summaries(out)[-1]
    assert last.session_date == days[-2]
    # The summarised day and the dates before it, two points each.
    window = days[-1 - SUMMARY_WINDOW_DAYS : -1]
    assert len(last.equity_ts) == 2 * SUMMARY_WINDOW_DAYS
    assert last.equity_ts.to_numpy()[0] == at(window[0], 0)
    assert last.equity_ts.to_numpy()[-1] == at(window[-1], 1)
    # Memory is bounded too: only the window and the day in progress are held.
    assert len(actor._point_ts) == 2 * SUMMARY_WINDOW_DAYS
    # The high-water mark is over everything seen, not just the window.
    assert last.high_water_mark == 100_000.0 + len(days) - 2


def test_daily_summary_series_is_decimated_keeping_the_last_point() -> None:
    per_day = 600
    steps = [
        [snapshot(at(d, m), 100_000.0 + k * per_day + m, d)]
        for k, d in enumerate((D1, D2, D3))
        for m in range(per_day)
    ]
    out = run(OperatorActor(), [*steps, [ended(at(D3, per_day))]])
    day1, day2, day3 = summaries(out)
    assert len(day1.equity) == per_day  # under the bound: every point
    for s, n in ((day2, 2 * per_day), (day3, 3 * per_day)):
        assert len(s.equity) == len(s.equity_ts) == SUMMARY_MAX_POINTS
        assert s.data["points"] == n
        ts = s.equity_ts.to_numpy()
        assert (np.diff(ts) > 0).all()
        assert ts[0] == at(D1, 0)
    assert day3.equity_ts.to_numpy()[-1] == at(D3, per_day - 1)
    assert day3.equity.to_numpy()[-1] == day3.end_equity == 100_000.0 + 2 * per_day + per_day - 1


def test_daily_summary_series_renders_as_a_chart() -> None:
    from sovereign.comms.charts import render_equity_png

    day2 = summaries(run(OperatorActor(), three_days()))[1]
    png = render_equity_png(
        day2.equity_ts.to_numpy(),
        day2.equity.to_numpy(),
        title=day2.title,
        highlight_from_ns=int(day2.data["day_start_ts"]),  # type: ignore[arg-type]
    )
    assert png.startswith(b"\x89PNG")

"""Backoff, IB pacing, and the polling feed's bookkeeping (no duplicates, no holes)."""

from __future__ import annotations

import math

from sovereign.brokers.pacing import Backoff, HistoricalPacer
from sovereign.data.live import PollingFeed

MIN = 60 * 1_000_000_000


def test_backoff_doubles_to_a_cap_and_resets() -> None:
    b = Backoff(initial=1.0, factor=2.0, maximum=5.0)
    assert b.due(0.0)
    assert [b.failed(0.0) for _ in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert not b.due(4.9) and b.due(5.0)
    b.succeeded()
    assert b.due(0.0) and b.failed(10.0) == 1.0


def test_pacer_keeps_inside_ibs_rules() -> None:
    p = HistoricalPacer(
        max_requests=3, window_s=600, identical_cooldown_s=15, burst=2, burst_window_s=2
    )
    assert p.wait_for("a", "AAPL", 0.0) == 0.0
    p.record("a", "AAPL", 0.0)
    assert p.wait_for("a", "AAPL", 1.0) == 14.0  # identical request: 15 s apart
    p.record("b", "AAPL", 1.0)
    assert p.wait_for("c", "AAPL", 1.5) == 0.5  # a third for the contract within 2 s
    p.record("c", "MSFT", 3.0)
    assert p.wait_for("d", "IBM", 4.0) == 596.0  # three in the 10-minute window
    assert p.wait_for("d", "IBM", 600.0) == 0.0


class ScriptedSource:
    """Bars as a broker would serve them: everything up to "now", the last one forming."""

    name = "scripted"

    def __init__(self, bars: dict[str, list[tuple]]) -> None:
        self.bars = bars
        self.visible = 0
        self.requests: list[tuple[str, int | None]] = []

    def fetch(self, symbol: str, since_ns: int | None, now_s: float) -> list[tuple]:
        self.requests.append((symbol, since_ns))
        return [b for b in self.bars[symbol][: self.visible] if since_ns is None or b[0] > since_ns]

    def close(self) -> None:
        pass


def bar(i: int, close: float = 100.0, volume: float = math.nan) -> tuple:
    return (i * MIN, close, close + 1, close - 1, close, volume)


def test_polls_release_each_bar_once_in_order_and_never_a_forming_one() -> None:
    series = {s: [bar(i) for i in range(10)] for s in ("AAA", "BBB")}
    series["BBB"][4] = (4 * MIN, float("nan"), 1.0, 1.0, 1.0, 1.0)  # a bad bar
    source = ScriptedSource(series)
    now = {"t": 0.0}
    feed = PollingFeed(source, [["AAA"], ["BBB"]], 60, clock=lambda: now["t"])
    seen: list[int] = []
    for visible, wall in ((3, 3 * 60.0), (3, 3 * 60.0), (7, 6 * 60.0 + 30), (10, 10 * 60.0)):
        source.visible, now["t"] = visible, wall
        for ts, batches in feed.poll():
            seen.append(ts // MIN)
            assert batches[0] is not None  # AAA has every bar
            assert (batches[1] is None) == (ts == 4 * MIN)
    # Bars 0..9, each once, in order; bar 6 waited a poll because it was still forming.
    assert seen == list(range(10))
    assert feed.counters.rejected == {"nan_price": 1}
    assert feed.counters.incomplete >= 1
    # Every request after the first asked only for what came after the last bar it had.
    assert ("AAA", 5 * MIN) in source.requests


def test_a_failing_source_is_counted_and_the_others_still_trade() -> None:
    class Flaky(ScriptedSource):
        def fetch(self, symbol: str, since_ns: int | None, now_s: float) -> list[tuple]:
            if symbol == "BBB":
                raise ConnectionError("down")
            return super().fetch(symbol, since_ns, now_s)

    source = Flaky({"AAA": [bar(0), bar(1)], "BBB": [bar(0)]})
    source.visible = 2
    feed = PollingFeed(source, [["AAA", "BBB"]], 60, clock=lambda: 1e9)
    steps = feed.poll()
    assert [ts for ts, _ in steps] == [0, MIN]
    assert feed.counters.errors == 1


def test_durations_cover_the_span_in_units_ib_accepts() -> None:
    from sovereign.brokers.ib_bars import duration_setting

    assert duration_setting(600, 60) == "600 S"
    assert duration_setting(10, 60) == "120 S"  # at least two bars
    assert duration_setting(3 * 86_400, 60) == "4 D"
    assert duration_setting(10 * 86_400, 86_400) == "11 D"
    # IB refuses more than 365 days in "D"; a 22-year gap is asked for in years.
    assert duration_setting(22 * 365 * 86_400, 86_400) == "23 Y"
    assert duration_setting(364 * 86_400, 86_400) == "365 D"

"""The shard's run-time bar gate: the one-pass fast path agrees with the reasoned checks."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from sovereign.core.bars import clean_rows

values = st.one_of(
    st.floats(min_value=-5.0, max_value=200.0),
    st.sampled_from([math.nan, math.inf, -math.inf, 0.0]),
)
row = st.tuples(values, values, values, values, values)


def slow_good(o: float, h: float, lo: float, c: float, v: float) -> bool:
    if not all(math.isfinite(x) for x in (o, h, lo, c)):
        return False
    if min(o, h, lo, c) <= 0 or h < lo:
        return False
    if not (lo <= o <= h and lo <= c <= h):
        return False
    return not v < 0


@given(st.lists(row, min_size=1, max_size=30))
def test_the_gate_passes_exactly_the_good_rows(rows: list[tuple[float, ...]]) -> None:
    o, h, lo, c, v = (np.array(col, dtype=np.float64) for col in zip(*rows, strict=True))
    good, reasons = clean_rows(o, h, lo, c, v)
    assert good.tolist() == [slow_good(*r) for r in rows]
    if not good.all():
        # Every bad row is counted under exactly one reason.
        hits = sum(mask.astype(int) for mask in reasons.values())
        assert (hits == (~good).astype(int)).all()

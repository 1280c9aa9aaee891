"""Order sides, as the messages spell them and as the block kernels code them."""

from __future__ import annotations

from typing import Literal

Side = Literal["BUY", "SELL"]

SIDE_BUY = 1
"""A buy (an entry of a long-only book) in a column of intents or fills."""
SIDE_SELL = 2
"""A sell (an exit) in a column of intents or fills."""

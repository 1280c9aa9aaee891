"""The data layer: load, validate and split-adjust OHLCV bars; synthetic bars for tests.

Every bar carries ``ts``, its START as int64 ns since the Unix epoch (UTC). A daily bar
starts at 09:30 America/New_York and lasts the 23400 s regular session.
"""

from __future__ import annotations

from sovereign.data.bundled import SAMPLES, sample_path
from sovereign.data.loaders import LoadedData, load_ohlcv
from sovereign.data.splits import SplitEvent, adjust_for_splits, detect_splits, load_splits_file
from sovereign.data.synthetic import SyntheticBars, generate
from sovereign.data.validation import BAD_TS, ValidationReport, validate_ohlcv

__all__ = [
    "BAD_TS",
    "SAMPLES",
    "LoadedData",
    "SplitEvent",
    "SyntheticBars",
    "ValidationReport",
    "adjust_for_splits",
    "detect_splits",
    "generate",
    "load_ohlcv",
    "load_splits_file",
    "sample_path",
    "validate_ohlcv",
]

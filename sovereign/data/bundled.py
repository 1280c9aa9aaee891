"""Paths of the real market-data samples that ship inside the package.

The files and their provenance are described in ``sovereign/data/sample/README.md``.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

__all__ = ["SAMPLES", "sample_path"]

SAMPLES: dict[str, str] = {
    "daily": "daily_equities.csv.gz",
    "hourly": "aapl_hourly.csv.gz",
    "minute": "aapl_minute.csv.gz",
    "sp500": "sp500_20stocks_daily_closeonly.csv.gz",
}
"""Sample name → file name under ``sovereign/data/sample/``."""


def sample_path(name: str = "daily") -> Path:
    """Return the filesystem path of a bundled sample.

    Parameters
    ----------
    name
        One of :data:`SAMPLES` (``"daily"``, ``"hourly"``, ``"minute"``).

    Raises
    ------
    ValueError
        If the name is unknown.
    FileNotFoundError
        If the package was installed without its data files, or is imported from a zip
        (the loaders and Ray workers need a real path, so installs are unzipped).
    """
    try:
        filename = SAMPLES[name]
    except KeyError:
        raise ValueError(
            f"unknown sample {name!r}; available: {', '.join(sorted(SAMPLES))}"
        ) from None
    resource = importlib.resources.files("sovereign.data").joinpath("sample", filename)
    if not resource.is_file():
        raise FileNotFoundError(
            f"bundled sample {filename} is missing; was sovereign installed without its "
            "package data?"
        )
    if not isinstance(resource, Path):
        raise FileNotFoundError(f"bundled sample {filename} is not on the filesystem: {resource}")
    return resource

"""Shared fixtures: one local Ray for the whole test session (two cores: never one per test)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

import sovereign  # noqa: F401  (pins BLAS/OpenMP threads before numpy is used)

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def ray_session() -> Iterator[Any]:
    """A real local single-node Ray with the dashboard (the state API needs it)."""
    import ray

    ray.init(
        namespace="sovereign",
        num_cpus=2,
        include_dashboard=True,
        logging_level="WARNING",
        log_to_driver=False,
    )
    try:
        yield ray
    finally:
        ray.shutdown()


def gcs_address() -> str:
    """This session's Ray address (explicit, in case another Ray runs on the machine)."""
    import ray

    return ray.get_runtime_context().gcs_address

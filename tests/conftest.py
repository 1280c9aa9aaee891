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


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on a free loopback port, for the whole session.

    ``.ci/run`` installs redis-server; without it this fixture fails rather than skips,
    so the Redis tests can never silently not run.
    """
    import shutil
    import socket
    import subprocess
    import time

    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not installed (.ci/run installs it with apt)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [
            exe,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("redis-server did not start")
            time.sleep(0.05)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)

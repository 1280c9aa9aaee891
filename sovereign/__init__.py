"""Sovereign: an autonomous, self-improving trading system held inside a constitution.

Importing the package pins BLAS, OpenMP and torch to one thread per process. On the
two-core machines this project targets, two threads per process stall badly under load
(see FIELD-NOTES), and every Ray worker imports this package before doing real work.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
# No network here, and nobody asked Ray to phone home.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

__version__ = "0.1.0"

"""The project's vocabulary: types every layer speaks and no layer owns.

Regime names and codes, order sides, the rule tree and the settings' types live here so
that the messages (what actors exchange) and the core (what the trading logic computes)
both import them without importing each other's packages. This package imports nothing
from ``sovereign`` outside itself; ``tests/test_architecture.py`` and the import contracts
in ``pyproject.toml`` hold it to that.
"""

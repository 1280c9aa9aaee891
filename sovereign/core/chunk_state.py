"""A shard's state around a speculative chunk (``core.chunks``): the copy taken before it
and put back if the chunk is discarded, and what the chunk assumes the orders working
before it fill."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np


def checkpoint(obj: Any, names: tuple[str, ...]) -> dict[str, Any]:
    """A deep copy of the named attributes of ``obj``: numpy arrays, dicts of plain values
    or of flat records (slotted dataclasses whose only container is a dict of plain
    values, such as a trade's features), and anything else through ``copy.deepcopy``.
    The records are the bulk of it (a wide shard holds hundreds of open trades), and
    ``deepcopy`` takes ten times as long over them."""
    out: dict[str, Any] = {}
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, np.ndarray):
            out[name] = value.copy()
        elif isinstance(value, dict) and all(type(v) in _PLAIN for v in value.values()):
            out[name] = dict(value)
        elif isinstance(value, dict) and all(hasattr(v, "__slots__") for v in value.values()):
            out[name] = {k: _clone(v) for k, v in value.items()}
        else:
            out[name] = copy.deepcopy(value)
    return out


_PLAIN = (int, float, str, bool, type(None))


def _clone(record: Any) -> Any:
    cls = type(record)
    new = object.__new__(cls)
    for field in cls.__slots__:
        value = getattr(record, field)
        setattr(new, field, dict(value) if type(value) is dict else value)
    return new


def restore(obj: Any, saved: dict[str, Any]) -> None:
    for name, value in saved.items():
        setattr(obj, name, value)


def assumed_fills(st: Any) -> dict[str, int]:
    """What the chunk assumes each order working before it fills at its first open: an
    entry what the guardian approved (the strategy's quantity until it has), an exit the
    whole position."""
    fixed = int(st.config.fixed_quantity)
    return {
        k: (o.quantity or fixed) if o.purpose == "OPEN" else int(st.quantity[o.index])
        for k, o in st.orders.items()
    }


def blocks_once(
    st: Any, key: tuple[Any, ...], names: tuple[str, ...], compute: Callable[[], Any]
) -> Any:
    """``compute()`` (indicator blocks over a chunk, which leave the indicators ``names``
    of ``st`` as the chunk's bars would), or what it gave the last time for the same
    ``key`` (the same bar times, from the same state): a chunk speculated again (with the
    guardian's sizes) starts from the state restored to before it, and its indicators
    depend on the bars alone, so their blocks and end state are taken from then instead
    of running their recursions again."""
    kept = getattr(st, "_blocks_kept", None)
    if kept is not None and kept[0] == key:
        for name, state in kept[2].items():
            setattr(st, name, copy.deepcopy(state))
        return kept[1]
    out = compute()
    st._blocks_kept = (key, out, {name: copy.deepcopy(getattr(st, name)) for name in names})
    return out

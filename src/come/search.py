"""A walk to a minimum along a sorted grid: the grid searches of the re-fit strength and of CoMe-P's ratio."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def downhill(n: int, start: int, key: Callable[[int], Any]) -> int:
    """The index of a local minimum of `key` over 0..n-1, walking from `start` to the better neighbour while one is
    better. On a unimodal sequence it is the global minimum (ties broken as `key` breaks them), found with about
    3 + |argmin - start| evaluations instead of n. `key` should remember its values: a point is asked for more
    than once."""
    i = start
    while (best := min((j for j in (i - 1, i, i + 1) if 0 <= j < n), key=key)) != i:
        i = best
    return i

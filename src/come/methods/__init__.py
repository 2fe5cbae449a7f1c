"""Method registry: every method turns a PruneContext into plan steps, applying them as it goes."""

from __future__ import annotations

from collections.abc import Callable

from come.errors import ComeError
from come.methods.base import PruneContext

MethodFn = Callable[[PruneContext], None]
METHODS: dict[str, MethodFn] = {}


def register(name: str) -> Callable[[MethodFn], MethodFn]:
    def deco(fn: MethodFn) -> MethodFn:
        METHODS[name] = fn
        return fn

    return deco


def get_method(name: str) -> MethodFn:
    if name not in METHODS:
        raise ComeError(f"unknown method '{name}': registered methods are {', '.join(sorted(METHODS))}")
    return METHODS[name]


from come.methods import angular as _angular  # noqa: E402,F401
from come.methods import come as _come  # noqa: E402,F401  (registration)
from come.methods import laco as _laco  # noqa: E402,F401
from come.methods import magnitude as _magnitude  # noqa: E402,F401
from come.methods import mka as _mka  # noqa: E402,F401
from come.methods import reverse as _reverse  # noqa: E402,F401
from come.methods import shortgpt as _shortgpt  # noqa: E402,F401
from come.methods import sleb as _sleb  # noqa: E402,F401
from come.methods import wsum as _wsum  # noqa: E402,F401

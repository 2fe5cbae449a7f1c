"""Method registry: every method turns a PruneContext into plan steps, applying them as it goes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from come.errors import ComeError
from come.methods.base import PruneContext

MethodFn = Callable[[PruneContext], None]
METHODS: dict[str, MethodFn] = {}


@dataclass(frozen=True)
class Option:
    """A method's tunable constant (`--option KEY=VALUE`): its type, default and one-line meaning."""

    type: type
    default: float | int
    help: str


# PruneConfig fields every method's plan depends on; a method lists the others it reads in register(uses=...)
COMMON_SETTINGS = ("model", "target_layers", "sparsity", "method", "calib", "loss_samples", "method_options", "dtype")


def register(name: str, options: dict[str, Option] | None = None,
             uses: tuple[str, ...] | Callable[[dict], tuple[str, ...]] = ()) -> Callable[[MethodFn], MethodFn]:
    """Register a method. `uses`: the PruneConfig fields it reads beyond COMMON_SETTINGS, or a function of the
    settings dict that returns them."""

    def deco(fn: MethodFn) -> MethodFn:
        fn.options = dict(options or {})
        fn.uses = uses
        METHODS[name] = fn
        return fn

    return deco


def settings_used(name: str, settings: dict) -> tuple[str, ...]:
    """The PruneConfig fields a plan of method `name` made with `settings` depends on (what `come compare
    --resume` checks)."""
    uses = get_method(name).uses
    return COMMON_SETTINGS + tuple(uses(settings) if callable(uses) else uses)


def method_options(name: str, given: dict | None) -> dict:
    """The method's options with `given` (strings or numbers) typed and checked; unknown keys are refused."""
    declared = get_method(name).options
    out = {k: o.default for k, o in declared.items()}
    for key, value in (given or {}).items():
        if key not in declared:
            known = ", ".join(f"{k} ({o.help})" for k, o in declared.items()) or "none"
            raise ComeError(f"method {name} has no option {key!r}: its options are {known}")
        try:
            out[key] = declared[key].type(value)
        except (TypeError, ValueError):
            raise ComeError(f"option {key}={value!r} of {name} must be a {declared[key].type.__name__}") from None
    return out


def parse_option_args(items: list[str] | None) -> dict[str, str]:
    """["T=0.5", "laco.C=3"] -> {"T": "0.5", "laco.C": "3"}; a malformed item raises a ComeError."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ComeError(f"--option {item!r} must look like KEY=VALUE (e.g. --option T=0.5)")
        out[key.strip()] = value.strip()
    return out


def is_progressive(name: str) -> bool:
    """Whether every prefix of the method's plan is the method at that shallower depth (False: `angular`)."""
    return getattr(get_method(name), "prefix_consistent", True)


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

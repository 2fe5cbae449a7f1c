"""What a pruning method is: one frozen `Method` record per method, registered once under its name.

A record holds everything the rest of the library asks about a method before or while running it: the function
that writes its plan, its `--option`s, the PruneConfig fields its plan depends on, whether its plans are
prefix-consistent, how many layers it can remove at most, whether it needs the whole model on the compute
device, how many calibration windows it needs, and the paper it comes from.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

from come.errors import ComeError

if TYPE_CHECKING:
    from come.methods.base import PruneContext

# PruneConfig fields every method's plan depends on; a record lists the others its plan reads in `reads`
COMMON_SETTINGS = ("model", "target_layers", "sparsity", "method", "calib", "loss_samples", "method_options", "dtype")


@dataclass(frozen=True)
class Option:
    """A method's tunable constant (`--option KEY=VALUE`): its type, default and one-line meaning."""

    type: type
    default: float | int
    help: str


def any_depth(num_layers: int, cfg=None) -> int:
    """No limit of the method's own: every layer but one may go."""
    return num_layers - 1


@dataclass(frozen=True)
class Limit:
    """The most layers a method can remove, checked before any weights load.

    max_removable(num_layers, cfg) -> int; `reason` completes "... needs N removals, but {reason} at most M are
    possible" and `fix` says what to do instead."""

    max_removable: Callable[[int, object], int]
    reason: str
    fix: str

    def check(self, method: str, num_layers: int, target: int, cfg) -> None:
        """Raise a one-line ComeError when `num_layers -> target` removes more layers than the method can."""
        most = self.max_removable(num_layers, cfg)
        if num_layers - target <= most:
            return
        raise ComeError(
            f"{method}: {num_layers} -> {target} layers needs {num_layers - target} removals, but "
            f"{self.reason} at most {most} are possible (target >= {num_layers - most}): {self.fix}"
        )


NO_LIMIT = Limit(any_depth, "with one layer left", "raise the target")


def one_window(cfg=None) -> int:
    """Calibration windows a method needs when it holds none out: one."""
    return 1


def never(cfg=None) -> bool:
    """Not resumable: the method decides from the unpruned model (a ranking, a pointer, a dense cache), so a
    killed run starts over."""
    return False


def always(cfg=None) -> bool:
    """Resumable whatever the settings."""
    return True


@dataclass(frozen=True, eq=False)
class Method:
    """One pruning method.

    name: what `--method` takes. run: writes the plan, applying each step through `ctx.apply`.
    paper: "Title (Venue Year)" of the paper it comes from, or "ours".
    options: its `--option KEY=VALUE` constants. reads: the PruneConfig fields its plan depends on beyond
    COMMON_SETTINGS, or a function of the settings dict that returns them (what `come compare --resume` checks).
    prefix_consistent: every prefix of its plan is the method at that shallower depth (`--sweep` replays them).
    limit: the most layers it can remove. needs_whole_model: it back-propagates through the whole model, which
    must then be on the compute device (no streamed weights). min_calib_samples(cfg): the calibration windows it
    needs. resumable(cfg): a run killed after some steps may go on from their replay (its next decision depends
    only on the model as those steps left it and on the calibration windows), giving the uninterrupted plan.
    """

    name: str
    run: Callable[[PruneContext], None]
    paper: str
    options: Mapping[str, Option] = field(default_factory=dict)
    reads: tuple[str, ...] | Callable[[dict], tuple[str, ...]] = ()
    prefix_consistent: bool = True
    limit: Limit = NO_LIMIT
    needs_whole_model: bool = False
    min_calib_samples: Callable[[object], int] = one_window
    resumable: Callable[[object], bool] = never

    def __post_init__(self) -> None:
        if not self.name or not callable(self.run) or not self.paper:
            raise ValueError(f"method record {self.name!r} needs a name, a function to run and a paper (or 'ours')")
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))
        if not callable(self.reads):
            object.__setattr__(self, "reads", tuple(self.reads))

    def __call__(self, ctx: PruneContext) -> None:
        self.run(ctx)

    def settings_used(self, settings: dict) -> tuple[str, ...]:
        """The PruneConfig fields a plan made with `settings` depends on."""
        return COMMON_SETTINGS + tuple(self.reads(settings) if callable(self.reads) else self.reads)


_REGISTRY: dict[str, Method] = {}

# The modules that register the built-in methods, and the names they register: the names are known without
# importing the modules (and torch), so `come --help` stays light; tests check the two agree.
BUILTIN_MODULES = ("angular", "come", "laco", "magnitude", "mka", "reverse", "shortgpt", "sleb", "wsum")
BUILTIN_NAMES = ("angular", "come", "come-p", "come-plus", "laco", "magnitude", "magnitude+", "mka", "reverse",
                 "reverse-keep-last", "shortgpt", "sleb", "taylor", "taylor+", "wsum")
_loaded = False


def load_builtins() -> None:
    """Import the built-in method modules once (each registers its records)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    import importlib

    for module in BUILTIN_MODULES:
        importlib.import_module(f"come.methods.{module}")


class _Methods(Mapping):
    """name -> record, in registration order; the built-in methods are loaded on first use."""

    def __getitem__(self, name: str) -> Method:
        load_builtins()
        return _REGISTRY[name]

    def __iter__(self):
        load_builtins()
        return iter(dict(_REGISTRY))

    def __len__(self) -> int:
        load_builtins()
        return len(_REGISTRY)


METHODS: Mapping[str, Method] = _Methods()


def register(method: Method) -> Method:
    """Register a method's record under its name; a name registered already raises a ValueError."""
    if method.name in _REGISTRY:
        raise ValueError(f"method {method.name!r} is registered already")
    _REGISTRY[method.name] = method
    return method


def get_method(name: str) -> Method:
    """The record of method `name`; an unknown name raises a ComeError listing the registered ones."""
    load_builtins()
    if name not in _REGISTRY:
        from come.names import did_you_mean

        raise ComeError(f"unknown method '{name}'{did_you_mean(name, _REGISTRY)}: registered methods are "
                        f"{', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def settings_used(name: str, settings: dict) -> tuple[str, ...]:
    """The PruneConfig fields a plan of method `name` made with `settings` depends on (what `come compare
    --resume` checks)."""
    return get_method(name).settings_used(settings)


def is_progressive(name: str) -> bool:
    """Whether every prefix of the method's plan is the method at that shallower depth (False: `angular`)."""
    return get_method(name).prefix_consistent


def max_removable(name: str, num_layers: int, cfg) -> int:
    """The most layers method `name` can remove from `num_layers` with settings `cfg`."""
    return get_method(name).limit.max_removable(num_layers, cfg)


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

"""What a pruning method is: one frozen `Method` record per method, registered once under its name.

A record holds everything the rest of the library asks about a method before or while running it: the function
that writes its plan, its options (a dataclass: each field typed, with a default and a help line), what it costs
(`--dry-run`), whether its plans are prefix-consistent, how many layers it can remove at most, whether it needs the
whole model on the compute device, how many calibration windows it needs, and the paper it comes from.

Adding a method is one module that registers its record (`register(Method(...))`) and a section of
docs/methods.md; a module of this package is found and imported on first use of the registry.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from come.cliargs import check_choice, check_finite, flags
from come.errors import ComeError

if TYPE_CHECKING:
    from come.methods.base import PruneContext

# PruneConfig fields every method's plan depends on (its options among them, `method_options`)
COMMON_SETTINGS = ("model", "target_layers", "sparsity", "method", "calib", "loss_samples", "method_options", "dtype")


@dataclass(frozen=True)
class NoOptions:
    """The options of a method that has none."""


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


# A record's `passes(cfg, layers, target)`: (full-pass equivalents of the decoder stack over the calibration
# windows, at most; one line for `--dry-run`). A re-run after a merge at layer l or a loss trial from layer l runs
# only layers l.. (counted as a full pass: an upper bound).

def not_estimated(cfg, layers: int, target: int) -> tuple[float, str]:
    """The cost of a method that states none (`--dry-run` says so)."""
    return math.nan, f"not estimated for {cfg.method}"


def windows_of(cfg) -> str:
    return f" over {cfg.calib.samples} x {cfg.calib.seq_len} tokens"


def trial_share(cfg) -> float:
    """What one loss trial costs, in full passes: --loss-samples of the calibration windows."""
    return 1.0 if cfg.loss_samples is None else min(1.0, cfg.loss_samples / cfg.calib.samples)


def weights_only(cfg, layers: int, target: int) -> tuple[float, str]:
    return 0.0, "none: the ranking reads the weights only"


def one_pass(cfg, layers: int, target: int) -> tuple[float, str]:
    return 1.0, f"1 full pass{windows_of(cfg)}"


def merges_passes(cfg, layers: int, target: int) -> tuple[float, str]:
    """A full pass, then a re-run from each merged (or dropped) layer on."""
    k = layers - target
    return 1.0 + k, (f"1 full pass + {k} re-runs from each merged layer on{windows_of(cfg)} (at most {1 + k} "
                     "full-pass equivalents)")


@dataclass(frozen=True, eq=False)
class Method:
    """One pruning method.

    name: what `--method` takes. run: writes the plan, applying each step through `ctx.apply`.
    paper: "Title (Venue Year)" of the paper it comes from, or "ours".
    options: a dataclass of its options, each field a `come.cliargs.arg` (type, default, help, choices): the
    `--option KEY=VALUE` it takes, its own flags (`come prune --help-all`), its recipe's `method_options` and the
    settings line of a card; a plan depends on them (what `--resume` and `come compare --resume` check).
    passes(cfg, layers, target) -> (full-pass equivalents, one line): its calibration cost for `--dry-run`.
    prefix_consistent: every prefix of its plan is the method at that shallower depth (`--sweep` replays them).
    limit: the most layers it can remove. needs_whole_model: it back-propagates through the whole model, which
    must then be on the compute device (no streamed weights). min_calib_samples(cfg): the calibration windows it
    needs. resumable(cfg): a run killed after some steps may go on from their replay (its next decision depends
    only on the model as those steps left it and on the calibration windows), giving the uninterrupted plan.
    keeps_dense_states: it keeps the unpruned model's boundary states beside the calibration cache (memory).
    refits: it re-fits layers by least squares (float64 Gram matrices of the down_proj input: memory).
    variant_of: the method a research variant varies (experiments/ registers such records): its plans make the
    same kind of decisions, so they compare with that method's.
    """

    name: str
    run: Callable[[PruneContext], None]
    paper: str
    options: type = NoOptions
    passes: Callable[[object, int, int], tuple[float, str]] = not_estimated
    prefix_consistent: bool = True
    limit: Limit = NO_LIMIT
    needs_whole_model: bool = False
    min_calib_samples: Callable[[object], int] = one_window
    resumable: Callable[[object], bool] = never
    keeps_dense_states: bool = False
    refits: bool = False
    variant_of: str | None = None

    def __post_init__(self) -> None:
        if not self.name or not callable(self.run) or not self.paper:
            raise ValueError(f"method record {self.name!r} needs a name, a function to run and a paper (or 'ours')")
        if not dataclasses.is_dataclass(self.options):
            raise ValueError(f"method record {self.name!r}: its options must be a dataclass")

    def __call__(self, ctx: PruneContext) -> None:
        self.run(ctx)

    def parse_options(self, given: Mapping | None) -> object:
        """The options as the method reads them: `given` (strings from `--option`, or typed values) over the
        defaults, each converted to its field's type and checked; an unknown key raises a one-line ComeError."""
        declared = {f.name: f for f in dataclasses.fields(self.options)}
        values = {}
        for key, value in (given or {}).items():
            if key not in declared:
                known = ", ".join(f"{s.name} ({s.help})" for s in flags(self.options)) or "none"
                raise ComeError(f"method {self.name} has no option {key!r}: its options are {known}")
            values[key] = _typed(self.name, key, declared[key].type, value)
        for spec in flags(self.options):
            if spec.name in values:
                check_choice(spec.shown, spec.choices, values[spec.name])
                check_finite(spec.shown, values[spec.name])
        return self.options(**values)

    def settings_used(self, settings: dict) -> tuple[str, ...]:
        """The PruneConfig fields a plan made with `settings` depends on: the common ones, its options among them."""
        return COMMON_SETTINGS

    def recorded_options(self, settings: dict) -> dict:
        """The options a plan made with `settings` (a PruneConfig's dict) ran with: `method_options`, or for a plan
        of an older version that kept them beside the other settings, those keys (absent ones at their default)."""
        names = [f.name for f in dataclasses.fields(self.options)]
        given = settings.get("method_options") or {}
        if not all(n in given for n in names):
            given = {**{n: settings[n] for n in names if n in settings}, **given}
        return dataclasses.asdict(self.parse_options({k: v for k, v in given.items() if k in names}))


def _typed(method: str, key: str, tp, value):
    """`value` as the option's type (`tp` an annotation string: "int", "float", "str", "bool")."""
    name = tp if isinstance(tp, str) else getattr(tp, "__name__", str(tp))
    try:
        if name == "bool":
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
                return value.lower() in ("true", "1", "yes")
            if isinstance(value, bool):
                return value
            raise ValueError
        if name == "int" and isinstance(value, float) and not value.is_integer():
            raise ValueError
        return {"int": int, "float": float, "str": str}[name](value)
    except (TypeError, ValueError, KeyError):
        raise ComeError(f"option {key}={value!r} of {method} must be a {name}") from None


_REGISTRY: dict[str, Method] = {}
_loaded = False


def load_builtins() -> None:
    """Import every module of this package once (each method module registers its records)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    import importlib
    import pkgutil
    from pathlib import Path

    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        importlib.import_module(f"{__package__}.{info.name}")


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
    """The PruneConfig fields a plan of method `name` depends on (what `come compare --resume` checks): the
    common ones, its options among them."""
    return get_method(name).settings_used(settings)


def is_progressive(name: str) -> bool:
    """Whether every prefix of the method's plan is the method at that shallower depth (False: `angular`)."""
    return get_method(name).prefix_consistent


def max_removable(name: str, num_layers: int, cfg) -> int:
    """The most layers method `name` can remove from `num_layers` with settings `cfg`."""
    return get_method(name).limit.max_removable(num_layers, cfg)


def method_options(name: str, given: dict | None) -> dict:
    """The options of method `name` with `given` (strings or typed values) over its defaults, typed and checked,
    as a dict (what PruneConfig.method_options holds once validated); unknown keys are refused."""
    return dataclasses.asdict(get_method(name).parse_options(given))


def option_flags() -> tuple:
    """The flags of every registered method's options (`come prune --pair-score drop`), one per option name:
    methods sharing an option (come, come-p, come-plus) share its flag."""
    seen: dict = {}
    users: dict = {}
    for method in METHODS.values():
        for spec in flags(method.options):
            seen.setdefault(spec.name, spec)
            if method.variant_of is None:
                users.setdefault(spec.name, []).append(method.name)
    return tuple(dataclasses.replace(s, help=f"{s.help} ({', '.join(users.get(s.name, []))})") for s in seen.values())


def parse_option_args(items: list[str] | None) -> dict[str, str]:
    """["T=0.5", "laco.T=3"] -> {"T": "0.5", "laco.T": "3"}; a malformed item raises a ComeError."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ComeError(f"--option {item!r} must look like KEY=VALUE (e.g. --option T=0.5)")
        out[key.strip()] = value.strip()
    return out

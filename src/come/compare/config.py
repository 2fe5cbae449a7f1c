"""What `come compare` runs: `CompareConfig`, and `Variant` for a method with settings of its own."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field

from come.cliargs import arg, like
from come.config import CalibConfig, PruneConfig
from come.errors import ComeError, MethodRefusal
from come.eval.config import EvalConfig

EVALS = ("ppl", "tasks")
# The paper's table order; methods registered later (e.g. new CoMe variants) follow in name order.
ORDER = ("reverse", "reverse-keep-last", "magnitude", "magnitude+", "taylor", "taylor+", "sleb", "shortgpt",
         "angular", "laco", "mka", "wsum", "come", "come-p")
# PruneConfig fields the compare sets for every row alike; a variant sets any of the others
SHARED = ("model", "target_layers", "sparsity", "method", "calib", "loss_samples", "dtype", "device", "progress")


@dataclass
class Variant:
    """One row of a compare: method `method` pruned with its own PruneConfig `settings` (e.g.
    {"pair_score": "drop"}: the method's options, or PruneConfig fields such as `method_options`) and, when
    given, its own calibration text `calib_data` (the same windows otherwise). A plain method name in
    `CompareConfig.methods` is the variant of that name with no settings."""

    name: str
    method: str
    settings: dict = field(default_factory=dict)
    calib_data: str | None = None

    @classmethod
    def coerce(cls, value: Variant | dict | str) -> Variant:
        if isinstance(value, str):
            return cls(value, value)
        return cls(**value) if isinstance(value, dict) else value

    def check(self) -> Variant:
        from come.methods import get_method

        if not self.name or self.name == "dense" or "/" in self.name or self.name.startswith("."):
            raise ComeError(f"variant name {self.name!r} must be non-empty, not 'dense', without '/' and not "
                            "start with '.': it names the row and its folder")
        options = [f.name for f in dataclasses.fields(get_method(self.method).options)]
        allowed = [f.name for f in dataclasses.fields(PruneConfig) if f.name not in SHARED] + options
        bad = [k for k in self.settings if k not in allowed]
        if bad:
            raise ComeError(f"variant {self.name!r}: {', '.join(bad)} cannot be set per variant; its settings may "
                            f"be {', '.join(allowed)} (the others are the compare's)")
        return self


def split(spec: list[str] | str) -> list[str]:
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    return list(dict.fromkeys(n.strip() for n in names if n.strip()))


def parse_depths(spec: list[int] | str) -> list[int]:
    try:
        return sorted({int(d) for d in split(spec)}, reverse=True)
    except ValueError as e:
        raise ComeError(f"--depths must be a comma list of layer counts (e.g. 24,22), got {spec!r}") from e


def _comma_words(values: list) -> str:
    return ",".join(str(v) for v in values)


def _ppl_data_help() -> str:
    from come.corpora import OOD_DOMAINS

    return ("comma list of perplexity text sources (their evaluation parts); ood = the held-out domains "
            f"{', '.join(OOD_DOMAINS)}, reported one by one and as a geometric mean")


# Every field with a `help` is also a flag of `come compare` (come.cliargs); the settings it shares with
# `come prune` (model, target, calibration, dtype, ...) have that command's flags.
EVALUATION = "evaluation"


@dataclass
class CompareConfig:
    """What `come.compare` runs. Give exactly one of `target_layers` and `sparsity`. `methods`: "all", a comma
    list of method names, or a list of names and `Variant`s."""

    model: str = like(PruneConfig, "model")
    methods: list[str | Variant] | str = arg("all", help="all or a comma list of registered methods (`come prune "
                                             "--help` lists them)")
    target_layers: int | None = like(PruneConfig, "target_layers")
    sparsity: float | None = like(PruneConfig, "sparsity")
    evals: list[str] | str = arg(default_factory=lambda: ["ppl"], flag="--eval", group=EVALUATION,
                                 help="ppl, tasks, or ppl,tasks")
    tasks: list[str] | str = arg("all", group=EVALUATION, help="all or a comma list (with --eval tasks)")
    limit: int | None = like(EvalConfig, "limit", group=EVALUATION)
    # the first source is the row's "ppl"
    ppl_data: str = arg("wiki-passages,ood", flag="--ppl", aliases=["--ppl-data"], group=EVALUATION,
                        help=_ppl_data_help)  # --ppl as in `come eval`
    ppl_seq_len: int = like(EvalConfig, "ppl_seq_len", group=EVALUATION)
    ppl_max_windows: int | None = like(EvalConfig, "ppl_max_windows", group=EVALUATION,
                                       help="score only the first N windows of each source")
    out: str | None = arg(None, help="output folder")  # its flag: come.cli's add_output_args
    save_models: bool = arg(True, flag="--no-save-models", help="save each method's plan only, not its weights")
    sweep: bool = arg(False, help="also score every depth between dense and the target")
    # also score these depths (between dense and the target)
    depths: list[int] = arg(default_factory=list, type=str, parse=parse_depths, format=_comma_words,
                            help="also score these depths, a comma list (e.g. 24 with --target-layers 20): "
                            "progressive methods replay a prefix of their plan, others prune again")
    overwrite: bool = arg(False, help="replace what --out holds")  # its flag: come.cli's add_output_args
    # continue OUT.partial or extend OUT, reusing plans (and rows) made under equal settings
    resume: bool = arg(False, help="continue an interrupted run (OUT.partial) or extend a finished OUT, e.g. with "
                       "--eval ppl,tasks or more --methods: plans made under the same pruning settings are "
                       "replayed, rows made under the same evaluation settings too are kept")
    calib: CalibConfig | None = arg(None, nested=True)
    loss_samples: int | None = like(PruneConfig, "loss_samples")
    # {"laco.T": 0.5}: a method's --option, by row name
    options: dict = like(PruneConfig, "method_options", metavar="METHOD.KEY=VALUE",
                         help="a method's option, e.g. laco.T=0.5 (repeatable; `come prune --help` lists them)")
    dtype: str = like(PruneConfig, "dtype")
    device: str = like(PruneConfig, "device")
    # None: the calibration batch size (so the deprecated --batch-size, an alias of --calib-batch-size, sets both)
    eval_batch_size: int | None = arg(None, group=EVALUATION, help="windows / requests per forward pass when "
                                      "scoring (default: --calib-batch-size)")
    progress: bool = True

    def __post_init__(self) -> None:
        self.calib = CalibConfig.coerce(self.calib)

    def validate(self) -> CompareConfig:
        from come.eval.harness import parse_tasks

        self.methods = parse_entries(self.methods)
        self.evals = split(self.evals)
        bad = [e for e in self.evals if e not in EVALS]
        if bad or not self.evals:
            raise ComeError(f"--eval must be a comma list of {', '.join(EVALS)}, got {','.join(self.evals) or '-'}")
        self.tasks = parse_tasks(self.tasks, offline=True) if "tasks" in self.evals else []  # the seven bundled
        if self.limit is not None and self.limit < 1:
            raise ComeError(f"--limit {self.limit} must be at least 1 (or omitted for the full tasks)")
        if self.ppl_max_windows is not None and self.ppl_max_windows < 1:
            raise ComeError(f"--ppl-max-windows {self.ppl_max_windows} must be at least 1")
        if self.eval_batch_size is not None and self.eval_batch_size < 1:
            raise ComeError(f"--eval-batch-size {self.eval_batch_size} must be at least 1")
        if "ppl" in self.evals:
            from come.eval.ppl import expand_sources

            if not expand_sources(self.ppl_data):
                raise ComeError("--ppl is empty: pass e.g. wiki-passages,ood")
            from come.data import check_separate

            for data in dict.fromkeys([self.calib.data, *(v.calib_data for v in self.variants() if v.calib_data)]):
                check_separate(data, expand_sources(self.ppl_data), "--calib-data", "--ppl")
        names = self.names()
        for key in self.options:
            method, dot, name = key.partition(".")
            if not dot or method not in names:
                raise ComeError(f"--option {key} must name one of the compared methods, as METHOD.KEY=VALUE "
                                f"(e.g. laco.T=0.5); compared: {', '.join(names)}")
        if self.resume and self.overwrite:
            raise ComeError("--resume reuses what OUT (or OUT.partial) holds and --overwrite discards it: pass one")
        if self.resume and self.out is None:
            raise ComeError("--resume needs --out: the folder of the run to continue or extend")
        self.refused = {}
        for name in names:
            try:
                self.prune_config(name).validate()
            except MethodRefusal as e:  # this method cannot run here; the others can: a failed row, not an abort
                self.refused[name] = str(e)
        return self

    @property
    def eval_batch(self) -> int:
        """Windows / requests per forward pass when scoring: `eval_batch_size`, else the calibration batch size."""
        return self.eval_batch_size if self.eval_batch_size is not None else self.calib.batch_size

    def variants(self) -> list[Variant]:
        """Every row but the dense one, in order (a plain method name as the variant of that name)."""
        return [Variant.coerce(m) for m in ([] if isinstance(self.methods, str) else self.methods)]

    def names(self) -> list[str]:
        return [v.name for v in self.variants()]

    def variant(self, name: str) -> Variant:
        return next(v for v in self.variants() if v.name == name)

    def prune_config(self, name: str, target_layers: int | None = None) -> PruneConfig:
        """The pruning settings of row `name` (at `target_layers`, default: the compare's target)."""
        v = self.variant(name)
        calib = copy.deepcopy(self.calib)
        if v.calib_data is not None:
            calib.data = v.calib_data
        fields = {f.name for f in dataclasses.fields(PruneConfig)}
        settings = {k: x for k, x in v.settings.items() if k in fields}
        options = {**settings.pop("method_options", {}), **{k: x for k, x in v.settings.items() if k not in fields},
                   **{k.partition(".")[2]: x for k, x in self.options.items() if k.partition(".")[0] == name}}
        sparsity = None if target_layers is not None else self.sparsity
        return PruneConfig(model=self.model, target_layers=target_layers or self.target_layers, sparsity=sparsity,
                           method=v.method, calib=calib, loss_samples=self.loss_samples, method_options=options,
                           dtype=self.dtype, device=self.device, progress=self.progress, **settings)

    def prune_configs(self) -> list[PruneConfig]:
        return [self.prune_config(n) for n in self.names()]


def parse_methods(spec: list[str] | str) -> list[str]:
    """Method names from "all" or a comma list; an unknown name raises a ComeError listing the registered."""
    from come.methods import METHODS, get_method

    names = split(spec)
    if names == ["all"]:
        return sorted(METHODS, key=lambda m: (ORDER.index(m) if m in ORDER else len(ORDER), m))
    if not names:
        raise ComeError(f"--methods is empty: pass all or a comma list of {', '.join(sorted(METHODS))}")
    for n in names:
        get_method(n)
    return names


def parse_entries(spec: list[str | Variant | dict] | str) -> list[str | Variant]:
    """Method names (as `parse_methods`) and checked `Variant`s (a dict is read as one), with unique names."""
    if isinstance(spec, str) or all(isinstance(x, str) for x in spec):
        return parse_methods(spec)
    entries: list[str | Variant] = []
    for x in spec:
        entries += parse_methods([x]) if isinstance(x, str) else [Variant.coerce(x).check()]
    names = [x if isinstance(x, str) else x.name for x in entries]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ComeError(f"compared twice: {', '.join(twice)}: give each method or variant a name of its own")
    return entries

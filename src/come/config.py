"""Typed, validated settings of the public functions (the CLI fills the same objects)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from come.cliargs import arg, check_choices
from come.errors import ComeError, MethodRefusal

# Every field with a `help` is also a flag of `come prune` (come.cliargs): the field is the one place of the flag's
# default, type, choices and help text. Calibration flags are --calib-*.
CALIBRATION = "calibration"
MEMORY = "memory"
SAVE_DTYPES = ["auto", "float32", "bfloat16", "float16"]


def _method_help() -> str:
    # the names are not listed here: --help does not import the methods (and torch); --help-all does
    return ("come (the paper's), come-p, come-plus (ours, the strongest measured), sleb, shortgpt, ...: "
            "`--help-all` lists every method and its options; docs/methods.md")


def _option_flags() -> tuple[str, tuple]:
    from come.methods import METHODS, option_flags

    return f"Methods: {', '.join(METHODS)}", option_flags()


# Fields that older versions of PruneConfig had, with their default: the CoMe family's are options of its methods
# now ("" below: `method_options`), the research ones left for experiments/ (where they went is said) or for good.
# A recipe or plan that holds one at its default means nothing by it.
RETIRED_AFTER = "bcfc332"  # the last commit whose PruneConfig had them
FORMER_FIELDS = {
    "ratio_power": (1.0, "retired; its rows are in docs/results.md"),
    "grid_search": ("full", "retired; its rows are in docs/results.md"),
    "reconstruct": (False, "the variants come:refit and come-p:refit of experiments/come_variants.py"),
    "refit_target": ("pair", "the variant come:refit-dense of experiments/come_variants.py"),
    "refit_prior": ("merged", "the variant come-plus:prior-zero of experiments/come_variants.py"),
    "cross_fit": (False, "retired; its rows are in docs/results.md"),
    "refit_anchor": (0, "retired; its rows are in docs/results.md"),
    "drop_candidates": (False, "the variant come-plus:drop-candidates of experiments/come_variants.py"),
    "pair_score": ("angular", "the variants METHOD:pair-loss of experiments/come_variants.py"),  # its value loss
    "norm": ("mean", ""), "pair_tokens": ("last", ""), "remerge": (False, ""), "grid": (20, ""),
}


def retired_settings(settings: dict) -> list[str]:
    """The settings of an older version's plan or recipe that today's come no longer offers, as "KEY=VALUE (where
    it went)": a retired one away from its unused value, or --pair-score loss."""
    out = []
    for key, (unused, went) in FORMER_FIELDS.items():
        value = settings.get(key, unused)
        if went and value != unused and not (key == "pair_score" and value == "drop"):
            out.append(f"{key}={value} ({went})")
    return out


def _option_dict(items: list[str] | None) -> dict:
    from come.methods import parse_option_args

    return parse_option_args(items)


def _option_words(options: dict) -> list[str]:
    return [f"{k}={v}" for k, v in options.items()]


@dataclass
class CalibConfig:
    data: str = arg("mix", flag="--calib-data", group=CALIBRATION,  # the bundled mixture (come.corpora)
                    help="mix (bundled mixture of six real domains, the default), one of its domains, "
                    "wiki-passages (contaminates BoolQ), wikitext2, c4, or a .txt/.jsonl/.parquet/datasets folder")
    samples: int = arg(32, flag="--calib-samples", group=CALIBRATION, help="number of windows")
    seq_len: int = arg(2048, flag="--calib-seq-len", group=CALIBRATION, help="tokens per window")
    batch_size: int = arg(8, flag="--calib-batch-size", aliases=["--batch-size"], group=CALIBRATION, more=True,
                          help="calibration windows per forward pass")
    seed: int = arg(0, flag="--calib-seed", aliases=["--seed"], group=CALIBRATION, more=True,
                    help="seed of the choice of windows")

    @classmethod
    def coerce(cls, value: CalibConfig | dict | None) -> CalibConfig:
        """A CalibConfig from None (defaults), a dict (e.g. a plan's settings) or a CalibConfig."""
        if value is None:
            return cls()
        return cls(**value) if isinstance(value, dict) else value

    def validate(self) -> None:
        if self.samples < 1:
            raise ComeError(f"--calib-samples must be >= 1, got {self.samples}")
        if self.seq_len < 2:
            raise ComeError(f"--calib-seq-len must be >= 2, got {self.seq_len}")
        if self.batch_size < 1:
            raise ComeError(f"--calib-batch-size must be >= 1, got {self.batch_size}")
        from come.data import check_separate, check_source

        check_source(self.data, "--calib-data")  # a missing file fails here, not after the dense evaluation
        check_separate(self.data, (), "--calib-data", "")  # a held-out evaluation domain is refused here


@dataclass
class PruneConfig:
    """What `come.prune` does. Give exactly one of `target_layers` and `sparsity`; `method_options` are the
    method's own (its record's `options`: e.g. {"pair_score": "drop"} for come-plus, {"T": 0.5} for laco)."""

    model: str = arg(positional=True, nargs="?",
                     help="HF model folder, hub id, or alias (smollm2-135m, gemma3-270m); or `model:` in --config")
    target_layers: int | None = arg(None, exclusive="target", help="number of decoder layers to keep")
    sparsity: float | None = arg(None, exclusive="target",
                                 help="fraction of ALL parameters to remove, rounded to whole layers")
    method: str = arg("come", help=_method_help)
    method_options: dict = arg(default_factory=dict, flag="--option", repeat=True, metavar="KEY=VALUE",
                               parse=_option_dict, format=_option_words, options_of=_option_flags,
                               help="an option of the method, repeatable (come-plus: pair_score=drop; laco: T=0.5); "
                               "each is also a flag of its own (--pair-score drop), listed by --help-all")
    loss_samples: int | None = arg(None, more=True, help="windows used for loss trials (sleb, laco, come-p, "
                                   "come-plus), rounded up to whole batches (default: all)")
    calib: CalibConfig | None = arg(None, nested=True)
    dtype: str = arg("auto", more=True,
                     help="auto (float32 on CPU, else the checkpoint dtype), float32, bfloat16, float16")
    save_dtype: str = arg("auto", choices=SAVE_DTYPES, more=True, help="dtype of the saved weights (auto: the "
                          "original checkpoint's, whatever --dtype computed in)")
    device: str = arg("auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    offload: str = arg("auto", choices=["auto", "always", "never"], group=MEMORY, more=True,
                       help="keep the weights in CPU memory and stream one layer at a time to the GPU (auto: when "
                       "the weights do not fit in 80%% of its free memory; this is how a 70B model prunes on one GPU)")
    store_device: str | None = arg(None, group=MEMORY, more=True, help="where the cached hidden states live "
                                   "(default: the GPU if they fit beside the weights, else cpu, or disk when CPU "
                                   "memory is short); disk: memory-mapped files in --cache-dir")
    stream: str = arg("auto", choices=["auto", "always", "never"], group=MEMORY, more=True,
                      help="read each decoder layer from the checkpoint's safetensors files when it is needed and "
                      "write the result layer by layer, so CPU memory holds a few layers, not the model (auto: when "
                      "the weights are offloaded; always: also on a CPU run)")
    cache_dir: str | None = arg(None, group=MEMORY, more=True, help="folder of the disk-backed hidden-state cache "
                                "and of streamed layers' edits (files removed at the end; default: the system's "
                                "temporary folder)")
    progress: bool = True  # the Python API's progress bars; not a flag

    def __post_init__(self) -> None:
        self.calib = CalibConfig.coerce(self.calib)

    @property
    def options(self):
        """The method's options as it reads them (an instance of its record's `options` dataclass)."""
        from come.methods import get_method

        return get_method(self.method).parse_options(self.method_options)

    def validate(self) -> PruneConfig:
        from come.methods import get_method, method_options

        method = get_method(self.method)
        self.method_options = method_options(self.method, self.method_options)
        from come.cliargs import check_finite, flags

        for spec in flags(PruneConfig):  # a NaN or infinite number (the Python API; the CLI refuses it parsing)
            if spec.kind != "nested":
                check_finite(spec.shown, getattr(self, spec.name))
        if (self.target_layers is None) == (self.sparsity is None):
            raise ComeError("give exactly one of --target-layers and --sparsity")
        if self.sparsity is not None and not 0 < self.sparsity < 1:
            raise ComeError(f"--sparsity must be in (0, 1), got {self.sparsity}")
        check_choices(self, skip=("save_dtype",))  # --offload
        from come.models import parse_device, parse_dtype

        if self.save_dtype != "auto":
            parse_dtype(self.save_dtype)  # the flag's names, and through the API also bf16, fp16, fp32
        if self.store_device not in (None, "disk"):
            parse_device(self.store_device, "--store-device")
        if self.loss_samples is not None and self.loss_samples < 1:
            raise ComeError(f"--loss-samples must be >= 1, got {self.loss_samples}")
        self.calib.validate()
        need = method.min_calib_samples(self)
        if self.calib.samples < need:
            raise MethodRefusal(
                f"{self.method} needs at least {need} calibration windows (it holds every {need}th window out to "
                f"decide on it), got {self.calib.samples}: pass --calib-samples {need} or more"
            )
        return self

    def to_dict(self) -> dict:
        return asdict(self)

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
    from come.methods import BUILTIN_NAMES  # the names alone: --help does not import the methods (and torch)

    return f"one of {', '.join(sorted(BUILTIN_NAMES))}; docs/methods.md"


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
    batch_size: int = arg(8, flag="--calib-batch-size", aliases=["--batch-size"], group=CALIBRATION,
                          help="calibration windows per forward pass")
    seed: int = arg(0, flag="--calib-seed", aliases=["--seed"], group=CALIBRATION,
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
    """What `come.prune` does. Give exactly one of `target_layers` and `sparsity`."""

    model: str = arg(positional=True, nargs="?",
                     help="HF model folder, hub id, or alias (smollm2-135m, gemma3-270m); or `model:` in --config")
    target_layers: int | None = arg(None, exclusive="target", help="number of decoder layers to keep")
    sparsity: float | None = arg(None, exclusive="target",
                                 help="fraction of ALL parameters to remove, rounded to whole layers")
    method: str = arg("come", help=_method_help)
    norm: str = arg("mean", choices=["mean", "fold"],  # mean (authors' code) | fold (ours)
                    help="norm handling of a merged layer")
    pair_score: str = arg("angular", choices=["angular", "loss", "drop"],
                          help="how the pair is chosen: angular (the paper), loss (calibration NLL of each "
                          "candidate merge), drop (the pairs around the layer whose removal costs least, "
                          "the plain drop competing)")
    pair_tokens: str = arg("last", choices=["last", "all"], help="tokens of the angular score")
    remerge: bool = arg(False, help="allow merging layers that are already merges")
    ratio_power: float = arg(1.0, help="p of the merge ratio r_i = BI_i^p / sum BI^p (1: the paper's)")
    grid: int = arg(20, help="CoMe-P ratio grid size g (ratios 0, 1/g, ..., 1)")
    grid_search: str = arg("full", choices=["full", "walk"],
                           help="CoMe-P: try every ratio of the grid, or walk it downhill from the point nearest "
                           "r_BI (far fewer trials; a local minimum: the NLL has several along the grid)")
    loss_samples: int | None = arg(None, help="windows used for loss trials (sleb, laco, come-p, --pair-score "
                                   "loss, --drop-candidates), rounded up to whole batches (default: all)")
    reconstruct: bool = arg(False, help="come/come-p: ridge re-fit of each merged layer's o_proj/down_proj (always "
                            "on in come-plus)")
    refit_target: str = arg("pair", choices=["pair", "dense"],
                            help="come-plus: re-fit to the current pair's output or to the dense model's")
    refit_prior: str = arg("merged", choices=["merged", "zero"],
                           help="re-fit: the ridge pulls toward the merged layer's own weights or toward zero")
    cross_fit: bool = arg(False, help="come-plus: judge each choice on every calibration window instead of one "
                          "held-out quarter (each quarter scored with a re-fit that did not see it: 4 re-fits per "
                          "trial; the applied re-fit is unchanged)")
    refit_anchor: int = arg(0, metavar="N", help="come-plus (experimental): also fit every re-fit to N windows of "
                            "text that the unpruned model samples itself (no data; the calibration's window length), "
                            "so the fit keeps the pair's function beyond the calibration text; 0: off")
    method_options: dict = arg(default_factory=dict, flag="--option", repeat=True, metavar="KEY=VALUE",
                               parse=_option_dict, format=_option_words,
                               help="a method option, repeatable (laco: C=4, I=2, T=0.65, L=1; docs/methods.md)")
    drop_candidates: bool = arg(False, help="come family: each step, SLEB's best single-layer drop competes with "
                                "the merge by calibration NLL")
    calib: CalibConfig | None = arg(None, nested=True)
    dtype: str = arg("auto", help="auto (float32 on CPU, else the checkpoint dtype), float32, bfloat16, float16")
    save_dtype: str = arg("auto", choices=SAVE_DTYPES, help="dtype of the saved weights (auto: the original "
                          "checkpoint's, whatever --dtype computed in)")
    device: str = arg("auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    offload: str = arg("auto", choices=["auto", "always", "never"], group=MEMORY,
                       help="keep the weights in CPU memory and stream one layer at a time to the GPU (auto: when "
                       "the weights do not fit in 80%% of its free memory; this is how a 70B model prunes on one GPU)")
    store_device: str | None = arg(None, group=MEMORY, help="where the cached hidden states live (default: the GPU "
                                   "if they fit beside the weights, else cpu)")
    progress: bool = True  # the Python API's progress bars; not a flag

    def __post_init__(self) -> None:
        self.calib = CalibConfig.coerce(self.calib)

    def validate(self) -> None:
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
        check_choices(self, skip=("save_dtype",))  # --norm, --pair-score, --pair-tokens, --refit-*, --offload
        from come.models import parse_device, parse_dtype

        if self.save_dtype != "auto":
            parse_dtype(self.save_dtype)  # the flag's names, and through the API also bf16, fp16, fp32
        if self.store_device is not None:
            parse_device(self.store_device, "--store-device")
        if self.grid < 1:
            raise ComeError(f"--grid must be >= 1, got {self.grid}")
        if self.loss_samples is not None and self.loss_samples < 1:
            raise ComeError(f"--loss-samples must be >= 1, got {self.loss_samples}")
        if self.cross_fit and self.method != "come-plus":
            raise ComeError(f"--cross-fit judges come-plus's re-fitted choices, not {self.method}'s: drop it or "
                            "pass --method come-plus")
        if self.refit_anchor < 0:
            raise ComeError(f"--refit-anchor must be >= 0, got {self.refit_anchor}")
        if self.refit_anchor and not (self.method == "come-plus" or self.reconstruct):
            raise ComeError(f"--refit-anchor feeds the re-fit, and {self.method} re-fits nothing: drop it, or pass "
                            "--method come-plus or --reconstruct")
        if self.refit_anchor and self.refit_target == "dense":
            raise ComeError("--refit-anchor fits to the current pair's output: drop --refit-target dense or the "
                            "anchor")
        self.calib.validate()
        need = getattr(method, "min_calib_samples", lambda _cfg: 1)(self)
        if self.calib.samples < need:
            raise MethodRefusal(
                f"{self.method} needs at least {need} calibration windows (its re-fit holds every {need}th window "
                f"out to decide on it), got {self.calib.samples}: pass --calib-samples {need} or more"
            )

    def to_dict(self) -> dict:
        return asdict(self)

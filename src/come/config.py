"""Typed, validated settings of the public functions (the CLI fills the same objects)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from come.errors import ComeError, MethodRefusal


@dataclass
class CalibConfig:
    data: str = "mix"  # the bundled calibration mixture (come.corpora); never the evaluation text
    samples: int = 32
    seq_len: int = 2048
    batch_size: int = 8
    seed: int = 0

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
            raise ComeError(f"--batch-size must be >= 1, got {self.batch_size}")
        from come.data import check_separate

        check_separate(self.data, (), "--calib-data", "")  # a held-out evaluation domain is refused here


@dataclass
class PruneConfig:
    """What `come.prune` does. Give exactly one of `target_layers` and `sparsity`."""

    model: str
    target_layers: int | None = None
    sparsity: float | None = None
    method: str = "come"
    norm: str = "mean"  # mean (authors' code) | fold (ours)
    pair_score: str = "angular"  # angular (paper) | loss (calibration NLL of each candidate merge)
    pair_tokens: str = "last"  # last | all: tokens the angular pair score is summed over
    remerge: bool = False  # allow merging a layer that is already a merge
    ratio_power: float = 1.0  # p in r_i = BI_i^p / sum BI^p
    grid: int = 20  # CoMe-P ratio grid {0, 1/g, ..., 1}
    loss_samples: int | None = None  # windows used for loss trials (pair choice by loss, CoMe-P); None = all
    reconstruct: bool = False  # come/come-p: ridge re-fit of each merged layer (always on in come-plus)
    refit_target: str = "pair"  # come-plus: fit the current pair's output (pair) or the dense model's (dense)
    refit_prior: str = "merged"  # the re-fit's ridge pulls toward the merged weights (merged) or toward zero
    method_options: dict = field(default_factory=dict)  # the method's --option KEY=VALUE settings
    drop_candidates: bool = False  # come family: SLEB's best single-layer drop competes with the merge each step
    calib: CalibConfig | None = None
    dtype: str = "auto"
    save_dtype: str = "auto"  # dtype of the saved weights; auto = the original checkpoint's
    device: str = "auto"
    offload: str = "auto"  # auto | always | never: weights in CPU memory, streamed a layer at a time
    store_device: str | None = None  # where cached hidden states live (default: placement.decide)
    progress: bool = True

    def __post_init__(self) -> None:
        self.calib = CalibConfig.coerce(self.calib)

    def validate(self) -> None:
        from come.merge import NORM_MODES
        from come.methods import get_method, method_options
        from come.reconstruct import PRIORS

        method = get_method(self.method)
        self.method_options = method_options(self.method, self.method_options)
        if (self.target_layers is None) == (self.sparsity is None):
            raise ComeError("give exactly one of --target-layers and --sparsity")
        if self.sparsity is not None and not 0 < self.sparsity < 1:
            raise ComeError(f"--sparsity must be in (0, 1), got {self.sparsity}")
        if self.norm not in NORM_MODES:
            raise ComeError(f"--norm must be one of {', '.join(NORM_MODES)}, got {self.norm!r}")
        if self.pair_score not in ("angular", "loss"):
            raise ComeError(f"--pair-score must be angular or loss, got {self.pair_score!r}")
        if self.pair_tokens not in ("last", "all"):
            raise ComeError(f"--pair-tokens must be last or all, got {self.pair_tokens!r}")
        if self.refit_target not in ("pair", "dense"):
            raise ComeError(f"--refit-target must be pair or dense, got {self.refit_target!r}")
        if self.refit_prior not in PRIORS:
            raise ComeError(f"--refit-prior must be one of {', '.join(PRIORS)}, got {self.refit_prior!r}")
        if self.save_dtype != "auto":
            from come.models import parse_dtype

            parse_dtype(self.save_dtype)
        from come.models import parse_device
        from come.placement import check_offload

        check_offload(self.offload)
        if self.store_device is not None:
            parse_device(self.store_device, "--store-device")
        if self.grid < 1:
            raise ComeError(f"--grid must be >= 1, got {self.grid}")
        if self.loss_samples is not None and self.loss_samples < 1:
            raise ComeError(f"--loss-samples must be >= 1, got {self.loss_samples}")
        self.calib.validate()
        need = getattr(method, "min_calib_samples", lambda _cfg: 1)(self)
        if self.calib.samples < need:
            raise MethodRefusal(
                f"{self.method} needs at least {need} calibration windows (its re-fit holds every {need}th window "
                f"out to decide on it), got {self.calib.samples}: pass --calib-samples {need} or more"
            )

    def to_dict(self) -> dict:
        return asdict(self)

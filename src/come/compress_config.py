"""The settings of `come compress` (`CompressConfig`), apart from the pipeline in `come.compress`: recipes and
`come --help` read them without loading the pipeline's modules (which write cards and recipes themselves)."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

from come.cliargs import arg, check_choices, flag_name, like
from come.config import CalibConfig, PruneConfig, _option_flags
from come.distillation.config import DistillConfig
from come.errors import ComeError
from come.eval.config import EvalConfig

log = logging.getLogger("come")

RECOVERY, EVALUATION, RUN = "recovery", "evaluation", "run"
# what each --recovery trains, stage by stage: (distill stage, what the global stage trains, its loss)
STAGE1_LOSS = "mse=1,cos=0,kl=0,logits=0"  # layer-wise: the hidden state leaving the block
STAGE2_LOSS = "mse=0,cos=0,kl=0,logits=1"  # global: logit KL only (Minitron: the most token-efficient)
RECOVERIES = {
    "staged": [("layerwise", None, STAGE1_LOSS), ("global", "merged+norms", STAGE2_LOSS)],
    "global": [("global", "merged+norms", STAGE2_LOSS)],
    "full": [("global", "all", STAGE2_LOSS)],
    "lora": [("lora", None, "")],
}
STATE_FILE = "compress.json"  # in OUT.partial: the settings the run started with
EVAL_DIR = "eval"


def _no_aliases(cls, name: str, **changes):
    """A flag borrowed from another command without its deprecated aliases (they would clash here)."""
    return like(cls, name, aliases=[], **changes)


@dataclass
class CompressConfig:
    """What `come.compress` does: `come prune`'s settings (the same flags), the recovery (`recover` training
    tokens, all stages together) and, when `ppl` or `tasks` is given, the evaluation."""

    model: str = like(PruneConfig, "model")
    target_layers: int | None = like(PruneConfig, "target_layers")
    sparsity: float | None = like(PruneConfig, "sparsity")
    method: str = like(PruneConfig, "method")
    method_options: dict = like(PruneConfig, "method_options", options_of=_option_flags)
    loss_samples: int | None = like(PruneConfig, "loss_samples", more=True)
    calib: CalibConfig | None = arg(None, nested=True)
    recover: int | None = arg(None, metavar="TOKENS", group=RECOVERY,
                              help="training tokens of the recovery, all its stages together; required")
    recovery: str = arg("staged", choices=list(RECOVERIES), group=RECOVERY,
                        help="staged: layer-wise (each merged layer alone against the teacher's states at its "
                        "boundaries), then logit KL of the whole model training the merged layers and every norm; "
                        "global: only the second stage; full: logit KL training every layer; lora: LoRA adapters "
                        "on every layer with the LM loss (the baseline), all at the same tokens")
    layerwise_share: float = arg(0.5, group=RECOVERY, help="with --recovery staged: the share of --recover the "
                                 "layer-wise stage gets (the rest goes to the global stage)")
    train_lm_head: bool = like(DistillConfig, "train_lm_head", group=RECOVERY)
    train_last: int = like(DistillConfig, "train_last", group=RECOVERY)
    train_data: str = _no_aliases(DistillConfig, "data", group=RECOVERY)
    train_seq_len: int = _no_aliases(DistillConfig, "seq_len", group=RECOVERY)
    train_batch_size: int = _no_aliases(DistillConfig, "batch_size", group=RECOVERY)
    grad_accum: int = like(DistillConfig, "grad_accum", group=RECOVERY, more=True)
    lr: float = like(DistillConfig, "lr", group=RECOVERY)
    lora_lr: float = like(DistillConfig, "lora_lr", group=RECOVERY, more=True)
    lora_rank: int = like(DistillConfig, "lora_rank", group=RECOVERY, more=True)
    train_seed: int = _no_aliases(DistillConfig, "seed", group=RECOVERY, more=True)
    autocast: bool = like(DistillConfig, "autocast", group=RECOVERY, more=True)
    teacher_cache: int = like(DistillConfig, "teacher_cache", group=RECOVERY, more=True)
    checkpoint_every: int = arg(20, group=RECOVERY, more=True,
                                help="checkpoint the recovery every N steps, for --resume (0: only between stages)")
    ppl: list[str] = like(EvalConfig, "ppl", group=EVALUATION)
    ppl_seq_len: int = like(EvalConfig, "ppl_seq_len", group=EVALUATION)
    ppl_max_windows: int | None = like(EvalConfig, "ppl_max_windows", group=EVALUATION)
    tasks: list[str] = like(EvalConfig, "tasks", group=EVALUATION)
    limit: int | None = like(EvalConfig, "limit", group=EVALUATION)
    eval_batch_size: int = _no_aliases(EvalConfig, "batch_size", group=EVALUATION)
    baseline: str | None = like(EvalConfig, "baseline", group=EVALUATION,
                                help="what retained %% is measured against (default: the original model; an earlier "
                                "eval.json of it reuses its numbers; none: no baseline)")
    dtype: str = like(PruneConfig, "dtype")
    save_dtype: str = like(PruneConfig, "save_dtype")
    device: str = like(PruneConfig, "device")
    offload: str = like(PruneConfig, "offload", more=True)
    store_device: str | None = like(PruneConfig, "store_device", more=True)
    stream: str = like(PruneConfig, "stream", more=True)
    cache_dir: str | None = like(PruneConfig, "cache_dir", more=True)
    out: str | None = None  # come.cli's add_output_args
    overwrite: bool = False
    resume: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        self.calib = CalibConfig.coerce(self.calib)

    @property
    def evaluates(self) -> bool:
        return bool(self.ppl or self.tasks)

    def prune_config(self) -> PruneConfig:
        names = ("model", "target_layers", "sparsity", "method", "method_options", "loss_samples", "dtype",
                 "save_dtype", "device", "offload", "store_device", "stream", "cache_dir", "progress")
        return PruneConfig(calib=CalibConfig(**asdict(self.calib)), **{k: getattr(self, k) for k in names})

    def stage_tokens(self) -> list[int]:
        """The training tokens of each recovery stage (the layer-wise stage's share first)."""
        if len(RECOVERIES[self.recovery]) == 1:
            return [self.recover]
        first = int(self.recover * self.layerwise_share)
        return [first, self.recover - first]

    def distill_config(self, i: int, student: str, out: str, resume: bool) -> DistillConfig:
        """The `come distill` settings of recovery stage `i` (0-based)."""
        stage, train, loss = RECOVERIES[self.recovery][i]
        return DistillConfig(
            student=student, teacher=self.model, out=out, stage=stage, loss=loss, train=train or "merged",
            train_lm_head=self.train_lm_head and stage == "global", train_last=self.train_last if stage == "global"
            else 0, data=self.train_data, tokens=self.stage_tokens()[i], seq_len=self.train_seq_len,
            batch_size=self.train_batch_size, grad_accum=self.grad_accum, lr=self.lr, lora_lr=self.lora_lr,
            lora_rank=self.lora_rank, autocast=self.autocast, teacher_cache=self.teacher_cache,
            checkpoint_every=self.checkpoint_every, resume=resume,
            overwrite=True, ppl_windows=0, dtype=self.dtype, save_dtype=self.save_dtype, device=self.device,
            seed=self.train_seed, progress=self.progress)

    def eval_config(self, model: str) -> EvalConfig:
        baseline = None if (self.baseline or "").lower() == "none" else self.baseline or self.model
        return EvalConfig(model=model, baseline=baseline, ppl=list(self.ppl), ppl_seq_len=self.ppl_seq_len,
                          ppl_max_windows=self.ppl_max_windows, tasks=list(self.tasks), limit=self.limit,
                          batch_size=self.eval_batch_size, dtype=self.dtype, device=self.device,
                          progress=self.progress)

    def validate(self) -> CompressConfig:
        """Every refusal that needs no model: the recovery budget, the recipe's own settings, the text sources."""
        check_choices(self, skip=("save_dtype",))
        if self.recover is None:
            raise ComeError("give --recover TOKENS (the training tokens of the recovery, e.g. 131072), or "
                            "`recover:` in the --config recipe; `come prune` prunes without recovery")
        if self.recover < 1:
            raise ComeError(f"--recover must be a positive number of training tokens, got {self.recover}: "
                            "`come prune` prunes without recovery")
        if not 0 < self.layerwise_share < 1:
            raise ComeError(f"--layerwise-share must be in (0, 1), got {self.layerwise_share}")
        if self.recovery == "lora" and (self.train_lm_head or self.train_last):
            raise ComeError("--train-lm-head and --train-last train full weights: not with --recovery lora "
                            "(adapters only)")
        if self.checkpoint_every < 0:
            raise ComeError(f"--checkpoint-every must be >= 0, got {self.checkpoint_every}")
        self.prune_config().validate()  # the method, its options, the target, the calibration
        step = self.train_batch_size * self.grad_accum * self.train_seq_len
        for (stage, _, _), tokens in zip(RECOVERIES[self.recovery], self.stage_tokens()):
            if tokens < step:
                raise ComeError(f"--recover {self.recover} gives the {stage} stage {tokens} tokens, less than one "
                                f"training step ({step} = {flag_name(CompressConfig, 'train_batch_size')} x "
                                f"--grad-accum x {flag_name(CompressConfig, 'train_seq_len')}): pass more tokens "
                                "or smaller steps")
        for i in range(len(RECOVERIES[self.recovery])):  # the training settings as `come distill` checks them
            self.distill_config(i, "student", "out", False).validate()
        from come.data import check_separate
        from come.eval.ppl import expand_sources

        if self.evaluates:
            ev = self.eval_config(self.model).validate()
            self.ppl, self.tasks = ev.ppl, ev.tasks
        # the training text and the calibration text are never what is evaluated (held-out domains refused too)
        evaluated = expand_sources(self.ppl) if self.ppl else []
        check_separate(self.train_data, evaluated, flag_name(CompressConfig, "train_data"), "--ppl")
        check_separate(self.calib.data, evaluated, "--calib-data", "--ppl")
        return self

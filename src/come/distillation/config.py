"""What `come.distill` does (`DistillConfig`), what it returns (`DistillResult`), and the text it trains on.

Light on purpose (recipes read it): torch and the training code load only when a run uses them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from come.cliargs import arg, check_choices, flag_name, like
from come.config import PruneConfig
from come.errors import ComeError
from come.eval.config import EvalConfig

if TYPE_CHECKING:
    from come.distillation.losses import LossWeights

STAGES = {"layerwise": ["layerwise"], "global": ["global"], "both": ["layerwise", "global"], "lora": ["lora"]}
STRATEGIES = ("ddp", "fsdp")
TRAINABLE = ("merged", "merged+norms", "all", "norms", "lora")  # what the global stage trains
SUMMARY_JSON, SUMMARY_MD, LOG_FILE = "distill_summary.json", "distill_summary.md", "distill_log.jsonl"
# settings that may change between an interrupted run and its --resume
RESUME_FREE = ("resume", "overwrite", "progress", "checkpoint_every", "teacher_cache")


@dataclass
class DistillConfig:
    """What `come.distill` does. Budgets (`tokens` or `steps`) are per stage; a step is batch_size * grad_accum
    windows of seq_len tokens, over all processes. Every field with a `help` is also a flag of `come distill`
    (come.cliargs); the training text's settings are --train-*."""

    student: str = arg(help="folder written by `come prune` (HF model + come_plan.json); required, here or in "
                       "--config")
    out: str = arg(help="output folder (must be empty or absent, unless --overwrite); or `out:` in --config")
    teacher: str | None = arg(None, help="the original model (default: the one the plan names)")
    stage: str = arg("both", choices=list(STAGES),
                     help="layerwise (teacher-forced), global (hierarchical), both, or lora (LM-loss baseline)")
    loss: str = arg("", help="loss weights, e.g. mse=1,cos=0,kl=0.1,logits=1 (mse/cos/kl at each correspondence "
                    "point, logits = KL on final logits)")
    temperature: float = arg(1.0, help="KL temperature")
    train: str = arg("merged", choices=TRAINABLE, help="what the global stage trains (merged+norms: the merged "
                     "layers and every norm, the final one included)")
    train_lm_head: bool = arg(False, help="the global stage also trains the LM head (tied to the embeddings in "
                              "some models: then those train too)")
    train_last: int = arg(0, metavar="N", help="the global stage also trains the last N decoder layers")
    # its calibration part (never the evaluation part)
    data: str = arg("mix", flag="--train-data", aliases=["--data"], help="training text: mix (the bundled "
                    "calibration mixture), wikitext2, c4, or a .txt/.jsonl/.parquet/datasets folder")
    tokens: int | None = arg(None, exclusive="budget", help="training tokens per stage")  # one of tokens, steps
    steps: int | None = arg(None, exclusive="budget", help="optimizer steps per stage")
    seq_len: int = arg(256, flag="--train-seq-len", aliases=["--seq-len"], help="tokens per training window")
    batch_size: int = arg(4, flag="--train-batch-size", aliases=["--batch-size"],
                          help="training windows per micro-batch, over all processes")
    grad_accum: int = arg(1, help="micro-batches per optimizer step")
    lr: float = arg(1e-4, help="learning rate of full weights (layer-wise, global)")
    lora_lr: float = arg(1e-3, help="learning rate of LoRA adapters")
    warmup: float = arg(0.1, help="warm-up fraction of the steps")
    min_lr_ratio: float = arg(0.1, help="the cosine schedule ends at lr x this")
    weight_decay: float = arg(0.0, help="AdamW weight decay")
    clip: float = arg(1.0, help="max gradient norm per layer (0: off)")
    autocast: bool = arg(False, help="bf16 autocast (GPUs; slow on most CPUs)")
    lora_rank: int = arg(8, help="rank of the LoRA adapters")
    lora_alpha: float = arg(16.0, help="alpha of the LoRA adapters")
    teacher_cache: int = arg(0, metavar="MiB", help="layer-wise stage: keep the teacher's boundary states of the "
                             "windows seen, up to this many MiB on the training device, so that a window met again "
                             "(a budget beyond one pass over the text) skips the teacher (0: off)")
    checkpoint_every: int = arg(0, help="checkpoint every N steps (0: never)")
    resume: bool = arg(False, help="continue an interrupted run from its last checkpoint")
    overwrite: bool = arg(False, help="replace what --out holds")
    # the flag `come eval` and `come compare` have (--ppl-windows before); its default differs on purpose: here
    # it also switches the measurement on, which pauses training before and after each stage
    ppl_windows: int = arg(0, flag="--ppl-max-windows", aliases=["--ppl-windows"],
                           help="measure perplexity on the first N evaluation windows before and after each stage "
                           "(default 0: not measured, since each measurement pauses training; `come eval` scores "
                           "every window unless told)")
    ppl_data: str = arg("wiki-passages", flag="--ppl", aliases=["--ppl-data"],
                        help="the text source --ppl-max-windows measures (its evaluation part); one source, where "
                        "`come eval` and `come compare` take a comma list")  # --ppl as in `come eval`
    ppl_seq_len: int = like(EvalConfig, "ppl_seq_len")  # as `come eval` measures (256 before): comparable numbers
    strategy: str = arg("ddp", choices=STRATEGIES,
                        help="several processes (torchrun): ddp keeps a full teacher and student on each; fsdp "
                        "shards both over all processes (FSDP2), for students that do not fit one device")
    dtype: str = like(PruneConfig, "dtype")
    save_dtype: str = like(PruneConfig, "save_dtype", help="dtype of the saved weights (auto: the student "
                           "checkpoint's)")
    device: str = like(PruneConfig, "device")
    seed: int = arg(0, flag="--train-seed", aliases=["--seed"],
                    help="seed of the run (the order of the training windows, the LoRA adapters' start)")
    progress: bool = True

    def weights(self) -> LossWeights:
        from come.distillation.losses import LossWeights

        return LossWeights.parse(self.loss, self.temperature)

    def validate(self) -> DistillConfig:
        check_choices(self)  # --stage, --train, --strategy, --save-dtype
        if self.stage == "lora" or (self.train == "lora" and self.stage in ("global", "both")):
            from come.extras import require

            require("peft", "distill", "LoRA (--stage lora, --train lora)")
        if (self.tokens is None) == (self.steps is None):
            raise ComeError("give exactly one of --tokens and --steps")
        from come.data import check_separate, check_source

        check_source(self.data, flag_name(DistillConfig, "data"))  # before --tokens/--steps and any model loads
        if self.ppl_data:
            check_source(self.ppl_data, "--ppl")
        check_separate(self.data, [self.ppl_data], flag_name(DistillConfig, "data"), "--ppl")
        if self.seq_len < 2:
            raise ComeError(f"{flag_name(DistillConfig, 'seq_len')} must be at least 2, got {self.seq_len}")
        if self.ppl_seq_len < 2:
            raise ComeError(f"--ppl-seq-len must be at least 2, got {self.ppl_seq_len}")
        if self.train_last < 0:
            raise ComeError(f"--train-last must be >= 0, got {self.train_last}")
        if (self.train_lm_head or self.train_last) and self.train == "lora":
            raise ComeError("--train-lm-head and --train-last train full weights beside --train merged, "
                            "merged+norms, all or norms, not beside LoRA adapters (--train lora)")
        for name in ("batch_size", "grad_accum", "lora_rank"):
            if getattr(self, name) < 1:
                raise ComeError(f"{flag_name(DistillConfig, name)} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.lora_lr <= 0:
            raise ComeError("--lr and --lora-lr must be > 0")
        if not 0 <= self.warmup < 1 or not 0 <= self.min_lr_ratio <= 1:
            raise ComeError("--warmup must be in [0, 1) and --min-lr-ratio in [0, 1]")
        if self.teacher_cache < 0:
            raise ComeError(f"--teacher-cache must be >= 0 MiB, got {self.teacher_cache}")
        if self.clip < 0 or self.checkpoint_every < 0 or self.ppl_windows < 0:
            raise ComeError(f"--clip, --checkpoint-every and {flag_name(DistillConfig, 'ppl_windows')} must be >= 0")
        if self.steps is not None and self.steps < 1:
            raise ComeError(f"--steps must be at least 1, got {self.steps}")
        if self.tokens is not None and self.tokens < self.tokens_per_step:
            raise ComeError(f"--tokens {self.tokens} is less than one step ({self.tokens_per_step} tokens = "
                            "batch size x grad accumulation x seq len)")
        self.weights().validate()
        if self.strategy == "fsdp" and self.weights().kl:
            raise ComeError("the logit-lens term (--loss kl=...) reads the LM head outside the model's forward, which "
                            "--strategy fsdp keeps sharded: use the logits term or --strategy ddp")
        return self

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.grad_accum * self.seq_len

    @property
    def steps_per_stage(self) -> int:
        return self.steps if self.steps is not None else self.tokens // self.tokens_per_step

    def fingerprint(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in RESUME_FREE}


@dataclass
class DistillResult:
    out: Path
    summary: dict = field(default_factory=dict)


def training_text(source: str) -> str:
    """The calibration part of `source`; refuses text that holds the wiki-passages evaluation part."""
    from come.data import load_text

    text = load_text(source, "calib")
    if Path(source).expanduser().exists():
        try:
            from come.data import wiki_passages

            held_out = [p for p in wiki_passages("eval") if len(p) >= 200]
        except Exception:  # BoolQ data not installed: nothing to compare with
            held_out = []
        hit = next((p for p in held_out if p in text), None)
        if hit is not None:
            raise ComeError(f"training text {source} contains wiki-passages evaluation passages (e.g. "
                            f"{hit[:40]!r}…): train on data disjoint from what perplexity is measured on")
    return text

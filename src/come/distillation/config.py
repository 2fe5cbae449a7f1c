"""What `come.distill` does (`DistillConfig`), what it returns (`DistillResult`), and the text it trains on.

Light on purpose (recipes read it): torch and the training code load only when a run uses them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from come.errors import ComeError

if TYPE_CHECKING:
    from come.distillation.losses import LossWeights

STAGES = {"layerwise": ["layerwise"], "global": ["global"], "both": ["layerwise", "global"], "lora": ["lora"]}
STRATEGIES = ("ddp", "fsdp")
SAVE_DTYPES = ("auto", "float32", "bfloat16", "float16")
SUMMARY_JSON, SUMMARY_MD, LOG_FILE = "distill_summary.json", "distill_summary.md", "distill_log.jsonl"
# settings that may change between an interrupted run and its --resume
RESUME_FREE = ("resume", "overwrite", "progress", "checkpoint_every")


@dataclass
class DistillConfig:
    """What `come.distill` does. Budgets (`tokens` or `steps`) are per stage; a step is batch_size * grad_accum
    windows of seq_len tokens, over all processes."""

    student: str  # a folder written by `come prune` (HF model + come_plan.json)
    out: str
    teacher: str | None = None  # default: the model the plan names
    stage: str = "both"  # layerwise | global | both | lora (the LM-loss LoRA baseline)
    loss: str = ""  # weights, e.g. "mse=1,cos=0,kl=0.1,logits=1" (see LossWeights)
    temperature: float = 1.0
    train: str = "merged"  # global stage: merged | all | norms | lora
    data: str = "mix"  # its calibration part (never the evaluation part)
    tokens: int | None = None
    steps: int | None = None
    seq_len: int = 256
    batch_size: int = 4
    grad_accum: int = 1
    lr: float = 1e-4  # full weights (layer-wise, global)
    lora_lr: float = 1e-3  # LoRA adapters
    warmup: float = 0.1  # fraction of the steps
    min_lr_ratio: float = 0.1  # the cosine ends at lr * min_lr_ratio
    weight_decay: float = 0.0
    clip: float = 1.0  # max gradient norm per layer (0: off)
    autocast: bool = False  # bf16 autocast (GPUs; slow on most CPUs)
    lora_rank: int = 8
    lora_alpha: float = 16.0
    checkpoint_every: int = 0  # steps (0: no checkpoints)
    resume: bool = False
    overwrite: bool = False
    ppl_windows: int = 0  # evaluation-part windows for perplexity before/after each stage (0: skip)
    ppl_data: str = "wiki-passages"
    ppl_seq_len: int = 256
    strategy: str = "ddp"  # ddp (a full copy per process) | fsdp (teacher and student sharded over the processes)
    dtype: str = "auto"
    save_dtype: str = "auto"  # dtype of the saved weights; auto = the student checkpoint's
    device: str = "auto"
    seed: int = 0
    progress: bool = True

    def weights(self) -> LossWeights:
        from come.distillation.losses import LossWeights

        return LossWeights.parse(self.loss, self.temperature)

    def validate(self) -> DistillConfig:
        if self.stage not in STAGES:
            raise ComeError(f"--stage must be one of {', '.join(STAGES)}, got {self.stage!r}")
        if self.strategy not in STRATEGIES:
            raise ComeError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if self.stage == "lora" or (self.train == "lora" and self.stage in ("global", "both")):
            from come.extras import require

            require("peft", "distill", "LoRA (--stage lora, --train lora)")
        if self.save_dtype not in SAVE_DTYPES:
            raise ComeError(f"--save-dtype must be one of {', '.join(SAVE_DTYPES)}, got {self.save_dtype!r}")
        from come.distillation.global_ import TRAINABLE

        if self.train not in TRAINABLE:
            raise ComeError(f"--train must be one of {', '.join(TRAINABLE)}, got {self.train!r}")
        if (self.tokens is None) == (self.steps is None):
            raise ComeError("give exactly one of --tokens and --steps")
        from come.data import check_separate

        check_separate(self.data, [self.ppl_data], "--data", "--ppl-data")
        if self.seq_len < 2:
            raise ComeError(f"--seq-len must be at least 2, got {self.seq_len}")
        for name in ("batch_size", "grad_accum", "lora_rank"):
            if getattr(self, name) < 1:
                raise ComeError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.lora_lr <= 0:
            raise ComeError("--lr and --lora-lr must be > 0")
        if not 0 <= self.warmup < 1 or not 0 <= self.min_lr_ratio <= 1:
            raise ComeError("--warmup must be in [0, 1) and --min-lr-ratio in [0, 1]")
        if self.clip < 0 or self.checkpoint_every < 0 or self.ppl_windows < 0:
            raise ComeError("--clip, --checkpoint-every and --ppl-windows must be >= 0")
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

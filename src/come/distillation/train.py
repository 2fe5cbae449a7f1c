"""`distill`: layer-wise and hierarchical distillation of a pruned student from its teacher, and the LoRA baseline.

One loop (`_Trainer.run_stage`) serves every stage: AdamW, warm-up + cosine schedule, gradient accumulation,
per-layer gradient clipping, a NaN/Inf guard, checkpoints that resume bit for bit, a JSONL log. Several processes
(torchrun) either keep a full copy each (`strategy="ddp"`: the layer-wise stage's layers are split between them, the
other stages run data-parallel with DDP) or shard teacher and student with FSDP2 (`strategy="fsdp"`, see
`sharding.py`: every stage data-parallel, each process holding 1/world of the weights and optimizer state).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from come.data import load_text, split_windows, tokenize
from come.distillation.correspond import check_pair
from come.distillation.global_ import TRAINABLE, global_loss_fn, trainable_groups
from come.distillation.layerwise import layerwise_loss_fn, owned
from come.distillation.lora import add_lora, lm_loss_fn, lora_groups
from come.distillation.losses import LossWeights
from come.errors import ComeError
from come.io import atomic_output_dir, check_output_dir
from come.models import get_adapter, load_config, load_model, parse_dtype, save_dtype_for
from come.plan import PLAN_FILE, Plan, base_model_path

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


class _Dist:
    """Rank, world size and device; torch.distributed is initialised when launched by torchrun, and for FSDP
    (`group`) also in a single process (a group of one, FSDP's single-device path)."""

    def __init__(self, device: str, group: bool = False):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda" and self.world > 1:
            device = f"cuda:{local}"
        self.device = device
        self.owns_group = False
        if (self.world > 1 or group) and not dist.is_initialized():
            if device.startswith("cuda"):
                torch.cuda.set_device(torch.device(device))
            backend = "nccl" if device.startswith("cuda") else "gloo"
            if self.world > 1:
                dist.init_process_group(backend)
            else:
                dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
            self.owns_group = True

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def gather(self, obj) -> list:
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def lr_factor(step: int, steps: int, warmup: float, min_ratio: float) -> float:
    """Linear warm-up over the first `warmup` fraction of the steps, then cosine down to `min_ratio`."""
    w = round(warmup * steps)
    if step < w:
        return (step + 1) / w
    progress = (step - w) / max(1, steps - w - 1)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class _Trainer:
    def __init__(self, cfg: DistillConfig, d: _Dist, on_step=None):
        self.cfg, self.d, self.on_step = cfg, d, on_step
        self.fsdp = cfg.strategy == "fsdp"
        self.peft = None  # under FSDP, the peft model a LoRA stage trains (adapters added before sharding)
        self.out = Path(cfg.out).expanduser()
        self.work = self.out.with_name(self.out.name + ".partial")
        self.ckpt = self.work / "checkpoint"
        self.state: dict = {"done": [], "stage": None, "step": 0, "log_lines": 0, "stages": {}, "ppl": {}}
        self.autocast = (lambda: torch.autocast(torch.device(d.device).type, dtype=torch.bfloat16)) \
            if cfg.autocast else nullcontext

    # --- setup ---
    def load(self) -> None:
        cfg = self.cfg
        self.plan = Plan.load(cfg.student)  # a missing plan fails before any weights are read
        config = load_config(cfg.student)[0]
        self.save_dtype = save_dtype_for(cfg.save_dtype, config)
        self.dtype = parse_dtype(cfg.dtype, config, self.d.device)
        where = "cpu" if self.fsdp else self.d.device  # FSDP moves each process's shards to the device
        teacher = base_model_path(self.plan, cfg.teacher, cfg.student)  # a local base: by name, never the hub
        self.teacher, _, _ = load_model(teacher, self.dtype, where)
        self.student, self.tokenizer, _ = load_model(cfg.student, self.dtype, where)
        self.corr = check_pair(self.plan, self.teacher, self.student)
        self.teacher.requires_grad_(False)
        self.student.requires_grad_(False)
        self.t_adapter = get_adapter(self.teacher)
        if self.fsdp:
            from come.distillation import sharding

            if self.lora_layers() is not None:  # FSDP cannot add modules to a sharded model later
                self.peft = self.add_lora(self.student, self.lora_layers())
                self.student.requires_grad_(False)
            sharding.shard(self.teacher, self.t_adapter.layers, self.d.device, self.dtype)
            sharding.shard(self.student, get_adapter(self.student).layers, self.d.device, self.dtype)
        ids = tokenize(self.tokenizer, training_text(cfg.data))
        self.windows = split_windows(ids, cfg.seq_len, f"training ({cfg.data})")
        per_step = cfg.batch_size * cfg.grad_accum
        if self.windows.shape[0] < per_step:
            raise ComeError(f"training data {cfg.data} has {self.windows.shape[0]} windows of {cfg.seq_len} tokens, "
                            f"fewer than one step needs ({per_step}): pass more text or lower --batch-size/--seq-len")
        if (cfg.stage != "layerwise" or self.fsdp) and cfg.batch_size % self.d.world:
            raise ComeError(f"--batch-size {cfg.batch_size} must be a multiple of the {self.d.world} processes")

    def micro_batch(self, step: int, micro: int) -> torch.Tensor:
        """The windows of micro-batch `micro` of `step`: a fixed shuffle per epoch, so a resumed run sees the same."""
        cfg, n = self.cfg, self.windows.shape[0]
        start = (step * cfg.grad_accum + micro) * cfg.batch_size
        rows = []
        for p in range(start, start + cfg.batch_size):
            g = torch.Generator().manual_seed(cfg.seed * 100_003 + p // n)
            rows.append(torch.randperm(n, generator=g)[p % n])
        return self.windows[torch.stack(rows)].to(self.d.device)

    def lora_layers(self) -> list[int] | None:
        """The layers that get LoRA adapters in this run (None: no LoRA)."""
        if self.cfg.stage == "lora":
            return list(range(len(self.corr)))
        if self.cfg.train == "lora" and "global" in STAGES[self.cfg.stage]:
            return [c.layer for c in self.corr if c.merged]
        return None

    def add_lora(self, model, layers: list[int]):
        """peft adapters on `layers`, initialised from the run's seed (the same in every process and strategy)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.cfg.seed)
            return add_lora(model, layers, self.cfg.lora_rank, self.cfg.lora_alpha)

    # --- checkpoints ---
    def save_checkpoint(self, model, opt) -> None:
        from safetensors.torch import save_model

        tmp = self.work / "checkpoint.tmp"
        if self.d.main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            if not self.fsdp:
                save_model(model, str(tmp / "model.safetensors"))
        self.d.barrier()
        if self.fsdp:
            from come.distillation import sharding

            sharding.save_checkpoint(tmp / "dcp", self.student, opt)
        elif opt is not None:
            torch.save(opt.state_dict(), tmp / f"optim.rank{self.d.rank}.pt")
        self.d.barrier()
        if self.d.main:
            (tmp / "state.json").write_text(json.dumps(
                dict(self.state, world=self.d.world, config=self.cfg.fingerprint()), indent=1))
            shutil.rmtree(self.ckpt, ignore_errors=True)
            tmp.rename(self.ckpt)
        self.d.barrier()

    def read_checkpoint(self) -> dict | None:
        if not self.cfg.resume:
            return None
        if not (self.ckpt / "state.json").exists():
            raise ComeError(f"--resume: no checkpoint in {self.work}: run without --resume (and with "
                            "--checkpoint-every N) first")
        state = json.loads((self.ckpt / "state.json").read_text())
        if state["world"] != self.d.world and not self.fsdp:
            raise ComeError(f"--resume: the checkpoint was written by {state['world']} processes, this run has "
                            f"{self.d.world}: resume with the same number (--strategy fsdp checkpoints "
                            "can be resumed on any number)")
        changed = [k for k, v in self.cfg.fingerprint().items() if state["config"].get(k) != v]
        if changed:
            raise ComeError(f"--resume with other settings than the interrupted run ({', '.join(changed)}): "
                            "resume with the same settings or start over with --overwrite")
        return state

    def load_weights(self, model) -> None:
        if self.fsdp:
            from come.distillation import sharding

            sharding.load_checkpoint(self.ckpt / "dcp", self.student)
            return
        from safetensors.torch import load_model as load_st

        load_st(model, str(self.ckpt / "model.safetensors"), device=str(self.d.device))

    def load_optimizer(self, opt) -> None:
        """The checkpoint's optimizer state into `opt` (under FSDP with the weights, which it is keyed by)."""
        if self.fsdp:
            from come.distillation import sharding

            sharding.load_checkpoint(self.ckpt / "dcp", self.student, opt)
            return
        opt.load_state_dict(torch.load(self.ckpt / f"optim.rank{self.d.rank}.pt", weights_only=True))

    # --- logging ---
    def log(self, record: dict) -> None:
        if self.d.main:
            with open(self.work / LOG_FILE, "a") as f:
                f.write(json.dumps(record) + "\n")
        self.state["log_lines"] += 1

    # --- the loop ---
    def run_stage(self, name: str, model, groups, loss_fn, lr: float, ddp=None, sync=None, resume=None) -> None:
        """Train `groups` (parameter lists, each clipped on its own) with `loss_fn(ids) -> (loss, parts)`.

        With `sync` (layer-wise stage under DDP) every rank sees all data and trains its own layers, and `sync`
        shares them; otherwise the ranks split each micro-batch and average gradients (DDP `ddp`, or FSDP).
        """
        cfg, d = self.cfg, self.d
        steps = cfg.steps_per_stage
        params = [p for g in groups for p in g]
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay) if params else None
        start = 0
        from come.distillation.sharding import clip_group, local_numel

        info = self.state["stages"].setdefault(name, {"steps": steps, "tokens": 0, "wall_s": 0.0, "losses": [],
                                                      "trainable_params": sum(p.numel() for p in params)})
        info["params_per_process"] = d.gather(local_numel(params))  # trainable elements each process stores
        if resume is not None:
            start = resume["step"]
            if opt is not None:
                self.load_optimizer(opt)
        self.state["stage"] = name
        shard = (0, 1) if sync is not None else (d.rank, d.world)
        bar = tqdm(range(start, steps), desc=name, unit="step", disable=not (cfg.progress and d.main))
        ran = 0
        for step in bar:
            t0 = time.perf_counter()
            for g in opt.param_groups if opt else []:
                g["lr"] = lr * lr_factor(step, steps, cfg.warmup, cfg.min_lr_ratio)
            parts_sum: dict[str, float] = {}
            loss_sum = 0.0
            for m in range(cfg.grad_accum):
                ids = self.micro_batch(step, m)[shard[0]::shard[1]]
                ctx = ddp.no_sync() if ddp is not None and m < cfg.grad_accum - 1 else nullcontext()
                with ctx:
                    loss, parts = loss_fn(ids)
                    if torch.is_tensor(loss) and loss.requires_grad:
                        (loss / cfg.grad_accum).backward()
                loss_sum += float(loss.detach() if torch.is_tensor(loss) else loss) / cfg.grad_accum
                for k, v in parts.items():
                    parts_sum[k] = parts_sum.get(k, 0.0) + v / cfg.grad_accum
            norms = [clip_group(g, cfg.clip if cfg.clip > 0 else math.inf) for g in groups]
            finite = math.isfinite(loss_sum) and all(math.isfinite(x) for x in norms)
            gathered = d.gather((finite, loss_sum, parts_sum))
            if not all(f for f, _, _ in gathered):
                raise ComeError(f"the {name} loss diverged (NaN/Inf) at step {step + 1}: lower --lr (now {lr:g}) "
                                "or --clip, or train in float32")
            if opt is not None:
                opt.step()
                opt.zero_grad(set_to_none=True)
            if sync is not None:  # each rank's loss is the sum over its own layers
                points = {k: v for _, _, p in gathered for k, v in p.items()}
                total = sum(x for _, x, _ in gathered)
            else:
                points = {k: sum(p[k] for _, _, p in gathered) / d.world for k in parts_sum}
                total = sum(x for _, x, _ in gathered) / d.world
            dt = time.perf_counter() - t0
            info["tokens"] += cfg.tokens_per_step
            info["wall_s"] += dt
            info["losses"].append(total)
            self.log({"stage": name, "step": step + 1, "loss": total, "lr": opt.param_groups[0]["lr"] if opt else 0,
                      "points": points, "tokens": info["tokens"], "tokens_per_s": cfg.tokens_per_step / dt})
            bar.set_postfix(loss=f"{total:.4g}", tok_s=f"{cfg.tokens_per_step / dt:.0f}")
            self.state["step"] = step + 1
            ran += 1
            if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < steps:
                if sync is not None:
                    sync()
                self.save_checkpoint(model, opt)
            if self.on_step is not None:
                self.on_step({"stage": name, "step": step + 1, "run_step": self.steps_run + ran, "loss": total})
        self.steps_run += ran
        if sync is not None:
            sync()
        for p in params:
            p.requires_grad_(False)

    def perplexity(self, key: str) -> None:
        """Perplexity of the student on the evaluation part, stored under `key` (rank 0 measures; under FSDP
        every rank runs the same windows, since each forward gathers the shards of all)."""
        if not self.cfg.ppl_windows or key in self.state["ppl"]:
            return
        if self.d.main or self.fsdp:
            from come.eval.ppl import perplexity

            r = perplexity(self.student, self.tokenizer, self.cfg.ppl_data, self.cfg.ppl_seq_len,
                           self.cfg.ppl_windows, batch_size=4, progress=False)
            self.state["ppl"][key] = r
        self.state["ppl"] = self.d.gather(self.state["ppl"])[0]

    def stage_done(self, name: str) -> None:
        self.state["done"].append(name)
        self.perplexity(f"after_{name}")
        if self.cfg.checkpoint_every and name != STAGES[self.cfg.stage][-1]:  # a later stage resumes from here
            self.save_checkpoint(self.student, None)

    # --- stages ---
    def layerwise(self, resume) -> None:
        merged = [c for c in self.corr if c.merged]
        # FSDP: every rank trains every (sharded) merged layer on its share of the batch; DDP: each its own layers
        mine = merged if self.fsdp else owned(merged, self.d.rank, self.d.world)
        s_adapter = get_adapter(self.student)
        fn = layerwise_loss_fn(self.teacher, self.t_adapter, s_adapter, mine, self.cfg.weights(), self.autocast)
        groups = [[p for n, p in s_adapter.layers[c.layer].named_parameters() if "lora_" not in n] for c in mine]

        def sync():  # every merged layer from the rank that trains it
            if self.d.world > 1:
                for i, c in enumerate(merged):
                    for p in s_adapter.layers[c.layer].parameters():
                        dist.broadcast(p.data, src=i % self.d.world)

        self.run_stage("layerwise", self.student, groups, fn, self.cfg.lr, sync=None if self.fsdp else sync,
                       resume=resume)

    def _wrapped(self, model):
        if self.d.world == 1 or self.fsdp:
            return model, None
        from torch.nn.parallel import DistributedDataParallel as DDP

        ddp = DDP(model, device_ids=[self.d.device] if self.d.device.startswith("cuda") else None)
        return ddp, ddp

    def global_(self, resume) -> None:
        cfg = self.cfg
        s_adapter = get_adapter(self.student)
        if cfg.train == "lora":
            model = self.peft or self.add_lora(self.student, self.lora_layers())
            groups, lr = lora_groups(model), cfg.lora_lr
        else:
            model = self.student
            groups, lr = trainable_groups(s_adapter, self.corr, cfg.train), cfg.lr
        if resume is not None and not self.fsdp:  # FSDP reads weights with the optimizer state
            self.load_weights(model)
        for p in (p for g in groups for p in g):
            p.requires_grad_(True)  # before DDP, which registers the parameters that need gradients
        runner, ddp = self._wrapped(model)
        fn = global_loss_fn(self.teacher, self.t_adapter, runner, s_adapter, self.corr, cfg.weights(), self.autocast)
        self.run_stage("global", model, groups, fn, lr, ddp=ddp, resume=resume)
        if cfg.train == "lora" and not self.fsdp:  # under FSDP, merged when the student is gathered
            self.student = model.merge_and_unload()

    def lora(self, resume) -> None:
        cfg = self.cfg
        model = self.peft or self.add_lora(self.student, self.lora_layers())
        if resume is not None and not self.fsdp:
            self.load_weights(model)
        groups = lora_groups(model)
        for p in groups[0]:
            p.requires_grad_(True)
        runner, ddp = self._wrapped(model)
        self.run_stage("lora", model, groups, lm_loss_fn(runner, self.autocast), cfg.lora_lr, ddp=ddp, resume=resume)
        if not self.fsdp:
            self.student = model.merge_and_unload()

    def run(self) -> DistillResult:
        cfg = self.cfg
        t0 = time.time()
        self.steps_run = 0
        resume = self.read_checkpoint()
        if resume is not None:
            self.state = {k: resume[k] for k in self.state}
            if self.d.main:  # drop log lines of steps after the checkpoint: they are redone
                lines = (self.work / LOG_FILE).read_text().splitlines(keepends=True)
                (self.work / LOG_FILE).write_text("".join(lines[: self.state["log_lines"]]))
            if resume["stage"] in self.state["done"] or resume["stage"] is None:
                self.load_weights(self.student)
        self.perplexity("before")
        for name in STAGES[cfg.stage]:
            if name in self.state["done"]:
                continue
            here = resume if resume is not None and resume["stage"] == name else None
            if here is not None and name == "layerwise":
                self.load_weights(self.student)
            getattr(self, "global_" if name == "global" else name)(here)
            self.stage_done(name)
        self.state["wall_s"] = time.time() - t0
        return self.finish()

    def gathered_student(self):
        """Under FSDP, the trained student as one plain model on rank 0 (None elsewhere; collective): its shards
        gathered into CPU memory, loaded into a skeleton built on the meta device, LoRA adapters merged."""
        from come.distillation import sharding
        from come.models import meta_model

        state = sharding.gather(self.student)
        if not self.d.main:
            return None
        model = meta_model(self.student.config)
        peft = self.add_lora(model, self.lora_layers()) if self.peft is not None else None
        model.load_state_dict(state, assign=True)
        if getattr(model.config, "tie_word_embeddings", False):
            model.tie_weights()
        return peft.merge_and_unload() if peft is not None else model

    def finish(self) -> DistillResult:
        from come.prune import describe, save_model

        summary = make_summary(self.cfg, self.state, self.d, self.plan)
        student = self.gathered_student() if self.fsdp else self.student
        if self.d.main:
            with atomic_output_dir(self.out, overwrite=True) as tmp:
                save_model(student, tmp, self.save_dtype)
                self.tokenizer.save_pretrained(tmp)
                self.plan.save(tmp / PLAN_FILE)
                describe(tmp, self.plan, "distill", distill_command(self.cfg))  # prune summary, model card
                shutil.copy(self.work / LOG_FILE, tmp / LOG_FILE)
                (tmp / SUMMARY_JSON).write_text(json.dumps(summary, indent=1))
                (tmp / SUMMARY_MD).write_text(summary_text(summary))
            shutil.rmtree(self.work, ignore_errors=True)
        self.d.barrier()
        return DistillResult(self.out, summary)


def distill_command(cfg: DistillConfig) -> str:
    """The `come distill` line of `cfg` (local paths as names), for the model card."""
    from come import recipe
    from come.card import scrubbed

    return recipe.command_line(scrubbed(recipe.of(cfg)), out="OUT")


def make_summary(cfg: DistillConfig, state: dict, d: _Dist, plan: Plan) -> dict:
    stages = {}
    for name, s in state["stages"].items():
        losses = s["losses"]
        stages[name] = {"steps": s["steps"], "tokens": s["tokens"], "wall_s": round(s["wall_s"], 1),
                        "trainable_params": s["trainable_params"],
                        "params_per_process": s.get("params_per_process"), "first_loss": losses[0] if losses else None,
                        "last_loss": losses[-1] if losses else None}
    return {
        "student": cfg.student, "teacher": cfg.teacher or plan.base_model["name"], "tree": plan.tree,
        "stages": stages, "perplexity": state["ppl"],
        "tokens": sum(s["tokens"] for s in stages.values()),
        "train_wall_s": round(sum(s["wall_s"] for s in stages.values()), 1),
        "processes": d.world, "strategy": cfg.strategy, "device": d.device, "config": asdict(cfg),
    }


def summary_text(s: dict) -> str:
    lines = [f"# Distillation of {s['student']} from {s['teacher']}", "",
             f"{s['tokens']:,} training tokens, {s['train_wall_s']} s of training, {s['processes']} process(es) "
             f"({s.get('strategy', 'ddp')}) on {s['device']}.", "",
             "| stage | steps | tokens | wall s | first loss | last loss |", "|---|---|---|---|---|---|"]
    for name, st in s["stages"].items():
        lines.append(f"| {name} | {st['steps']} | {st['tokens']:,} | {st['wall_s']} | {st['first_loss']:.4g} | "
                     f"{st['last_loss']:.4g} |")
    if s["perplexity"]:
        lines += ["", "| perplexity | value |", "|---|---|"]
        for key, r in s["perplexity"].items():
            lines.append(f"| {key} | {r['ppl']:.2f} |")
        r = next(iter(s["perplexity"].values()))
        lines += ["", f"Perplexity: {r['windows']} windows of {r['seq_len']} tokens of the evaluation part of "
                      f"{r['source']}, no BOS."]
    return "\n".join(lines) + "\n"


def distill(config: DistillConfig | None = None, on_step=None, **kwargs) -> DistillResult:
    """Distil the pruned student of `config` from its teacher; writes an HF folder + plan + summary to `out`.

    `on_step({"stage", "step", "run_step", "loss"})` is called after every optimizer step (and its checkpoint), in
    every process; an exception it raises stops the run, which `resume=True` continues from the last checkpoint."""
    cfg = (config or DistillConfig(**kwargs)).validate()
    out = check_output_dir(cfg.out, cfg.overwrite)
    work = out.with_name(out.name + ".partial")
    if work.exists() and not cfg.resume and not cfg.overwrite:
        raise ComeError(f"an interrupted run left {work}: pass --resume to continue it or --overwrite to "
                        "start over")
    d = _Dist(cfg.device, group=cfg.strategy == "fsdp")
    try:
        if d.main and work.exists() and not cfg.resume:
            shutil.rmtree(work)
        d.barrier()
        torch.manual_seed(cfg.seed)
        trainer = _Trainer(cfg, d, on_step)
        trainer.load()
        if d.main:
            work.mkdir(parents=True, exist_ok=True)
        d.barrier()
        try:
            return trainer.run()
        except BaseException:
            if d.main and not (trainer.ckpt / "state.json").exists():
                shutil.rmtree(work, ignore_errors=True)  # nothing to resume from: leave no trace
            raise
    finally:
        d.close()

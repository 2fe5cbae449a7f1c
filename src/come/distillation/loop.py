"""The training loop every distillation stage runs, and the state a checkpoint records.

AdamW, warm-up + cosine schedule, gradient accumulation, per-group gradient clipping, a NaN/Inf guard, a
checkpoint every `checkpoint_every` steps, a JSONL log line and the `on_step` callback after every step.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields

import torch
from tqdm.auto import tqdm

from come.distillation.stages import Stage
from come.errors import ComeError


@dataclass
class RunState:
    """Where a run stands (what a checkpoint's state.json holds, beside the world size and the config)."""

    done: list[str] = field(default_factory=list)  # finished stages
    stage: str | None = None  # the stage in progress
    step: int = 0  # its finished steps
    log_lines: int = 0  # lines of the JSONL log up to here
    stages: dict = field(default_factory=dict)  # per stage: steps, tokens, wall_s, losses, trainable parameters
    ppl: dict = field(default_factory=dict)  # perplexity before / after each stage

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> RunState:
        return cls(**{f.name: data[f.name] for f in fields(cls)})


def lr_factor(step: int, steps: int, warmup: float, min_ratio: float) -> float:
    """Linear warm-up over the first `warmup` fraction of the steps, then cosine down to `min_ratio`."""
    w = round(warmup * steps)
    if step < w:
        return (step + 1) / w
    progress = (step - w) / max(1, steps - w - 1)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def train_stage(run, stage: Stage, start: int | None = None) -> int:
    """Train `stage` from step `start` (resumed from the checkpoint; None: from the beginning) to the end of its
    budget; returns the steps run. With `stage.sync` every process sees all data and trains its own layers;
    otherwise the processes split each micro-batch and average gradients (DDP `stage.ddp`, or FSDP)."""
    from come.distillation.sharding import clip_group, local_numel

    cfg, d, state = run.cfg, run.d, run.state
    steps = cfg.steps_per_stage
    params = [p for g in stage.groups for p in g]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=stage.lr, weight_decay=cfg.weight_decay) if params else None
    info = state.stages.setdefault(stage.name, {"steps": steps, "tokens": 0, "wall_s": 0.0, "losses": [],
                                                "trainable_params": sum(p.numel() for p in params)})
    info["params_per_process"] = d.gather(local_numel(params))  # trainable elements each process stores
    if start is not None and opt is not None:
        run.checkpoints.load_optimizer(opt, run.student)
    state.stage = stage.name
    shard = (0, 1) if stage.sync is not None else (d.rank, d.world)
    bar = tqdm(range(start or 0, steps), desc=stage.name, unit="step", disable=not (cfg.progress and d.main))
    ran = 0
    for step in bar:
        t0 = time.perf_counter()
        for g in opt.param_groups if opt else []:
            g["lr"] = stage.lr * lr_factor(step, steps, cfg.warmup, cfg.min_lr_ratio)
        parts_sum: dict[str, float] = {}
        loss_sum = 0.0
        for m in range(cfg.grad_accum):
            ids = run.micro_batch(step, m)[shard[0]::shard[1]]
            ctx = stage.ddp.no_sync() if stage.ddp is not None and m < cfg.grad_accum - 1 else nullcontext()
            with ctx:
                loss, parts = stage.loss_fn(ids)
                if torch.is_tensor(loss) and loss.requires_grad:
                    (loss / cfg.grad_accum).backward()
            loss_sum += float(loss.detach() if torch.is_tensor(loss) else loss) / cfg.grad_accum
            for k, v in parts.items():
                parts_sum[k] = parts_sum.get(k, 0.0) + v / cfg.grad_accum
        norms = [clip_group(g, cfg.clip if cfg.clip > 0 else math.inf) for g in stage.groups]
        finite = math.isfinite(loss_sum) and all(math.isfinite(x) for x in norms)
        gathered = d.gather((finite, loss_sum, parts_sum))
        if not all(f for f, _, _ in gathered):
            raise ComeError(f"the {stage.name} loss diverged (NaN/Inf) at step {step + 1}: lower --lr (now "
                            f"{stage.lr:g}) or --clip, or train in float32")
        if opt is not None:
            opt.step()
            opt.zero_grad(set_to_none=True)
        if stage.sync is not None:  # each process's loss is the sum over its own layers
            points = {k: v for _, _, p in gathered for k, v in p.items()}
            total = sum(x for _, x, _ in gathered)
        else:
            points = {k: sum(p[k] for _, _, p in gathered) / d.world for k in parts_sum}
            total = sum(x for _, x, _ in gathered) / d.world
        dt = time.perf_counter() - t0
        info["tokens"] += cfg.tokens_per_step
        info["wall_s"] += dt
        info["losses"].append(total)
        run.log({"stage": stage.name, "step": step + 1, "loss": total, "lr": opt.param_groups[0]["lr"] if opt else 0,
                 "points": points, "tokens": info["tokens"], "tokens_per_s": cfg.tokens_per_step / dt})
        bar.set_postfix(loss=f"{total:.4g}", tok_s=f"{cfg.tokens_per_step / dt:.0f}")
        state.step = step + 1
        ran += 1
        if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < steps:
            if stage.sync is not None:
                stage.sync()
            run.save_checkpoint(stage.model, opt)
        if run.on_step is not None:
            run.on_step({"stage": stage.name, "step": step + 1, "run_step": run.steps_run + ran, "loss": total})
    run.steps_run += ran
    if stage.sync is not None:
        stage.sync()
    for p in params:
        p.requires_grad_(False)
    return ran

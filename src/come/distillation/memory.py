"""`come distill --dry-run`: memory per process of each stage under DDP and FSDP, from the configs alone.

Pure arithmetic on the student's config (a skeleton on the meta device, no weights read) and the plan's merge tree;
the teacher is the student with every merged layer counted as the layers it stands for. Estimates, not
measurements:
- weights: teacher + student (+ LoRA adapters, which peft keeps in float32). DDP: a full copy per process. FSDP:
  1/world of them, plus what is gathered at once: the root unit (embeddings, final norm, LM head) and two decoder
  layers (the one running and the one prefetched), in the compute dtype;
- gradients: of the trained parameters, in their dtype. DDP adds its reduction buckets (the same size again) when
  it runs on several processes; the layer-wise stage under DDP trains only the layers a process owns. FSDP: 1/world,
  plus one layer's unsharded gradients in the reduce dtype before its reduce-scatter;
- optimizer: AdamW's two moments per trained parameter, in its dtype (1/world under FSDP);
- activations: what backward keeps for this process's share of a micro-batch, about 8 hidden + 2 key/value +
  4 intermediate values per token per layer backpropagated through (flash/SDPA attention keeps no scores), the
  teacher states the loss compares with, and the float32 logits the KL and cross-entropy use.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from come.distillation.correspond import correspondences
from come.distillation.layerwise import owned
from come.distillation.lora import projections

STRATEGIES = ("ddp", "fsdp")
LORA_BYTES = 4  # peft keeps adapters in float32 (autocast_adapter_dtype)


@dataclass
class StageMemory:
    """Bytes per process of one stage under one strategy."""

    stage: str
    strategy: str
    weights: int
    gradients: int
    optimizer: int
    activations: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations


@dataclass
class Shapes:
    """Parameter counts of the student, read from its skeleton."""

    layers: list[int]  # parameters of each decoder layer
    norms: list[int]  # of the norms inside each layer
    lora: list[int]  # LoRA parameters per rank-1 of each layer (sum of in + out features of its projections)
    root: int  # embeddings, final norm, LM head (tied weights once)
    hidden: int
    intermediate: int
    kv: int  # key/value width (heads x head dim)
    vocab: int

    @classmethod
    def of(cls, config) -> Shapes:
        from come.models import get_adapter, meta_model

        skeleton = meta_model(config)
        adapter = get_adapter(skeleton)
        layers, targets = adapter.layers, projections(adapter)
        per_layer = [sum(p.numel() for p in layer.parameters()) for layer in layers]
        norms = [sum(p.numel() for n, p in layer.named_parameters() if "norm" in n) for layer in layers]
        lora = [sum(m.in_features + m.out_features for n, m in layer.named_modules()
                    if isinstance(m, torch.nn.Linear) and re.fullmatch(targets, n)) for layer in layers]
        total = sum(p.numel() for p in skeleton.parameters())
        hidden = config.hidden_size
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or hidden // heads
        kv = getattr(config, "num_key_value_heads", None) or heads
        return cls(per_layer, norms, lora, total - sum(per_layer), hidden, config.intermediate_size,
                   kv * head_dim, config.vocab_size)

    def act_per_token(self) -> int:
        """Values a decoder layer keeps per token for its backward."""
        return 8 * self.hidden + 2 * self.kv + 4 * self.intermediate


def _dtype_bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def estimate(config, tree: list[list[int]], cfg, world: int, dtype: torch.dtype, device: str) -> list[StageMemory]:
    """Memory per process of every stage of `cfg` (a DistillConfig) under DDP and FSDP with `world` processes."""
    from come.distillation.config import STAGES

    s = Shapes.of(config)
    corr = correspondences(tree)
    merged = [c for c in corr if c.merged]
    n_layers = len(s.layers)
    student = s.root + sum(s.layers)
    teacher = student + sum((c.last - c.first) * s.layers[c.layer] for c in merged)
    b = _dtype_bytes(dtype)
    gpu_mixed = str(device).startswith("cuda") and dtype != torch.float32
    compute = 2 if gpu_mixed else b  # FSDP gathers and computes in bf16 on GPUs
    reduce = 4 if gpu_mixed else b
    lora_layers = list(range(n_layers)) if cfg.stage == "lora" else \
        [c.layer for c in merged] if cfg.train == "lora" else []
    adapters = sum(cfg.lora_rank * s.lora[i] for i in lora_layers)
    rows = []
    for stage in STAGES[cfg.stage]:
        if stage == "lora" or (stage == "global" and cfg.train == "lora"):
            trained = [cfg.lora_rank * s.lora[i] for i in lora_layers]
            tb = LORA_BYTES
        elif stage == "global":  # per layer what --train names, the last --train-last whole; final norm, LM head
            m = {c.layer for c in merged}
            whole = {"all": set(range(n_layers)), "norms": set()}.get(cfg.train, m)
            whole |= set(range(n_layers - cfg.train_last, n_layers)) if cfg.train_last else set()
            norms = cfg.train in ("norms", "merged+norms")
            trained = [s.layers[j] if j in whole else s.norms[j] if norms else 0 for j in range(n_layers)]
            trained += [s.hidden] if cfg.train == "merged+norms" else []
            trained += [s.vocab * s.hidden] if cfg.train_lm_head else []
            tb = b
        else:  # layerwise
            trained, tb = [s.layers[c.layer] for c in merged], b
        for strategy in STRATEGIES:
            fsdp = strategy == "fsdp"
            share = cfg.batch_size if stage == "layerwise" and not fsdp else math.ceil(cfg.batch_size / world)
            tokens = share * cfg.seq_len
            act_b = 2 if (cfg.autocast or (fsdp and gpu_mixed)) else b
            if stage == "layerwise":
                mine = merged if fsdp else max((owned(merged, r, world) for r in range(world)), key=len)
                acts = (2 * len(merged) * s.hidden + len(mine) * s.act_per_token()) * tokens * act_b
                local_trained = sum(s.layers[c.layer] for c in mine)
            else:
                logits = (2 if stage == "global" else 1) * s.vocab * tokens * 4 * 2  # fp32 logits, log-softmax
                acts = (n_layers * s.hidden + n_layers * s.act_per_token()) * tokens * act_b + logits
                local_trained = sum(trained)
            weights = (student + teacher) * b + adapters * LORA_BYTES
            if fsdp:
                gathered = (s.root + 2 * max(s.layers)) * compute
                rows.append(StageMemory(stage, strategy, math.ceil(weights / world) + gathered,
                                        math.ceil(sum(trained) * tb / world) + max(trained, default=0) * reduce,
                                        math.ceil(2 * sum(trained) * tb / world), acts))
            else:
                buckets = 2 if world > 1 and stage != "layerwise" else 1
                rows.append(StageMemory(stage, strategy, weights, buckets * local_trained * tb,
                                        2 * local_trained * tb, acts))
    return rows


def report(rows: list[StageMemory], world: int, dtype: torch.dtype, device: str, student: str) -> str:
    def gib(n: int) -> str:
        return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"

    name = str(dtype).replace("torch.", "")
    lines = [f"dry run of come distill on {student}: config and plan only, no weights read",
             f"memory per process with {world} process(es) on {device}, weights in {name} (estimates):", "",
             "| stage | strategy | weights | gradients | optimizer | activations | total |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.stage} | {r.strategy} | {gib(r.weights)} | {gib(r.gradients)} | {gib(r.optimizer)} | "
                     f"{gib(r.activations)} | {gib(r.total)} |")
    return "\n".join(lines) + "\n"


def dry_run(cfg, world: int | None = None) -> str:
    """The memory report of a `come distill` run with `cfg` (a DistillConfig), from the student's config and plan."""
    import os

    from come.errors import ComeError
    from come.models import load_config, parse_dtype
    from come.plan import Plan

    world = int(os.environ.get("WORLD_SIZE", "1")) if world is None else world
    if world < 1:
        raise ComeError(f"--world-size must be at least 1, got {world}")
    plan = Plan.load(cfg.student)
    config = load_config(cfg.student)[0]
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    dtype = parse_dtype(cfg.dtype, config, device)
    return report(estimate(config, plan.tree, cfg, world, dtype, device), world, dtype, device, cfg.student)

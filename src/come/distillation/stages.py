"""The stages of a distillation run, each a record of what it trains and how (`Stage`), built by one function.

    layerwise  every merged layer against the teacher's states at its boundaries (teacher-forced)
    global     the student end to end against the teacher's states and logits (hierarchical)
    lora       LoRA adapters on every layer with the language-modelling loss (the recovery baseline)

The training loop (`come.distillation.loop`) runs any `Stage` the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from come.distillation.global_ import global_loss_fn, trainable_groups
from come.distillation.layerwise import layerwise_loss_fn, owned
from come.distillation.lora import lm_loss_fn, lora_groups
from come.models import get_adapter


@dataclass
class Stage:
    """One stage: train `groups` of `model` (parameter lists, each clipped on its own) with `loss_fn(ids) ->
    (loss, parts)` at learning rate `lr`.

    `ddp`: the DistributedDataParallel wrapper that averages gradients (None: one process, or FSDP). `sync`: set
    when every process sees all data and trains its own layers (the layer-wise stage under DDP); it shares them.
    `merge_lora`: `model` carries LoRA adapters that are merged into the student after the stage."""

    name: str
    model: torch.nn.Module
    groups: list[list[torch.nn.Parameter]]
    loss_fn: Callable
    lr: float
    ddp: torch.nn.Module | None = None
    sync: Callable[[], None] | None = None
    merge_lora: bool = False


def layerwise(run, resume: bool) -> Stage:
    """FSDP: every process trains every (sharded) merged layer on its share of the batch; DDP: each process its
    own merged layers on all data, shared by `sync`."""
    merged = [c for c in run.corr if c.merged]
    mine = merged if run.fsdp else owned(merged, run.d.rank, run.d.world)
    s_adapter = get_adapter(run.student)
    fn = layerwise_loss_fn(run.teacher, run.t_adapter, s_adapter, mine, run.cfg.weights(), run.autocast,
                           run.cfg.teacher_cache << 20)
    groups = [[p for n, p in s_adapter.layers[c.layer].named_parameters() if "lora_" not in n] for c in mine]

    def sync():  # every merged layer from the process that trains it
        if run.d.world > 1:
            import torch.distributed as dist

            for i, c in enumerate(merged):
                for p in s_adapter.layers[c.layer].parameters():
                    dist.broadcast(p.data, src=i % run.d.world)

    return Stage("layerwise", run.student, groups, fn, run.cfg.lr, sync=None if run.fsdp else sync)


def global_(run, resume: bool) -> Stage:
    """What `--train` names (merged layers, all, norms, or LoRA adapters on the merged layers), end to end."""
    cfg = run.cfg
    s_adapter = get_adapter(run.student)
    lora = cfg.train == "lora"
    if lora:
        model = run.peft or run.add_lora(run.student, run.lora_layers())
        groups, lr = lora_groups(model), cfg.lora_lr
    else:
        model = run.student
        groups, lr = trainable_groups(s_adapter, run.corr, cfg.train, cfg.train_lm_head, cfg.train_last), cfg.lr
    if resume and not run.fsdp:  # FSDP reads weights with the optimizer state
        run.checkpoints.load_weights(model)
    for p in (p for g in groups for p in g):
        p.requires_grad_(True)  # before DDP, which registers the parameters that need gradients
    runner, ddp = _wrapped(run, model)
    fn = global_loss_fn(run.teacher, run.t_adapter, runner, s_adapter, run.corr, cfg.weights(), run.autocast)
    return Stage("global", model, groups, fn, lr, ddp=ddp, merge_lora=lora)


def lora(run, resume: bool) -> Stage:
    model = run.peft or run.add_lora(run.student, run.lora_layers())
    if resume and not run.fsdp:
        run.checkpoints.load_weights(model)
    groups = lora_groups(model)
    for p in groups[0]:
        p.requires_grad_(True)
    runner, ddp = _wrapped(run, model)
    return Stage("lora", model, groups, lm_loss_fn(runner, run.autocast), run.cfg.lora_lr, ddp=ddp, merge_lora=True)


BUILD: dict[str, Callable[..., Stage]] = {"layerwise": layerwise, "global": global_, "lora": lora}


def _wrapped(run, model):
    """(the module the loss runs, its DDP wrapper or None): DDP only with several processes without FSDP."""
    if run.d.world == 1 or run.fsdp:
        return model, None
    from torch.nn.parallel import DistributedDataParallel as DDP

    ddp = DDP(model, device_ids=[run.d.device] if run.d.device.startswith("cuda") else None)
    return ddp, ddp

"""Hierarchical (global) stage: the student runs on its own states; the loss compares it with the teacher at every
correspondence point (student output of layer j vs teacher output of b_j) and on the final logits."""

from __future__ import annotations

import torch

from come.distillation.correspond import Correspondence
from come.distillation.losses import LossWeights, hidden_loss, kl_logits
from come.distillation.teacher import capture_states

TRAINABLE = ("merged", "merged+norms", "all", "norms", "lora")


def trainable_groups(s_adapter, corr: list[Correspondence], train: str, lm_head: bool = False,
                     last: int = 0) -> list[list[torch.nn.Parameter]]:
    """Parameter groups (one per layer, each clipped on its own) the global stage trains (`lora` adds its own):
    what `train` names, then the last `last` layers and the LM head when asked (each parameter once)."""
    layers = s_adapter.layers
    norms = [[p for n, p in layer.named_parameters() if "norm" in n] for layer in layers]
    if train == "merged":
        groups = [list(layers[c.layer].parameters()) for c in corr if c.merged]
    elif train == "merged+norms":  # the merged layers whole, every other layer's norms, the final norm
        merged = {c.layer for c in corr if c.merged}
        groups = [list(layer.parameters()) if j in merged else norms[j] for j, layer in enumerate(layers)]
        groups.append(list(s_adapter.final_norm().parameters()))
    elif train == "all":
        groups = [list(layer.parameters()) for layer in layers]
    elif train == "norms":
        groups = norms
    else:
        raise ValueError(train)
    groups += [list(layer.parameters()) for layer in layers[len(layers) - last:]] if last else []
    if lm_head:
        groups.append(list(s_adapter.lm_head().parameters()))
    seen: set[int] = set()
    out = []
    for g in groups:
        g = [p for p in g if id(p) not in seen and not seen.add(id(p))]
        if g:
            out.append(g)
    return out


def global_loss_fn(teacher, t_adapter, student, s_adapter, corr: list[Correspondence], w: LossWeights, autocast):
    """micro-batch ids (this rank's share) -> (mean hidden term over points + w.logits * KL on logits, parts).

    The hidden terms are averaged over the points rather than summed, so weights do not scale with depth.
    `student` may be the DDP-wrapped module; hooks sit on the layers of `s_adapter`.
    """
    t_keep = {c.last + 1 for c in corr}
    s_keep = {c.layer + 1 for c in corr}

    def fn(ids: torch.Tensor):
        with torch.no_grad(), autocast():
            t = capture_states(teacher, t_adapter, ids, t_keep, logits=w.logits > 0)
        with autocast():
            s = capture_states(student, s_adapter, ids, s_keep, logits=True)
            parts, hidden = {}, 0.0
            for c in corr:
                loss = hidden_loss(s.boundary[c.layer + 1], t.boundary[c.last + 1], w, t_adapter.logits)
                hidden = hidden + loss
                parts[c.name] = loss.item()
            total = hidden / len(corr)
            if w.logits:
                kl = kl_logits(s.logits, t.logits, w.temperature)
                parts["logits_kl"] = kl.item()
                total = total + w.logits * kl
        return total, parts

    return fn

"""Layer-wise, teacher-forced stage: each merged layer learns to map the teacher's state entering its block to the
state leaving it. Layers are independent, so ranks can split them (`owned`)."""

from __future__ import annotations

import torch

from come.distillation.correspond import Correspondence
from come.distillation.losses import LossWeights, hidden_loss
from come.distillation.teacher import TeacherStates, capture_states


def layer_loss(layer, states: TeacherStates, c: Correspondence, w: LossWeights, lens=None) -> torch.Tensor:
    """Hidden-state loss of student `layer` run on the teacher's input to block `c` against the block's output;
    the layer runs with the mask / RoPE of its own attention type. `lens`: the teacher's `ModelAdapter.logits`,
    for the logit-lens term."""
    out = layer(states.boundary[c.first], **states.kwargs_for(layer))
    out = out[0] if isinstance(out, tuple) else out
    return hidden_loss(out, states.boundary[c.last + 1], w, lens)


def owned(merged: list[Correspondence], rank: int, world: int) -> list[Correspondence]:
    """The merged layers rank `rank` trains: round robin, so every layer has exactly one owner."""
    return merged[rank::world]


def layerwise_loss_fn(teacher, t_adapter, s_adapter, mine: list[Correspondence], w: LossWeights, autocast):
    """micro-batch ids -> (sum of the owned layers' losses, {point: loss})."""
    keep = {c.first for c in mine} | {c.last + 1 for c in mine}

    def fn(ids: torch.Tensor):
        with torch.no_grad(), autocast():
            states = capture_states(teacher, t_adapter, ids, keep)
        total, parts = 0.0, {}
        for c in mine:
            with autocast():
                loss = layer_loss(s_adapter.layers[c.layer], states, c, w, t_adapter.logits)
            total = total + loss
            parts[c.name] = loss.item()
        return total, parts

    return fn

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


class StateCache:
    """The teacher's boundary states of each training window seen (keyed by its token ids), kept up to `limit`
    bytes where they were computed: a window met again (a budget beyond one pass over the text) skips the teacher.
    A micro-batch is served from the cache only when all its windows are in it."""

    def __init__(self, limit: int):
        self.limit, self.size = limit, 0
        self.rows: dict[bytes, dict[int, torch.Tensor]] = {}
        self.kwargs: dict[tuple, dict] = {}  # per micro-batch shape: the layer keyword arguments (mask, RoPE)
        self.hits = self.misses = 0

    def get(self, ids: torch.Tensor, adapter) -> tuple[TeacherStates | None, list[bytes]]:
        keys = [row.numpy().tobytes() for row in ids.detach().cpu()]
        shape = tuple(ids.shape)
        if shape not in self.kwargs or any(k not in self.rows for k in keys):
            self.misses += 1
            return None, keys
        self.hits += 1
        boundary = {i: torch.stack([self.rows[k][i] for k in keys]) for i in self.rows[keys[0]]}
        return TeacherStates(boundary, self.kwargs[shape], adapter), keys

    def put(self, ids: torch.Tensor, keys: list[bytes], states: TeacherStates) -> None:
        self.kwargs.setdefault(tuple(ids.shape), states.type_kwargs)
        for r, key in enumerate(keys):
            if key in self.rows:
                continue
            row = {i: t[r].clone() for i, t in states.boundary.items()}
            n = sum(t.numel() * t.element_size() for t in row.values())
            if self.size + n > self.limit:
                return
            self.rows[key] = row
            self.size += n


def layerwise_loss_fn(teacher, t_adapter, s_adapter, mine: list[Correspondence], w: LossWeights, autocast,
                      cache_bytes: int = 0):
    """micro-batch ids -> (sum of the owned layers' losses, {point: loss}). The teacher runs once per micro-batch,
    without gradients and only up to the last boundary the owned layers need; with `cache_bytes`, the states of
    the windows seen are kept (`StateCache`) and a micro-batch of windows all seen before skips the teacher."""
    keep = {c.first for c in mine} | {c.last + 1 for c in mine}
    cache = StateCache(cache_bytes) if cache_bytes > 0 else None

    def fn(ids: torch.Tensor):
        states, keys = cache.get(ids, t_adapter) if cache is not None else (None, [])
        if states is None:
            with torch.no_grad(), autocast():
                states = capture_states(teacher, t_adapter, ids, keep)
            if cache is not None:
                cache.put(ids, keys, states)
        total, parts = 0.0, {}
        for c in mine:
            with autocast():
                loss = layer_loss(s_adapter.layers[c.layer], states, c, w, t_adapter.logits)
            total = total + loss
            parts[c.name] = loss.item()
        return total, parts

    fn.cache = cache
    return fn

"""Shortened LLaMA block importance (Kim et al. 2024): magnitude and Taylor, one-shot block removal.

magnitude: I_l = sum |W| over the layer's linear weights; taylor: I_l = sum |W * dL/dW| with L the
calibration LM loss (gradient of the mean loss over all windows). `+` keeps the first 4 and last 2 layers,
as the paper's heuristic. Differs from the authors' code (built on LLM-Pruner): the gradient is taken on the
same calibration windows as every other method, and the layers are ranked in one shot.
"""

from __future__ import annotations

import torch

from come.methods.base import PruneContext
from come.methods.oneshot import drop_ranked, rank_lowest
from come.methods.registry import Limit, Method, register, weights_only, windows_of

KEEP_FIRST, KEEP_LAST = 4, 2
PAPER = ("Shortened LLaMA: Depth Pruning for Large Language Models with Comparison of Retraining Methods "
         "(arXiv 2402.02834, 2024)")


def _weights(layer) -> list[torch.nn.Parameter]:
    return [p for name, p in layer.named_parameters() if name.endswith("weight") and p.dim() == 2]


def magnitude_scores(ctx: PruneContext) -> list[float]:
    return [sum(p.detach().float().abs().sum().item() for p in _weights(layer)) for layer in ctx.adapter.layers]


def taylor_scores(ctx: PruneContext) -> list[float]:
    """sum |W * g| per layer, g the gradient of the mean calibration NLL (accumulated batch by batch)."""
    model, calib = ctx.model, ctx.calib
    params = list(model.parameters())
    was = [p.requires_grad for p in params]
    layer_weights = [_weights(layer) for layer in ctx.adapter.layers]
    tracked = {id(p) for ws in layer_weights for p in ws}
    for p in params:
        p.requires_grad_(id(p) in tracked)
        p.grad = None
    device = calib.device
    total = sum(b[:, 1:].numel() for b in calib.batches)
    try:
        for batch in calib.batches:
            ids = batch.to(device)
            logits = model(input_ids=ids, use_cache=False).logits.float()
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum"
            ) / total
            loss.backward()
        return [sum((p.detach().float() * p.grad.float()).abs().sum().item() for p in ws) for ws in layer_weights]
    finally:
        for p, r in zip(params, was):
            p.grad = None
            p.requires_grad_(r)


def _run(ctx: PruneContext, kind: str, plus: bool) -> None:
    scores = magnitude_scores(ctx) if kind == "magnitude" else taylor_scores(ctx)
    n = ctx.num_layers
    protected = [*range(min(KEEP_FIRST, n)), *range(max(n - KEEP_LAST, 0), n)] if plus else []
    why = f" (it keeps the first {KEEP_FIRST} and last {KEEP_LAST})" if plus else ""
    drop_ranked(ctx, rank_lowest(scores, protected), {kind: scores, "protected": protected}, why)


def magnitude(ctx: PruneContext) -> None:
    """Drop the layers with the smallest sum |W|."""
    _run(ctx, "magnitude", plus=False)


def magnitude_plus(ctx: PruneContext) -> None:
    """Keeps the first 4 and last 2 layers; drops the others with the smallest sum |W|."""
    _run(ctx, "magnitude", plus=True)


def taylor(ctx: PruneContext) -> None:
    """Drop the layers with the smallest sum |W * dL/dW|."""
    _run(ctx, "taylor", plus=False)


def taylor_plus(ctx: PruneContext) -> None:
    """Keeps the first 4 and last 2 layers; drops the others with the smallest sum |W * dL/dW|."""
    _run(ctx, "taylor", plus=True)


def _removable(n: int, cfg=None) -> int:
    return max(n - KEEP_FIRST - KEEP_LAST, 0)


# the `+` variants' limit, checked by prune/compare before any weights load
KEEP_ENDS = Limit(_removable, f"keeping the first {KEEP_FIRST} and last {KEEP_LAST} layers",
                  "raise the target or use magnitude/taylor")



def gradient_pass(cfg, layers: int, target: int) -> tuple[float, str]:
    return 1.0, f"1 forward and backward pass of the whole model{windows_of(cfg)}"


register(Method("magnitude", magnitude, PAPER, passes=weights_only))
register(Method("magnitude+", magnitude_plus, PAPER, passes=weights_only, limit=KEEP_ENDS))
# the gradient needs every layer on the compute device at once
register(Method("taylor", taylor, PAPER, passes=gradient_pass, needs_whole_model=True))
register(Method("taylor+", taylor_plus, PAPER, passes=gradient_pass, limit=KEEP_ENDS, needs_whole_model=True))

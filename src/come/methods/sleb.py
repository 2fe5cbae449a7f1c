"""SLEB (Song et al. 2024): remove, one at a time, the layer whose removal raises the calibration NLL least,
re-scored on the current model after every removal.

Differs from the authors' code: a trial at layer i re-runs only layers i+1.. from the cached boundary state
(their code re-runs the whole model); `--loss-samples` limits the windows of the trials as it does for CoMe.
"""

from __future__ import annotations

from come.methods.base import PruneContext
from come.methods.registry import Method, always, register, trial_share, windows_of


def removal_nll(ctx: PruneContext, n_batches: int | None = None, windows=None, loss=None) -> list[float]:
    """Calibration NLL of the current model without layer i, for every i (cache untouched); over the windows of
    the boolean mask `windows` when given (all batches are then run); `loss`: another score than the NLL
    (`Calibration.forward_from`)."""
    layers = list(ctx.adapter.layers)
    n = None if windows is not None else n_batches
    trials = ctx.trials(range(len(layers)), f"removals at {len(layers)} layers")
    return [ctx.calib.forward_from(i, layers[i + 1 :], n, windows, loss) for i in trials]


def cheapest_removal(ctx: PruneContext, n_batches: int | None = None) -> tuple[list[float], int]:
    """SLEB's choice: (removal NLL of every layer, the layer whose removal costs least; ties: the first)."""
    nll = removal_nll(ctx, n_batches)
    return nll, min(range(len(nll)), key=lambda i: (nll[i], i))


def drop_layer(ctx: PruneContext, l: int, scores: dict) -> None:
    """Drop current layer `l` (a plan step) and re-run the calibration cache from it."""
    ctx.apply({"op": "drop", "layer": l, "sources": list(ctx.tree[l]), "scores": scores})
    ctx.refresh(l)  # boundaries up to l are unchanged


def sleb(ctx: PruneContext) -> None:
    ctx.calib.run(0)
    n = ctx.loss_batches
    while ctx.num_layers > ctx.target_layers:
        nll, l = cheapest_removal(ctx, n)
        drop_layer(ctx, l, {"removal_nll": nll})


def passes(cfg, layers: int, target: int) -> tuple[float, str]:
    """A full pass, a re-run after each removal, and a removal trial of every remaining layer each step."""
    k = layers - target
    trials = sum(n for n in range(layers, target, -1))
    total = 1 + k + trials * trial_share(cfg)
    return total, (f"1 full pass + {k} re-runs + {trials} removal trials{windows_of(cfg)} (trials from the removed "
                   f"layer on: at most {total:.0f} full-pass equivalents)")


register(Method("sleb", sleb, "SLEB: Streamlining LLMs through Redundancy Verification and Elimination of "
                "Transformer Blocks (ICML 2024)", passes=passes, resumable=always))

"""Weighted-sum merge (the CoMe paper's ablation): CoMe's pair choice and BI ratio, but the merged layer is
r_a θ_a + r_b θ_b over ALL parameters (norms included) instead of a concatenation.

The `wsum` plan op is shared with MKA. Not in the authors' code as a method; built from the paper's ablation.
"""

from __future__ import annotations

import copy

import torch

from come.errors import ComeError
from come.merge import replace_pair
from come.methods import register
from come.methods.base import PruneContext
from come.methods.come import candidates, limit_merges
from come.models import ModelAdapter
from come.plan import register_op
from come.scores import bi_ratio, pair_scores


def weighted_layer(layer_a, layer_b, ratio) -> torch.nn.Module:
    """A copy of layer a whose every parameter is r_a θ_a + r_b θ_b (float32 math, the model's dtype)."""
    merged = copy.deepcopy(layer_a)
    pb = dict(layer_b.named_parameters())
    with torch.no_grad():
        for name, p in merged.named_parameters():
            p.copy_((ratio[0] * p.float() + ratio[1] * pb[name].detach().float()).to(p.dtype))
    return merged


@register_op("wsum")
def apply_wsum(adapter: ModelAdapter, step: dict) -> None:
    """Replace layers (l, l+1) by their weighted sum with `ratio`."""
    l = step["layer"]
    replace_pair(adapter, l, weighted_layer(adapter.layers[l], adapter.layers[l + 1], step["ratio"]))


@register("wsum", uses=("pair_tokens", "ratio_power", "remerge"))
@limit_merges
def wsum(ctx: PruneContext) -> None:
    """Progressive: merge argmin SBI (no re-merge unless --remerge) by the BI-ratio weighted sum."""
    cfg = ctx.config
    ctx.calib.run(0)
    while ctx.num_layers > ctx.target_layers:
        sbi = pair_scores(ctx.calib.hidden, last_token=cfg.pair_tokens == "last")
        bi = [s.bi for s in ctx.calib.stats]
        cands = candidates(ctx)
        if not cands:
            raise ComeError(f"no pair left to merge at {ctx.num_layers} layers without re-merging: "
                            "raise the target or pass --remerge")
        l = min(cands, key=lambda i: (sbi[i], i))
        ratio = bi_ratio(bi[l], bi[l + 1], cfg.ratio_power)
        sources = [list(ctx.tree[l]), list(ctx.tree[l + 1])]
        ctx.apply({"op": "wsum", "layer": l, "ratio": list(ratio), "sources": sources,
                   "scores": {"pair_angular": sbi, "bi": bi, "candidates": cands}})
        ctx.calib.run(l)

"""Weighted-sum merge (the CoMe paper's ablation): CoMe's pair choice and BI ratio, but the merged layer is
r_a θ_a + r_b θ_b over ALL parameters (norms included) instead of a concatenation.

The `wsum` plan op is shared with MKA. Not in the authors' code as a method; built from the paper's ablation.
"""

from __future__ import annotations

from come.merge import weighted_layer  # noqa: F401  (the merge itself; the `wsum` plan op is in come.ops)
from come.methods.base import PruneContext
from come.methods.come import NO_REMERGE, PAPER, PairOptions, candidates, no_pair_left
from come.methods.registry import Method, merges_passes, register
from come.scores import bi_ratio, pair_scores


def wsum(ctx: PruneContext) -> None:
    """Progressive: merge argmin SBI (no re-merge unless --remerge) by the BI-ratio weighted sum."""
    ctx.calib.run(0)
    while ctx.num_layers > ctx.target_layers:
        sbi = pair_scores(ctx.calib.hidden, last_token=ctx.options.pair_tokens == "last")
        bi = [s.bi for s in ctx.calib.stats]
        cands = candidates(ctx)
        if not cands:
            raise no_pair_left(ctx)
        l = min(cands, key=lambda i: (sbi[i], i))
        ratio = bi_ratio(bi[l], bi[l + 1])
        sources = [list(ctx.tree[l]), list(ctx.tree[l + 1])]
        ctx.apply({"op": "wsum", "layer": l, "ratio": list(ratio), "sources": sources,
                   "scores": {"pair_angular": sbi, "bi": bi, "candidates": cands}})
        ctx.refresh(l)


register(Method("wsum", wsum, f"{PAPER}, its weighted-sum ablation", options=PairOptions, passes=merges_passes,
                limit=NO_REMERGE, keeps_dense_states=True))

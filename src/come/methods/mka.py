"""MKA-style merge (Liu et al. 2024, "Pruning via Merging"): progressively merge the most similar adjacent
pair by θ* = λ θ_i + (1 - λ) θ_j (all parameters, the `wsum` op).

Similarity of layers (i, j=i+1): s = mean over tokens of clamp(cos(h_out(i), h_out(j)), 0, 1), the cosine of
the two layers' outputs. λ = 1 - s/2: identical outputs average the layers (λ = 1/2), unrelated ones keep layer
i (λ -> 1). Differs from the authors' code, which degenerates to dropping a layer; their manifold/NPIB
similarity is replaced by this cosine (same role, no extra hyper-parameters).
"""

from __future__ import annotations

from come.capture import cos_rows
from come.methods.base import PruneContext
from come.methods.registry import Method, merges_passes, register


def output_similarity(hidden) -> list[float]:
    """s_i for every adjacent pair (i, i+1): mean token cosine of h_out(i) = hidden[i+1] and hidden[i+2]."""
    sims = []
    for i in range(len(hidden) - 2):
        total, count = 0.0, 0
        for a, b in zip(hidden[i + 1], hidden[i + 2]):
            c = cos_rows(a, b).nan_to_num(0.5).clamp(0, 1)
            total += c.sum().item()
            count += c.numel()
        sims.append(total / count)
    return sims


def mka(ctx: PruneContext) -> None:
    ctx.calib.run(0)
    while ctx.num_layers > ctx.target_layers:
        s = output_similarity(ctx.calib.hidden)
        l = max(range(len(s)), key=lambda i: (s[i], -i))
        lam = 1 - s[l] / 2
        ctx.apply({"op": "wsum", "layer": l, "ratio": [lam, 1 - lam],
                   "sources": [list(ctx.tree[l]), list(ctx.tree[l + 1])], "scores": {"similarity": s}})
        ctx.refresh(l)


register(Method("mka", mka, "Pruning via Merging: Compressing LLMs via Manifold Alignment Based Layer Merging "
                "(EMNLP 2024)", passes=merges_passes, keeps_dense_states=True))

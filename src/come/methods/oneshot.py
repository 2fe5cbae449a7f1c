"""One-shot layer dropping shared by the ranking baselines (reverse, magnitude, taylor, shortgpt, angular).

Layers are dropped least important first, so every prefix of the plan is the same method at a shallower
depth (`come compare --sweep` replays prefixes).
"""

from __future__ import annotations

from collections.abc import Sequence

from come.errors import ComeError
from come.methods.base import PruneContext


def drop_ranked(ctx: PruneContext, ranking: Sequence[int], scores: dict | None = None, why: str = "") -> None:
    """Drop original layers in `ranking` order (least important first) until the target depth is reached."""
    n_drop = ctx.num_layers - ctx.target_layers
    if len(ranking) < n_drop:
        raise ComeError(
            f"{ctx.config.method} can remove at most {len(ranking)} of {ctx.num_layers} layers{why}, "
            f"but {ctx.num_layers} -> {ctx.target_layers} needs {n_drop}: raise the target"
        )
    alive = [block[0] for block in ctx.tree]  # original index of every current layer (no merges here)
    for k, orig in enumerate(ranking[:n_drop]):
        step = {"op": "drop", "layer": alive.index(orig), "sources": [orig]}
        if k == 0 and scores is not None:
            step["scores"] = scores
        alive.remove(orig)
        ctx.apply(step)


def rank_lowest(values: Sequence[float], protected: Sequence[int] = ()) -> list[int]:
    """Indices by increasing value (ties: lower index first), leaving out `protected`."""
    keep = set(protected)
    return sorted((i for i in range(len(values)) if i not in keep), key=lambda i: (values[i], i))

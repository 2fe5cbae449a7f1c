"""Angular distance (Gromov et al. 2024, "The Unreasonable Ineffectiveness of the Deeper Layers").

Drop the contiguous block of n layers whose input h(l) and output h(l+n) are closest: the angular distance
arccos(cos)/pi on the last token of each window, averaged over windows. Without the healing fine-tune of the
paper (that is a recovery step, compared separately). Not prefix-consistent: each depth picks its own block.
"""

from __future__ import annotations

from come.methods.base import PruneContext
from come.methods.oneshot import drop_ranked
from come.methods.registry import Method, one_pass, register
from come.scores import angular_distance


def block_distances(hidden, n: int) -> list[float]:
    """d(l, n) for l = 0 .. L-n: mean over windows of the last-token angular distance of h(l) and h(l+n)."""
    out = []
    for l in range(len(hidden) - n):
        d = sum(angular_distance(a[:, -1], b[:, -1]).sum().item() for a, b in zip(hidden[l], hidden[l + n]))
        out.append(d / sum(a.shape[0] for a in hidden[l]))
    return out


def angular(ctx: PruneContext) -> None:
    """Drop the block [l*, l*+n) with the smallest d(l, n), n = layers to remove."""
    ctx.calib.run(0)
    n = ctx.num_layers - ctx.target_layers
    d = block_distances(ctx.calib.hidden, n)
    start = min(range(len(d)), key=lambda l: (d[l], l))
    drop_ranked(ctx, list(range(start + n - 1, start - 1, -1)), {"block_angular": d, "start": start, "n": n})


register(Method("angular", angular, "The Unreasonable Ineffectiveness of the Deeper Layers (ICLR 2025)",
                passes=one_pass, prefix_consistent=False))  # each depth picks its own block

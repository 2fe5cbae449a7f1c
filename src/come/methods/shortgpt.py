"""ShortGPT (Men et al. 2024): drop the layers with the lowest block influence, in one shot.

Same BI as the authors (1 - cos(h_in, h_out) over all tokens); we compare true layer outputs rather than
HF's final-normed last hidden state, which would bias the last layer (METHOD.md §1).
"""

from __future__ import annotations

from come.methods import register
from come.methods.base import PruneContext
from come.methods.oneshot import drop_ranked, rank_lowest


@register("shortgpt")
def shortgpt(ctx: PruneContext) -> None:
    """One calibration pass; drop the lowest-BI layers."""
    ctx.calib.run(0)
    bi = [s.bi for s in ctx.calib.stats]
    drop_ranked(ctx, rank_lowest(bi), {"bi": bi})

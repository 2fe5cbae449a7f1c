"""ShortGPT (Men et al. 2024): drop the layers with the lowest block influence, in one shot.

Same BI as the authors (1 - cos(h_in, h_out) over all tokens); we compare true layer outputs rather than
HF's final-normed last hidden state, which would bias the last layer (docs/method.md §1).
"""

from __future__ import annotations

from come.methods.base import PruneContext
from come.methods.oneshot import drop_ranked, rank_lowest
from come.methods.registry import Method, one_pass, register

PAPER = "ShortGPT: Layers in Large Language Models are More Redundant Than You Expect (Findings of ACL 2025)"


def shortgpt(ctx: PruneContext) -> None:
    """One calibration pass; drop the lowest-BI layers."""
    ctx.calib.run(0)
    bi = [s.bi for s in ctx.calib.stats]
    drop_ranked(ctx, rank_lowest(bi), {"bi": bi})


register(Method("shortgpt", shortgpt, PAPER, passes=one_pass))

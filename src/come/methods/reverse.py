"""Reverse-order baseline: drop the last layers (ShortGPT/SLEB papers' "reverse order" baseline).

`reverse` drops from the very last layer down, as the papers do; `reverse-keep-last` keeps the final layer
and drops the ones before it (on SmolLM2 the last layers undo a massive activation, see docs/data.md).
"""

from __future__ import annotations

from come.methods.base import PruneContext
from come.methods.oneshot import drop_ranked
from come.methods.registry import Method, register, weights_only
from come.methods.shortgpt import PAPER as SHORTGPT


def reverse(ctx: PruneContext) -> None:
    """Drop layers L-1, L-2, ... until the target depth."""
    drop_ranked(ctx, list(range(ctx.num_layers - 1, -1, -1)))


def reverse_keep_last(ctx: PruneContext) -> None:
    """Keep the final layer; drop L-2, L-3, ... until the target depth."""
    drop_ranked(ctx, list(range(ctx.num_layers - 2, -1, -1)))


register(Method("reverse", reverse, f"{SHORTGPT}, its reverse-order baseline", passes=weights_only))
register(Method("reverse-keep-last", reverse_keep_last, "ours", passes=weights_only))

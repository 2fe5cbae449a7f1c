"""Refusing a model whose weights hold NaN or infinite values (`--allow-nonfinite` lets it through).

A module of its own, below every command that loads a model (prune, apply, eval, compare, distill), so that none
of them imports the others' checks to reach it.
"""

from __future__ import annotations

from come.errors import ComeError

_allow_nonfinite = False  # --allow-nonfinite: a model whose weights hold NaN or inf is loaded anyway


def allow_nonfinite(allow: bool) -> None:
    global _allow_nonfinite
    _allow_nonfinite = bool(allow)


def check_finite_weights(model, name: str) -> None:
    """Refuse a loaded model whose weights hold NaN or infinite values (unless --allow-nonfinite): every
    computation on it would be NaN, and a pruned copy of it would be saved as if it were sound."""
    if _allow_nonfinite:
        return
    import torch

    # remove_duplicate=False: the de-duplicating walk keeps every parameter it yielded alive until it ends, which
    # would hold a streamed model's every layer (come.stream) in memory at once
    for key, p in model.named_parameters(remove_duplicate=False):
        if p.is_floating_point() and p.device.type != "meta" and not bool(torch.isfinite(p).all()):
            bad = int((~torch.isfinite(p)).sum())
            raise ComeError(f"model {name}: weight {key} holds {bad} NaN or infinite values: pass a sound "
                            "checkpoint (or --allow-nonfinite to use it anyway)")

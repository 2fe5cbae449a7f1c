"""LaCo (Yang et al. 2024, "Layer Collapse"): merge a layer with the C-1 layers after it by RDSC,
θ* = θ_l + Σ_k (θ_{l+k} - θ_l), walking from the top of the stack down; a merge is kept only when the merged
model's last hidden states stay close to the ORIGINAL model's (mean token cosine on the calibration windows
> T), then the walk jumps I layers down, else it moves one layer down.

Defaults (the paper's Llama2-7B setting): C = 4, I = 2, T = 0.65, merges at layers >= 1 (L); each can be set
with `--option KEY=VALUE` (`come compare`: `--option laco.KEY=VALUE`). The last merge is
shortened so the result has exactly the target depth. Differs from the authors' code, which ends up dropping
layers: the equation is applied to every linear weight and bias (norms stay those of layer l, as RDSC sums
the layers' residual functions); states are the true last-layer outputs (before the final norm).
"""

from __future__ import annotations

from dataclasses import dataclass

from come.capture import cos_rows
from come.cliargs import arg
from come.errors import ComeError
from come.merge import rdsc_layer  # the merge itself; the `rdsc` plan op is in come.ops
from come.methods.base import PruneContext
from come.methods.registry import Method, register, trial_share, windows_of


@dataclass
class LacoOptions:
    C: int = arg(4, flag="--laco-c", help="layers merged into one, the first included")
    I: int = arg(2, flag="--laco-i", help="layers the walk jumps down after an accepted merge")  # noqa: E741
    T: float = arg(0.65, flag="--laco-t", help="similarity threshold of the last hidden states")
    L: int = arg(1, flag="--laco-l", help="lowest layer a merge may start at")


def final_similarity(states, reference) -> float:
    """Mean token cosine of two lists of last-layer states."""
    total, count = 0.0, 0
    for a, b in zip(states, reference):
        c = cos_rows(a, b).nan_to_num(0.0)
        total += c.sum().item()
        count += c.numel()
    return total / count



def laco(ctx: PruneContext) -> None:
    o = ctx.options
    C, I, T, LOWEST = o.C, o.I, o.T, o.L
    if C < 2 or I < 0 or not -1 <= T <= 1 or LOWEST < 0:
        raise ComeError(f"laco options out of range (C={C} >= 2, I={I} >= 0, T={T} in [-1, 1], L={LOWEST} >= 0)")
    calib = ctx.calib
    calib.run(0)
    n = ctx.loss_batches
    reference = calib.hidden[-1][:n]  # the original model's last-layer states
    tried = []
    l = ctx.num_layers - C
    while ctx.num_layers > ctx.target_layers and l >= LOWEST:
        span = min(C, ctx.num_layers - ctx.target_layers + 1, ctx.num_layers - l)
        layers = list(ctx.adapter.layers)
        states = calib.hidden[l][:n]
        for layer in [rdsc_layer(layers[l : l + span]), *layers[l + span :]]:
            states, _ = calib.run_layer(layer, states)
        s = final_similarity(states, reference)
        tried.append([l, span, s])
        if s <= T:
            l -= 1
            continue
        ctx.apply({"op": "rdsc", "layer": l, "span": span, "sources": [list(b) for b in ctx.tree[l : l + span]],
                   "scores": {"similarity": s, "threshold": T, "tried": tried}})
        tried = []
        calib.run(l)
        l = min(l - I, ctx.num_layers - C)
    if ctx.num_layers > ctx.target_layers:
        best = max(tried, key=lambda t: t[2]) if tried else None
        seen = f" (the best merge left reached {best[2]:.3f}, at layer {best[0]})" if best else ""
        raise ComeError(
            f"laco stopped at {ctx.num_layers} layers: no further merge keeps the last hidden states' cosine "
            f"similarity to the original above T = {T}{seen}; raise --target-layers or lower it with "
            "--option T=..."
        )


def passes(cfg, layers: int, target: int) -> tuple[float, str]:
    """A full pass, then a trial per layer the walk tries and a re-run per merge (data dependent)."""
    total = 1.0 + layers * (1 + trial_share(cfg))
    return total, (f"1 full pass + one trial per layer the walk tries and a re-run per merge{windows_of(cfg)} (at "
                   f"most {total:.0f} full-pass equivalents, data dependent)")


register(Method("laco", laco, "LaCo: Large Language Model Pruning via Layer Collapse (Findings of EMNLP 2024)",
                options=LacoOptions, passes=passes))

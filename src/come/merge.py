"""The math of merging decoder layers: the concatenation merge of two adjacent layers (docs/method.md §3), the
weighted sum of two layers, LaCo's RDSC merge of several, and putting a merged layer in place of its sources.

The concatenation runs the selected KV groups (with their query heads) and MLP channels of both layers side
by side: rows of q/k/v and gate/up are concatenated, layer a's pieces first, and the matching columns of
o_proj and down_proj likewise. The plan operations that call these functions are in `come.ops`.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from come.models import ModelAdapter
from come.models.base import new_linear

NORM_MODES = ("mean", "fold")


def _rows(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return t.index_select(0, idx)


def _group_rows(groups: list[int], group_size: int, device) -> torch.Tensor:
    """Row indices of whole groups (a KV group's query heads, or a KV head), in the order given."""
    idx = [g * group_size + j for g in groups for j in range(group_size)]
    return torch.tensor(idx, dtype=torch.long, device=device)


def _folded(w: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """W diag(scale): a norm's scale moved into the projection's input columns (float32 math, model dtype)."""
    if scale is None:
        return w
    return (w.float() * scale[None, :]).to(w.dtype)


def _weighted(tensors: list[torch.Tensor | None], weights: list[float]) -> torch.Tensor | None:
    if all(t is None for t in tensors):
        return None
    out = sum(wt * t.detach().float() for t, wt in zip(tensors, weights) if t is not None)
    return out.to(next(t for t in tensors if t is not None).dtype)


def _select(pieces: dict[str, tuple], rows: dict[str, torch.Tensor], scale: torch.Tensor | None) -> dict:
    """The chosen rows of each projection (weight folded with `scale`) and of its bias."""
    return {n: (_rows(_folded(w, scale), rows[n]), None if b is None else b[rows[n]]) for n, (w, b) in pieces.items()}


def _concat(parts: list[dict]) -> dict:
    """Stack the pieces of each projection, layer a's rows first."""
    cat = lambda xs: None if xs[0] is None else torch.cat(xs)  # noqa: E731
    return {n: (torch.cat([p[n][0] for p in parts]), cat([p[n][1] for p in parts])) for n in parts[0]}


def _contributors_mean(weights: list[torch.Tensor], pieces, ratio) -> torch.Tensor:
    """The weights of the layers that contribute pieces, averaged with their ratios renormalised over them (equal
    weights when those ratios are all zero): a layer that contributes nothing has no say."""
    src = [(w, r) for w, p, r in zip(weights, pieces, ratio) if p]
    total = sum(r for _, r in src)
    mix = [r / total for _, r in src] if total > 0 else [1.0 / len(src)] * len(src)
    return _weighted([w for w, _ in src], mix)


def _set_weight(norm: nn.Module, weight: torch.Tensor) -> None:
    with torch.no_grad():
        if norm.weight.shape == weight.shape:
            norm.weight.copy_(weight)
        else:
            norm.weight = nn.Parameter(weight.clone(), requires_grad=norm.weight.requires_grad)


def concat_layers(
    adapter: ModelAdapter,
    layer_a: nn.Module,
    layer_b: nn.Module,
    attn_groups: tuple[list[int], list[int]],
    mlp_channels: tuple[list[int], list[int]],
    ratio: tuple[float, float],
    norm: str = "mean",
    mlp_ratio: tuple[float, float] | None = None,
) -> nn.Module:
    """One layer holding `attn_groups` KV groups and `mlp_channels` MLP channels of layers a and b.

    Norms before a sub-layer: `mean` averages the weights of the layers that contribute to it (both, as in the
    authors' code, unless one contributes nothing); `fold` moves each layer's norm scale into its own input
    projections and makes the merged norm scale by one, so each piece computes what it computed in its own layer.
    Norms after a sub-layer (Gemma, OLMo 2) normalise the sum of all pieces, so no scale can move into a
    projection: their weights are averaged over the contributing layers with the ratio, in both modes. Per-head
    q/k norms (Qwen3, Gemma 3) are shared by all heads: likewise averaged over the layers whose heads the merge
    holds, so a merge that keeps one layer's heads only (always, with one KV head) keeps that layer's q/k norms.
    Output biases are ratio-averaged over both layers; per-row q/k norms (OLMo 2) follow their rows. The
    merged attention type (sliding window or global) is that of the layers whose heads it holds
    (`ModelAdapter.merged_layer_type` when both).

    `mlp_ratio` (per-half merge, come-splice): `ratio` is then the attention half's shares and `mlp_ratio` the MLP
    half's, and each half follows only its own contributors: its output bias and post-norm are the mean of the
    layers that contribute pieces to it (with its ratio), and `fold` applies only to a half both layers contribute
    to. A half that one layer alone contributes to is that layer's half exactly (pre- and post-norms, q/k norms,
    output bias, attention type), so a splice (all of a's attention, all of b's MLP) is its two source halves bit
    for bit. Without `mlp_ratio` the merge is as it always was (output biases ratio-averaged over both layers).
    """
    if norm not in NORM_MODES:
        raise ValueError(f"norm must be one of {NORM_MODES}, got {norm!r}")
    layers = (layer_a, layer_b)
    if not attn_groups[1] and not mlp_channels[1]:
        return copy.deepcopy(layer_a)
    if not attn_groups[0] and not mlp_channels[0]:
        return copy.deepcopy(layer_b)

    geo = adapter.geometry()
    merged = copy.deepcopy(layer_a)
    device = adapter.o_proj(layer_a).weight.device
    per_half = mlp_ratio is not None
    mlp_r = tuple(mlp_ratio) if per_half else ratio
    fold = norm == "fold"
    # per half: fold only a half both layers contribute to (a half of one layer keeps that layer's own norm)
    folds = {"attn": fold and (not per_half or all(attn_groups)), "mlp": fold and (not per_half or all(mlp_channels))}

    def fold_scale(get, layer, half):
        n = get(layer) if folds[half] else None
        return None if n is None else adapter.norm_scale(n)

    # --- attention: whole KV groups, each with its n_rep query heads ---
    attn_parts, o_parts, qk_rows = [], [], []
    for layer, groups in zip(layers, attn_groups):
        if not groups:
            continue
        rows = {"q": _group_rows(groups, geo.n_rep * geo.head_dim, device)}
        rows["k"] = rows["v"] = _group_rows(groups, geo.head_dim, device)
        attn_parts.append(_select(adapter.attn_in(layer), rows, fold_scale(adapter.attn_norm, layer, "attn")))
        o_parts.append(adapter.o_proj(layer).weight.detach().index_select(1, rows["q"]))
        if adapter.has_qk_norm and not adapter.qk_norm_per_head:
            qk_rows.append([n.weight.detach()[rows[k]] for n, k in zip(adapter.qk_norms(layer), "qk")])
    adapter.set_attn_in(merged, _concat(attn_parts))
    o_biases = [adapter.o_proj(x).bias for x in layers]
    o_bias = _contributors_mean(o_biases, attn_groups, ratio) if per_half else _weighted(o_biases, list(ratio))
    adapter.set_o_proj(merged, new_linear(torch.cat(o_parts, dim=1), o_bias, adapter.o_proj(layer_a)))

    # --- MLP: channels ---
    mlp_parts, d_parts = [], []
    for layer, ch in zip(layers, mlp_channels):
        if not ch:
            continue
        idx = torch.tensor(ch, dtype=torch.long, device=device)
        mlp_parts.append(_select(adapter.mlp_in(layer), {"gate": idx, "up": idx},
                                 fold_scale(adapter.mlp_norm, layer, "mlp")))
        d_parts.append(adapter.down_proj(layer).weight.detach().index_select(1, idx))
    adapter.set_mlp_in(merged, _concat(mlp_parts))
    d_biases = [adapter.down_proj(x).bias for x in layers]
    d_bias = _contributors_mean(d_biases, mlp_channels, mlp_r) if per_half else _weighted(d_biases, list(ratio))
    adapter.set_down_proj(merged, new_linear(torch.cat(d_parts, dim=1), d_bias, adapter.down_proj(layer_a)))

    # --- norms ---
    for get, pieces, half in ((adapter.attn_norm, attn_groups, "attn"), (adapter.mlp_norm, mlp_channels, "mlp")):
        target = get(merged)
        if target is None:
            continue
        if folds[half]:
            adapter.set_norm_identity(target)
        else:
            src = [get(x).weight for x, p in zip(layers, pieces) if p]
            _set_weight(target, _weighted(src, [1.0 / len(src)] * len(src)))
    for get, pieces, r in ((adapter.attn_post_norm, attn_groups, ratio), (adapter.mlp_post_norm, mlp_channels, mlp_r)):
        target = get(merged)
        if target is not None:
            _set_weight(target, _contributors_mean([get(x).weight for x in layers], pieces, r))
    qk = adapter.qk_norms(merged)
    if qk is not None:
        for i, target in enumerate(qk):
            if adapter.qk_norm_per_head:
                # shared by every head: the norms of the layers whose heads the merge holds (one layer's own when
                # it holds only that layer's heads, as with a single KV head)
                src = [adapter.qk_norms(x)[i].weight for x in layers]
                both = all(attn_groups)
                _set_weight(target, _weighted(src, list(ratio)) if both else _contributors_mean(src, attn_groups,
                                                                                                 ratio))
            else:
                _set_weight(target, torch.cat([r[i] for r in qk_rows]))

    # --- attention type ---
    types = [adapter.layer_type(x) for x, g in zip(layers, attn_groups) if g]
    if None not in types and len(set(types)) > 1:
        adapter.set_layer_type(merged, adapter.merged_layer_type(*types))
    elif types and types[0] is not None and types[0] != adapter.layer_type(merged):
        adapter.set_layer_type(merged, types[0])
    return merged


def replace_pair(adapter: ModelAdapter, l: int, merged: nn.Module) -> None:
    """Put `merged` at l, delete layer l+1, renumber layers and update the config."""
    layers = list(adapter.layers)
    kept = [i for i in range(len(layers)) if i != l + 1]
    layers[l] = merged
    del layers[l + 1]
    adapter.set_layers(layers, kept)


def weighted_layer(layer_a: nn.Module, layer_b: nn.Module, ratio) -> nn.Module:
    """A copy of layer a whose every parameter is r_a θ_a + r_b θ_b (float32 math, the model's dtype)."""
    merged = copy.deepcopy(layer_a)
    pb = dict(layer_b.named_parameters())
    with torch.no_grad():
        for name, p in merged.named_parameters():
            p.copy_((ratio[0] * p.float() + ratio[1] * pb[name].detach().float()).to(p.dtype))
    return merged


def _is_norm(name: str) -> bool:
    return "norm" in name


def rdsc_layer(layers: list[nn.Module]) -> nn.Module:
    """LaCo's RDSC merge: layer 0 of `layers` with every non-norm parameter θ_0 + Σ_k (θ_k - θ_0) (float32
    math)."""
    merged = copy.deepcopy(layers[0])
    others = [dict(x.named_parameters()) for x in layers[1:]]
    with torch.no_grad():
        for name, p in merged.named_parameters():
            if _is_norm(name):
                continue
            base = p.float()
            p.copy_((base + sum(o[name].detach().float() - base for o in others)).to(p.dtype))
    return merged

"""Concatenation merge of two adjacent decoder layers (METHOD.md §3) and the plain layer drop.

The merged layer runs the selected KV groups (with their query heads) and MLP channels of both layers side
by side: rows of q/k/v and gate/up are concatenated, layer a's pieces first, and the matching columns of
o_proj and down_proj likewise.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from come.models import ModelAdapter
from come.plan import register_op

NORM_MODES = ("mean", "fold")


def _rows(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return t.index_select(0, idx)


def _group_rows(groups: list[int], group_size: int, device) -> torch.Tensor:
    """Row indices of whole groups (a KV group's query heads, or a KV head), in the order given."""
    idx = [g * group_size + j for g in groups for j in range(group_size)]
    return torch.tensor(idx, dtype=torch.long, device=device)


def _new_linear(weight: torch.Tensor, bias: torch.Tensor | None, like: nn.Linear) -> nn.Linear:
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        lin.weight.copy_(weight)
        if bias is not None:
            lin.bias.copy_(bias)
    lin.weight.requires_grad_(like.weight.requires_grad)
    return lin


def _folded(proj: nn.Linear, norm: nn.Module | None) -> torch.Tensor:
    """W diag(w): the norm's scale moved into the projection's input columns (float32 math, model dtype)."""
    w = proj.weight.detach()
    if norm is None:
        return w
    return (w.float() * norm.weight.detach().float()[None, :]).to(w.dtype)


def _weighted(tensors: list[torch.Tensor | None], weights: list[float]) -> torch.Tensor | None:
    if all(t is None for t in tensors):
        return None
    out = sum(wt * t.detach().float() for t, wt in zip(tensors, weights) if t is not None)
    return out.to(next(t for t in tensors if t is not None).dtype)


def concat_layers(
    adapter: ModelAdapter,
    layer_a: nn.Module,
    layer_b: nn.Module,
    attn_groups: tuple[list[int], list[int]],
    mlp_channels: tuple[list[int], list[int]],
    ratio: tuple[float, float],
    norm: str = "mean",
) -> nn.Module:
    """One layer holding `attn_groups` KV groups and `mlp_channels` MLP channels of layers a and b.

    Norms: `mean` averages the norm weights of the layers that contribute to each sub-layer (both, as in the
    authors' code, unless one contributes nothing); `fold` moves each layer's norm scale into its own input
    projections and sets the merged norm to ones, so each piece computes what it computed in its own layer.
    Output biases and per-head q/k norms (Qwen3) are averaged with the ratio.
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
    device = adapter.q_proj(layer_a).weight.device
    fold = norm == "fold"

    # --- attention: whole KV groups, each with its n_rep query heads ---
    q_parts, k_parts, v_parts, o_parts = [], [], [], []
    qb, kb, vb = [], [], []
    for layer, groups in zip(layers, attn_groups):
        if not groups:
            continue
        n1 = adapter.attn_norm(layer) if fold else None
        q_idx = _group_rows(groups, geo.n_rep * geo.head_dim, device)
        kv_idx = _group_rows(groups, geo.head_dim, device)
        q, k, v, o = adapter.q_proj(layer), adapter.k_proj(layer), adapter.v_proj(layer), adapter.o_proj(layer)
        q_parts.append(_rows(_folded(q, n1), q_idx))
        k_parts.append(_rows(_folded(k, n1), kv_idx))
        v_parts.append(_rows(_folded(v, n1), kv_idx))
        o_parts.append(o.weight.detach().index_select(1, q_idx))
        qb.append(None if q.bias is None else q.bias.detach()[q_idx])
        kb.append(None if k.bias is None else k.bias.detach()[kv_idx])
        vb.append(None if v.bias is None else v.bias.detach()[kv_idx])

    attn = merged.self_attn
    cat_b = lambda bs: None if bs[0] is None else torch.cat(bs)  # noqa: E731
    attn.q_proj = _new_linear(torch.cat(q_parts), cat_b(qb), adapter.q_proj(layer_a))
    attn.k_proj = _new_linear(torch.cat(k_parts), cat_b(kb), adapter.k_proj(layer_a))
    attn.v_proj = _new_linear(torch.cat(v_parts), cat_b(vb), adapter.v_proj(layer_a))
    o_bias = _weighted([adapter.o_proj(x).bias for x in layers], list(ratio))
    attn.o_proj = _new_linear(torch.cat(o_parts, dim=1), o_bias, adapter.o_proj(layer_a))

    # --- MLP: channels ---
    g_parts, u_parts, d_parts = [], [], []
    for layer, ch in zip(layers, mlp_channels):
        if not ch:
            continue
        n2 = adapter.mlp_norm(layer) if fold else None
        idx = torch.tensor(ch, dtype=torch.long, device=device)
        g_parts.append(_rows(_folded(adapter.gate_proj(layer), n2), idx))
        u_parts.append(_rows(_folded(adapter.up_proj(layer), n2), idx))
        d_parts.append(adapter.down_proj(layer).weight.detach().index_select(1, idx))
    mlp = merged.mlp
    gate, up, down = adapter.gate_proj(layer_a), adapter.up_proj(layer_a), adapter.down_proj(layer_a)
    mlp.gate_proj = _new_linear(torch.cat(g_parts), None if gate.bias is None else _cat_bias(
        adapter.gate_proj, layers, mlp_channels), gate)
    mlp.up_proj = _new_linear(torch.cat(u_parts), None if up.bias is None else _cat_bias(
        adapter.up_proj, layers, mlp_channels), up)
    d_bias = _weighted([adapter.down_proj(x).bias for x in layers], list(ratio))
    mlp.down_proj = _new_linear(torch.cat(d_parts, dim=1), d_bias, down)

    # --- norms ---
    for get, pieces in ((adapter.attn_norm, attn_groups), (adapter.mlp_norm, mlp_channels)):
        target = get(merged)
        with torch.no_grad():
            if fold:
                target.weight.fill_(1.0)
            else:
                src = [get(x).weight for x, p in zip(layers, pieces) if p]
                target.weight.copy_(_weighted(src, [1.0 / len(src)] * len(src)))
    qk = adapter.qk_norms(merged)
    if qk is not None:
        for i, target in enumerate(qk):
            src = [adapter.qk_norms(x)[i].weight for x in layers]
            with torch.no_grad():
                target.weight.copy_(_weighted(src, list(ratio)))
    return merged


def _cat_bias(get, layers, channels) -> torch.Tensor:
    return torch.cat([get(x).bias.detach()[torch.tensor(c, dtype=torch.long)] for x, c in zip(layers, channels) if c])


def replace_pair(adapter: ModelAdapter, l: int, merged: nn.Module) -> None:
    """Put `merged` at l, delete layer l+1, renumber layers and update the config."""
    layers = list(adapter.layers)
    kept = [i for i in range(len(layers)) if i != l + 1]
    layers[l] = merged
    del layers[l + 1]
    adapter.set_layers(layers, kept)


@register_op("merge")
def apply_merge(adapter: ModelAdapter, step: dict) -> None:
    """Concatenation merge of layers (l, l+1) with the pieces and ratio the step records."""
    l = step["layer"]
    merged = concat_layers(
        adapter,
        adapter.layers[l],
        adapter.layers[l + 1],
        tuple(step["attn_groups"]),
        tuple(step["mlp_channels"]),
        tuple(step["ratio"]),
        step.get("norm", "mean"),
    )
    replace_pair(adapter, l, merged)


@register_op("drop")
def apply_drop(adapter: ModelAdapter, step: dict) -> None:
    """Remove layer `layer`."""
    l = step["layer"]
    layers = list(adapter.layers)
    kept = [i for i in range(len(layers)) if i != l]
    del layers[l]
    adapter.set_layers(layers, kept)

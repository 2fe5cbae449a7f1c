"""Plan operations: every edit a plan step may make to a model, declared as data and registered once.

A step is `{"op": NAME, "layer": l, ...}`; `OPS[NAME]` says which function applies it, whether it reads the
plan's saved tensors, and whether it keeps the model's depth (an in-place weight edit) or joins layers.
Methods build their plans through `apply_step`, and replay runs the very same functions, so replay is bit for
bit. The merge math the ops call is in `come.merge`.

    merge   concatenation merge of layers (l, l+1) with the pieces and ratio the step records; with `mlp_ratio`
            a per-half merge (`ratio` the attention half's, come-splice's splices and concatenations)
    drop    remove layer l
    rdsc    LaCo's RDSC merge of layers l .. l+span-1
    wsum    weighted sum of layers (l, l+1) with `ratio`
    refit   install re-fitted projection weights of layer l from the plan's tensors (depth unchanged)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from come.errors import ComeError
from come.merge import concat_layers, rdsc_layer, replace_pair, weighted_layer
from come.models import ModelAdapter


@dataclass(frozen=True)
class Op:
    """A plan operation: `fn(adapter, step)`, or `fn(adapter, step, tensors)` when it `needs_tensors`;
    `keeps_depth`: it edits weights in place and leaves the merge tree as it is."""

    name: str
    fn: Callable[..., None]
    needs_tensors: bool = False
    keeps_depth: bool = False


OPS: dict[str, Op] = {}
DEPTH_KEEPING_OPS: set[str] = set()  # the names of the ops that keep the depth, kept in step with OPS


def register_op(op: Op) -> Op:
    """Add `op` to OPS; a name is registered once."""
    if op.name in OPS:
        raise ValueError(f"plan op {op.name!r} is already registered")
    OPS[op.name] = op
    if op.keeps_depth:
        DEPTH_KEEPING_OPS.add(op.name)
    return op


def op_of(step: dict) -> Op:
    """The registered op of `step`; an unknown op is a ComeError."""
    name = step.get("op")
    if name not in OPS:
        raise ComeError(f"plan step has unknown op {name!r}: known ops are {', '.join(sorted(OPS))}")
    return OPS[name]


def apply_step(adapter: ModelAdapter, step: dict, tensors: dict | None = None) -> None:
    """Apply one plan step to the model behind `adapter` (in place)."""
    op = op_of(step)
    if op.needs_tensors:
        op.fn(adapter, step, tensors or {})
    else:
        op.fn(adapter, step)


def initial_tree(num_layers: int) -> list[list[int]]:
    return [[i] for i in range(num_layers)]


def update_tree(tree: list[list[int]], step: dict) -> None:
    """Keep `tree` (new layer -> contiguous original layers) in step with a plan step.

    A depth-keeping op leaves it as it is. A merge of `span` layers (default 2) from `layer` joins their
    blocks. A dropped layer's block joins its predecessor's (the first layer's joins its successor's): the
    layer before it now stands for both. An unknown op is a ComeError.
    """
    op = op_of(step)
    l = step["layer"]
    if op.keeps_depth:
        return
    if op.name == "drop":
        gone = tree.pop(l)
        if l > 0:
            tree[l - 1] = tree[l - 1] + gone
        elif tree:
            tree[0] = gone + tree[0]
        return
    span = step.get("span", 2)
    tree[l : l + span] = [[i for block in tree[l : l + span] for i in block]]


def merged_layer(adapter: ModelAdapter, step: dict):
    """The layer a `merge` step puts in place of layers (l, l+1), built but not installed (a trial's)."""
    l = step["layer"]
    return concat_layers(
        adapter,
        adapter.layers[l],
        adapter.layers[l + 1],
        tuple(step["attn_groups"]),
        tuple(step["mlp_channels"]),
        tuple(step["ratio"]),
        step.get("norm", "mean"),
        None if step.get("mlp_ratio") is None else tuple(step["mlp_ratio"]),
    )


def _merge(adapter: ModelAdapter, step: dict) -> None:
    replace_pair(adapter, step["layer"], merged_layer(adapter, step))


def _drop(adapter: ModelAdapter, step: dict) -> None:
    l = step["layer"]
    layers = list(adapter.layers)
    kept = [i for i in range(len(layers)) if i != l]
    del layers[l]
    adapter.set_layers(layers, kept)


def _rdsc(adapter: ModelAdapter, step: dict) -> None:
    l, span = step["layer"], step["span"]
    layers = list(adapter.layers)
    merged = rdsc_layer(layers[l : l + span])
    kept = [i for i in range(len(layers)) if not l < i < l + span]
    adapter.set_layers([*layers[:l], merged, *layers[l + span :]], kept)


def _wsum(adapter: ModelAdapter, step: dict) -> None:
    l = step["layer"]
    replace_pair(adapter, l, weighted_layer(adapter.layers[l], adapter.layers[l + 1], step["ratio"]))


def _refit(adapter: ModelAdapter, step: dict, tensors: dict) -> None:
    layer = adapter.layers[step["layer"]]
    getters = {"o_proj": adapter.o_proj, "down_proj": adapter.down_proj}
    for name, key in step["tensors"].items():
        proj = getters[name](layer)
        with torch.no_grad():
            proj.weight.copy_(tensors[key].to(proj.weight.device))


for _op in (
    Op("merge", _merge),
    Op("drop", _drop),
    Op("rdsc", _rdsc),
    Op("wsum", _wsum),
    Op("refit", _refit, needs_tensors=True, keeps_depth=True),
):
    register_op(_op)
del _op

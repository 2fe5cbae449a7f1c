"""Checks of a plan before it touches a model: its schema (types, ranges, index uniqueness, budgets, sidecar
tensors) against the model's geometry, and the base model it was made from (shape and fingerprint).

A plan is data a user may have edited or received from someone else; `come apply` runs these checks before any
weights are loaded, and `apply_plan` before the first step, so a bad plan is a one-line error naming the step
and the field instead of a wrong model or a traceback.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import torch

from come.errors import ComeError
from come.merge import NORM_MODES
from come.models import fingerprint
from come.ops import OPS, initial_tree, update_tree
from come.scores import split_budget

# what a plan records of its base model's shape; a model that differs in any of these is another model
SHAPE_KEYS = ("model_type", "num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads",
              "num_key_value_heads", "head_dim", "vocab_size")
REFIT_TARGETS = ("o_proj", "down_proj")
FIX = "pass the plan `come prune` wrote, unedited"


@dataclass(frozen=True)
class Geometry:
    """What a plan's indices and tensors must fit: KV groups and MLP channels per layer, the shapes of the
    projections a re-fit replaces, the dtype the model computes in (None: not checked)."""

    num_kv_heads: int
    d_ff: int
    shapes: dict[str, tuple[int, ...]]
    dtype: torch.dtype | None = None


def geometry_of(adapter, dtype: torch.dtype | None = None) -> Geometry:
    layer = adapter.layers[0]
    down = adapter.down_proj(layer).weight
    shapes = {"o_proj": tuple(adapter.o_proj(layer).weight.shape), "down_proj": tuple(down.shape)}
    return Geometry(adapter.geometry().num_kv_heads, down.shape[1], shapes, dtype)


class _Step:
    """Field checks of one step, each failure a ComeError naming the step and the field."""

    def __init__(self, index: int, step: dict, depth: int):
        self.index, self.step, self.op, self.depth = index, step, step.get("op"), depth

    def fail(self, field: str, problem: str):
        raise ComeError(f"plan steps[{self.index}] ({self.op}): {field} {problem}: {FIX}")

    def integer(self, field: str, lo: int, hi: int, default: int | None = None) -> int:
        v = self.step.get(field, default)
        if not _is_int(v):
            self.fail(field, f"must be an integer, got {v!r}")
        if not lo <= v <= hi:
            self.fail(field, f"{v} is out of range (the model has {self.depth} layers here: {lo}..{hi})")
        return v

    def ratio(self, field: str = "ratio") -> tuple[float, float]:
        r = self.step.get(field)
        if not (isinstance(r, list) and len(r) == 2 and all(_is_number(x) for x in r)):
            self.fail(field, f"must be a list of two numbers, got {_short(r)}")
        if not all(math.isfinite(x) and 0 <= x <= 1 for x in r) or abs(r[0] + r[1] - 1) > 1e-6:
            self.fail(field, f"{r} must be two shares in [0, 1] that sum to 1")
        return float(r[0]), float(r[1])

    def pieces(self, field: str, size: int, budget: tuple[int, int]) -> None:
        v = self.step.get(field)
        if not (isinstance(v, list) and len(v) == 2 and all(isinstance(side, list) for side in v)):
            self.fail(field, f"must be two lists of indices (layer a, layer b), got {_short(v)}")
        for side, idx, want in zip("ab", v, budget):
            if not all(_is_int(i) for i in idx):
                self.fail(field, f"of layer {side} holds a non-integer index")
            bad = [i for i in idx if not 0 <= i < size]
            if bad:
                self.fail(field, f"of layer {side} has index {bad[0]} outside 0..{size - 1}")
            if len(set(idx)) != len(idx):
                self.fail(field, f"of layer {side} repeats index {next(i for i in idx if idx.count(i) > 1)}")
            if len(idx) != want:
                self.fail(field, f"of layer {side} has {len(idx)} indices, its ratio gives a budget of {want}")


def validate_plan(plan, geometry: Geometry | None = None, check_tree: bool = True) -> None:
    """Refuse a plan that does not fit its base model (and, with `geometry`, the model it is applied to)."""
    base = plan.base_model
    if not isinstance(base, dict) or not _is_int(base.get("num_layers")) or base["num_layers"] < 1:
        raise ComeError(f"plan base_model must record num_layers >= 1, got {_short(base)}: {FIX}")
    if not isinstance(plan.steps, list) or not all(isinstance(s, dict) for s in plan.steps):
        raise ComeError(f"plan steps must be a list of objects: {FIX}")
    tree = initial_tree(base["num_layers"])
    for i, raw in enumerate(plan.steps):
        depth = len(tree)
        s = _Step(i, raw, depth)
        if s.op not in OPS:
            s.fail("op", f"is unknown: known ops are {', '.join(sorted(OPS))}")
        if s.op in ("merge", "wsum"):
            s.integer("layer", 0, depth - 2)
            ratio = s.ratio()
            if s.op == "merge":
                if raw.get("span", 2) != 2:
                    s.fail("span", "of a merge must be 2")
                if raw.get("norm", "mean") not in NORM_MODES:
                    s.fail("norm", f"must be one of {', '.join(NORM_MODES)}, got {raw.get('norm')!r}")
                # a per-half merge (come-splice): `ratio` is the attention half's, `mlp_ratio` the MLP half's
                mlp_ratio = ratio if raw.get("mlp_ratio") is None else s.ratio("mlp_ratio")
                if geometry is not None:
                    s.pieces("attn_groups", geometry.num_kv_heads, split_budget(ratio, geometry.num_kv_heads))
                    s.pieces("mlp_channels", geometry.d_ff, split_budget(mlp_ratio, geometry.d_ff))
        elif s.op == "drop":
            if depth < 2:
                s.fail("layer", "would drop the last layer left")
            s.integer("layer", 0, depth - 1)
        elif s.op == "rdsc":
            span = s.integer("span", 2, depth)
            s.integer("layer", 0, depth - span)
        elif s.op == "refit":
            s.integer("layer", 0, depth - 1)
            _check_refit(s, plan.tensors, geometry)
        else:  # an op registered later without a schema here: at least its layer must exist
            s.integer("layer", 0, depth - 1)
        update_tree(tree, raw)
    if check_tree and plan.tree != tree:
        raise ComeError(f"plan tree does not match its steps (they give {_short(tree)}, it records "
                        f"{_short(plan.tree)}): {FIX}")


def _check_refit(s: _Step, tensors: dict, geometry: Geometry | None) -> None:
    names = s.step.get("tensors")
    if not (isinstance(names, dict) and names and set(names) <= set(REFIT_TARGETS)
            and all(isinstance(k, str) for k in names.values())):
        s.fail("tensors", f"must map {' and/or '.join(REFIT_TARGETS)} to tensor names, got {_short(names)}")
    for target, key in names.items():
        if key not in tensors:
            s.fail("tensors", f"names {key!r}, which come_plan.safetensors does not hold")
        t = tensors[key]
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            s.fail(f"tensor {key!r}", f"must be a floating-point tensor, got {getattr(t, 'dtype', type(t))}")
        if not torch.isfinite(t).all():
            s.fail(f"tensor {key!r}", "holds NaN or infinite values")
        if geometry is None:
            continue
        want = geometry.shapes[target]
        if tuple(t.shape) != want:
            s.fail(f"tensor {key!r}", f"has shape {list(t.shape)}, {target} of this model is {list(want)}")
        if geometry.dtype is not None and t.dtype != geometry.dtype:
            name = str(t.dtype).replace("torch.", "")
            s.fail(f"tensor {key!r}", f"is {name} but the model computes in "
                   f"{str(geometry.dtype).replace('torch.', '')} (a replay is exact only in the plan's dtype): "
                   f"pass --dtype {name}")


# --- the base model ---


def shape_of(config) -> dict:
    """The base model's shape as a plan records it (`base_model.shape`)."""
    return {k: getattr(config, k, None) for k in SHAPE_KEYS}


def check_shape(base: dict, config) -> None:
    """The model given must have the shape the plan was made for (whatever --force says)."""
    got = shape_of(config)
    n, t = base.get("num_layers"), base.get("model_type")
    if not _is_int(n) or n < 1:
        raise ComeError(f"plan base_model must record num_layers >= 1, got {_short(n)}: {FIX}")
    if n != got["num_hidden_layers"] or t != got["model_type"]:
        raise ComeError(f"plan was made for a {n}-layer {t} model, got a {got['num_hidden_layers']}-layer "
                        f"{got['model_type']}: load the original model the plan names")
    recorded = base.get("shape") or {k: base.get(k) for k in ("hidden_size",) if k in base}
    diff = [f"{k} {recorded[k]} vs {got.get(k)}" for k in recorded if recorded[k] != got.get(k)]
    if diff:
        raise ComeError(f"plan was made for a {n}-layer {t} model of another shape ({', '.join(diff)}): load the "
                        "original model the plan names")


def check_base_model(plan, config, path: str, force: bool = False) -> None:
    """`path` (its `config`) must be the model the plan was made from: the same shape always, the same config
    and weights fingerprint unless `force`."""
    check_shape(plan.base_model, config)
    recorded = plan.base_model.get("fingerprint") or {}
    if not any(recorded.values()):
        return  # a plan written before fingerprints: the shape is all we can check
    got = fingerprint(path)
    differ = [k for k in ("weights", "config") if recorded.get(k) and got.get(k) and recorded[k] != got[k]]
    if not differ:
        return
    what = " and ".join(differ)
    if not force:
        raise ComeError(f"{path} has the plan's shape but other {what} than the model the plan was made from "
                        f"('{plan.base_model.get('name')}'): pass that model, or --force to apply the plan anyway")
    print(f"come: warning: --force: applying the plan to {path}, whose {what} differ from the plan's base model",
          file=sys.stderr)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _short(v, n: int = 60) -> str:
    text = repr(v)
    return text if len(text) <= n else text[: n - 3] + "..."

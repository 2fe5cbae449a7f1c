"""Plans: what a method decided (data, never code), and their replay on a fresh copy of the original model.

A plan is JSON: `steps` is a list of operations (`{"op": "merge", "layer": 3, ...}`), each applied to the model
as it stands after the previous ones; `tree` maps every layer of the result to the original layers it
replaces. Methods build a plan by applying the very same operations, so replay is bit for bit.
"""

from __future__ import annotations

import json
import platform
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import transformers
from safetensors.torch import load_file, save_file

import come
from come.assets import MODEL_ALIASES
from come.errors import ComeError
from come.models import count_params, fingerprint, get_adapter, resolve_model
from come.ops import DEPTH_KEEPING_OPS, OPS, Op, apply_step, initial_tree, op_of, register_op, update_tree
from come.plan_check import check_shape, geometry_of, shape_of, validate_plan

# the plan operations live in come.ops; these names are kept here for the code that imports them from come.plan
__all__ = ["DEPTH_KEEPING_OPS", "OPS", "PLAN_FILE", "PLAN_FORMAT", "TENSORS_FILE", "Op", "Plan", "apply_plan",
           "apply_step", "base_model_info", "base_model_path", "initial_tree", "register_op", "update_tree",
           "versions"]

PLAN_FORMAT = "come-plan/1"
PLAN_FILE = "come_plan.json"
TENSORS_FILE = "come_plan.safetensors"  # weights a plan step computed (e.g. a least-squares re-fit)


# the fields every plan has, and their JSON types (a step's fields: come.plan_check)
PLAN_FIELDS = {"method": str, "base_model": dict, "settings": dict}
PLAN_FIELD_KINDS = {str: "string", dict: "object"}


@dataclass
class Plan:
    method: str
    base_model: dict[str, Any]
    settings: dict[str, Any]
    steps: list[dict[str, Any]] = field(default_factory=list)
    tree: list[list[int]] = field(default_factory=list)
    seed: int = 0
    versions: dict[str, str] = field(default_factory=dict)
    format: str = PLAN_FORMAT
    stats: dict[str, Any] = field(default_factory=dict)
    # Computed weights that some steps install, saved beside the JSON as safetensors (data, never code).
    tensors: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def num_layers(self) -> int:
        return len(self.tree)

    def prefix(self, num_layers: int) -> Plan:
        """The plan cut where the model first reaches `num_layers` (with the weight edits that follow it):
        a progressive method's plan holds every shallower depth on its way to the target."""
        depth = self.base_model["num_layers"]
        if not num_layers <= depth:
            raise ComeError(f"cannot cut a {depth}-layer model's plan at {num_layers} layers")
        tree = initial_tree(depth)
        steps = []
        for step in self.steps:
            if len(tree) == num_layers and not op_of(step).keeps_depth:
                break
            steps.append(step)
            update_tree(tree, step)
        if len(tree) != num_layers:
            raise ComeError(f"this plan never has {num_layers} layers (it ends at {len(tree)})")
        used = {k for st in steps for k in st.get("tensors", {}).values()}
        return replace(self, steps=steps, tree=tree, tensors={k: v for k, v in self.tensors.items() if k in used})

    def to_json(self) -> str:
        data = asdict(self)
        data.pop("tensors")
        return json.dumps(data, indent=1)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.write_text(self.to_json())
        if self.tensors:
            tensors = {k: v.detach().cpu().contiguous() for k, v in self.tensors.items()}
            save_file(tensors, str(path.parent / TENSORS_FILE))

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        path = Path(path)
        if path.is_dir():
            path = path / PLAN_FILE
        if not path.exists():
            raise ComeError(f"no plan at {path}: pass a folder written by `come prune` or a {PLAN_FILE} file")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ComeError(f"plan {path} is not valid JSON ({e.msg} at line {e.lineno})") from e
        except (OSError, UnicodeDecodeError) as e:
            raise ComeError(f"cannot read the plan {path} ({getattr(e, 'strerror', None) or e})") from None
        except (ValueError, RecursionError) as e:  # a number of thousands of digits, nesting thousands deep
            raise ComeError(f"plan {path} is not a plan come wrote ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:100]}): pass the plan come prune wrote, unedited") from None
        plan = cls.load_dict(data, str(path))
        sidecar = path.parent / TENSORS_FILE
        if sidecar.exists() or sidecar.is_symlink():
            try:
                plan.tensors = load_file(str(sidecar))
            except Exception as e:  # truncated, empty, a folder: safetensors' own error types
                why = (getattr(e, "strerror", None) or str(e).strip() or type(e).__name__).splitlines()[0][:120]
                raise ComeError(f"the plan's tensors {sidecar} cannot be read ({why}): pass the folder come prune "
                                "wrote, unedited") from None
        return plan

    @classmethod
    def load_dict(cls, data: dict, where: str = "plan") -> Plan:
        if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
            got = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ComeError(f"{where} has format {got!r}, expected {PLAN_FORMAT!r}: pass a plan written by come")
        for key, kind in PLAN_FIELDS.items():
            if key not in data:
                raise ComeError(f"{where} has no {key}: pass a plan written by come, unedited")
            if not isinstance(data[key], kind):
                raise ComeError(f"{where}: {key} must be a JSON {PLAN_FIELD_KINDS[kind]}, got "
                                f"{type(data[key]).__name__}: pass a plan written by come, unedited")
        known = set(cls.__dataclass_fields__) - {"tensors"}
        return cls(**{k: v for k, v in data.items() if k in known})


def base_model_info(model, name: str) -> dict[str, Any]:
    """What a plan records of its base model: how to find it again (`name` and `source`: a local folder by its
    folder name only, never by a path; a hub id; an alias), its shape, and a fingerprint of its config and
    weights that `come apply` checks."""
    c = model.config
    path = resolve_model(name)
    if name in MODEL_ALIASES:
        source = "alias"
    elif Path(path).is_dir():
        source, name = "local", Path(path).resolve().name
    else:
        source = "hub"
    return {
        "name": name,
        "source": source,
        "model_type": c.model_type,
        "num_layers": c.num_hidden_layers,
        "hidden_size": c.hidden_size,
        "params": count_params(model),
        "shape": shape_of(c),
        "fingerprint": fingerprint(path),
    }


def base_model_path(plan: Plan, model: str | None = None, plan_path: str | Path | None = None) -> str:
    """What to load as the plan's base model: `model` when given; else the alias or hub id the plan records; a
    local folder (recorded by name) is looked for in the current folder, then beside the plan's folder, and
    never on the hub."""
    if model:
        return model
    base = plan.base_model
    name, source = base.get("name"), base.get("source")
    if source != "local":  # an alias, a hub id, or a plan written before `source` (its name as it was given)
        return name
    where = [Path(name)]
    if plan_path is not None:
        folder = Path(plan_path)
        folder = folder if folder.is_dir() else folder.parent
        where.append(folder.resolve().parent / name)
    for cand in where:
        if (cand / "config.json").is_file():
            return str(cand)
    raise ComeError(f"the plan was made from the local model folder '{name}', which is neither in the current "
                    f"folder nor beside the plan's folder: pass --model PATH/TO/{name}")


def versions() -> dict[str, str]:
    return {"come": come.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def apply_plan(model, plan: Plan | str | Path):
    """Replay `plan` on a fresh copy of its original model (in place); returns the model."""
    if not isinstance(plan, Plan):
        plan = Plan.load(plan)
    adapter = get_adapter(model)
    check_shape(plan.base_model, model.config)
    # before the first step: a bad plan must not leave a half-edited model (a prefix of steps keeps its full
    # tree, as `come compare --sweep` replays prefixes)
    validate_plan(plan, geometry_of(adapter, next(model.parameters()).dtype), check_tree=False)
    for step in plan.steps:
        apply_step(adapter, step, plan.tensors)
    return model


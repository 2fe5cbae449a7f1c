"""Checkpoints of a running prune: the plan so far, written after every step, and going on from it.

A checkpoint is a folder holding `come_plan.json` (the steps so far) and one `tensors-K.safetensors` per step
that computed weights (a re-fit): each step writes only its own tensors, then the JSON (both atomically), so a
kill at any moment leaves a consistent checkpoint of the steps before it. Going on from it replays those steps
on the freshly loaded model (the same code as `come apply`, bit for bit) and hands the method that model: for a
progressive method, whose next decision depends only on the current model and the calibration windows, the
finished plan is exactly the uninterrupted run's.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from come.errors import ComeError
from come.io import WRITER_FILE, describe_error, new_temporary, swap_in, write_text_atomic
from come.ops import apply_step, update_tree
from come.plan import PLAN_FILE, Plan, versions

log = logging.getLogger(__name__)
TENSORS_GLOB = "tensors-*.safetensors"
INPUTS_FILE = "inputs.json"  # fingerprints of what the run started from
INPUT_NAMES = {"calib": "calibration windows (data, tokenizer or sampling)"}


def checkpoint_for(out: str | Path) -> Path:
    """The checkpoint folder of output `out`: a hidden sibling, `.NAME.resume`."""
    out = Path(out)
    return out.parent / f".{out.name}.resume"


def writer(folder: str | Path, base: dict, cfg, seed: int, fresh: bool = True, inputs: dict | None = None):
    """An `on_step` callback writing the context's plan so far into `folder` after each step. With `fresh`, an
    old checkpoint there is replaced only by the first step's (written beside it, then swapped in), so a run
    stopped before its first step leaves the old one whole. `inputs` (fingerprints of what the run started from)
    is recorded for `continue_from` to check. A checkpoint that cannot be written is a warning: the run goes on
    (and tries again at the next step)."""
    folder = Path(folder)
    settings = cfg.to_dict()
    saved: set[str] = set()
    state = {"fresh": fresh, "warned": False}

    def write(ctx, into: Path) -> None:
        new = {k: v for k, v in ctx.tensors.items() if k not in saved}
        if new:
            from safetensors.torch import save_file

            path = into / f"tensors-{len(ctx.steps)}.safetensors"
            tmp = path.with_name(f".{path.name}.tmp")
            save_file({k: v.detach().cpu().contiguous() for k, v in new.items()}, str(tmp))
            os.replace(tmp, path)
        if inputs is not None:
            write_text_atomic(into / INPUTS_FILE, json.dumps(inputs, indent=1))
        plan = Plan(cfg.method, base, settings, list(ctx.steps), [list(b) for b in ctx.tree], seed, versions())
        write_text_atomic(into / PLAN_FILE, plan.to_json())
        saved.update(new)

    def on_step(ctx) -> None:
        try:
            if state["fresh"]:  # the first step: a new checkpoint, in place of an old one only once written
                stage = new_temporary(folder.parent / folder.name[1:].removesuffix(".resume"))
                try:
                    write(ctx, stage)
                    (stage / WRITER_FILE).unlink()
                    swap_in(stage, folder)
                finally:
                    shutil.rmtree(stage, ignore_errors=True)
                state["fresh"] = False
            else:
                folder.mkdir(exist_ok=True)
                write(ctx, folder)
        except Exception as e:
            if not state["warned"]:
                log.warning("could not write the checkpoint in %s (%s): going on without it (a run stopped now "
                            "starts over)", folder, describe_error(e))
                state["warned"] = True

    return on_step


def fingerprint_of(ids) -> str:
    """A fingerprint of the calibration windows a run uses (the data, its tokenizer, the sampling)."""
    import hashlib

    return hashlib.sha256(ids.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:32]


def load(folder: str | Path) -> Plan | None:
    """The checkpoint's plan with its tensors, or None when `folder` holds none."""
    folder = Path(folder)
    if not (folder / PLAN_FILE).exists():
        return None
    plan = Plan.load(folder / PLAN_FILE)
    from safetensors.torch import load_file

    for path in sorted(folder.glob(TENSORS_GLOB)):
        plan.tensors.update(load_file(str(path)))
    return plan


def continue_from(ctx, folder: str | Path, base: dict, cfg, method, inputs: dict | None = None) -> int:
    """Replay the checkpoint in `folder` (if any) onto `ctx`'s model; returns the number of steps replayed. A
    checkpoint of another model, other settings or other `inputs` (fingerprints, e.g. of the calibration windows)
    is refused."""
    plan = load(folder)
    if plan is None:
        return 0
    if not method.resumable(cfg):
        log.warning("%s cannot go on from a checkpoint (it decides from the unpruned model): starting over",
                    cfg.method)
        return 0
    settings = cfg.to_dict()
    for key in method.settings_used(settings):
        if plan.settings.get(key) != settings.get(key):
            raise ComeError(f"the checkpoint in {folder} was made with {key}={plan.settings.get(key)!r}, not "
                            f"{settings.get(key)!r}: run with the same settings, or without --resume to start over")
    if plan.base_model.get("fingerprint") != base.get("fingerprint"):
        raise ComeError(f"the checkpoint in {folder} was made from another model's weights: run without --resume "
                        "to start over")
    recorded = _inputs(folder)
    for key, value in (inputs or {}).items():
        if key in recorded and recorded[key] != value:
            raise ComeError(f"the checkpoint in {folder} was made from other {INPUT_NAMES.get(key, key)} (its "
                            "fingerprint differs): run with the same inputs, or without --resume to start over")
    for step in plan.steps:
        apply_step(ctx.adapter, step, plan.tensors)
        update_tree(ctx.tree, step)
        ctx.steps.append(step)
    ctx.tensors.update(plan.tensors)
    log.info("resumed %s from %d steps at %d layers", cfg.method, len(plan.steps), ctx.num_layers)
    return len(plan.steps)


def _inputs(folder: Path) -> dict:
    try:
        data = json.loads((folder / INPUTS_FILE).read_text())
    except (OSError, ValueError):
        return {}  # a checkpoint of an older version: only its model fingerprint and settings are checked
    return data if isinstance(data, dict) else {}


def remove(folder: str | Path) -> None:
    """Delete a checkpoint folder once its run's output is written."""
    shutil.rmtree(folder, ignore_errors=True)

"""Checkpoints of a running prune: the plan so far, written after every step, and going on from it.

A checkpoint is a folder holding `come_plan.json` (the steps so far) and one `tensors-K.safetensors` per step
that computed weights (a re-fit): each step writes only its own tensors, then the JSON (both atomically), so a
kill at any moment leaves a consistent checkpoint of the steps before it. Going on from it replays those steps
on the freshly loaded model (the same code as `come apply`, bit for bit) and hands the method that model: for a
progressive method, whose next decision depends only on the current model and the calibration windows, the
finished plan is exactly the uninterrupted run's.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from come.errors import ComeError
from come.io import write_text_atomic
from come.ops import apply_step, update_tree
from come.plan import PLAN_FILE, Plan, versions

log = logging.getLogger(__name__)
TENSORS_GLOB = "tensors-*.safetensors"


def checkpoint_for(out: str | Path) -> Path:
    """The checkpoint folder of output `out`: a hidden sibling, `.NAME.resume`."""
    out = Path(out)
    return out.parent / f".{out.name}.resume"


def writer(folder: str | Path, base: dict, cfg, seed: int):
    """An `on_step` callback writing the context's plan so far into `folder` after each step."""
    folder = Path(folder)
    settings = cfg.to_dict()
    saved: set[str] = set()

    def on_step(ctx) -> None:
        folder.mkdir(parents=True, exist_ok=True)  # on the first step: a run that fails before leaves nothing
        new = {k: v for k, v in ctx.tensors.items() if k not in saved}
        if new:
            from safetensors.torch import save_file

            path = folder / f"tensors-{len(ctx.steps)}.safetensors"
            tmp = path.with_name(f".{path.name}.tmp")
            save_file({k: v.detach().cpu().contiguous() for k, v in new.items()}, str(tmp))
            os.replace(tmp, path)
            saved.update(new)
        plan = Plan(cfg.method, base, settings, list(ctx.steps), [list(b) for b in ctx.tree], seed, versions())
        write_text_atomic(folder / PLAN_FILE, plan.to_json())

    return on_step


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


def continue_from(ctx, folder: str | Path, base: dict, cfg, method) -> int:
    """Replay the checkpoint in `folder` (if any) onto `ctx`'s model; returns the number of steps replayed."""
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
    for step in plan.steps:
        apply_step(ctx.adapter, step, plan.tensors)
        update_tree(ctx.tree, step)
        ctx.steps.append(step)
    ctx.tensors.update(plan.tensors)
    log.info("resumed %s from %d steps at %d layers", cfg.method, len(plan.steps), ctx.num_layers)
    return len(plan.steps)


def remove(folder: str | Path) -> None:
    """Delete a checkpoint folder once its run's output is written."""
    import shutil

    shutil.rmtree(folder, ignore_errors=True)

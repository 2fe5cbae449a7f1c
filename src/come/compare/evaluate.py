"""How `come compare` scores a model in memory, at its depth and at the shallower depths on the way to it."""

from __future__ import annotations

import copy
import dataclasses
import gc
import time

from come.compare.config import CompareConfig


def evaluate_model(model, tokenizer, cfg: CompareConfig) -> dict:
    """Layers, parameters, perplexity and task accuracies of an in-memory model (come.eval's functions)."""
    from come.eval import averages, perplexity
    from come.eval.harness import run_tasks
    from come.eval.ppl import expand_sources, ood_geomean
    from come.models import count_params
    from come.placement import place_for_inference
    from come.prune import resolve_device

    place_for_inference(model, resolve_device(cfg.device))  # pruning may have streamed it from CPU memory
    t0 = time.perf_counter()
    out: dict = {"layers": model.config.num_hidden_layers, "params": count_params(model)}
    if "ppl" in cfg.evals:
        sources = expand_sources(cfg.ppl_data)
        by_source = {src: perplexity(model, tokenizer, src, cfg.ppl_seq_len, cfg.ppl_max_windows,
                                     cfg.eval_batch, progress=cfg.progress) for src in sources}
        out["ppl"] = by_source[sources[0]]
        if len(sources) > 1:
            out["ppl_by_source"] = by_source
        gmean = ood_geomean(by_source)
        if gmean is not None:
            out["ppl_ood_gmean"] = gmean
    if cfg.tasks:
        h = run_tasks(model, tokenizer, cfg.tasks, cfg.limit, cfg.eval_batch)
        out["tasks"] = h["tasks"]
        out["averages"] = averages(h["tasks"])
        out["lm_eval_version"] = h.get("lm_eval_version")
        out["lm_eval_seeds"] = h.get("seeds")
    out["eval_wall_s"] = round(time.perf_counter() - t0, 2)
    return out


def sweep_points(cfg: CompareConfig, name: str, plan, dense, tokenizer) -> list[dict]:
    """Scores of row `name` at every depth its method passes through on the way to the target (the target
    excluded; without `cfg.sweep` only the depths in `cfg.depths`): progressive methods replay a prefix of
    their plan, the others prune again at each depth."""
    from come.methods import is_progressive
    from come.ops import op_of
    from come.plan import apply_plan
    from come.prune import prune

    points = []
    if is_progressive(cfg.prune_config(name).method):
        steps = plan.steps
        ends = [k for k in range(1, len(steps)) if not op_of(steps[k]).keeps_depth]  # evaluate before these
        if not cfg.sweep:  # only the asked depths: the depth before step k is the dense depth minus k' removals
            removed = [sum(not op_of(s).keeps_depth for s in steps[:k]) for k in ends]
            ends = [k for k, r in zip(ends, removed) if dense.config.num_hidden_layers - r in cfg.depths]
        for k in ends:
            model = apply_plan(copy.deepcopy(dense), dataclasses.replace(plan, steps=steps[:k]))
            points.append(evaluate_model(model, tokenizer, cfg))
            del model
    else:
        start = dense.config.num_hidden_layers - 1
        for depth in range(start, plan.num_layers, -1):
            if not cfg.sweep and depth not in cfg.depths:
                continue
            res = prune(cfg.prune_config(name, target_layers=depth))
            points.append(evaluate_model(res.model, tokenizer, cfg))
            del res
    gc.collect()
    return points

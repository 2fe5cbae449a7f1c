"""What a distillation run reports: distill_summary.json / .md, and the `come distill` line of the model card."""

from __future__ import annotations

from dataclasses import asdict

from come.distillation.config import DistillConfig
from come.distillation.loop import RunState
from come.distillation.processes import Processes
from come.plan import Plan


def distill_command(cfg: DistillConfig) -> str:
    """The `come distill` line of `cfg` (local paths as names), for the model card."""
    from come import recipe
    from come.card import scrubbed

    return recipe.command_line(scrubbed(recipe.of(cfg)), out="OUT")


def make_summary(cfg: DistillConfig, state: RunState, d: Processes, plan: Plan) -> dict:
    """distill_summary.json: every stage's budget, time and first/last loss, perplexities, the settings."""
    stages = {}
    for name, s in state.stages.items():
        losses = s["losses"]
        stages[name] = {"steps": s["steps"], "tokens": s["tokens"], "wall_s": round(s["wall_s"], 1),
                        "trainable_params": s["trainable_params"],
                        "params_per_process": s.get("params_per_process"), "first_loss": losses[0] if losses else None,
                        "last_loss": losses[-1] if losses else None}
    return {
        "student": cfg.student, "teacher": cfg.teacher or plan.base_model["name"], "tree": plan.tree,
        "stages": stages, "perplexity": state.ppl,
        "tokens": sum(s["tokens"] for s in stages.values()),
        "train_wall_s": round(sum(s["wall_s"] for s in stages.values()), 1),
        "processes": d.world, "strategy": cfg.strategy, "device": d.device, "config": asdict(cfg),
    }


def summary_text(s: dict) -> str:
    """distill_summary.md (and what `come distill` prints)."""
    lines = [f"# Distillation of {s['student']} from {s['teacher']}", "",
             f"{s['tokens']:,} training tokens, {s['train_wall_s']} s of training, {s['processes']} process(es) "
             f"({s.get('strategy', 'ddp')}) on {s['device']}.", "",
             "| stage | steps | tokens | wall s | first loss | last loss |", "|---|---|---|---|---|---|"]
    for name, st in s["stages"].items():
        lines.append(f"| {name} | {st['steps']} | {st['tokens']:,} | {st['wall_s']} | {st['first_loss']:.4g} | "
                     f"{st['last_loss']:.4g} |")
    if s["perplexity"]:
        lines += ["", "| perplexity | value |", "|---|---|"]
        for key, r in s["perplexity"].items():
            lines.append(f"| {key} | {r['ppl']:.2f} |")
        r = next(iter(s["perplexity"].values()))
        lines += ["", f"Perplexity: {r['windows']} windows of {r['seq_len']} tokens of the evaluation part of "
                      f"{r['source']}, no BOS."]
    return "\n".join(lines) + "\n"

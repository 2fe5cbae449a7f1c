"""`come compress`: the whole job in one command, prune + recover by distillation (+ evaluate), into one folder.

    come compress MODEL --target-layers N --recover TOKENS [--ppl ood --tasks all] --out OUT

The stages run in order, each into its own folder inside the run folder `OUT.partial` (`come.runstore`), each
folder written whole or not at all (`come.io.write_output_dir`, or `distill`'s own atomic output):

    prune       `come.prune` (its step checkpoint `OUT.partial/.prune.resume`, `come.resume`)   -> prune/
    layerwise   recovery stage 1 (`--recovery staged`): each merged layer alone on the teacher's states
                at its block's boundaries (`come distill --stage layerwise`)                       -> layerwise/
    global      recovery stage 2: logit KL of the whole student, training the merged layers and every
                norm (`--stage global --train merged+norms`); or all layers (`--recovery full`), or
                LoRA on every layer with the LM loss (`--recovery lora`, `--stage lora`)          -> global/
    eval        `come eval` of the result against the original model (with --ppl/--tasks)          -> eval/

A killed run goes on with `--resume`: finished stages are kept, the stage in progress continues from its last
checkpoint (prune: its last step; distillation: `--checkpoint-every`). The finished folder OUT holds the
weights, tokenizer, plan, model card (with the recovery and the evaluation), `recipe.yaml` (`come compress
--config recipe.yaml` makes the folder again), the distillation summary and log, and `eval/`.

`CompressConfig` lives in `come.compress_config` (recipes and `come --help` read it without this module), the
command line in `come.compress_cli`; torch loads when a run starts.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from come.cliargs import flag_name
from come.compress_config import (  # noqa: F401 (re-exported: come.compress.CompressConfig)
    EVAL_DIR,
    EVALUATION,
    RECOVERIES,
    RECOVERY,
    RUN,
    STAGE1_LOSS,
    STAGE2_LOSS,
    STATE_FILE,
    CompressConfig,
    _no_aliases,
    log,
)
from come.errors import ComeError


@dataclass
class CompressResult:
    out: Path
    stages: dict = field(default_factory=dict)  # per stage: wall seconds, and whether this run did it


def stage_names(cfg: CompressConfig) -> list[str]:
    return ["prune", *(s for s, _, _ in RECOVERIES[cfg.recovery]), *([EVAL_DIR] if cfg.evaluates else [])]


def _settings(cfg: CompressConfig) -> dict:
    from come import recipe

    return {k: v for k, v in recipe.of(cfg).items() if k not in ("out", "checkpoint_every", "teacher_cache")}


def compress(config: CompressConfig | None = None, on_stage=None, **kwargs) -> CompressResult:
    """Prune `config.model`, recover it by distillation, evaluate it when asked; one folder `config.out`.

    `on_stage(name)` is called after each stage has finished (and its folder is in place); an exception it raises
    stops the run, which `resume=True` continues from there."""
    from come import preflight
    from come.io import check_output_dir, output_lock
    from come.models import load_config

    cfg = (config or CompressConfig(**kwargs)).validate()
    if cfg.out is None:
        raise ComeError("give --out (or `out:` in the --config recipe)")
    pre = preflight.prune(cfg.prune_config())  # the model's config, the target, the calibration file
    model_config = load_config(cfg.model)[0]
    preflight.check_context(model_config, cfg.train_seq_len, flag_name(CompressConfig, "train_seq_len"))
    preflight.check_text_source(cfg.train_data, flag_name(CompressConfig, "train_data"))
    if cfg.evaluates:
        preflight.evaluation(cfg.eval_config(cfg.model))
    check_output_dir(cfg.out, cfg.overwrite, [*pre["inputs"], cfg.train_data, *cfg.ppl],
                     need_bytes=pre["need_bytes"])
    with output_lock(cfg.out):
        return _compress(cfg, on_stage)


def _compress(cfg: CompressConfig, on_stage) -> CompressResult:
    from come.runstore import RunFolder

    store = RunFolder(cfg.out, "compress")
    store.claim(cfg.resume, cfg.overwrite)
    settings = _settings(cfg)
    if cfg.resume and (store.partial / STATE_FILE).is_file():
        before = store.read_json(store.partial / STATE_FILE)
        changed = sorted(k for k in {*before, *settings} if before.get(k) != settings.get(k))
        if changed:
            raise ComeError(f"--resume with other settings than the interrupted run ({', '.join(changed)}): resume "
                            "with the same settings, or pass --overwrite to start over")
    elif cfg.resume:
        log.info("--resume: no interrupted run beside %s: starting from the beginning", store.out)
    store.open(cfg.resume)
    store.write_json(STATE_FILE, settings)
    names = stage_names(cfg)
    result = CompressResult(store.out)
    start = time.perf_counter()
    try:
        model_dir = None
        for k, name in enumerate(names, 1):
            folder = store.partial / name
            if folder.is_dir():
                log.info("compress [%d/%d] %s: finished by the interrupted run, kept", k, len(names), name)
                result.stages[name] = {"ran": False}
            else:
                log.info("compress [%d/%d] %s%s", k, len(names), name, _what(cfg, name))
                t0 = time.perf_counter()
                _run_stage(cfg, store, name, model_dir)
                result.stages[name] = {"ran": True, "wall_s": round(time.perf_counter() - t0, 1)}
                log.info("compress [%d/%d] %s done in %.0f s (%.0f s so far)", k, len(names), name,
                         time.perf_counter() - t0, time.perf_counter() - start)
            if name != EVAL_DIR:
                model_dir = folder
            if on_stage is not None:
                on_stage(name)
        store.publish_new(lambda tmp: _write(cfg, store.partial, model_dir, tmp), cfg.overwrite)
    except BaseException:
        keep = any((store.partial / n).is_dir() for n in names) or any(store.partial.glob("*.partial")) \
            or any(store.partial.glob(".*.resume"))
        store.abandon(keep=keep)  # something to go on from: kept for --resume
        if keep:
            log.warning("the finished stages are in %s: add --resume to go on from them", store.partial)
        raise
    return result


def _what(cfg: CompressConfig, name: str) -> str:
    stages = [s for s, _, _ in RECOVERIES[cfg.recovery]]
    if name in stages:
        i = stages.index(name)
        return f" (recovery stage {i + 1} of {len(stages)}: {cfg.stage_tokens()[i]:,} tokens)"
    return ""


def _run_stage(cfg: CompressConfig, store, name: str, model_dir: Path | None) -> None:
    """Run stage `name` into its folder in the run folder (written whole: a killed stage leaves none)."""
    folder = store.partial / name
    if name == "prune":
        from come import resume
        from come.io import write_output_dir
        from come.prune import prune

        checkpoint = resume.checkpoint_for(folder)
        res = prune(cfg.prune_config(), checkpoint=checkpoint, resume=cfg.resume)
        write_output_dir(folder, True, res.write)
        resume.remove(checkpoint)
        return
    if name == EVAL_DIR:
        from come.eval.evaluation import evaluate, save
        from come.names import display_name

        result = evaluate(cfg.eval_config(str(model_dir)))
        result["model"].update(name=display_name(cfg.out), path=display_name(cfg.out))  # the folder it ends in
        result["config"]["model"] = display_name(cfg.out)
        save(result, folder, True)
        return
    check_something_to_train(model_dir)
    from come.distillation.checkpoint import NAME, STATE
    from come.distillation.train import distill

    i = [s for s, _, _ in RECOVERIES[cfg.recovery]].index(name)
    partial = store.partial / f"{name}.partial"
    resume = cfg.resume and (partial / NAME / STATE).is_file()  # a stage killed before its first checkpoint: anew
    distill(cfg.distill_config(i, str(model_dir), str(folder), resume))


def check_something_to_train(student: Path) -> None:
    """A student whose plan merged (or dropped) nothing has no layer the recovery trains: refused before its
    weights load."""
    from come.distillation.correspond import correspondences
    from come.plan import Plan

    if not any(c.merged for c in correspondences(Plan.load(student).tree)):
        raise ComeError(f"the plan of {student} leaves every layer as it was: nothing for the recovery to train")


def _write(cfg: CompressConfig, partial: Path, model_dir: Path, folder: Path) -> None:
    """The finished folder: the last model's files, the distillation's summaries and log, the evaluation, a card
    that says all of it, recipe.yaml."""
    from come.card import add_eval, write_card
    from come.distillation.config import LOG_FILE, SUMMARY_JSON, SUMMARY_MD
    from come.distillation.summary import summary_text
    from come.names import display_name
    from come.plan import PLAN_FILE, Plan

    skip = {"README.md", "recipe.yaml", SUMMARY_JSON, SUMMARY_MD, LOG_FILE}
    for f in model_dir.iterdir():
        if f.is_file() and f.name not in skip:
            shutil.copy2(f, folder / f.name)
    stages = [s for s, _, _ in RECOVERIES[cfg.recovery]]
    summaries = {s: json.loads((partial / s / SUMMARY_JSON).read_text()) for s in stages}
    with open(folder / LOG_FILE, "w") as out:
        for s in stages:
            out.write((partial / s / LOG_FILE).read_text())
    per_stage = {s: {**summaries[s]["stages"][next(iter(summaries[s]["stages"]))],
                     "train": summaries[s]["config"]["train"], "loss": summaries[s]["config"]["loss"]}
                 for s in stages}
    total = sum(st["tokens"] for st in per_stage.values())
    teacher = display_name(cfg.model)
    summary = {"recovery": cfg.recovery, "teacher": teacher, "train_data": display_name(cfg.train_data),
               "tokens": total, "train_wall_s": round(sum(st["wall_s"] for st in per_stage.values()), 1),
               "stages": per_stage, "tree": summaries[stages[0]]["tree"]}
    (folder / SUMMARY_JSON).write_text(json.dumps(summary, indent=1))
    inputs = ["the pruned model", *(f"the model after {s}" for s in stages)]  # no local paths in the folder
    (folder / SUMMARY_MD).write_text("\n".join(summary_text(dict(summaries[s], student=inputs[i], teacher=teacher))
                                               for i, s in enumerate(stages)))
    plan = Plan.load(folder / PLAN_FILE)
    public = public_recipe(cfg)
    write_card(folder, plan, "compress", public, None, extra=recovery_lines(cfg, summary))
    if (partial / EVAL_DIR).is_dir():
        shutil.copytree(partial / EVAL_DIR, folder / EVAL_DIR)
        from come.eval.evaluation import REPORT_FILE, RESULT_FILE

        add_eval(folder, json.loads((folder / EVAL_DIR / RESULT_FILE).read_text()), f"{EVAL_DIR}/{REPORT_FILE}")


def public_recipe(cfg: CompressConfig) -> dict:
    """The recipe for the card and recipe.yaml: local paths (model, texts, baseline, cache folder) as names."""
    from come import recipe
    from come.card import scrubbed
    from come.names import display_name

    out = scrubbed(recipe.of(cfg))
    for key in ("train_data", "baseline", "cache_dir"):
        if isinstance(out.get(key), str):
            out[key] = display_name(out[key])
    out["ppl"] = [display_name(p) for p in out.get("ppl") or []]
    return out


STAGE_WORDS = {"layerwise": "layer-wise: each merged layer alone, on the teacher's states entering and leaving "
                            "its block (normalised MSE)",
               "global": "global: logit KL of the whole student against the teacher",
               "lora": "LoRA adapters on every layer, language-modelling loss"}


def recovery_lines(cfg: CompressConfig, summary: dict) -> list[str]:
    """The card's section on the recovery."""
    from come.names import display_name

    lines = ["", "## Recovery", "",
             f"After pruning, recovered by distillation from the original model on {summary['tokens']:,} training "
             f"tokens of {display_name(cfg.train_data)} (its calibration part, disjoint from every evaluation text) "
             f"in {summary['train_wall_s']} s (`--recovery {cfg.recovery}`):", ""]
    for i, (name, st) in enumerate(summary["stages"].items(), 1):
        trains = f", training {st['train']}" if name == "global" else ""
        lines.append(f"{i}. {STAGE_WORDS[name]}{trains}: {st['tokens']:,} tokens, {st['steps']} steps, loss "
                     f"{st['first_loss']:.4g} -> {st['last_loss']:.4g}")
    lines += ["", "The log of every step is `distill_log.jsonl`, the summary `distill_summary.md`."]
    return lines

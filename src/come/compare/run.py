"""`come.compare`: prune with every method (or variant) on the same windows, score each and the dense model.

Results are written as they come, into `OUT.partial` (`come.runstore`; each finished row: its folder under
`methods/` and `rows/NAME.json`); the folder becomes `OUT` when every row is done. `resume` continues an
interrupted run, or extends a finished one (another `--eval`, more methods): a row whose pruning settings match
is not pruned again (its plan is replayed), and it is reused as it is when the evaluation settings match too.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import json
import os
import shutil
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

from come.compare.config import CompareConfig
from come.compare.evaluate import evaluate_model, sweep_points
from come.compare.report import add_paired, add_retained, brief, markdown
from come.config import PruneConfig
from come.corpora import OOD_DOMAINS
from come.errors import ComeError
from come.eval.stats import protocol
from come.runstore import RunFolder

RESULT_FILE, REPORT_FILE, PLOT_FILE, SWEEP_PLOT_FILE = "compare.json", "compare.md", "compare.png", "sweep.png"
PLOT_SKIPPED = "plot skipped: matplotlib is not installed (pip install 'come[plot]' draws compare.png)"
ROWS_DIR = "rows"  # rows/NAME.json: one finished row with the settings it was made under (what --resume reads)
METHODS_DIR = "methods"  # methods/NAME/: the row's plan (and model)
# the settings a plan depends on (plus the method's own options), and those a row's numbers depend on
PRUNE_KEYS = ("model", "target_layers_resolved", "calib", "loss_samples", "dtype")
EVAL_KEYS = ("model", "evals", "tasks", "limit", "ppl_data", "ppl_seq_len", "ppl_max_windows", "dtype", "sweep",
             "depths")


def check_targets(cfg: CompareConfig) -> int:
    """Resolve the target depth and refuse any method that cannot reach it, before any weights are loaded."""
    from come.eval.ppl import check_seq_len
    from come.models import get_adapter, load_config, meta_model
    from come.prune import check_reachable, resolve_target

    skeleton = get_adapter(meta_model(load_config(cfg.model)[0]))
    if "ppl" in cfg.evals:
        check_seq_len(skeleton.model, cfg.ppl_seq_len)
    target = None
    for name in cfg.names():
        if name in getattr(cfg, "refused", {}):
            continue
        pc = cfg.prune_config(name)
        target = resolve_target(pc, skeleton.model, skeleton.num_layers, skeleton.params_per_layer())
        check_reachable(pc, skeleton.num_layers, target)
    return target


def _log(cfg: CompareConfig, msg: str) -> None:
    if cfg.progress:
        print(f"[compare] {msg}", file=sys.stderr, flush=True)


def compare(config: CompareConfig | None = None, **kwargs) -> dict:
    """Prune `config.model` with every method, evaluate each and the dense model; write the folder `out`."""
    from come.io import output_lock

    cfg = config if config is not None else CompareConfig(**kwargs)
    cfg.validate()
    store = _check_out(cfg)
    with output_lock(cfg.out) if cfg.out is not None else nullcontext():  # a second run on this --out: refused
        return _compare(cfg, store)


def _compare(cfg: CompareConfig, store: RunFolder) -> dict:
    from come.models import load_model
    from come.prune import resolve_device

    # what --out may be replaced by at the end: an earlier compare folder this run extends (--resume), or, with
    # --overwrite, anything; else nothing that appeared there while this run worked
    replace = cfg.overwrite or (cfg.resume and (store.out / RESULT_FILE).is_file())
    target = check_targets(cfg)
    t_start = time.perf_counter()
    settings = _jsonable(_settings(cfg, target))
    previous = _previous_rows(store) if cfg.resume else {}
    names = cfg.names()
    dropped = [m for m in previous if m != "dense" and m not in names]
    if dropped:
        raise ComeError(f"--resume would drop the rows of {', '.join(dropped)} that {cfg.out} holds: add them to "
                        "--methods, or copy the folder and resume the copy")
    if cfg.resume:
        _log(cfg, f"--resume: {len(previous)} earlier rows found ({', '.join(previous) or 'none'})")
    stage = store.open(cfg.resume)
    result: dict = {"settings": settings, "rows": [], "complete": False}
    try:
        dense, tokenizer, _ = load_model(cfg.model, cfg.dtype, resolve_device(cfg.device))
        from come.finite import check_finite_weights

        check_finite_weights(dense, cfg.model)
        _log(cfg, f"dense model: {dense.config.num_hidden_layers} layers -> target {target}")
        old = previous.get("dense")
        if old is not None and old["eval_key"] == _eval_key(settings):
            _log(cfg, "dense: row reused")
            row = dict(old["row"], reused="row")
        else:
            row = {"method": "dense", **evaluate_model(dense, tokenizer, cfg), "prune_wall_s": 0.0}
        _finish_row(store, result, row, settings)
        for name in names:
            row = _method_row(cfg, name, settings, previous.get(name), stage, dense, tokenizer)
            _finish_row(store, result, row, settings)
            gc.collect()
        result["complete"] = True
        result["wall_s"] = round(time.perf_counter() - t_start, 1)
        _write_result(store, result)
        from come.extras import available

        if available("matplotlib"):
            from come.compare.plots import plot, plot_sweep

            plot(result, stage / PLOT_FILE)
            if cfg.sweep:
                plot_sweep(result, stage / SWEEP_PLOT_FILE)
        else:
            result["plot"] = PLOT_SKIPPED
            _log(cfg, PLOT_SKIPPED)
    except BaseException:
        if cfg.out is not None and result["rows"]:
            _log(cfg, f"stopped: {len(result['rows'])} finished rows kept in {stage}; the same command with "
                      "--resume continues from them")
        store.abandon(keep=cfg.out is not None and bool(result["rows"]))
        if cfg.out is None:
            shutil.rmtree(store.out.parent, ignore_errors=True)
        raise
    if cfg.out is None:
        shutil.rmtree(store.out.parent, ignore_errors=True)
    else:
        store.publish(replace)  # a failure leaves the old or the new folder whole
    return result


def _check_out(cfg: CompareConfig) -> RunFolder:
    """The run folder, refused before any work when it (or an unfinished run beside it) would be lost. Without
    `out`, a scratch folder that is removed at the end."""
    from come.io import check_output_dir, refuse_protected

    if cfg.out is None:
        return RunFolder(Path(tempfile.mkdtemp(prefix="come-compare-")) / "out", "compare")
    store = RunFolder(cfg.out, "compare")
    out = store.out
    from come.eval.ppl import expand_sources
    from come.io import check_name_length, refuse_linked_siblings

    inputs = [cfg.model, cfg.calib.data, *(v.calib_data for v in cfg.variants()), *expand_sources(cfg.ppl_data)]
    if cfg.resume:
        refuse_protected(out, inputs)
        check_name_length(out)
        if out.is_symlink():
            raise ComeError(f"--out {out} is a symbolic link (to {os.readlink(out)}): pass the folder itself")
        refuse_linked_siblings(out)
        if out.exists() and not out.is_dir():
            raise ComeError(f"output {out} exists and is a file: pass a folder path")
        if out.is_dir() and any(out.iterdir()) and not (out / RESULT_FILE).is_file():
            raise ComeError(f"--resume: {out} holds no {RESULT_FILE}, so it is not a `come compare` folder: pass "
                            "the --out of an earlier compare, or another --out without --resume")
        return store
    check_output_dir(out, cfg.overwrite, inputs)
    store.claim(cfg.resume, cfg.overwrite)
    return store


def _jsonable(obj):
    return json.loads(json.dumps(obj))


def _prune_key(settings: dict, name: str) -> dict:
    key = {k: settings.get(k) for k in PRUNE_KEYS}
    key["options"] = {k: v for k, v in (settings.get("options") or {}).items() if k.partition(".")[0] == name}
    variant = next((m for m in settings.get("methods") or [] if isinstance(m, dict) and m.get("name") == name), None)
    if variant is not None:  # a plain method's key stays as it was (rows of earlier runs match it)
        key["variant"] = variant
    return key


def _eval_key(settings: dict) -> dict:
    key = {k: settings.get(k) for k in EVAL_KEYS}
    key["batch_size"] = settings.get("eval_batch_size") or (settings.get("calib") or {}).get("batch_size")
    return key


def _previous_rows(store: RunFolder) -> dict[str, dict]:
    """Finished rows of an earlier run, by name: {"row", "prune_key", "eval_key", "folder"}. A finished `OUT`
    first (its compare.json, then its rows/), then an unfinished `OUT.partial`, the later overriding."""
    found: dict[str, dict] = {}
    for folder in store.earlier():
        if (folder / RESULT_FILE).is_file():
            data = store.read_json(folder / RESULT_FILE)
            for row in data.get("rows", []):
                found[row["method"]] = {"row": row, "prune_key": _prune_key(data["settings"], row["method"]),
                                        "eval_key": _eval_key(data["settings"]), "folder": folder}
        for entry in store.records(folder, ROWS_DIR):
            found[entry["row"]["method"]] = {**entry, "folder": folder}
    return found


def _finish_row(store: RunFolder, result: dict, row: dict, settings: dict) -> None:
    """Record a finished row: rows/NAME.json (with the settings behind it) and the compare.json so far."""
    result["rows"].append(row)
    entry = {"prune_key": _prune_key(settings, row["method"]),
             "eval_key": None if "error" in row else _eval_key(settings), "row": row}
    add_retained(result["rows"])
    add_paired(result["rows"])
    store.write_json(f"{ROWS_DIR}/{row['method']}.json", entry)
    _write_result(store, result)


def _write_result(store: RunFolder, result: dict) -> None:
    store.write_json(RESULT_FILE, result)
    store.write_text(REPORT_FILE, markdown(result))


def _has_weights(folder: Path) -> bool:
    return (folder / "model.safetensors").exists() or (folder / "model.safetensors.index.json").exists()


def _method_row(cfg: CompareConfig, name: str, settings: dict, old: dict | None, stage: Path, dense,
                tokenizer) -> dict:
    """Row `name`; its folder (plan, and model unless --no-save-models) is written to stage/methods."""
    from come.plan import PLAN_FILE, Plan
    from come.prune import prune

    folder = stage / METHODS_DIR / name
    if name in getattr(cfg, "refused", {}):
        _log(cfg, f"{name}: refused: {cfg.refused[name]}")
        return {"method": name, "error": cfg.refused[name]}
    if old is not None and old["prune_key"] == _prune_key(settings, name):
        if "error" in old["row"]:
            _log(cfg, f"{name}: failed before with the same settings, not re-run: {old['row']['error']}")
            return dict(old["row"])
        src = old["folder"] / METHODS_DIR / name
        if not (src / PLAN_FILE).is_file():
            _log(cfg, f"{name}: no plan in {src}: pruning again")
        else:
            plan = Plan.load(src / PLAN_FILE)
            changed = _changed_settings(plan, cfg.prune_config(name))
            if not changed:
                return _reused_row(cfg, name, settings, old, src, folder, plan, dense, tokenizer)
            _log(cfg, f"{name}: its saved plan was made with another {', '.join(changed)}: pruning again")
    if folder.exists():  # an unfinished attempt (or settings that changed): start the method over
        shutil.rmtree(folder)
    _log(cfg, f"{name}: pruning")
    try:
        res = prune(cfg.prune_config(name))
    except ComeError as e:  # data-dependent refusal (e.g. LaCo's threshold): keep the other methods
        _log(cfg, f"{name}: failed: {e}")
        return {"method": name, "error": str(e)}
    plan = res.plan
    if cfg.save_models:
        res.save(folder)
    else:
        folder.mkdir(parents=True)
        plan.save(folder / PLAN_FILE)
    _log(cfg, f"{name}: {plan.num_layers} layers in {plan.stats['wall_time_s']:.0f} s; evaluating")
    row = {"method": name, **evaluate_model(res.model, tokenizer, cfg),
           "prune_wall_s": plan.stats["wall_time_s"], "tree": plan.tree}
    del res
    gc.collect()
    if cfg.sweep or cfg.depths:
        row["sweep"] = sweep_points(cfg, name, plan, dense, tokenizer)
    _log(cfg, f"{name}: {brief(row)}")
    return row


def _changed_settings(plan, pc: PruneConfig) -> list[str]:
    """The settings the method reads (defaults included, e.g. of an older version) in which a saved plan differs
    from `pc`; one the plan does not record (older than the setting) counts as different."""
    from come.methods import settings_used

    pc.validate()
    current = _jsonable(pc.to_dict())
    return [k for k in settings_used(pc.method, current) if plan.settings.get(k, "<unrecorded>") != current[k]]


def _reused_row(cfg: CompareConfig, name: str, settings: dict, old: dict, src: Path, folder: Path, plan,
                dense, tokenizer) -> dict:
    """A row pruned before under the same settings: its plan is replayed (bit for bit the pruned model), and
    only evaluated again when the evaluation settings changed."""
    from come.models import load_config, save_dtype_for
    from come.plan import PLAN_FILE, apply_plan
    from come.prune import PruneResult

    model = None
    if old["eval_key"] == _eval_key(settings):
        _log(cfg, f"{name}: plan and row reused from {old['folder']}")
        row = dict(old["row"], reused="row")
    else:
        _log(cfg, f"{name}: plan reused from {old['folder']}; evaluating")
        model = apply_plan(copy.deepcopy(dense), plan)
        row = {"method": name, **evaluate_model(model, tokenizer, cfg),
               "prune_wall_s": old["row"]["prune_wall_s"], "tree": plan.tree, "reused": "plan"}
        if cfg.sweep or cfg.depths:
            row["sweep"] = sweep_points(cfg, name, plan, dense, tokenizer)
        _log(cfg, f"{name}: {brief(row)}")
    if src.resolve() != folder.resolve():
        if folder.exists():
            shutil.rmtree(folder)
        if cfg.save_models and _has_weights(src):
            shutil.copytree(src, folder)
        else:
            folder.mkdir(parents=True)
            plan.save(folder / PLAN_FILE)
    if cfg.save_models and not _has_weights(folder):
        model = model if model is not None else apply_plan(copy.deepcopy(dense), plan)
        save_dtype = save_dtype_for(cfg.prune_config(name).save_dtype, load_config(cfg.model)[0])
        PruneResult(model, tokenizer, plan, save_dtype).save(folder, overwrite=True)
    return row


def _settings(cfg: CompareConfig, target: int) -> dict:
    s = dataclasses.asdict(cfg)
    s["target_layers_resolved"] = target
    s["statistics"] = protocol()
    s["ppl_protocol"] = (f"{cfg.ppl_data} (evaluation part of each; ood = {', '.join(OOD_DOMAINS)}), "
                         f"non-overlapping windows of {cfg.ppl_seq_len} tokens, no BOS, max windows "
                         f"{cfg.ppl_max_windows} per source")
    return s

"""`come compare`: several methods on the same calibration windows, evaluated the same way, in one table.

Every method prunes the same model with the same calibration settings (same windows, same seed), its plan (and
model) is saved, and each result and the dense model are scored by `come.eval`. With `sweep`, every depth
between the dense model and the target is scored too: progressive methods by replaying plan prefixes, others
(`prefix_consistent = False`) by pruning again at each depth.

Results are written as they come, into `OUT.partial` (each finished method: its folder and `rows/METHOD.json`);
the folder becomes `OUT` when every method is done. `resume` continues an interrupted run, or extends a finished
one (another `--eval`, more methods): a method whose pruning settings match is not pruned again (its plan is
replayed), and its row is reused as it is when the evaluation settings match too.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from come.card import display_name
from come.config import CalibConfig, PruneConfig
from come.corpora import OOD_DOMAINS
from come.errors import ComeError, MethodRefusal
from come.eval.stats import protocol
from come.io import swap_in, write_text_atomic

RESULT_FILE, REPORT_FILE, PLOT_FILE, SWEEP_PLOT_FILE = "compare.json", "compare.md", "compare.png", "sweep.png"
PLOT_SKIPPED = "plot skipped: matplotlib is not installed (pip install 'come[plot]' draws compare.png)"
ROWS_DIR = "rows"  # rows/METHOD.json: one finished row with the settings it was made under (what --resume reads)
# the settings a plan depends on (plus the method's own options), and those a row's numbers depend on
PRUNE_KEYS = ("model", "target_layers_resolved", "calib", "loss_samples", "dtype")
EVAL_KEYS = ("model", "evals", "tasks", "limit", "ppl_data", "ppl_seq_len", "ppl_max_windows", "dtype", "sweep",
             "depths")
EVALS = ("ppl", "tasks")
# The paper's table order; methods registered later (e.g. new CoMe variants) follow in name order.
ORDER = ("reverse", "reverse-keep-last", "magnitude", "magnitude+", "taylor", "taylor+", "sleb", "shortgpt",
         "angular", "laco", "mka", "wsum", "come", "come-p")


@dataclass
class CompareConfig:
    """What `come.compare` runs. Give exactly one of `target_layers` and `sparsity`."""

    model: str
    methods: list[str] | str = "all"
    target_layers: int | None = None
    sparsity: float | None = None
    evals: list[str] | str = field(default_factory=lambda: ["ppl"])
    tasks: list[str] | str = "all"
    limit: int | None = None
    ppl_data: str = "wiki-passages,ood"  # comma list; `ood` = the held-out domains (come.corpora); first = "ppl"
    ppl_seq_len: int = 2048
    ppl_max_windows: int | None = None
    out: str | None = None
    save_models: bool = True
    sweep: bool = False
    depths: list[int] = field(default_factory=list)  # also score these depths (between dense and the target)
    overwrite: bool = False
    resume: bool = False  # continue OUT.partial or extend OUT, reusing plans (and rows) made under equal settings
    calib: CalibConfig | None = None
    loss_samples: int | None = None
    options: dict = field(default_factory=dict)  # {"laco.T": 0.5}: a method's --option, by method name
    dtype: str = "auto"
    device: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        self.calib = CalibConfig.coerce(self.calib)

    def validate(self) -> CompareConfig:
        from come.eval.harness import parse_tasks

        self.methods = parse_methods(self.methods)
        self.evals = _split(self.evals)
        bad = [e for e in self.evals if e not in EVALS]
        if bad or not self.evals:
            raise ComeError(f"--eval must be a comma list of {', '.join(EVALS)}, got {','.join(self.evals) or '-'}")
        self.tasks = parse_tasks(self.tasks, offline=True) if "tasks" in self.evals else []  # the seven bundled
        if self.limit is not None and self.limit < 1:
            raise ComeError(f"--limit {self.limit} must be at least 1 (or omitted for the full tasks)")
        if self.ppl_max_windows is not None and self.ppl_max_windows < 1:
            raise ComeError(f"--ppl-max-windows {self.ppl_max_windows} must be at least 1")
        if "ppl" in self.evals:
            from come.eval.ppl import expand_sources

            if not expand_sources(self.ppl_data):
                raise ComeError("--ppl-data is empty: pass e.g. wiki-passages,ood")
            from come.data import check_separate

            check_separate(self.calib.data, expand_sources(self.ppl_data), "--calib-data", "--ppl-data")
        for key in self.options:
            method, dot, name = key.partition(".")
            if not dot or method not in self.methods:
                raise ComeError(f"--option {key} must name one of the compared methods, as METHOD.KEY=VALUE "
                                f"(e.g. laco.T=0.5); compared: {', '.join(self.methods)}")
        if self.resume and self.overwrite:
            raise ComeError("--resume reuses what OUT (or OUT.partial) holds and --overwrite discards it: pass one")
        if self.resume and self.out is None:
            raise ComeError("--resume needs --out: the folder of the run to continue or extend")
        self.refused = {}
        for cfg in self.prune_configs():
            try:
                cfg.validate()
            except MethodRefusal as e:  # this method cannot run here; the others can: a failed row, not an abort
                self.refused[cfg.method] = str(e)
        return self

    def prune_config(self, method: str, target_layers: int | None = None) -> PruneConfig:
        sparsity = None if target_layers is not None else self.sparsity
        return PruneConfig(model=self.model, target_layers=target_layers or self.target_layers, sparsity=sparsity,
                           method=method, calib=copy.deepcopy(self.calib), loss_samples=self.loss_samples,
                           method_options={k.partition(".")[2]: v for k, v in self.options.items()
                                           if k.partition(".")[0] == method},
                           dtype=self.dtype, device=self.device, progress=self.progress)

    def prune_configs(self) -> list[PruneConfig]:
        return [self.prune_config(m) for m in self.methods]


def _depths(spec: str) -> list[int]:
    try:
        return sorted({int(d) for d in _split(spec)}, reverse=True)
    except ValueError as e:
        raise ComeError(f"--depths must be a comma list of layer counts (e.g. 24,22), got {spec!r}") from e


def _split(spec: list[str] | str) -> list[str]:
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    return list(dict.fromkeys(n.strip() for n in names if n.strip()))


def parse_methods(spec: list[str] | str) -> list[str]:
    """Method names from "all" or a comma list; an unknown name raises a ComeError listing the registered."""
    from come.methods import METHODS, get_method

    names = _split(spec)
    if names == ["all"]:
        return sorted(METHODS, key=lambda m: (ORDER.index(m) if m in ORDER else len(ORDER), m))
    if not names:
        raise ComeError(f"--methods is empty: pass all or a comma list of {', '.join(sorted(METHODS))}")
    for n in names:
        get_method(n)
    return names


def check_targets(cfg: CompareConfig) -> int:
    """Resolve the target depth and refuse any method that cannot reach it, before any weights are loaded."""
    from come.eval.ppl import check_seq_len
    from come.models import get_adapter, load_config, meta_model
    from come.prune import check_reachable, resolve_target

    skeleton = get_adapter(meta_model(load_config(cfg.model)[0]))
    if "ppl" in cfg.evals:
        check_seq_len(skeleton.model, cfg.ppl_seq_len)
    target = None
    for pc in cfg.prune_configs():
        if pc.method in getattr(cfg, "refused", {}):
            continue
        target = resolve_target(pc, skeleton.model, skeleton.num_layers, skeleton.params_per_layer())
        check_reachable(pc, skeleton.num_layers, target)
    return target


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
                                     cfg.calib.batch_size, progress=cfg.progress) for src in sources}
        out["ppl"] = by_source[sources[0]]
        if len(sources) > 1:
            out["ppl_by_source"] = by_source
        gmean = ood_geomean(by_source)
        if gmean is not None:
            out["ppl_ood_gmean"] = gmean
    if cfg.tasks:
        h = run_tasks(model, tokenizer, cfg.tasks, cfg.limit, cfg.calib.batch_size)
        out["tasks"] = h["tasks"]
        out["averages"] = averages(h["tasks"])
        out["lm_eval_version"] = h.get("lm_eval_version")
        out["lm_eval_seeds"] = h.get("seeds")
    out["eval_wall_s"] = round(time.perf_counter() - t0, 2)
    return out


def _log(cfg: CompareConfig, msg: str) -> None:
    if cfg.progress:
        print(f"[compare] {msg}", file=sys.stderr, flush=True)


def sweep_points(cfg: CompareConfig, method: str, plan, dense, tokenizer) -> list[dict]:
    """Scores at every depth the method passes through on its way to the target (the target itself excluded)."""
    from come.methods import is_progressive
    from come.plan import apply_plan
    from come.prune import prune

    points = []
    if is_progressive(method):
        keeps_depth = _depth_keeping_ops()
        steps = plan.steps
        ends = [k for k in range(1, len(steps)) if steps[k]["op"] not in keeps_depth]  # evaluate before these
        if not cfg.sweep:  # only the asked depths: the depth before step k is the dense depth minus k' removals
            removed = [sum(s["op"] not in keeps_depth for s in steps[:k]) for k in ends]
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
            res = prune(cfg.prune_config(method, target_layers=depth))
            points.append(evaluate_model(res.model, tokenizer, cfg))
            del res
    gc.collect()
    return points


def _depth_keeping_ops() -> set[str]:
    import come.plan

    return set(getattr(come.plan, "DEPTH_KEEPING_OPS", ()))


def compare(config: CompareConfig | None = None, **kwargs) -> dict:
    """Prune `config.model` with every method, evaluate each and the dense model; write the folder `out`."""
    from come.models import load_model
    from come.prune import resolve_device

    cfg = config if config is not None else CompareConfig(**kwargs)
    cfg.validate()
    out = _check_out(cfg)
    target = check_targets(cfg)
    t_start = time.perf_counter()
    settings = _jsonable(_settings(cfg, target))
    previous = _previous_rows(out) if cfg.resume else {}
    dropped = [m for m in previous if m != "dense" and m not in cfg.methods]
    if dropped:
        raise ComeError(f"--resume would drop the rows of {', '.join(dropped)} that {cfg.out} holds: add them to "
                        "--methods, or copy the folder and resume the copy")
    if cfg.resume:
        _log(cfg, f"--resume: {len(previous)} earlier rows found ({', '.join(previous) or 'none'})")
    stage = _partial(out) if out is not None else _scratch()
    stage.mkdir(parents=True, exist_ok=True)
    _drop_temporaries(stage)  # what a killed earlier run was writing is never resumed from
    result: dict = {"settings": settings, "rows": [], "complete": False}
    try:
        dense, tokenizer, _ = load_model(cfg.model, cfg.dtype, resolve_device(cfg.device))
        _log(cfg, f"dense model: {dense.config.num_hidden_layers} layers -> target {target}")
        old = previous.get("dense")
        if old is not None and old["eval_key"] == _eval_key(settings):
            _log(cfg, "dense: row reused")
            row = dict(old["row"], reused="row")
        else:
            row = {"method": "dense", **evaluate_model(dense, tokenizer, cfg), "prune_wall_s": 0.0}
        _finish_row(stage, result, row, settings)
        for method in cfg.methods:
            row = _method_row(cfg, method, settings, previous.get(method), stage, dense, tokenizer)
            _finish_row(stage, result, row, settings)
            gc.collect()
        result["complete"] = True
        result["wall_s"] = round(time.perf_counter() - t_start, 1)
        _write_result(stage, result)
        from come.extras import available

        if available("matplotlib"):
            plot(result, stage / PLOT_FILE)
            if cfg.sweep:
                plot_sweep(result, stage / SWEEP_PLOT_FILE)
        else:
            result["plot"] = PLOT_SKIPPED
            _log(cfg, PLOT_SKIPPED)
    except BaseException:
        if out is not None and result["rows"]:
            _log(cfg, f"stopped: {len(result['rows'])} finished rows kept in {stage}; the same command with "
                      "--resume continues from them")
        elif out is not None:
            shutil.rmtree(stage, ignore_errors=True)
        raise
    if out is None:
        shutil.rmtree(stage.parent, ignore_errors=True)
    else:
        _drop_temporaries(stage)  # never carried into the result
        swap_in(stage, out)  # a failure leaves the old or the new folder whole
    return result


def _partial(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def _drop_temporaries(stage: Path) -> None:
    """Our own temporaries (`.NAME.tmp-*` folders, `.NAME.tmp` files) in a run's folder whose writer is gone:
    a killed earlier run left them, and they are no result."""
    from come.io import clean_stale_temporaries

    for folder in (stage, stage / "methods", stage / ROWS_DIR):
        clean_stale_temporaries(folder, max_age_s=0)


def _check_out(cfg: CompareConfig) -> Path | None:
    """The output folder, refused before any work when it (or an unfinished run beside it) would be lost."""
    from come.io import check_output_dir, refuse_protected

    if cfg.out is None:
        return None
    out = Path(cfg.out).expanduser()
    inputs = [cfg.model, cfg.calib.data]
    if cfg.resume:
        refuse_protected(out, inputs)
        if out.exists() and not out.is_dir():
            raise ComeError(f"output {out} exists and is a file: pass a folder path")
        if out.is_dir() and any(out.iterdir()) and not (out / RESULT_FILE).is_file():
            raise ComeError(f"--resume: {out} holds no {RESULT_FILE}, so it is not a `come compare` folder: pass "
                            "the --out of an earlier compare, or another --out without --resume")
        return out
    check_output_dir(out, cfg.overwrite, inputs)
    partial = _partial(out)
    if partial.exists():
        if not cfg.overwrite:
            raise ComeError(f"an interrupted compare left {partial}: pass --resume to continue it or --overwrite to "
                            "start over")
        shutil.rmtree(partial)
    return out


def _jsonable(obj):
    return json.loads(json.dumps(obj))


def _prune_key(settings: dict, method: str) -> dict:
    key = {k: settings.get(k) for k in PRUNE_KEYS}
    key["options"] = {k: v for k, v in (settings.get("options") or {}).items() if k.partition(".")[0] == method}
    return key


def _eval_key(settings: dict) -> dict:
    key = {k: settings.get(k) for k in EVAL_KEYS}
    key["batch_size"] = (settings.get("calib") or {}).get("batch_size")
    return key


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ComeError(f"--resume: cannot read {path} ({e}): delete it, or pass --overwrite to start over") from e


def _previous_rows(out: Path) -> dict[str, dict]:
    """Finished rows of an earlier run, by method: {"row", "prune_key", "eval_key", "folder"}. A finished `OUT`
    first (its compare.json, then its rows/), then an unfinished `OUT.partial`, the later overriding."""
    found: dict[str, dict] = {}
    for folder in (out, _partial(out)):
        if (folder / RESULT_FILE).is_file():
            data = _read_json(folder / RESULT_FILE)
            for row in data.get("rows", []):
                found[row["method"]] = {"row": row, "prune_key": _prune_key(data["settings"], row["method"]),
                                        "eval_key": _eval_key(data["settings"]), "folder": folder}
        for path in sorted((folder / ROWS_DIR).glob("*.json")):
            entry = _read_json(path)
            found[entry["row"]["method"]] = {**entry, "folder": folder}
    return found


def _finish_row(stage: Path, result: dict, row: dict, settings: dict) -> None:
    """Record a finished row: rows/METHOD.json (with the settings behind it) and the compare.json so far."""
    result["rows"].append(row)
    entry = {"prune_key": _prune_key(settings, row["method"]),
             "eval_key": None if "error" in row else _eval_key(settings), "row": row}
    _add_retained(result["rows"])
    _add_paired(result["rows"])
    (stage / ROWS_DIR).mkdir(exist_ok=True)
    write_text_atomic(stage / ROWS_DIR / f"{row['method']}.json", json.dumps(entry, indent=1) + "\n")
    _write_result(stage, result)


def _write_result(stage: Path, result: dict) -> None:
    write_text_atomic(stage / RESULT_FILE, json.dumps(result, indent=1) + "\n")
    (stage / REPORT_FILE).write_text(markdown(result))


def _has_weights(folder: Path) -> bool:
    return (folder / "model.safetensors").exists() or (folder / "model.safetensors.index.json").exists()


def _method_row(cfg: CompareConfig, method: str, settings: dict, old: dict | None, stage: Path, dense,
                tokenizer) -> dict:
    """One method's row; its folder (plan, and model unless --no-save-models) is written to stage/methods."""
    from come.plan import PLAN_FILE, Plan
    from come.prune import prune

    folder = stage / "methods" / method
    if method in getattr(cfg, "refused", {}):
        _log(cfg, f"{method}: refused: {cfg.refused[method]}")
        return {"method": method, "error": cfg.refused[method]}
    if old is not None and old["prune_key"] == _prune_key(settings, method):
        if "error" in old["row"]:
            _log(cfg, f"{method}: failed before with the same settings, not re-run: {old['row']['error']}")
            return dict(old["row"])
        src = old["folder"] / "methods" / method
        if not (src / PLAN_FILE).is_file():
            _log(cfg, f"{method}: no plan in {src}: pruning again")
        else:
            plan = Plan.load(src / PLAN_FILE)
            changed = _changed_settings(plan, cfg.prune_config(method))
            if not changed:
                return _reused_row(cfg, method, settings, old, src, folder, plan, dense, tokenizer)
            _log(cfg, f"{method}: its saved plan was made with another {', '.join(changed)}: pruning again")
    if folder.exists():  # an unfinished attempt (or settings that changed): start the method over
        shutil.rmtree(folder)
    _log(cfg, f"{method}: pruning")
    try:
        res = prune(cfg.prune_config(method))
    except ComeError as e:  # data-dependent refusal (e.g. LaCo's threshold): keep the other methods
        _log(cfg, f"{method}: failed: {e}")
        return {"method": method, "error": str(e)}
    plan = res.plan
    if cfg.save_models:
        res.save(folder)
    else:
        folder.mkdir(parents=True)
        plan.save(folder / PLAN_FILE)
    _log(cfg, f"{method}: {plan.num_layers} layers in {plan.stats['wall_time_s']:.0f} s; evaluating")
    row = {"method": method, **evaluate_model(res.model, tokenizer, cfg),
           "prune_wall_s": plan.stats["wall_time_s"], "tree": plan.tree}
    del res
    gc.collect()
    if cfg.sweep or cfg.depths:
        row["sweep"] = sweep_points(cfg, method, plan, dense, tokenizer)
    _log(cfg, f"{method}: {_brief(row)}")
    return row


def _changed_settings(plan, pc: PruneConfig) -> list[str]:
    """The settings the method reads (defaults included, e.g. of an older version) in which a saved plan differs
    from `pc`; one the plan does not record (older than the setting) counts as different."""
    from come.methods import settings_used

    pc.validate()
    current = _jsonable(pc.to_dict())
    return [k for k in settings_used(pc.method, current) if plan.settings.get(k, "<unrecorded>") != current[k]]


def _reused_row(cfg: CompareConfig, method: str, settings: dict, old: dict, src: Path, folder: Path, plan,
                dense, tokenizer) -> dict:
    """A method pruned before under the same settings: its plan is replayed (bit for bit the pruned model), and
    only evaluated again when the evaluation settings changed."""
    from come.models import load_config, save_dtype_for
    from come.plan import PLAN_FILE, apply_plan
    from come.prune import PruneResult

    model = None
    if old["eval_key"] == _eval_key(settings):
        _log(cfg, f"{method}: plan and row reused from {old['folder']}")
        row = dict(old["row"], reused="row")
    else:
        _log(cfg, f"{method}: plan reused from {old['folder']}; evaluating")
        model = apply_plan(copy.deepcopy(dense), plan)
        row = {"method": method, **evaluate_model(model, tokenizer, cfg),
               "prune_wall_s": old["row"]["prune_wall_s"], "tree": plan.tree, "reused": "plan"}
        if cfg.sweep or cfg.depths:
            row["sweep"] = sweep_points(cfg, method, plan, dense, tokenizer)
        _log(cfg, f"{method}: {_brief(row)}")
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
        save_dtype = save_dtype_for(cfg.prune_config(method).save_dtype, load_config(cfg.model)[0])
        PruneResult(model, tokenizer, plan, save_dtype).save(folder, overwrite=True)
    return row


def _scratch() -> Path:
    import tempfile

    return Path(tempfile.mkdtemp(prefix="come-compare-")) / "out"


def _settings(cfg: CompareConfig, target: int) -> dict:
    s = dataclasses.asdict(cfg)
    s["target_layers_resolved"] = target
    s["statistics"] = protocol()
    s["ppl_protocol"] = (f"{cfg.ppl_data} (evaluation part of each; ood = {', '.join(OOD_DOMAINS)}), "
                         f"non-overlapping windows of {cfg.ppl_seq_len} tokens, no BOS, max windows "
                         f"{cfg.ppl_max_windows} per source")
    return s


def _add_retained(rows: list[dict]) -> None:
    """retained % = 100 x method average / dense average, for both averaging conventions."""
    dense = rows[0].get("averages", {})
    for row in rows:
        avg = row.get("averages", {})
        row["retained"] = {k: 100 * avg[k] / dense[k] for k in ("acc", "mixed") if k in avg and dense.get(k)}


def _ppl_results(row: dict) -> dict[str, dict]:
    """A row's perplexity results by source."""
    if "ppl" not in row:
        return {}
    return row.get("ppl_by_source") or {row["ppl"].get("source", "ppl"): row["ppl"]}


def _add_paired(rows: list[dict]) -> None:
    """Perplexity intervals over windows for every row, and each method's paired differences to the dense model
    (rows[0]) over the same windows and items (`come.eval.stats`)."""
    from come.eval.stats import ppl_difference, ppl_interval, task_differences

    for row in rows:
        for r in [row.get("ppl"), *row.get("ppl_by_source", {}).values()]:
            if r and "window_nll" in r and "interval" not in r:
                r["interval"] = ppl_interval(r["window_nll"])
    dense = rows[0]
    for row in rows[1:]:
        if "error" in row or "paired" in row:
            continue
        base = _ppl_results(dense)
        paired = {f"ppl/{src}": ppl_difference(r, base[src]) for src, r in _ppl_results(row).items() if src in base}
        paired.update(task_differences(row.get("tasks", {}), dense.get("tasks", {})))
        row["paired"] = paired


def paired_section(result: dict) -> list[str]:
    """Markdown lines: each row's perplexity interval and paired differences to dense, marked within noise."""
    from come.eval.harness import metric_for
    from come.eval.stats import LEGEND, LEVEL, fmt_diff, fmt_ppl_interval

    rows = [r for r in result["rows"] if "error" not in r]
    if not rows or not any(r.get("paired") for r in rows[1:]):
        return []
    sources = list(_ppl_results(rows[0]))
    tasks = list(rows[0].get("tasks", {}))
    keys = [f"ppl/{s}" for s in sources] + [f"{t}/{metric_for(t)}" if metric_for(t) in rows[0]["tasks"][t]
                                             else f"{t}/acc" for t in tasks]
    keys += ["avg/acc", "avg/mixed"] if tasks else []
    head = ["method"] + [f"ppl {display_name(s)} [{LEVEL:.0%}]" for s in sources] + [
        f"ppl {display_name(k[len('ppl/'):])} vs dense" if k.startswith("ppl/") else k for k in keys]
    lines = [f"Paired differences to dense (the same windows and items): accuracy in points ± SE, perplexity as "
             f"the ratio to dense [{LEVEL:.0%} interval]", "", "| " + " | ".join(head) + " |",
             "|" + "---|" + "---:|" * (len(head) - 1)]
    for row in rows:
        ppl = _ppl_results(row)
        cells = [row["method"]] + [f"{fmt_ppl(ppl[s]['ppl'])} {fmt_ppl_interval(ppl[s].get('interval'), fmt_ppl)}"
                                   if s in ppl else "-" for s in sources]
        cells += [fmt_diff(k, row.get("paired", {}).get(k)) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + ["", LEGEND, ""]


def fmt_ppl(ppl: float) -> str:
    """Two decimals, or three significant digits once a perplexity is beyond 100,000 (1.1e+09, not 1102491260.69)."""
    return f"{ppl:.2f}" if ppl < 1e5 else f"{ppl:.3g}"


def _brief(row: dict) -> str:
    parts = [f"{row['layers']} layers"]
    if "ppl" in row:
        parts.append(f"ppl {fmt_ppl(row['ppl']['ppl'])}")
    if "averages" in row:
        parts.append(f"avg acc {100 * row['averages']['acc']:.2f}")
    return ", ".join(parts)


def table(result: dict) -> str:
    """Markdown: one row per method (dense first)."""
    from come.eval.harness import metric_for

    tasks = result["settings"]["tasks"] if "tasks" in result["settings"]["evals"] else []
    has_ppl = "ppl" in result["settings"]["evals"]
    ok = [r for r in result["rows"] if "error" not in r]
    sources = list(ok[0].get("ppl_by_source", {})) if ok and has_ppl else []
    has_gmean = bool(ok) and "ppl_ood_gmean" in ok[0]
    ppl_head = ([f"ppl {display_name(s)}" for s in sources] or ["ppl"]) + (["ppl ood (geo. mean)"] if has_gmean else [])
    head = ["method", "layers", "parameters"] + (ppl_head if has_ppl else [])
    head += [f"{t} ({metric_for(t)})" for t in tasks]
    head += ["avg acc", "avg mixed", "retained % (acc)", "retained % (mixed)"] if tasks else []
    head += ["prune s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" + "---:|" * (len(head) - 1)]
    for row in result["rows"]:
        if "error" in row:
            lines.append(f"| {row['method']} | failed: {row['error']} |" + " |" * (len(head) - 2))
            continue
        cells = [row["method"], str(row["layers"]), f"{row['params']:,}"]
        if has_ppl:
            if sources:
                cells += [fmt_ppl(row["ppl_by_source"][s]["ppl"]) for s in sources]
            else:
                cells.append(fmt_ppl(row["ppl"]["ppl"]))
            if has_gmean:
                cells.append(fmt_ppl(row["ppl_ood_gmean"]))
        for t in tasks:
            r = row["tasks"][t]
            cells.append(f"{100 * r.get(metric_for(t), r['acc']):.2f}")
        if tasks:
            cells += [f"{100 * row['averages']['acc']:.2f}", f"{100 * row['averages']['mixed']:.2f}",
                      f"{row['retained'].get('acc', 0):.1f}", f"{row['retained'].get('mixed', 0):.1f}"]
        cells.append(f"{row['prune_wall_s']:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(result: dict) -> str:
    s = result["settings"]
    c = s["calib"]
    notes = [
        f"# Compare on {display_name(s['model'])}: -> {s['target_layers_resolved']} layers",
        "",
        table(result),
        "",
        *paired_section(result),
        f"- calibration (the same windows for every method): {display_name(c['data'])}, {c['samples']} windows of "
        f"{c['seq_len']} tokens, seed {c['seed']}; loss trials on {s['loss_samples'] or 'all'} windows",
        f"- dtype {s['dtype']}, device {s['device']}; prune s = wall time of `come.prune` (load, calibration, "
        "method); total wall time " + f"{result.get('wall_s', 0):.0f} s",
    ]
    if "ppl" in s["evals"]:
        names = ",".join(display_name(x) for x in str(s["ppl_data"]).split(","))
        notes.append(f"- perplexity: {s['ppl_protocol'].replace(str(s['ppl_data']), names, 1)}")
    reused = {kind: [r["method"] for r in result["rows"] if r.get("reused") == kind] for kind in ("row", "plan")}
    if reused["row"] or reused["plan"]:
        notes.append("- `--resume`: " + "; ".join(
            f"{what} {', '.join(reused[kind])}" for kind, what in
            (("row", "rows reused as they were"), ("plan", "plans replayed and evaluated again")) if reused[kind])
            + " (prune s is the original run's)")
    if not result.get("complete", True):
        notes.insert(1, f"\n**Unfinished**: {len(result['rows']) - 1} of {len(s['methods'])} methods so far "
                        "(`--resume` continues).")
    if "tasks" in s["evals"]:
        notes.append(f"- zero-shot: lm-eval, 0-shot, limit {s['limit']}; accuracies in %; avg acc = mean acc, "
                     "avg mixed = acc_norm for hellaswag/arc_challenge/openbookqa and acc elsewhere; "
                     "retained % = 100 x average / dense average")
    return "\n".join(notes) + "\n"


def plot(result: dict, path: Path) -> None:
    """Bars of perplexity (log scale) and average accuracy per method; the dense model as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if "error" not in r]
    panels = [k for k in ("ppl", "averages") if k in rows[0]]
    fig, axes = plt.subplots(1, len(panels), figsize=(max(6, 0.6 * len(rows)) * len(panels), 4), squeeze=False)
    for ax, key in zip(axes[0], panels):
        names = [r["method"] for r in rows[1:]]
        if key == "ppl":
            vals = [r["ppl"]["ppl"] for r in rows[1:]]
            ax.set_yscale("log")
            ax.set_ylabel("perplexity (log)")
            ax.axhline(rows[0]["ppl"]["ppl"], color="k", ls="--", lw=1, label="dense")
        else:
            vals = [100 * r["averages"]["acc"] for r in rows[1:]]
            ax.set_ylabel("average accuracy (%)")
            ax.axhline(100 * rows[0]["averages"]["acc"], color="k", ls="--", lw=1, label="dense")
        ax.bar(names, vals, color="tab:blue")
        ax.tick_params(axis="x", rotation=45)
        ax.legend()
    fig.suptitle(f"{display_name(result['settings']['model'])} -> {result['settings']['target_layers_resolved']} "
                 "layers")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_sweep(result: dict, path: Path) -> None:
    """Perplexity and average accuracy against the number of layers removed, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if "error" not in r]
    dense = rows[0]
    panels = [k for k in ("ppl", "averages") if k in dense]
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4.5), squeeze=False)
    value = {"ppl": lambda r: r["ppl"]["ppl"], "averages": lambda r: 100 * r["averages"]["acc"]}
    for ax, key in zip(axes[0], panels):
        for row in rows[1:]:
            pts = sorted([dense, *row.get("sweep", []), row], key=lambda r: -r["layers"])
            ax.plot([dense["layers"] - p["layers"] for p in pts], [value[key](p) for p in pts], marker="o",
                    ms=3, label=row["method"])
        ax.set_xlabel("layers removed")
        ax.set_ylabel("perplexity (log)" if key == "ppl" else "average accuracy (%)")
        if key == "ppl":
            ax.set_yscale("log")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- command line ---


def add_parser(sub) -> None:
    from come.cli import (
        add_calib_args,
        add_common_model_args,
        add_dry_run_args,
        add_loss_samples_arg,
        add_output_args,
        add_recipe_args,
        add_target_args,
    )

    p = sub.add_parser("compare", help="prune with several methods on the same calibration and compare them")
    add_target_args(p)
    p.add_argument("--methods", default="all", help="all (default) or a comma list of registered methods "
                   "(`come prune --help` lists them)")
    p.add_argument("--eval", default="ppl", help="ppl (default), tasks, or ppl,tasks")
    p.add_argument("--tasks", default="all", help="all (default) or a comma list (with --eval tasks)")
    p.add_argument("--limit", type=int, default=None, help="items per task (default: all)")
    p.add_argument("--ppl-data", default="wiki-passages,ood",
                   help="comma list of perplexity text sources (their evaluation parts); ood = the held-out "
                   "domains " + ", ".join(OOD_DOMAINS) + ", reported one by one and as a geometric mean")
    p.add_argument("--ppl-seq-len", type=int, default=2048)
    p.add_argument("--ppl-max-windows", type=int, default=None)
    add_loss_samples_arg(p)
    p.add_argument("--option", action="append", metavar="METHOD.KEY=VALUE",
                   help="a method's option, e.g. laco.T=0.5 (repeatable; `come prune --help` lists them)")
    p.add_argument("--sweep", action="store_true", help="also score every depth between dense and the target")
    p.add_argument("--depths", default="", help="also score these depths, a comma list (e.g. 24 with "
                   "--target-layers 20): progressive methods replay a prefix of their plan, others prune again")
    p.add_argument("--no-save-models", action="store_true", help="save each method's plan only, not its weights")
    add_calib_args(p)
    add_common_model_args(p)
    add_output_args(p, required=False)
    add_dry_run_args(p)
    add_recipe_args(p)
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run (OUT.partial) or extend a finished OUT, e.g. with --eval "
                        "ppl,tasks or more --methods: plans made under the same pruning settings are replayed, "
                        "rows made under the same evaluation settings too are kept")
    p.set_defaults(func=cmd_compare)


def cmd_compare(args) -> int:
    from come.cli import calib_config, print_recipe, require
    from come.methods import parse_option_args

    require(args, "model")
    cfg = CompareConfig(
        model=args.model, methods=args.methods, target_layers=args.target_layers, sparsity=args.sparsity,
        evals=args.eval, tasks=args.tasks, limit=args.limit, ppl_data=args.ppl_data, ppl_seq_len=args.ppl_seq_len,
        ppl_max_windows=args.ppl_max_windows, out=args.out, save_models=not args.no_save_models, sweep=args.sweep,
        depths=_depths(args.depths),
        overwrite=args.overwrite, resume=args.resume, calib=calib_config(args), loss_samples=args.loss_samples,
        dtype=args.dtype, device=args.device, options=parse_option_args(args.option),
    )
    if args.print_config:
        return print_recipe(cfg.validate(), args.out)
    if args.dry_run:
        print(dry_run_text(cfg, args.gpu_memory))
        return 0
    require(args, "out")
    result = compare(cfg)
    print(table(result))
    print("\n".join(paired_section(result)))
    if result.get("plot"):
        print(result["plot"])
    print(f"wrote {args.out} in {result['wall_s']:.0f} s")
    return 0


def dry_run_text(cfg: CompareConfig, gpu_memory: str | None = None) -> str:
    """`come compare --dry-run`: every method's dry run (config only, no weights read), one line each."""
    from come.dryrun import dry_run
    from come.placement import gib

    cfg.validate()
    check_targets(cfg)
    runs = [dry_run(pc, gpu_memory) for pc in cfg.prune_configs()]
    first = runs[0]
    lines = first.text().splitlines()[1:7]  # layers .. placement (the peaks differ by method: the table)
    lines = [f"dry run of come compare on {first.model} ({first.model_type}): config only, no weights read",
             *lines, "", "| method | layers after | peak GPU | peak CPU RAM | calibration |",
             "|---|---:|---:|---:|---|"]
    for r in runs:
        gpu = "-" if r.gpu_peak is None else f"~{gib(r.gpu_peak)}"
        lines.append(f"| {r.method} | {r.layers[1]} | {gpu} | ~{gib(r.cpu_peak)} | {r.passes_text} |")
    lines += ["", f"The dense model stays loaded beside each pruned one for its evaluation (+{gib(first.weight_bytes)}"
              " where the weights live); peaks are estimates from the shapes."]
    return "\n".join(lines)


__all__ = ["CompareConfig", "compare", "parse_methods", "table"]

"""`come compare`: several methods on the same calibration windows, evaluated the same way, in one table.

Every method prunes the same model with the same calibration settings (same windows, same seed), its plan (and
model) is saved, and each result and the dense model are scored by `come.eval`. With `sweep`, every depth
between the dense model and the target is scored too: progressive methods by replaying plan prefixes, others
(`prefix_consistent = False`) by pruning again at each depth.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from come.config import CalibConfig, PruneConfig
from come.errors import ComeError

RESULT_FILE, REPORT_FILE, PLOT_FILE, SWEEP_PLOT_FILE = "compare.json", "compare.md", "compare.png", "sweep.png"
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
    ppl_data: str = "wiki-passages"
    ppl_seq_len: int = 2048
    ppl_max_windows: int | None = None
    out: str | None = None
    save_models: bool = True
    sweep: bool = False
    overwrite: bool = False
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
        self.tasks = parse_tasks(self.tasks) if "tasks" in self.evals else []
        if self.limit is not None and self.limit < 1:
            raise ComeError(f"--limit {self.limit} must be at least 1 (or omitted for the full tasks)")
        if self.ppl_max_windows is not None and self.ppl_max_windows < 1:
            raise ComeError(f"--ppl-max-windows {self.ppl_max_windows} must be at least 1")
        for key in self.options:
            method, dot, name = key.partition(".")
            if not dot or method not in self.methods:
                raise ComeError(f"--option {key} must name one of the compared methods, as METHOD.KEY=VALUE "
                                f"(e.g. laco.T=0.5); compared: {', '.join(self.methods)}")
        for cfg in self.prune_configs():
            cfg.validate()
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
        target = resolve_target(pc, skeleton.model, skeleton.num_layers, skeleton.params_per_layer())
        check_reachable(pc, skeleton.num_layers, target)
    return target


def evaluate_model(model, tokenizer, cfg: CompareConfig) -> dict:
    """Layers, parameters, perplexity and task accuracies of an in-memory model (come.eval's functions)."""
    from come.eval import averages, perplexity
    from come.eval.harness import run_tasks
    from come.models import count_params

    t0 = time.perf_counter()
    out: dict = {"layers": model.config.num_hidden_layers, "params": count_params(model)}
    if "ppl" in cfg.evals:
        out["ppl"] = perplexity(model, tokenizer, cfg.ppl_data, cfg.ppl_seq_len, cfg.ppl_max_windows,
                                cfg.calib.batch_size, progress=cfg.progress)
    if cfg.tasks:
        h = run_tasks(model, tokenizer, cfg.tasks, cfg.limit, cfg.calib.batch_size)
        out["tasks"] = h["tasks"]
        out["averages"] = averages(h["tasks"])
        out["lm_eval_version"] = h.get("lm_eval_version")
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
        for k in ends:
            model = apply_plan(copy.deepcopy(dense), dataclasses.replace(plan, steps=steps[:k]))
            points.append(evaluate_model(model, tokenizer, cfg))
            del model
    else:
        start = dense.config.num_hidden_layers - 1
        for depth in range(start, plan.num_layers, -1):
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
    from come.io import atomic_output_dir, check_output_dir
    from come.models import load_model
    from come.plan import PLAN_FILE
    from come.prune import prune, resolve_device

    cfg = config if config is not None else CompareConfig(**kwargs)
    cfg.validate()
    if cfg.out is not None:
        check_output_dir(cfg.out, cfg.overwrite)
    target = check_targets(cfg)
    t_start = time.perf_counter()
    dense, tokenizer, _ = load_model(cfg.model, cfg.dtype, resolve_device(cfg.device))
    _log(cfg, f"dense model: {dense.config.num_hidden_layers} layers -> target {target}")
    rows = [{"method": "dense", **evaluate_model(dense, tokenizer, cfg), "prune_wall_s": 0.0}]
    result: dict = {"settings": _settings(cfg, target), "rows": rows}
    with atomic_output_dir(cfg.out or _scratch(), cfg.overwrite) as tmp:
        for method in cfg.methods:
            _log(cfg, f"{method}: pruning")
            try:
                res = prune(cfg.prune_config(method))
            except ComeError as e:  # data-dependent refusal (e.g. LaCo's threshold): keep the other methods
                _log(cfg, f"{method}: failed: {e}")
                rows.append({"method": method, "error": str(e)})
                continue
            plan = res.plan
            folder = tmp / "methods" / method
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
            if cfg.sweep:
                row["sweep"] = sweep_points(cfg, method, plan, dense, tokenizer)
            rows.append(row)
            _log(cfg, f"{method}: {_brief(row)}")
        _add_retained(rows)
        result["wall_s"] = round(time.perf_counter() - t_start, 1)
        (tmp / RESULT_FILE).write_text(json.dumps(result, indent=1) + "\n")
        (tmp / REPORT_FILE).write_text(markdown(result))
        plot(result, tmp / PLOT_FILE)
        if cfg.sweep:
            plot_sweep(result, tmp / SWEEP_PLOT_FILE)
    return result


def _scratch() -> Path:
    import tempfile

    return Path(tempfile.mkdtemp(prefix="come-compare-")) / "out"


def _settings(cfg: CompareConfig, target: int) -> dict:
    s = dataclasses.asdict(cfg)
    s["target_layers_resolved"] = target
    s["ppl_protocol"] = (f"{cfg.ppl_data} evaluation part, non-overlapping windows of {cfg.ppl_seq_len} tokens, "
                         f"no BOS, max windows {cfg.ppl_max_windows}")
    return s


def _add_retained(rows: list[dict]) -> None:
    """retained % = 100 x method average / dense average, for both averaging conventions."""
    dense = rows[0].get("averages", {})
    for row in rows:
        avg = row.get("averages", {})
        row["retained"] = {k: 100 * avg[k] / dense[k] for k in ("acc", "mixed") if k in avg and dense.get(k)}


def _brief(row: dict) -> str:
    parts = [f"{row['layers']} layers"]
    if "ppl" in row:
        parts.append(f"ppl {row['ppl']['ppl']:.2f}")
    if "averages" in row:
        parts.append(f"avg acc {100 * row['averages']['acc']:.2f}")
    return ", ".join(parts)


def table(result: dict) -> str:
    """Markdown: one row per method (dense first)."""
    from come.eval.harness import metric_for

    tasks = result["settings"]["tasks"] if "tasks" in result["settings"]["evals"] else []
    has_ppl = "ppl" in result["settings"]["evals"]
    head = ["method", "layers", "parameters"] + (["ppl"] if has_ppl else [])
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
            cells.append(f"{row['ppl']['ppl']:.2f}")
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
        f"# Compare on {s['model']}: -> {s['target_layers_resolved']} layers",
        "",
        table(result),
        "",
        f"- calibration (the same windows for every method): {c['data']}, {c['samples']} windows of "
        f"{c['seq_len']} tokens, seed {c['seed']}; loss trials on {s['loss_samples'] or 'all'} windows",
        f"- dtype {s['dtype']}, device {s['device']}; prune s = wall time of `come.prune` (load, calibration, "
        "method); total wall time " + f"{result.get('wall_s', 0):.0f} s",
    ]
    if "ppl" in s["evals"]:
        notes.append(f"- perplexity: {s['ppl_protocol']}")
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
    fig.suptitle(f"{result['settings']['model']} -> {result['settings']['target_layers_resolved']} layers")
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
    from come.cli import add_calib_args, add_common_model_args

    p = sub.add_parser("compare", help="prune with several methods on the same calibration and compare them")
    p.add_argument("model", help="HF model folder, hub id, or alias (smollm2-135m)")
    t = p.add_mutually_exclusive_group(required=True)
    t.add_argument("--target-layers", type=int, help="number of decoder layers to keep")
    t.add_argument("--sparsity", type=float, help="fraction of ALL parameters to remove, rounded to whole layers")
    p.add_argument("--methods", default="all", help="all (default) or a comma list of registered methods")
    p.add_argument("--eval", default="ppl", help="ppl (default), tasks, or ppl,tasks")
    p.add_argument("--tasks", default="all", help="all (default) or a comma list (with --eval tasks)")
    p.add_argument("--limit", type=int, default=None, help="items per task (default: all)")
    p.add_argument("--ppl-data", default="wiki-passages", help="perplexity text source (its evaluation part)")
    p.add_argument("--ppl-seq-len", type=int, default=2048)
    p.add_argument("--ppl-max-windows", type=int, default=None)
    p.add_argument("--loss-samples", type=int, default=None,
                   help="windows used for loss trials (sleb, laco, come-p; default: all)")
    p.add_argument("--option", action="append", metavar="METHOD.KEY=VALUE",
                   help="a method's option, e.g. laco.T=0.5 (repeatable; `come prune --help` lists them)")
    p.add_argument("--sweep", action="store_true", help="also score every depth between dense and the target")
    p.add_argument("--no-save-models", action="store_true", help="save each method's plan only, not its weights")
    add_calib_args(p)
    add_common_model_args(p)
    p.add_argument("--out", required=True, help="output folder (must be empty or absent, unless --overwrite)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_compare)


def cmd_compare(args) -> int:
    from come.cli import calib_config
    from come.methods import parse_option_args

    cfg = CompareConfig(
        model=args.model, methods=args.methods, target_layers=args.target_layers, sparsity=args.sparsity,
        evals=args.eval, tasks=args.tasks, limit=args.limit, ppl_data=args.ppl_data, ppl_seq_len=args.ppl_seq_len,
        ppl_max_windows=args.ppl_max_windows, out=args.out, save_models=not args.no_save_models, sweep=args.sweep,
        overwrite=args.overwrite, calib=calib_config(args), loss_samples=args.loss_samples, dtype=args.dtype,
        device=args.device, options=parse_option_args(args.option),
    )
    result = compare(cfg)
    print(table(result))
    print(f"wrote {args.out} in {result['wall_s']:.0f} s")
    return 0


__all__ = ["CompareConfig", "compare", "parse_methods", "table"]

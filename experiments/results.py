"""The results tables of docs/results.md: every method at two depths per bundled model, on one protocol.

One `come compare` run per model (resumable: the same command continues it, `--resume` is always passed once the
folder exists) prunes the model to the deeper depth with every method on the same calibration windows, scores the
lighter depth from the same plans (their prefixes), and measures perplexity on wiki-passages and on every domain
of the `ood` and the set-aside `final` suites, and (with `--eval ppl,tasks`, the default) the seven zero-shot
tasks on the first `--limit` items of each. Then this script prints the table (and, with --write, puts it into
docs/results.md between the model's RESULTS markers): each method paired against SLEB, over the same windows and
the same items.

    HF_HUB_OFFLINE=1 .venv/bin/python experiments/results.py --model smollm2-135m --write
    HF_HUB_OFFLINE=1 .venv/bin/python experiments/results.py --model gemma3-270m --write
    ... --table-only       # the tables from what the folder holds so far, without running anything

Rows are added one call at a time by growing `--methods` (a finished row is reused, not pruned or evaluated
again); a name in VARIANTS is a method with other settings (e.g. come-splice-all).
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

from come.compare import CompareConfig, compare, fmt_ppl
from come.compare.config import Variant
from come.config import CalibConfig
from come.corpora import FINAL_DOMAINS, OOD_DOMAINS
from come.eval.report import ood_geomean
from come.eval.stats import (
    average_difference,
    fmt_ppl_interval,
    mean_se,
    metric_for,
    paired_accuracy,
    paired_ppl,
    ppl_interval,
)

METHODS = "sleb,shortgpt,come,come-plus,come-p"


# rows that are a method with other settings than its defaults (a name here in --methods)
VARIANTS = {
    # come-splice deciding on every calibration window, as SLEB does (its default decides on the held-out quarter)
    "come-splice-all": Variant("come-splice-all", "come-splice", {"decide_on": "all"}),
}

# each bundled model's two depths: a light cut (1/5 or 2/9 of the layers) and a deep one (1/3)
MODELS = {"smollm2-135m": (24, 20), "gemma3-270m": (14, 12)}


def config(args) -> CompareConfig:
    light, deep = MODELS[args.model]
    return CompareConfig(
        model=args.model, methods=[VARIANTS.get(m, m) for m in args.methods.split(",")], target_layers=deep,
        depths=[light],
        calib=CalibConfig(data=args.calib_data, samples=args.calib_samples, seq_len=args.calib_seq_len,
                          batch_size=8, seed=0),
        evals=args.eval, tasks=args.tasks, limit=args.limit, ppl_data="wiki-passages,ood,final", ppl_seq_len=512,
        ppl_max_windows=args.ppl_windows, out=args.out, save_models=False,
        resume=Path(args.out).exists() or Path(args.out + ".partial").exists(),
        device="cpu", dtype="float32",
    )


def interval(r: dict) -> str:
    """The 95% t-interval of the perplexity over windows (come.eval.stats), as " [lo, hi]"."""
    text = fmt_ppl_interval(ppl_interval(r.get("window_nll") or []), lambda v: f"{v:.0f}")
    return f" {text}" if text else ""


def point_at(row: dict, depth: int) -> dict | None:
    return row if row["layers"] == depth else next((p for p in row.get("sweep", []) if p["layers"] == depth), None)


def paired_table(result: dict, depths: tuple[int, int], reference: str = "sleb") -> str:
    """Each method's perplexity divided by `reference`'s, per text, paired over the same windows (95% interval);
    below 1 = better than the reference."""
    sources = ["wiki-passages", *OOD_DOMAINS, *FINAL_DOMAINS]
    rows = {r["method"]: r for r in result["rows"] if "error" not in r}
    if reference not in rows:
        return ""
    head = ["method / " + reference, "layers", *sources]
    lines = ["| " + " | ".join(head) + " |", "|---|---:|" + "---:|" * len(sources)]
    for depth in depths:
        ref = point_at(rows[reference], depth)
        for name, row in rows.items():
            point = point_at(row, depth)
            if name in ("dense", reference) or point is None or ref is None:
                continue
            cells = []
            for s in sources:
                p = paired_ppl(point["ppl_by_source"][s]["window_nll"], ref["ppl_by_source"][s]["window_nll"])
                mark = " ≈" if p.get("within_noise") else ""
                cells.append(f"{p['ratio']:.2f} [{p['ratio_lo']:.2f}, {p['ratio_hi']:.2f}]{mark}")
            lines.append(f"| {name} | {depth} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# Chance level of each task's metric: one over the number of choices; BoolQ's is the share of its majority answer
# ("yes": 62.2% of the validation set), which a model that always says yes reaches.
CHANCE = {"boolq": 0.622, "piqa": 0.5, "hellaswag": 0.25, "winogrande": 0.5, "arc_easy": 0.25,
          "arc_challenge": 0.25, "openbookqa": 0.25}
TASK_LABEL = {"boolq": "BoolQ", "piqa": "PIQA", "hellaswag": "HellaS.", "winogrande": "WinoG.", "arc_easy": "ARC-e",
              "arc_challenge": "ARC-c", "openbookqa": "OBQA"}


def signal_tasks(dense: dict) -> list[str]:
    """The tasks on which the dense model is above chance by more than 2 standard errors of its accuracy (its
    metric per item): the others cannot tell a pruned model from a coin and are reported but not judged on."""
    out = []
    for task, r in dense.get("tasks", {}).items():
        m = metric_for(task)
        acc, se = mean_se([int(x) for x in r["items"][m]])
        if se is not None and acc - CHANCE.get(task, 0.0) > 2 * se:
            out.append(task)
    return out


def paired_average(point: dict, ref: dict, tasks: list[str]) -> dict:
    """Difference of the mixed-metric average over `tasks`, paired over the same items (come.eval.stats)."""
    return average_difference([paired_accuracy(point["tasks"][t]["items"], ref["tasks"][t]["items"], metric_for(t))
                               for t in tasks])


def paired_suite(point: dict, ref: dict, domains: tuple[str, ...]) -> dict:
    """Ratio of the geometric means over `domains`, paired over the same windows: exp of the mean over domains of
    the mean window-NLL difference, SE sqrt(sum SE_d^2) / D, 95% interval +- 1.96 SE."""
    import math

    parts = [paired_ppl(point["ppl_by_source"][d]["window_nll"], ref["ppl_by_source"][d]["window_nll"])
             for d in domains]
    mean = sum(p["nll_diff"] for p in parts) / len(parts)
    se = math.sqrt(sum(p["se"] ** 2 for p in parts)) / len(parts)
    return {"ratio": math.exp(mean), "lo": math.exp(mean - 1.96 * se), "hi": math.exp(mean + 1.96 * se),
            "within_noise": abs(mean) <= 1.96 * se}


def _avg(point: dict, tasks: list[str]) -> float:
    return sum(point["tasks"][t][metric_for(t)] for t in tasks) / len(tasks)


def _pts(d: dict) -> str:
    mark = " ≈" if d.get("within_noise") else ""
    return f"{100 * d['diff']:+.1f} ± {100 * d['se']:.1f}{mark}"


def _ratio(o: dict) -> str:
    return f"x{o['ratio']:.2f} [{o['lo']:.2f}, {o['hi']:.2f}]" + (" ≈" if o["within_noise"] else "")


def yardstick(result: dict, reference: str = "sleb") -> str:
    """One table per model: perplexity on the `ood` and the set-aside `final` suites (geometric means) and, when
    measured, zero-shot accuracy, each method paired against `reference` (and the average retained vs dense)."""
    rows = {r["method"]: r for r in result["rows"] if "error" not in r}
    dense = result["rows"][0]
    tasks = list(dense.get("tasks", {}))
    signal = signal_tasks(dense) if tasks else []
    head = ["method", "layers", "ood ppl", f"ood vs {reference}", "final ppl", f"final vs {reference}"]
    if tasks:
        head += [*[TASK_LABEL.get(t, t) for t in tasks], "avg", "avg signal", "retained % (signal)",
                 "signal avg vs dense", f"signal avg vs {reference}"]
    lines = ["| " + " | ".join(head) + " |", "|---|---:|" + "---:|" * (len(head) - 2)]
    depths = sorted({p["layers"] for r in rows.values() for p in [r, *r.get("sweep", [])]} - {dense["layers"]},
                    reverse=True)
    points = [("dense", dense)] + [(n, point_at(r, d)) for d in depths for n, r in rows.items() if n != "dense"]
    ses, ses_dense = [], []
    for name, point in points:
        if point is None:
            continue
        ref = point_at(rows[reference], point["layers"]) if reference in rows else None
        paired = ref is not None and name not in (reference, "dense")
        cells = [name, str(point["layers"])]
        for domains in (OOD_DOMAINS, FINAL_DOMAINS):
            versus = _ratio(paired_suite(point, ref, domains)) if paired else ""
            cells += [fmt_ppl(ood_geomean(point["ppl_by_source"], domains)), versus]
        if tasks and "tasks" in point:
            cells += [f"{100 * point['tasks'][t][metric_for(t)]:.1f}" for t in tasks]
            cells += [f"{100 * _avg(point, tasks):.1f}", f"**{100 * _avg(point, signal):.1f}**",
                      f"{100 * _avg(point, signal) / _avg(dense, signal):.1f}"]
            cells.append("" if name == "dense" else _pts(paired_average(point, dense, signal)))
            if name != "dense":
                ses_dense.append(paired_average(point, dense, signal)["se"])
            if paired and "tasks" in ref:
                d = paired_average(point, ref, signal)
                ses.append(d["se"])
                cells.append(_pts(d))
            else:
                cells.append("")
        lines.append("| " + " | ".join(cells) + " |")
    note = (f"\n\nPerplexity: geometric means over the `ood` suite ({', '.join(OOD_DOMAINS)}) and the set-aside "
            f"`final` suite ({', '.join(FINAL_DOMAINS)}, on which no choice was made); 'vs {reference}' is the "
            "ratio to it paired over the same windows, 95% interval, ≈ = within noise.")
    if tasks:
        n = {t: len(dense["tasks"][t]["items"][metric_for(t)]) for t in tasks}
        note += (f" Zero-shot: the first {min(n.values())} items of each task, 0-shot (lm-eval), acc_norm for "
                 "HellaSwag, ARC-c and OBQA, acc for the others. Tasks with signal (dense above chance by more than "
                 f"2 SE): {', '.join(TASK_LABEL.get(t, t) for t in signal)}; 'avg signal' averages those, 'avg' all "
                 f"seven; 'vs {reference}' in points, paired over the same items, ± 1 SE.")
        if ses_dense:
            note += (f" Paired SE of the signal average against dense: {100 * min(ses_dense):.2f}-"
                     f"{100 * max(ses_dense):.2f} points.")
        if ses:
            se = sum(ses) / len(ses)
            need = max(n[t] for t in signal) * (se * 1.96 / 0.02) ** 2
            note += (f" Paired SE of the signal average against {reference}: {100 * min(ses):.2f}-"
                     f"{100 * max(ses):.2f} points (mean {100 * se:.2f}); a 2-point difference leaves the 95% "
                     f"interval at about {need:.0f} items per task.")
    return "\n".join(lines) + note


def table(result: dict, depths: tuple[int, int]) -> str:
    sources = ["wiki-passages", *OOD_DOMAINS, *FINAL_DOMAINS]
    head = ["method", "layers", *sources, "prune s"]
    lines = ["| " + " | ".join(head) + " |", "|---|---:|" + "---:|" * (len(head) - 2)]

    def line(name, point, prune_s):
        by = point["ppl_by_source"]
        cells = [name, str(point["layers"])] + [fmt_ppl(by[s]["ppl"]) + interval(by[s]) for s in sources]
        cells += [prune_s]
        lines.append("| " + " | ".join(cells) + " |")

    rows = result["rows"]
    line("dense", rows[0], "0")
    for depth in depths:
        for row in rows[1:]:
            if "error" in row:
                if depth == depths[-1]:
                    lines.append(f"| {row['method']} | failed: {row['error']} |" + " |" * (len(head) - 2))
                continue
            point = point_at(row, depth)
            if point is not None:
                line(row["method"], point, f"{row['prune_wall_s']:.0f}" if depth == depths[-1] else "(prefix)")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(MODELS), default="smollm2-135m")
    ap.add_argument("--out", default=None, help="default: runs/yardstick-MODEL")
    ap.add_argument("--methods", default=METHODS)
    ap.add_argument("--calib-data", default="mix")
    ap.add_argument("--calib-samples", type=int, default=8)
    ap.add_argument("--calib-seq-len", type=int, default=256)
    ap.add_argument("--ppl-windows", type=int, default=16)
    ap.add_argument("--eval", default="ppl,tasks")
    ap.add_argument("--tasks", default="all")
    ap.add_argument("--limit", type=int, default=300, help="items per zero-shot task (the first N of each)")
    ap.add_argument("--write", action="store_true", help="put the table into docs/results.md")
    ap.add_argument("--table-only", action="store_true",
                    help="print (and --write) the tables from what OUT or OUT.partial holds, without running")
    args = ap.parse_args()
    args.out = args.out or f"runs/yardstick-{args.model}"
    depths = MODELS[args.model]
    t0 = time.perf_counter()
    if args.table_only:
        done = Path(args.out) / "compare.json"
        result = json.loads((done if done.exists() else Path(args.out + ".partial") / "compare.json").read_text())
    else:
        result = compare(config(args))
    c = result["settings"]["calib"]
    cmd = (f"HF_HUB_OFFLINE=1 .venv/bin/python experiments/results.py --model {args.model}"
           + (f" --methods {args.methods}" if args.methods != METHODS else "")
           + (f" --limit {args.limit}" if args.limit != 300 else "")
           + (f" --calib-samples {args.calib_samples}" if args.calib_samples != 8 else "")
           + (f" --calib-seq-len {args.calib_seq_len}" if args.calib_seq_len != 256 else "") + " --write")
    md = yardstick(result)
    md += ("\n\nPerplexity per text (95% interval over windows):\n\n" + table(result, depths))
    paired = paired_table(result, depths)
    if paired:
        md += ("\n\nPaired against SLEB (perplexity ratio over the same windows, 95% interval; below 1 = better "
               "than SLEB; ≈ = the interval contains 1):\n\n" + paired)
    start, end = f"<!-- RESULTS:{args.model}:START -->", f"<!-- RESULTS:{args.model}:END -->"
    block = (f"{start}\n{md}\n\nCalibration: `{c['data']}`, {c['samples']} windows x {c['seq_len']} tokens, seed "
             f"{c['seed']}, the same windows for every method. Perplexity: {args.ppl_windows} windows x 512 tokens "
             "of each text (evaluation parts), BOS as the tokenizer adds it, float32. "
             f"{depths[0]}-layer rows replay the first steps of the {depths[1]}-layer plans. prune s = wall time of "
             f"the {depths[1]}-layer pruning on 2 CPU cores (other jobs may have shared the cores: compare them "
             f"loosely). Made by `{cmd}` (resumable: a finished method is not pruned or evaluated again).\n{end}")
    print(block)
    print(f"({time.perf_counter() - t0:.0f} s)")
    if args.write:
        path = Path(__file__).resolve().parents[1] / "docs" / "results.md"
        text = path.read_text()
        if start not in text:
            text += f"\n{start}\n{end}\n"
        path.write_text(re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S))


if __name__ == "__main__":
    main()

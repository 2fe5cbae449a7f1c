"""compare.md: one row per method (dense first), retained % and paired differences to dense.

The numbers behind the table come from `come.eval.report` (retained %, paired differences) on each row read as a
`come eval` result (`as_eval_result`); this module lays them out one row per method.
"""

from __future__ import annotations

from come.card import display_name
from come.eval import report


def ppl_results(row: dict) -> dict[str, dict]:
    """A row's perplexity results by source."""
    if "ppl" not in row:
        return {}
    return row.get("ppl_by_source") or {row["ppl"].get("source", "ppl"): row["ppl"]}


def as_eval_result(row: dict) -> dict:
    """A compare row in the shape `come.eval.report` reads: perplexity by source, tasks and their averages."""
    return {"ppl": ppl_results(row), "tasks": row.get("tasks", {}), "averages": row.get("averages", {})}


def add_retained(rows: list[dict]) -> None:
    """retained % = 100 x method average / dense average (rows[0]), for both averaging conventions."""
    dense = as_eval_result(rows[0])
    for row in rows:
        ret = report.retained(as_eval_result(row), dense)
        row["retained"] = {k: ret[f"avg/{k}"] for k in ("acc", "mixed") if f"avg/{k}" in ret}


def add_paired(rows: list[dict]) -> None:
    """Perplexity intervals over windows for every row, and each method's paired differences to the dense model
    (rows[0]) over the same windows and items (`come.eval.report.differences`)."""
    from come.eval.stats import ppl_interval

    for row in rows:
        for r in [row.get("ppl"), *row.get("ppl_by_source", {}).values()]:
            if r and "window_nll" in r and "interval" not in r:
                r["interval"] = ppl_interval(r["window_nll"])
    dense = as_eval_result(rows[0])
    for row in rows[1:]:
        if "error" in row or "paired" in row:
            continue
        row["paired"] = report.differences(as_eval_result(row), dense)


def paired_section(result: dict) -> list[str]:
    """Markdown lines: each row's perplexity interval and paired differences to dense, marked within noise."""
    from come.eval.harness import metric_for
    from come.eval.stats import LEGEND, LEVEL, fmt_diff, fmt_ppl_interval

    rows = [r for r in result["rows"] if "error" not in r]
    if not rows or not any(r.get("paired") for r in rows[1:]):
        return []
    sources = list(ppl_results(rows[0]))
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
        ppl = ppl_results(row)
        cells = [row["method"]] + [f"{fmt_ppl(ppl[s]['ppl'])} {fmt_ppl_interval(ppl[s].get('interval'), fmt_ppl)}"
                                   if s in ppl else "-" for s in sources]
        cells += [fmt_diff(k, row.get("paired", {}).get(k)) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + ["", LEGEND, ""]


def fmt_ppl(ppl: float) -> str:
    """Two decimals, or three significant digits once a perplexity is beyond 100,000 (1.1e+09, not 1102491260.69)."""
    return f"{ppl:.2f}" if ppl < 1e5 else f"{ppl:.3g}"


def brief(row: dict) -> str:
    """One line of a finished row, for the progress log."""
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
    """compare.md: the table, the paired differences and the settings behind the numbers."""
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
    variants = [m for m in s["methods"] if isinstance(m, dict)]
    if variants:
        notes.append("- variants: " + "; ".join(
            f"{v['name']} = {v['method']}" + "".join(f", {k} {x}" for k, x in v["settings"].items())
            + (f", calibration {display_name(v['calib_data'])}" if v.get("calib_data") else "") for v in variants))
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

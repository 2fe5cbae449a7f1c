"""How sure a number is: paired differences to a baseline over the same items, and intervals over windows.

Zero-shot: both models score each item right (1) or wrong (0). The difference of their accuracies is the mean of
the per-item differences d_i = c_model,i - c_base,i, with standard error sd(d) / sqrt(n) (sample sd, n - 1). An
average over tasks is the mean of the task differences; the tasks are separate item sets, so its SE is
sqrt(sum SE_t^2) / T. A difference is within noise when |diff| <= 2 SE.

Perplexity: every window has the same length, so the mean of the windows' mean NLLs x_w is the overall mean NLL.
The 95% t-interval of that mean, mean +- t(0.975, n - 1) sd(x) / sqrt(n), mapped through exp, bounds the
perplexity. Paired: d_w = x_w(model) - x_w(base) over the same windows; exp of its t-interval bounds the ratio of
the perplexities model / base, and the difference is within noise when that interval contains 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

# The second averaging convention ("mixed"): acc_norm where length normalisation is customary, acc elsewhere.
NORM_TASKS = ("hellaswag", "arc_challenge", "openbookqa")
LEVEL = 0.95
NOISE_SE = 2.0
MARK = "≈"
LEGEND = (f"{MARK} = within noise: |diff| <= {NOISE_SE:g} SE (accuracy, paired over the same items), or the "
          f"{LEVEL:.0%} interval of the perplexity ratio contains 1 (paired over the same windows)")


def metric_for(task: str) -> str:
    """The metric a task counts with in the mixed average."""
    return "acc_norm" if task in NORM_TASKS else "acc"


def mean_se(values: Sequence[float]) -> tuple[float, float | None]:
    """(mean, standard error of the mean); the SE is None for fewer than two values."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def t_quantile(n: int, level: float = LEVEL) -> float:
    """The two-sided `level` critical value of Student's t with n - 1 degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2, n - 1))


def ppl_interval(window_nll: Sequence[float], level: float = LEVEL) -> dict:
    """The perplexity's `level` t-interval over windows (None bounds with fewer than two windows)."""
    mean, se = mean_se(window_nll)
    out = {"windows": len(window_nll), "level": level, "nll": mean, "nll_se": se, "ppl_lo": None, "ppl_hi": None,
           "method": "t-interval of the mean window NLL over windows, through exp"}
    if se is not None:
        half = t_quantile(len(window_nll), level) * se
        out.update(ppl_lo=math.exp(mean - half), ppl_hi=math.exp(mean + half))
    return out


def paired_ppl(model_nll: Sequence[float], base_nll: Sequence[float], level: float = LEVEL) -> dict:
    """Perplexity ratio model / base with the `level` t-interval of the paired window NLL differences."""
    if len(model_nll) != len(base_nll) or not model_nll:
        return {"unavailable": f"different windows ({len(model_nll)} vs {len(base_nll)})"}
    d = [m - b for m, b in zip(model_nll, base_nll)]
    mean, se = mean_se(d)
    out = {"windows": len(d), "level": level, "nll_diff": mean, "se": se, "ratio": math.exp(mean),
           "ratio_lo": None, "ratio_hi": None, "within_noise": None,
           "method": "paired over the same windows: t-interval of the mean NLL difference, through exp"}
    if se is not None:
        half = t_quantile(len(d), level) * se
        out.update(ratio_lo=math.exp(mean - half), ratio_hi=math.exp(mean + half), within_noise=abs(mean) <= half)
    return out


def _judged(diff: float, se: float | None) -> bool | None:
    return None if se is None else abs(diff) <= NOISE_SE * se


def paired_accuracy(model_items: dict, base_items: dict, metric: str) -> dict:
    """Accuracy difference model - base over the same items, with its SE (items as `harness` records them)."""
    if model_items.get("doc_ids") != base_items.get("doc_ids") or model_items.get("hash") != base_items.get("hash"):
        return {"unavailable": "the two models were scored on different items"}
    a, b = model_items[metric], base_items[metric]
    diff, se = mean_se([int(x) - int(y) for x, y in zip(a, b, strict=True)])
    return {"diff": diff, "se": se, "n": len(a), "within_noise": _judged(diff, se),
            "method": "paired over the same items: mean and SE of the per-item differences"}


def average_difference(entries: list[dict]) -> dict:
    """The difference of an average over tasks: mean of the task differences, SE sqrt(sum SE^2) / T."""
    if not entries or any("diff" not in e for e in entries):
        return {"unavailable": "not every task has a paired difference"}
    t = len(entries)
    diff = sum(e["diff"] for e in entries) / t
    ses = [e["se"] for e in entries]
    se = None if any(s is None for s in ses) else math.sqrt(sum(s * s for s in ses)) / t
    return {"diff": diff, "se": se, "n": sum(e["n"] for e in entries), "tasks": t, "within_noise": _judged(diff, se),
            "method": "mean of the task differences; SE sqrt(sum of squared task SEs) / number of tasks"}


def task_differences(model_tasks: dict, base_tasks: dict) -> dict:
    """Paired differences for every task/metric both have per-item results for, and for both averages
    ("avg/acc", "avg/mixed"), keyed as `report.flat_metrics` keys them."""
    out: dict[str, dict] = {}
    common = [t for t in model_tasks if t in base_tasks]
    for task in common:
        mi, bi = model_tasks[task].get("items"), base_tasks[task].get("items")
        for metric in ("acc", "acc_norm"):
            if metric not in model_tasks[task]:
                continue
            if mi is None or bi is None or metric not in mi or metric not in bi:
                out[f"{task}/{metric}"] = {"unavailable": "no per-item results (an eval made before they were "
                                                          "recorded): evaluate again"}
            else:
                out[f"{task}/{metric}"] = paired_accuracy(mi, bi, metric)
    averaged = [t for t, r in model_tasks.items() if "acc" in r]  # the tasks `report.averages` averages
    if averaged and all(f"{t}/acc" in out for t in averaged):
        out["avg/acc"] = average_difference([out[f"{t}/acc"] for t in averaged])
        mixed = [out.get(f"{t}/{metric_for(t)}", out[f"{t}/acc"]) for t in averaged]
        out["avg/mixed"] = average_difference(mixed)
    return out


def ppl_difference(model_ppl: dict, base_ppl: dict) -> dict:
    """`paired_ppl` of two `come.eval.ppl.perplexity` results (unavailable without per-window NLLs)."""
    if "window_nll" not in model_ppl or "window_nll" not in base_ppl:
        return {"unavailable": "no per-window NLLs (an eval made before they were recorded): evaluate again"}
    return paired_ppl(model_ppl["window_nll"], base_ppl["window_nll"])


def fmt_diff(key: str, d: dict | None) -> str:
    """A table cell: accuracy difference in points +- SE, or the perplexity ratio with its interval; marked
    within noise."""
    if not d or "unavailable" in d:
        return "-"
    mark = f" {MARK}" if d.get("within_noise") else ""
    if key.startswith("ppl"):
        if d["ratio_lo"] is None:
            return f"x{d['ratio']:.3f}"
        return f"x{d['ratio']:.3f} [{d['ratio_lo']:.3f}, {d['ratio_hi']:.3f}]{mark}"
    se = "" if d["se"] is None else f" ± {100 * d['se']:.2f}"
    return f"{100 * d['diff']:+.2f}{se}{mark}"


def fmt_ppl_interval(interval: dict | None, fmt=lambda v: f"{v:.2f}") -> str:
    """"[lo, hi]" of a `ppl_interval`, or "" when there is none."""
    if not interval or interval.get("ppl_lo") is None:
        return ""
    return f"[{fmt(interval['ppl_lo'])}, {fmt(interval['ppl_hi'])}]"


def protocol() -> dict:
    """How the statistics are computed (recorded in eval.json and compare.json)."""
    return {"level": LEVEL, "noise_se": NOISE_SE, "zero_shot": "paired over the same items: per-item differences "
            "of correctness to the baseline, mean and SE (n - 1); averages: mean of task differences, SE sqrt(sum "
            "SE_t^2) / T", "perplexity": "t-interval over windows of the mean window NLL, through exp; paired: "
            "t-interval of the per-window NLL difference to the baseline, through exp (a perplexity ratio)",
            "within_noise": LEGEND}

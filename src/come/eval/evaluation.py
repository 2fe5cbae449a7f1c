"""`evaluate`: perplexity, zero-shot accuracy and speed of a model (and optionally its dense baseline)."""

from __future__ import annotations

import gc
import json
import math
import time
from dataclasses import asdict
from pathlib import Path

from come import __version__ as come_version
from come import models
from come.data import check_separate
from come.errors import ComeError
from come.eval import report, stats
from come.eval.config import EvalConfig
from come.eval.harness import run_tasks
from come.eval.ppl import check_seq_len, perplexity
from come.eval.speed import measure_speed, model_size
from come.io import write_output_dir
from come.names import display_name
from come.placement import place_for_inference, resolve_device

RESULT_FILE, REPORT_FILE = "eval.json", "eval.md"


def evaluate_model(name: str, cfg: EvalConfig) -> dict:
    """Every requested number for one model."""
    t0 = time.perf_counter()
    device = resolve_device(cfg.device)
    model, tok, path = models.load_model(name, cfg.dtype, device, weights_device="cpu")
    from come.finite import check_finite_weights

    check_finite_weights(model, name)
    where = place_for_inference(model, device)  # one GPU if it fits, else every GPU (accelerate)
    if cfg.ppl:
        check_seq_len(model, cfg.ppl_seq_len)
    out: dict = {"name": display_name(name), "path": display_name(str(path)), **model_size(model, path)}
    out["dtype"] = str(next(model.parameters()).dtype).replace("torch.", "")
    out["device"] = where
    if cfg.ppl:
        out["ppl"] = {
            src: perplexity(model, tok, src, cfg.ppl_seq_len, cfg.ppl_max_windows, cfg.batch_size,
                            cfg.ppl_bos, cfg.progress)
            for src in cfg.ppl
        }
        for r in out["ppl"].values():
            r["interval"] = stats.ppl_interval(r["window_nll"])
    if cfg.tasks:
        h = run_tasks(model, tok, cfg.tasks, cfg.limit, cfg.batch_size, cfg.offline_tasks, cfg.verbose,
                      cfg.num_fewshot)
        out["tasks"] = h["tasks"]
        out["averages"] = report.averages(h["tasks"])
        out["lm_eval"] = {k: v for k, v in h.items() if k != "tasks"}
    if cfg.speed:
        out["speed"] = measure_speed(model, cfg.speed_batch, cfg.speed_prompt_len, cfg.speed_gen_len,
                                     cfg.speed_repeats)
    out["wall_s"] = time.perf_counter() - t0
    del model
    gc.collect()
    return out


def evaluate(cfg: EvalConfig) -> dict:
    """Evaluate `cfg.model` (and `cfg.baseline` the same way); the result dict that eval.json holds."""
    cfg.validate()
    _check_not_calibration_text(cfg)
    reused = reused_baseline(cfg) if cfg.baseline else None  # a bad baseline fails before the model's long run
    for name in filter(None, (cfg.model, None if reused else cfg.baseline)):
        models.resolve_model(name)
    result: dict = {"come_version": come_version, "settings": settings(cfg), "config": asdict(cfg)}
    result["model"] = evaluate_model(cfg.model, cfg)
    if reused is not None:
        result["baseline"] = reused
    else:
        result["baseline"] = evaluate_model(cfg.baseline, cfg) if cfg.baseline else None
    if result["baseline"] is not None:
        result["retained"] = report.retained(result["model"], result["baseline"])
        result["differences"] = report.differences(result["model"], result["baseline"])
    if cfg.tasks:
        result["settings"]["lm_eval_version"] = result["model"]["lm_eval"]["lm_eval_version"]
        result["settings"]["lm_eval_seeds"] = result["model"]["lm_eval"].get("seeds")
    return result


def _check_not_calibration_text(cfg: EvalConfig) -> None:
    """Refuse perplexity on the very file a `come prune` output folder was calibrated on (its plan says which)."""
    plan_file = Path(cfg.model).expanduser() / "come_plan.json"
    try:
        calib = json.loads(plan_file.read_text())["settings"]["calib"]["data"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # not a come output folder (or no calibration recorded): nothing to check
    if isinstance(calib, str) and cfg.ppl:
        check_separate(calib, cfg.ppl, "the calibration text of this model", "--ppl")


# Settings that change the numbers: a reused baseline must have been measured with the same ones.
_SAME = ("ppl", "ppl_seq_len", "ppl_max_windows", "ppl_bos", "tasks", "limit", "offline_tasks", "dtype", "speed",
         "num_fewshot")


def baseline_result_file(baseline: str) -> Path | None:
    """The eval.json that `--baseline` names (the file, or a `come eval --out` folder), else None (a model)."""
    p = Path(baseline)
    if p.is_file() and p.suffix == ".json":
        return p
    if p.is_dir() and (p / RESULT_FILE).is_file() and not (p / "config.json").exists():
        return p / RESULT_FILE
    return None


def reused_baseline(cfg: EvalConfig) -> dict | None:
    """The baseline's numbers from an earlier `come eval` result, checked to be measured the same way."""
    path = baseline_result_file(cfg.baseline)
    if path is None:
        return None
    try:
        old = json.loads(path.read_text())
        old_settings, model = old["settings"], old["model"]
        if not isinstance(old_settings, dict) or not isinstance(model, dict):
            raise TypeError("its settings and model must be objects")
        report.retained(model, model)  # what this run computes from it must work on it (a forged file: not)
        report.differences(model, model)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, ZeroDivisionError) as e:
        raise ComeError(f"--baseline {path} is not a `come eval` eval.json ({e}): pass the file that "
                        "`come eval --out DIR` wrote, or the baseline model itself") from None
    new = settings(cfg)
    for key in _SAME:
        if old_settings.get(key) != new.get(key):
            raise ComeError(f"--baseline {path} was measured with {key}={old_settings.get(key)!r}, this run uses "
                            f"{new.get(key)!r}: re-run it with the same flags, or pass the baseline model itself")
    return {**model, "reused_from": str(path)}


def settings(cfg: EvalConfig) -> dict:
    s = {"dtype": cfg.dtype, "device": cfg.device, "batch_size": cfg.batch_size, "ppl": cfg.ppl,
         "ppl_seq_len": cfg.ppl_seq_len, "ppl_max_windows": cfg.ppl_max_windows, "ppl_bos": cfg.ppl_bos,
         "tasks": cfg.tasks, "limit": cfg.limit, "num_fewshot": cfg.num_fewshot, "offline_tasks": cfg.offline_tasks,
         "statistics": stats.protocol()}
    if cfg.speed:
        s["speed"] = {"batch_size": cfg.speed_batch, "prompt_len": cfg.speed_prompt_len,
                      "gen_len": cfg.speed_gen_len, "repeats": cfg.speed_repeats, "warmup": 1}
    return s


METRICS = ("ppl", "nll", "acc", "acc_norm")  # what a model that computes garbage gives as NaN


def finite_json(obj):
    """`obj` with every NaN or infinite float as None: eval.json is standard JSON (`null`), never `NaN`."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


def non_finite(obj, where: str = "") -> list[str]:
    """Where `obj` holds a metric (perplexity, accuracy) that is not a finite number, e.g. `model.ppl.x.ppl`."""
    found = []
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        path = f"{where}.{k}" if where else str(k)
        if isinstance(v, float) and k in METRICS and not math.isfinite(v):
            found.append(path)
        elif isinstance(v, (dict, list)):
            found += non_finite(v, path)
    return found


def save(result: dict, out: str | Path, overwrite: bool = False) -> Path:
    """Write eval.json and eval.md into `out` (atomically); a number that is not finite is `null` in the JSON."""
    def write(folder: Path) -> None:
        (folder / RESULT_FILE).write_text(json.dumps(finite_json(result), indent=2, allow_nan=False) + "\n")
        (folder / REPORT_FILE).write_text(report.markdown(result))

    return write_output_dir(out, overwrite, write)

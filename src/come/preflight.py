"""Checks a command runs before it loads any weights: what it reads exists and is usable, what it writes fits.

Everything here reads configs and small files only, so a mistyped path or an impossible setting is a one-line
error in seconds, not after a model has loaded (or, for `come eval`, after it has been evaluated).
"""

from __future__ import annotations

from come.data import HUB_SOURCES, NAMED_SOURCES, load_text
from come.errors import ComeError
from come.eval.evaluation import baseline_result_file
from come.models import get_adapter, load_config, meta_model, parse_device, parse_dtype, save_dtype_for
from come.placement import resolve_device
from come.plan_check import check_base_model, geometry_of, validate_plan
from come.prune import resolve_target


def check_text_source(source: str, flag: str) -> None:
    """A local text file must exist and hold text (`{"text": 5}` in a JSONL is refused here, not in a traceback
    after the model has loaded), a hub source must be reachable; the bundled sources are read when used."""
    if source in NAMED_SOURCES and source not in HUB_SOURCES:
        return
    try:
        load_text(source, "calib")
    except (TypeError, AttributeError, ValueError) as e:
        raise ComeError(f"{flag} {source}: every 'text' value must be a string ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:120]}): fix the file") from None


def check_context(config, seq_len: int, flag: str) -> None:
    """Windows longer than the model's context are refused (the model would run past its position range)."""
    ctx = getattr(config, "max_position_embeddings", None)
    if ctx is not None and seq_len > ctx:
        raise ComeError(f"{flag} {seq_len} exceeds the model context ({ctx}): pass at most {ctx}")


def prune(cfg) -> dict:
    """`come prune`'s checks before any weights load: the model's config, the window length against its
    context, the calibration file. Returns `check_output_dir`'s keyword arguments: the inputs --out must not
    replace and the size of the result (its parameters in the save dtype)."""
    config, path = load_config(cfg.model)
    check_text_source(cfg.calib.data, "--calib-data")
    check_context(config, cfg.calib.seq_len, "--calib-seq-len")
    skeleton = get_adapter(meta_model(config))
    target = resolve_target(cfg, skeleton.model, skeleton.num_layers, skeleton.params_per_layer())
    params = sum(p.numel() for p in {id(p): p for p in skeleton.model.parameters()}.values())
    params -= (skeleton.num_layers - target) * skeleton.params_per_layer()
    return {"inputs": [path, cfg.calib.data], "need_bytes": params * save_dtype_for(cfg.save_dtype, config).itemsize}


def apply(plan, plan_path, name: str, dtype: str, device: str, save_dtype: str, force: bool = False) -> dict:
    """`come apply`'s checks before any weights load: `name` is the plan's base model (shape always,
    fingerprint unless `force`) and the plan fits it (schema, budgets, sidecar tensors, tree). Returns
    `check_output_dir`'s keyword arguments."""
    config, path = load_config(name)
    check_base_model(plan, config, path, force)
    compute = parse_dtype(dtype, config, device)
    validate_plan(plan, geometry_of(get_adapter(meta_model(config)), compute))
    params = plan.stats.get("params_after") if len(plan.tree) == plan.stats.get("layers_after") else None
    params = params or plan.base_model.get("params") or 0
    return {"inputs": [plan_path, path], "need_bytes": params * save_dtype_for(save_dtype, config).itemsize}


def evaluation(cfg) -> None:
    """`come eval`'s checks before any weights load: the device, the model's config (and the baseline's, unless
    it is an earlier eval.json), the perplexity window length against both contexts."""
    parse_device(resolve_device(cfg.device))  # a GPU that is not there
    names = [cfg.model] + ([cfg.baseline] if cfg.baseline and baseline_result_file(cfg.baseline) is None else [])
    for name in names:
        config, _ = load_config(name)
        if cfg.ppl:
            check_context(config, cfg.ppl_seq_len, "--ppl-seq-len")

"""`come.prune`: load, calibrate, run a method, and return the pruned model with its plan."""

from __future__ import annotations

import json
import resource
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from come import placement
from come.capture import Calibration
from come.card import display_name
from come.config import PruneConfig
from come.data import calibration_windows
from come.errors import ComeError
from come.io import LOCAL_CONFIG_KEYS, LOCAL_TOKENIZER_KEYS, check_output_dir, drop_keys, write_output_dir
from come.methods import get_method
from come.methods.base import PruneContext
from come.models import (
    check_device_dtype,
    count_params,
    get_adapter,
    load_config,
    load_model,
    meta_model,
    parse_dtype,
    save_dtype_for,
)
from come.plan import PLAN_FILE, Plan, base_model_info, versions

SUMMARY_FILE = "come_summary.md"


@dataclass
class PruneResult:
    model: torch.nn.Module
    tokenizer: object
    plan: Plan
    save_dtype: torch.dtype | None = None  # dtype of the saved weights (None: the model's own)

    def save(self, out: str | Path, overwrite: bool = False) -> Path:
        """Write the HF model (safetensors, in `save_dtype`), tokenizer, plan and summary; the folder appears only
        when complete. The in-memory model is left as it is; if writing fails, it goes to a fallback folder that
        the error names."""
        return write_output_dir(out, overwrite, self.write)

    def write(self, folder: Path) -> None:
        streamer = getattr(self.model, "come_streamer", None)
        if streamer is not None:  # layer by layer, never the whole model in memory
            streamer.save(folder, self.save_dtype)
            add_legacy_config_keys(folder)
        else:
            save_model(self.model, folder, self.save_dtype)
        self.tokenizer.save_pretrained(folder)
        self.plan.save(folder / PLAN_FILE)
        describe(folder, self.plan, "prune")


def describe(folder: Path, plan: Plan, kind: str = "prune", command: str | None = None) -> None:
    """The summary and the model card (README.md) of an output folder. The card reproduces it with the recipe the
    plan records (its `come prune` line) and `command`: the `come apply` or `come distill` line that followed."""
    from come.card import write_card

    (Path(folder) / SUMMARY_FILE).write_text(summary_text(plan))
    write_card(folder, plan, kind, (plan.settings or {}).get("recipe"), command)
    drop_keys(Path(folder) / "tokenizer_config.json", LOCAL_TOKENIZER_KEYS)



def save_model(model: torch.nn.Module, folder: Path, dtype: torch.dtype | None) -> None:
    """save_pretrained with the floating-point weights cast to `dtype` (tied weights stay one tensor); config.json
    also carries the RoPE keys that transformers 4.x and serving stacks built on it read."""
    if dtype is None or all(p.dtype == dtype for p in model.parameters()):
        model.save_pretrained(folder)
        add_legacy_config_keys(folder)
        return
    cast: dict[int, torch.Tensor] = {}  # by storage, so tied weights share one cast tensor
    state = {}
    for k, v in model.state_dict().items():
        key = v.untyped_storage().data_ptr()
        if key not in cast:
            cast[key] = v.to(dtype) if v.is_floating_point() else v
        state[k] = cast[key]
    model.save_pretrained(folder, state_dict=state)
    # save_pretrained records the in-memory dtype; the weights on disk are `dtype`
    cfg_file = Path(folder) / "config.json"
    saved = json.loads(cfg_file.read_text())
    saved["dtype"] = str(dtype).replace("torch.", "")
    cfg_file.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
    add_legacy_config_keys(folder)


def add_legacy_config_keys(folder: Path) -> None:
    """Top-level `rope_theta` and `rope_scaling` (and `torch_dtype`) beside transformers 5's `rope_parameters`
    and `dtype`: transformers 4.x (and vLLM, TGI, llama.cpp's converter on it) read only those, and would run a
    Llama-3 at the default RoPE base 10000 instead of 500000. Keys naming where the model was loaded from
    (`LOCAL_CONFIG_KEYS`) are dropped."""
    cfg_file = Path(folder) / "config.json"
    saved = {k: v for k, v in json.loads(cfg_file.read_text()).items() if k not in LOCAL_CONFIG_KEYS}
    rope = saved.get("rope_parameters")
    if isinstance(rope, dict) and "rope_theta" in rope:
        saved.setdefault("rope_theta", rope["rope_theta"])
        scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
        kind = scaling.get("rope_type", "default")
        saved.setdefault("rope_scaling", None if kind == "default" else scaling)  # 4.43+ read its rope_type
    if "dtype" in saved:
        saved.setdefault("torch_dtype", saved["dtype"])
    cfg_file.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_target(cfg: PruneConfig, model, num_layers: int, per_layer: int) -> int:
    """Target depth from --target-layers, or from --sparsity (fraction of ALL parameters, nearest whole layer)."""
    if cfg.sparsity is not None:
        target = num_layers - round(cfg.sparsity * count_params(model) / per_layer)
        if target < 1:
            raise ComeError(f"--sparsity {cfg.sparsity} removes every layer: pass a smaller sparsity")
        if target >= num_layers:
            raise ComeError(
                f"--sparsity {cfg.sparsity} removes less than one layer ({per_layer:,} parameters each): "
                "pass a larger sparsity or --target-layers"
            )
        return target
    target = cfg.target_layers
    if not 1 <= target < num_layers:
        raise ComeError(f"--target-layers must be between 1 and {num_layers - 1} for this model, got {target}")
    return target


def check_reachable(cfg: PruneConfig, num_layers: int, target: int) -> None:
    """Refuse, before any weights load, a target the method cannot reach (its record's `limit`, whose reason and
    fix the one-line error gives)."""
    get_method(cfg.method).limit.check(cfg.method, num_layers, target, cfg)


def decide_placement(cfg: PruneConfig, config, skeleton, device: str, dtype: torch.dtype,
                     free_bytes: int | None, ram_bytes: int | None = None) -> placement.Placement:
    """Where the weights and the cached hidden states of this run live (placement.decide; `ram_bytes`: the CPU
    memory available, for the disk cache), refused for a method that needs the whole model on the device when
    the weights would stream."""
    c = cfg.calib
    method = get_method(cfg.method)
    cache = placement.cache_bytes(config, c.samples, c.seq_len, dtype)
    stream = "never" if method.needs_whole_model and cfg.stream == "auto" else cfg.stream
    place = placement.decide(device, cfg.offload, cfg.store_device, count_params(skeleton) * dtype.itemsize,
                             cache, free_bytes, stream=stream, ram_bytes=ram_bytes,
                             cache_peak=2 * cache if method.keeps_dense_states else cache)
    if place.offloaded and method.needs_whole_model:
        raise ComeError(f"{cfg.method} back-propagates through the whole model at once, which must then fit on "
                        f"{device}, but the weights are kept in CPU memory ({place.reason}): pass --offload never "
                        f"{'--stream never ' if place.streamed else ''}on a device that holds the model, or use "
                        "magnitude, shortgpt or sleb")
    return place


def prune(config: PruneConfig | None = None, checkpoint: str | Path | None = None, resume: bool = False,
          **kwargs) -> PruneResult:
    """Compress `config.model` to the target depth with `config.method`; see PruneConfig for the options.

    checkpoint: a folder where the plan so far is written (atomically) after every step. With `resume`, a plan
    found there (of the same model and settings) is replayed first and the method goes on from it: a run that
    was killed ends with exactly the plan an uninterrupted run makes. Methods that decide from the unpruned
    model (one-shot rankings, LaCo) start over instead."""
    cfg = config if config is not None else PruneConfig(**kwargs)
    cfg.validate()
    method = get_method(cfg.method)
    t0 = time.perf_counter()
    device = resolve_device(cfg.device)
    config = load_config(cfg.model)[0]
    skeleton = get_adapter(meta_model(config))  # check the target before loading weights
    target = resolve_target(cfg, skeleton.model, skeleton.num_layers, skeleton.params_per_layer())
    check_reachable(cfg, skeleton.num_layers, target)
    dtype = parse_dtype(cfg.dtype, config, device)
    check_device_dtype(device, dtype)  # before any placement talk about a device that cannot run
    free, ram = placement.free_memory(device), placement.available_ram()
    place = decide_placement(cfg, config, skeleton.model, device, dtype, free, ram)
    if place.streamed and cfg.stream == "auto":
        from come.stream import streamable

        if not streamable(cfg.model):  # no local safetensors: the weights are kept in CPU memory, as before
            place = decide_placement(replace(cfg, stream="never"), config, skeleton.model, device, dtype, free, ram)
    check_scratch(cfg, place, config, dtype)  # an unusable --cache-dir: one line, before any weights load
    if cfg.progress:
        print(f"[{cfg.method}] placement: {place.reason}", file=sys.stderr, flush=True)
    if place.streamed:
        from come.stream import load_streamed

        model, tokenizer, path = load_streamed(cfg.model, dtype, device, cfg.cache_dir)
    else:
        model, tokenizer, path = load_model(cfg.model, dtype, device, weights_device=place.weights)
    try:
        return _prune(cfg, method, model, tokenizer, path, config, place, device, target, checkpoint, resume, t0)
    except BaseException:
        close_streamer(model)  # the streamed layers' scratch files (on success: once the model is collected)
        raise


def check_scratch(cfg: PruneConfig, place: placement.Placement, config, dtype: torch.dtype) -> None:
    """A disk cache or streamed weights need a writable --cache-dir with room for the cache (checked before any
    weights load); a --cache-dir given is checked whatever the placement."""
    if place.cache != placement.DISK and not place.streamed and cfg.cache_dir is None:
        return
    from come.diskcache import check_cache_dir

    c = cfg.calib
    need = placement.cache_bytes(config, c.samples, c.seq_len, dtype) if place.cache == placement.DISK else 0
    check_cache_dir(cfg.cache_dir, need * (2 if get_method(cfg.method).keeps_dense_states else 1))


def close_streamer(model) -> None:
    streamer = getattr(model, "come_streamer", None)
    if streamer is not None:
        streamer.close()


def _prune(cfg: PruneConfig, method, model, tokenizer, path, config, place, device: str, target: int, checkpoint,
           resume: bool, t0: float) -> PruneResult:
    c = cfg.calib
    from come.finite import check_finite_weights

    check_finite_weights(model, cfg.model)
    adapter = get_adapter(model)
    n0, p0 = adapter.num_layers, count_params(model)
    base = base_model_info(model, cfg.model)
    ids = calibration_windows(tokenizer, c.data, c.samples, c.seq_len, c.seed)
    torch.manual_seed(c.seed)
    calib = Calibration(model, adapter, ids, c.batch_size, device, place.cache, cfg.progress, cfg.cache_dir)
    try:
        ctx = PruneContext(model, adapter, calib, target, cfg)
        if checkpoint is not None:
            from come import resume as resume_mod

            inputs = {"calib": resume_mod.fingerprint_of(ids)}
            replayed = resume_mod.continue_from(ctx, checkpoint, base, cfg, method, inputs) if resume else 0
            ctx.on_step = resume_mod.writer(checkpoint, base, cfg, c.seed, fresh=not replayed, inputs=inputs)
        method.run(ctx)
    finally:
        calib.close()  # the disk cache's files, on success and on failure
    del calib, ctx.calib
    wall = time.perf_counter() - t0
    stats = {
        "layers_before": n0,
        "layers_after": adapter.num_layers,
        "params_before": p0,
        "params_after": count_params(model),
        "wall_time_s": round(wall, 2),
        "peak_memory_gb": round(peak_memory_gb(device), 3),
        "device": device,
        "placement": {"weights": place.weights, "cache": place.cache, "reason": place.reason},
        "dtype": str(model.dtype).replace("torch.", ""),
        "calib_tokens": int(ids.numel()),
    }
    save_dtype = save_dtype_for(cfg.save_dtype, config)
    stats["save_dtype"] = str(save_dtype).replace("torch.", "")
    settings = cfg.to_dict()
    from come import recipe
    from come.card import display_name, scrubbed

    settings["model_path"] = display_name(str(path))  # the folder's name: no absolute path in what we write
    if settings.get("cache_dir"):
        settings["cache_dir"] = display_name(settings["cache_dir"])

    settings["recipe"] = scrubbed(recipe.of(cfg))  # what --config takes to make this plan again (paths: names)
    if settings["recipe"].get("cache_dir"):
        settings["recipe"]["cache_dir"] = display_name(settings["recipe"]["cache_dir"])
    plan = Plan(cfg.method, base, settings, ctx.steps, ctx.tree, c.seed, versions(), stats=stats, tensors=ctx.tensors)
    return PruneResult(model, tokenizer, plan, save_dtype)


def peak_memory_gb(device: str) -> float:
    """Peak device memory (CUDA) or peak resident memory of this process (CPU), in GB."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 1e9
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1e9 if sys.platform == "darwin" else rss / 1e6


def summary_text(plan: Plan) -> str:
    s = plan.stats
    lines = [
        f"# {plan.method} on {display_name(plan.base_model['name'])}",
        "",
        "| | before | after |",
        "|---|---|---|",
        f"| layers | {s['layers_before']} | {s['layers_after']} |",
        f"| parameters | {s['params_before']:,} | {s['params_after']:,} |",
        "",
        f"Removed {1 - s['params_after'] / s['params_before']:.1%} of the parameters in {s['wall_time_s']:.0f} s "
        f"(peak memory {s['peak_memory_gb']:.2f} GB, {s['device']}, {s['dtype']}, {s['calib_tokens']:,} "
        "calibration tokens).",
        "",
        "## Merge tree (new layer -> original layers)",
        "",
    ]
    if s.get("replayed"):
        lines[7] += " Replayed from the plan by `come apply` (the time and memory are the original run's)."
    lines += [f"- {j}: {block}" for j, block in enumerate(plan.tree)]
    steps = [st for st in plan.steps if st["op"] in ("merge", "drop")]
    if steps:
        lines += ["", "## Steps", ""]
        for i, st in enumerate(steps):
            ratio, mlp = st.get("ratio"), st.get("mlp_ratio")
            detail = "" if ratio is None else f", ratio {ratio[0]:.2f}/{ratio[1]:.2f}"
            if ratio is not None and mlp is not None:  # a per-half merge (come-splice): each half's shares
                detail = f", attention ratio {ratio[0]:.2f}/{ratio[1]:.2f}, MLP ratio {mlp[0]:.2f}/{mlp[1]:.2f}"
            if "attn_groups" in st:
                g = st["attn_groups"]
                detail += f", KV groups {g[0]}+{g[1]}, MLP channels {len(st['mlp_channels'][0])}+" \
                          f"{len(st['mlp_channels'][1])}"
            lines.append(f"{i + 1}. {st['op']} at layer {st['layer']} (original {st.get('sources', '')}){detail}")
    return "\n".join(lines) + "\n"


__all__ = ["PruneConfig", "PruneResult", "check_output_dir", "prune", "summary_text"]

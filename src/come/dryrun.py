"""`--dry-run`: what a pruning run will need, from the model's config alone (meta device, no weights read).

Layers and parameters after, where the weights and the calibration cache would live (`placement.decide`, on the
GPU present or one of `--gpu-memory`), estimated peak GPU and CPU memory, and the calibration passes the method
needs. The memory figures are estimates from the shapes (stated in the output), not measurements.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from come import placement
from come.config import PruneConfig
from come.errors import ComeError
from come.methods import get_method
from come.models import count_params, get_adapter, load_config, meta_model, parse_device, parse_dtype
from come.names import display_name
from come.placement import gib, resolve_device
from come.prune import check_reachable, decide_placement, resolve_target

RUNTIME = 2**30  # CPU memory of Python, torch and transformers themselves, roughly
UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
         "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(text: str, flag: str = "--gpu-memory") -> int:
    """"80GiB", "80GB", "80G", "81920MiB", "8.5e10" -> bytes (G and GB are 10^9, GiB 2^30)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in UNITS or float(m.group(1)) <= 0:
        raise ComeError(f"{flag} {text!r} is not a size: pass e.g. 80GiB, 24GB or 40G")
    return int(float(m.group(1)) * UNITS[m.group(2).lower()])


@dataclass
class DryRun:
    model: str
    model_type: str
    method: str
    layers: tuple[int, int]
    params: tuple[int, int]
    dtype: str
    device: str
    free_bytes: int | None
    simulated: bool
    weight_bytes: int
    cache_bytes: int
    place: placement.Placement
    gpu_peak: int | None
    cpu_peak: int
    memory_notes: list[str]
    passes: float
    passes_text: str
    calib: str
    warnings: list[str] = field(default_factory=list)

    def text(self) -> str:
        (n0, n1), (p0, p1) = self.layers, self.params
        free = "" if self.free_bytes is None else \
            f" ({gib(self.free_bytes)} free{', simulated by --gpu-memory' if self.simulated else ''})"
        lines = [
            f"dry run of come prune --method {self.method} on {self.model} ({self.model_type}): config only, "
            "no weights read",
            f"  layers        {n0} -> {n1}",
            f"  parameters    {p0:,} -> {p1:,} ({1 - p1 / p0:.1%} fewer)",
            f"  compute       {self.device} in {self.dtype}{free}",
            f"  weights       {gib(self.weight_bytes)} -> {self.place.weights}",
            f"  cache         {gib(self.cache_bytes)} of hidden states ({self.calib}) -> {self.place.cache}",
            f"  placement     {self.place.reason}",
            f"  peak GPU      {'-' if self.gpu_peak is None else '~' + gib(self.gpu_peak)} (estimate)",
            f"  peak CPU RAM  ~{gib(self.cpu_peak)} (estimate)",
            *[f"  warning       {w}" for w in self.warnings],
            f"  calibration   {self.passes_text}",
        ]
        lines += [f"  note          {n}" for n in self.memory_notes]
        return "\n".join(lines)


def dry_run(cfg: PruneConfig, gpu_memory: str | None = None, cpu_memory: str | None = None) -> DryRun:
    """The plan of a `come prune` run with `cfg`, from the model's config alone; `gpu_memory` and `cpu_memory`
    (sizes such as "80GiB") plan for a machine with that much free GPU and available CPU memory instead of this
    one."""
    cfg.validate()
    config = load_config(cfg.model)[0]
    skeleton = get_adapter(meta_model(config))
    n0, per_layer = skeleton.num_layers, skeleton.params_per_layer()
    target = resolve_target(cfg, skeleton.model, n0, per_layer)
    check_reachable(cfg, n0, target)
    simulated = gpu_memory is not None
    if simulated:
        if cfg.device.startswith("cpu"):
            raise ComeError("--gpu-memory plans for a GPU, but --device is cpu: leave --device auto or pass cuda")
        device = "cuda" if cfg.device == "auto" else cfg.device
        free = parse_size(gpu_memory)
    else:
        device = resolve_device(cfg.device)
        parse_device(device)
        free = placement.free_memory(device)
    dtype = parse_dtype(cfg.dtype, config, device)
    ram = placement.available_ram() if cpu_memory is None else parse_size(cpu_memory, "--cpu-memory")
    place = decide_placement(cfg, config, skeleton.model, device, dtype, free, ram)
    p0 = count_params(skeleton.model)
    p1 = p0 - (n0 - target) * per_layer
    c = cfg.calib
    weights = p0 * dtype.itemsize
    cache = placement.cache_bytes(config, c.samples, c.seq_len, dtype)
    gpu, cpu, notes = peak_memory(cfg, config, skeleton, place, dtype, weights, cache)
    passes, text = get_method(cfg.method).passes(cfg, n0, target)
    warnings = []
    if gpu is not None and free is not None and gpu > placement.HEADROOM * free:
        warnings.append(peak_warning(cfg, config, skeleton, device, dtype, free, weights, cache, gpu))
    return DryRun(display_name(cfg.model), config.model_type, cfg.method, (n0, target), (p0, p1),
                  str(dtype).replace("torch.", ""), device, free, simulated, weights, cache, place, gpu, cpu, notes,
                  passes, text, f"{n0 + 1} boundaries x {c.samples} windows x {c.seq_len} tokens x "
                  f"{config.hidden_size} x {dtype.itemsize} bytes", warnings)


def peak_warning(cfg: PruneConfig, config, skeleton, device: str, dtype: torch.dtype, free: int, weights: int,
                 cache: int, gpu: int) -> str:
    """The placement only weighs the weights and the cache; when the whole estimated peak (2x cache, Gram
    matrices, logits) is above what the device offers, say so, and name the first flags whose placement brings
    the estimate within it."""
    budget = placement.HEADROOM * free
    options = [("--store-device cpu", cfg.offload, "cpu"), ("--offload always --store-device cpu", "always", "cpu")]
    for flags, offload, store in options:
        alt = placement.decide(device, offload, store, weights, cache, free)
        if alt.offloaded and get_method(cfg.method).needs_whole_model:
            continue
        alt_gpu = peak_memory(cfg, config, skeleton, alt, dtype, weights, cache)[0]
        if alt_gpu is not None and alt_gpu <= budget:
            return (f"the estimated peak (~{gib(gpu)}) is above {placement.HEADROOM:.0%} of the {gib(free)} free: "
                    f"expect running out of GPU memory; with {flags} the estimate is ~{gib(alt_gpu)}")
    return (f"the estimated peak (~{gib(gpu)}) is above {placement.HEADROOM:.0%} of the {gib(free)} free, even "
            "with the weights and the cache in CPU memory: use fewer --calib-samples, a shorter --calib-seq-len, "
            "or a larger GPU")


def peak_memory(cfg: PruneConfig, config, skeleton, place: placement.Placement, dtype: torch.dtype,
                weights: int, cache: int) -> tuple[int | None, int, list[str]]:
    """(peak GPU bytes or None on a CPU run, peak CPU bytes, notes) estimated from the shapes.

    Resident: the weights (or, streamed, one merge's worth of layers plus the embedding or LM head for their
    turn) and the cache where they live; working: one layer's activations over a batch, or the logits of two
    windows in float32 for a loss trial; a merging method keeps the dense model's boundary states beside the
    cache (up to twice the cache, its record's `keeps_dense_states`); a re-fit (come-plus) holds float64 Gram
    matrices of the down_proj input on the compute device."""
    c, item = cfg.calib, dtype.itemsize
    hidden, inter, vocab = config.hidden_size, config.intermediate_size, config.vocab_size
    tokens = min(c.batch_size, c.samples) * c.seq_len
    heads, kv = config.num_attention_heads, getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    layer_act = tokens * (4 * hidden + 3 * inter + (heads + 2 * kv) * head_dim) * item
    logits = 2 * 2 * c.seq_len * vocab * 4  # two windows of float32 logits and their softmax
    work = max(layer_act, logits)
    notes = []
    cache_peak = cache
    method = get_method(cfg.method)
    if method.keeps_dense_states:
        cache_peak = 2 * cache
        notes.append(f"{cfg.method} keeps the dense model's boundary states beside the cache: up to 2x the cache")
    refit = 0
    if method.refits:
        refit = 5 * inter * inter * 8 + 3 * inter * hidden * 8
        notes.append(f"the re-fit's float64 Gram matrices of the down_proj input ({inter} wide): ~{gib(refit)}")
    if getattr(skeleton.model.config, "tie_word_embeddings", False):
        big = vocab * hidden * item
    else:
        big = 2 * vocab * hidden * item
    layer = skeleton.params_per_layer() * item
    streamed = 3 * layer + big  # a pair, their merge, embedding or head
    in_flight = 2 * tokens * hidden * item  # batches of states on their way to or from the cache
    # CPU memory: weights kept there (streamed: the embedding and LM head and the layers held), the cache there
    # (on disk: the batches being read or written; the page cache of its files is the system's, not counted)
    saving = 0  # streamed: the shard of the result being written, after the cache is gone
    if place.streamed:
        from come.stream import DEFAULT_LIMIT, SHARD_BYTES

        cpu_weights = big + DEFAULT_LIMIT * layer
        saving = RUNTIME + cpu_weights + min(SHARD_BYTES, weights)
        notes.append(f"CPU: decoder layers read from the checkpoint one at a time, at most {DEFAULT_LIMIT} held "
                     f"beside the embedding and LM head ({gib(cpu_weights)}); the result is written layer by layer "
                     f"in shards of up to {gib(SHARD_BYTES)}")
    else:
        cpu_weights = weights
    if place.cache == placement.DISK:
        cache_ram = in_flight
        notes.append(f"disk: the hidden-state cache takes up to {gib(cache_peak)} in --cache-dir (memory-mapped "
                     "files, removed at the end)")
    else:
        cache_ram = cache_peak
    on_gpu = not place.compute.startswith("cpu")
    if not on_gpu:
        return None, max(saving, RUNTIME + cpu_weights + cache_ram + work + refit), notes
    gpu = (streamed if place.offloaded else weights) + work + refit
    gpu += cache_peak if place.cache == place.compute else in_flight
    resident = (cpu_weights if place.offloaded else 0) + (0 if place.cache == place.compute else cache_ram)
    cpu = max(saving, RUNTIME + resident) if place.streamed else RUNTIME + max(weights, resident)
    if not place.streamed:
        notes.append("CPU: the checkpoint is read into CPU memory first (its full size) before it moves to the GPU")
    return gpu, cpu, notes

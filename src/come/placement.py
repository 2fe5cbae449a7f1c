"""Where a pruning run keeps the weights and the cached hidden states, so that 70B models prune on one GPU.

The calibration pass already runs the stack one layer at a time (`capture.on_device`): a layer visits the
compute device for its turn and goes back to where it lives. So the weights can live in CPU memory
("offload") and only one layer at a time (plus the embedding or the LM head for their turns) needs to fit on
the GPU; the cached layer-boundary hidden states (L + 1 copies of the calibration activations) can live in
CPU memory too. The results are the same: every computation still runs on the compute device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from come.errors import ComeError

OFFLOAD_MODES = ("auto", "always", "never")
STREAM_MODES = ("auto", "always", "never")
HEADROOM = 0.8  # plan to use at most this fraction of the device's free memory
DISK = "disk"  # a Placement's weights streamed from the checkpoint files, or its cache in memory-mapped files


@dataclass(frozen=True)
class Placement:
    compute: str  # where every layer runs
    weights: str  # where the weights live between turns ("disk": each layer read from the checkpoint when needed)
    cache: str  # where the cached hidden states live ("disk": memory-mapped files in --cache-dir)
    reason: str  # one line for the summary

    @property
    def offloaded(self) -> bool:
        return self.weights != self.compute

    @property
    def streamed(self) -> bool:
        return self.weights == DISK


def check_offload(mode: str) -> None:
    if mode not in OFFLOAD_MODES:
        raise ComeError(f"--offload must be one of {', '.join(OFFLOAD_MODES)}, got {mode!r}")


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def decide(compute: str, offload: str, store_device: str | None, weight_bytes: int, cache_bytes: int,
           free_bytes: int | None, *, stream: str = "never", ram_bytes: int | None = None,
           cache_peak: int | None = None) -> Placement:
    """Where weights and cache live: the device decision (`decide_devices`), then CPU memory's. `ram_bytes`: the
    CPU memory available (None: unknown, never short); `cache_peak`: what the cache may grow to (a method keeping
    the dense model's states beside it: 2x; default `cache_bytes`).

    `stream` (auto, always, never): weights that would be kept in CPU memory are read instead from the checkpoint
    one decoder layer at a time (`auto`; `always` also on a CPU run or when they fit the device). A cache that
    would live in CPU memory goes to memory-mapped files on disk when it does not fit in HEADROOM of `ram_bytes`
    beside the weights kept there (`store_device` "disk" forces it, "cpu" keeps it in memory)."""
    if stream not in STREAM_MODES:
        raise ComeError(f"--stream must be one of {', '.join(STREAM_MODES)}, got {stream!r}")
    place = decide_devices(compute, offload, None if store_device == DISK else store_device, weight_bytes,
                           cache_bytes, free_bytes)
    weights, cache, reason = place.weights, place.cache, place.reason
    read = "weights read from the checkpoint one decoder layer at a time"
    if stream == "always" or (stream == "auto" and place.offloaded):
        weights = DISK
        if "weights in CPU memory" in reason:
            reason = reason.replace("weights in CPU memory", read)
        else:
            reason = f"{read} ({'--stream always' if stream == 'always' else 'offloaded'}); {reason}"
    peak = cache_bytes if cache_peak is None else cache_peak
    in_ram = weight_bytes if weights == "cpu" else 0
    on_disk = "in memory-mapped files in --cache-dir"
    if store_device == DISK:
        cache, reason = DISK, f"{reason}; cache {on_disk} (--store-device disk)"
    elif cache == "cpu" and store_device is None and ram_bytes is not None and in_ram + peak > HEADROOM * ram_bytes:
        cache = DISK
        reason = (f"{reason.replace('cache on cpu', 'cache ' + on_disk)}; CPU memory is short for the cache "
                  f"({gib(peak)} at most, beside {gib(in_ram)} of weights, {gib(ram_bytes)} available)")
        if on_disk not in reason:
            reason = reason.replace("CPU memory is short", f"cache {on_disk}: CPU memory is short")
    return Placement(place.compute, weights, cache, reason)


def decide_devices(compute: str, offload: str, store_device: str | None, weight_bytes: int, cache_bytes: int,
                   free_bytes: int | None) -> Placement:
    """Pure decision (tested on CPU). `free_bytes`: the compute device's free memory, None when unknown (CPU).

    `auto`: everything on the compute device when weights + cache fit in HEADROOM of its free memory; else the
    cache goes to CPU memory; if the weights alone still do not fit, they stay in CPU memory too.
    """
    check_offload(offload)
    if compute.startswith("cpu"):
        return Placement(compute, compute, store_device or compute, "everything on the CPU")
    budget = None if free_bytes is None else HEADROOM * free_bytes
    need = f"weights {gib(weight_bytes)}, hidden-state cache {gib(cache_bytes)}"
    if offload == "never":
        return Placement(compute, compute, store_device or compute, f"offload off ({need})")
    if offload == "always":
        return Placement(compute, "cpu", store_device or "cpu",
                         f"--offload always: weights stream to {compute} one layer at a time ({need})")
    if budget is None:  # an accelerator that does not report free memory: keep the old behaviour
        return Placement(compute, compute, store_device or compute, f"everything on {compute} ({need})")
    if store_device is not None:
        cache_on_device = store_device == compute
    else:
        cache_on_device = weight_bytes + cache_bytes <= budget
    cache = compute if cache_on_device else (store_device or "cpu")
    left = budget - (cache_bytes if cache_on_device else 0)
    if weight_bytes <= left:
        why = "weights and cache fit" if cache_on_device else "the cache does not fit beside the weights"
        return Placement(compute, compute, cache,
                         f"weights on {compute}, cache on {cache}: {why} ({need}, {gib(free_bytes)} free)")
    return Placement(compute, "cpu", cache,
                     f"weights in CPU memory, streamed to {compute} one layer at a time, cache on {cache}: they "
                     f"do not fit ({need}, {gib(free_bytes)} free)")


def resolve_device(device: str) -> str:
    """`auto`: cuda when available, else cpu; any other device as it is."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def available_ram() -> int | None:
    """CPU memory available now (Linux's MemAvailable; psutil elsewhere when installed), None when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:
        return None


def free_memory(device: str) -> int | None:
    """Free bytes of a CUDA device (None for any other)."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.mem_get_info(torch.device(device))[0]
    return None


def cache_bytes(config, samples: int, seq_len: int, dtype: torch.dtype) -> int:
    """Bytes of the cached hidden states: one [samples, seq_len, hidden] tensor per layer boundary."""
    layers = config.num_hidden_layers
    return (layers + 1) * samples * seq_len * config.hidden_size * dtype.itemsize


def model_bytes(model) -> int:
    """Bytes of the model's parameters and buffers (tied weights counted once)."""
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}.values()
    return sum(t.numel() * t.element_size() for t in tensors)


def spread_needed(need: int, free_bytes: int | None) -> bool:
    """Whether a model of `need` bytes must be spread beyond one device with `free_bytes` free (None: unknown)."""
    return free_bytes is not None and need > HEADROOM * free_bytes


def move_model(model, device, name: str = "the model") -> None:
    """model.to(device); running out of device memory is a one-line error that says what to do."""
    try:
        model.to(device)
    except torch.OutOfMemoryError:
        model.to("cpu")
        raise ComeError(
            f"{name} ({gib(model_bytes(model))} of weights) "
            f"does not fit on {device}: `come prune` streams it with --offload always; for evaluation use a machine "
            "with more GPU memory or several GPUs (come eval spreads it over all of them), or --device cpu"
        ) from None


def place_for_inference(model, device: str) -> str:
    """Put `model` (loaded in CPU memory) on `device` when it fits in HEADROOM of its free memory; else let
    Accelerate spread its layers over every visible GPU (and CPU memory for what is left), as
    `from_pretrained(device_map="auto")` does. A model already on that kind of device stays where it is (its
    own memory is not free memory). Returns where it went, for the report. A model whose layers were streamed
    from the checkpoint (come.stream) is read whole into CPU memory first."""
    streamer = getattr(model, "come_streamer", None)  # come.stream's, which imports this module
    if streamer is not None:
        streamer.unstream()
    here = next(model.parameters()).device
    if here.type == torch.device(device).type:
        return str(here)
    need = model_bytes(model)
    if not spread_needed(need, free_memory(device)):
        move_model(model, device)
        return str(next(model.parameters()).device)
    from accelerate.utils import get_max_memory

    budget = get_max_memory()
    for i in range(torch.cuda.device_count()):
        budget[i] = int(HEADROOM * torch.cuda.mem_get_info(i)[0])
    used = sorted({str(d) for d in spread(model, budget).values()})
    return f"spread by accelerate over {', '.join(used)} ({gib(need)} > {HEADROOM:.0%} of {device}'s free memory)"


def spread(model, budget: dict) -> dict:
    """Dispatch `model` over the devices of `budget` ({device: bytes}) with Accelerate; returns the device map."""
    from accelerate import dispatch_model, infer_auto_device_map

    no_split = list(getattr(model, "_no_split_modules", None) or [])
    device_map = infer_auto_device_map(model, max_memory=budget, no_split_module_classes=no_split)
    dispatch_model(model, device_map=device_map)
    return device_map

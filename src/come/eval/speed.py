"""Throughput (prefill and decode tokens/s), parameter count and on-disk size."""

from __future__ import annotations

import statistics
import time
import warnings
from pathlib import Path

import torch

from come.errors import ComeError
from come.models import count_params


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def _prefill_and_decode(model, prompt: torch.Tensor, gen_len: int) -> tuple[float, float]:
    """Seconds for one prefill of `prompt` and for `gen_len` greedy single-token steps after it."""
    device = prompt.device
    _sync(device)
    t0 = time.perf_counter()
    out = model(input_ids=prompt, use_cache=True)
    _sync(device)
    t1 = time.perf_counter()
    past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
    with warnings.catch_warnings():  # transformers 5.2x renames `past_key_values`; the old name still works
        warnings.simplefilter("ignore", FutureWarning)
        for _ in range(gen_len):
            out = model(input_ids=nxt, past_key_values=past, use_cache=True)
            past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
    _sync(device)
    return t1 - t0, time.perf_counter() - t1


def measure_speed(model, batch_size: int = 1, prompt_len: int = 128, gen_len: int = 32, repeats: int = 3,
                  warmup: int = 1, seed: int = 0) -> dict:
    """Median prefill and decode throughput over `repeats` timed runs after `warmup` untimed ones."""
    for name, v in (("batch", batch_size), ("prompt length", prompt_len), ("generation length", gen_len),
                    ("repeats", repeats)):
        if v < 1:
            raise ComeError(f"speed {name} {v} must be at least 1")
    ctx = getattr(model.config, "max_position_embeddings", None)
    if ctx is not None and prompt_len + gen_len > ctx:
        raise ComeError(f"speed prompt + generation length {prompt_len + gen_len} exceeds the context {ctx}")
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, model.config.vocab_size, (batch_size, prompt_len), generator=g).to(device)
    for _ in range(warmup):
        _prefill_and_decode(model, prompt, gen_len)
    times = [_prefill_and_decode(model, prompt, gen_len) for _ in range(repeats)]
    prefill_s = statistics.median(t[0] for t in times)
    decode_s = statistics.median(t[1] for t in times)
    return {
        "prefill_tokens_per_s": batch_size * prompt_len / prefill_s,
        "decode_tokens_per_s": batch_size * gen_len / decode_s,
        "prefill_s": prefill_s,
        "decode_s": decode_s,
        "batch_size": batch_size,
        "prompt_len": prompt_len,
        "gen_len": gen_len,
        "repeats": repeats,
        "warmup": warmup,
        "device": str(device),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
    }


def disk_size(path: str | Path) -> int | None:
    """Bytes of the weight files in a model folder (None for a hub id)."""
    path = Path(path)
    if not path.is_dir():
        return None
    weights = (".safetensors", ".bin", ".gguf", ".pt")
    files = [f for f in path.rglob("*") if f.is_file() and f.suffix in weights]
    return sum(f.stat().st_size for f in files)


def model_size(model, path: str | Path) -> dict:
    return {"params": count_params(model), "disk_bytes": disk_size(path),
            "num_layers": getattr(model.config, "num_hidden_layers", None)}

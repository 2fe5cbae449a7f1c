"""Prefill and decode throughput of pruned models against the dense one, measured side by side (interleaved
rounds in one process, so a noisy machine slows all alike), with the ideal speed-up L / L' beside the measured
one (the embeddings and the LM head do not shrink, so the measured speed-up stays below it).

The speed of a pruned model depends on its depth only, not on which method chose the layers: the pruned models
here are the dense model with its last layers dropped.

    HF_HUB_OFFLINE=1 python benchmarks/pruned_speed.py --depths 24,20
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--depths", default="24,20")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--gen-len", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the median is reported")
    args = ap.parse_args()
    import torch

    from come.eval.speed import measure_speed
    from come.models import get_adapter, load_model
    from come.ops import apply_step
    from come.placement import resolve_device

    device = resolve_device(args.device)
    dense, _, _ = load_model(args.model, args.dtype, device)
    depth0 = get_adapter(dense).num_layers
    models = {depth0: dense}
    for d in sorted((int(x) for x in args.depths.split(",")), reverse=True):
        m = copy.deepcopy(dense)
        adapter = get_adapter(m)
        while adapter.num_layers > d:
            apply_step(adapter, {"op": "drop", "layer": adapter.num_layers - 1})
        models[d] = m
    runs = {d: [] for d in models}
    with torch.inference_mode():
        for _ in range(args.rounds):
            for d, m in models.items():
                runs[d].append(measure_speed(m, args.batch, args.prompt_len, args.gen_len, repeats=1, warmup=1))
    med = {d: {k: statistics.median(r[k] for r in rs) for k in ("prefill_tokens_per_s", "decode_tokens_per_s")}
           for d, rs in runs.items()}
    print(f"{args.model} on {device} ({args.dtype}), batch {args.batch}, prompt {args.prompt_len}, "
          f"{args.gen_len} generated tokens, median of {args.rounds} interleaved rounds")
    print("| layers | prefill tok/s | speed-up | decode tok/s | speed-up | ideal L/L' |")
    print("|---:|---:|---:|---:|---:|---:|")
    for d, m in med.items():
        p = m["prefill_tokens_per_s"] / med[depth0]["prefill_tokens_per_s"]
        g = m["decode_tokens_per_s"] / med[depth0]["decode_tokens_per_s"]
        print(f"| {d} | {m['prefill_tokens_per_s']:.0f} | {p:.2f}x | {m['decode_tokens_per_s']:.1f} | {g:.2f}x | "
              f"{depth0 / d:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

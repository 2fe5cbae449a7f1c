"""GPU check of `--offload`: the same pruning with the weights on the GPU and streamed from CPU memory.

Prints, side by side from one run, wall time and peak GPU memory of both and their ratios, and whether the two
pruned models agree (same plan choices; weight differences only from GPU nondeterminism). Needs a CUDA device:

    HF_HUB_OFFLINE=1 python experiments/offload_check.py [--model smollm2-135m] [--method come-plus]
"""

from __future__ import annotations

import argparse
import time

import torch

from come import PruneConfig, prune
from come.config import CalibConfig


def run(args, offload: str):
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    res = prune(PruneConfig(model=args.model, method=args.method, target_layers=args.target_layers, device="cuda",
                            offload=offload, calib=CalibConfig(samples=args.samples, seq_len=args.seq_len),
                            progress=False))
    torch.cuda.synchronize()
    return res, time.perf_counter() - t, torch.cuda.max_memory_allocated() / 2**30


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--method", default="come-plus")
    p.add_argument("--target-layers", type=int, default=20)
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=512)
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("offload_check needs a CUDA device")
    on_gpu, t_gpu, m_gpu = run(args, "never")
    streamed, t_str, m_str = run(args, "always")
    print(f"placement: {streamed.plan.stats['placement']['reason']}")
    print(f"{'':10} {'wall s':>8} {'peak GiB':>9}")
    print(f"{'never':10} {t_gpu:8.1f} {m_gpu:9.2f}")
    print(f"{'always':10} {t_str:8.1f} {m_str:9.2f}")
    print(f"ratio always/never: time {t_str / t_gpu:.2f}x, peak GPU memory {m_str / m_gpu:.2f}x")
    same = [(s["op"], s.get("layer")) for s in on_gpu.plan.steps] == [(s["op"], s.get("layer"))
                                                                     for s in streamed.plan.steps]
    a, b = on_gpu.model.state_dict(), streamed.model.state_dict()
    diff = max((a[k].float().cpu() - b[k].float().cpu()).abs().max().item() for k in a)
    print(f"same plan steps: {same}; max |weight difference| {diff:.3g}")


if __name__ == "__main__":
    main()

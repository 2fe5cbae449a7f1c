"""GPU check of `--offload`: the same pruning with the weights on the GPU, streamed to it from CPU memory
(`--offload always --stream never`), and read from the checkpoint one layer at a time (`--offload always`, which
streams from the checkpoint by default, docs/memory.md).

Prints, side by side from one run, wall time and peak GPU memory of each and their ratios, and whether the pruned
models agree (same plan choices; weight differences only from GPU nondeterminism). Needs a CUDA device:

    HF_HUB_OFFLINE=1 python experiments/offload_check.py [--model smollm2-135m] [--method come-plus]
"""

from __future__ import annotations

import argparse
import time

import torch

from come import PruneConfig, prune
from come.config import CalibConfig


def run(args, offload: str, stream: str = "auto"):
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    res = prune(PruneConfig(model=args.model, method=args.method, target_layers=args.target_layers, device="cuda",
                            offload=offload, stream=stream, progress=False,
                            calib=CalibConfig(samples=args.samples, seq_len=args.seq_len)))
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
    print(f"{'':34} {'wall s':>8} {'peak GiB':>9} {'time':>6} {'memory':>7}")
    print(f"{'--offload never':34} {t_gpu:8.1f} {m_gpu:9.2f}")
    for name, stream in (("--offload always --stream never", "never"), ("--offload always (from checkpoint)", "auto")):
        streamed, t_str, m_str = run(args, "always", stream)
        print(f"{name:34} {t_str:8.1f} {m_str:9.2f} {t_str / t_gpu:5.2f}x {m_str / m_gpu:6.2f}x  "
              f"({streamed.plan.stats['placement']['reason']})")
        same = [(s["op"], s.get("layer")) for s in on_gpu.plan.steps] == [(s["op"], s.get("layer"))
                                                                         for s in streamed.plan.steps]
        a, b = on_gpu.model.state_dict(), streamed.model.state_dict()
        diff = max((a[k].float().cpu() - b[k].float().cpu()).abs().max().item() for k in a)
        print(f"{'':34} same plan steps as on the GPU: {same}; max |weight difference| {diff:.3g}")


if __name__ == "__main__":
    main()

"""Where a prune's time goes: a cProfile of `come.prune` (one torch thread), printed as the functions with the
most time of their own and the come functions by cumulative time. The tables in docs/performance.md
("Where ... time goes") were read off its output.

    HF_HUB_OFFLINE=1 python benchmarks/profile_prune.py come 20
    HF_HUB_OFFLINE=1 python benchmarks/profile_prune.py come-p 24 --calib-samples 8 --calib-seq-len 256

Run it alone: the profiler's times are wall times. Absolute seconds mean little; the shares carry over.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import torch

from come import PruneConfig, prune
from come.config import CalibConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("method")
    ap.add_argument("target_layers", type=int)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--calib-samples", type=int, default=8)
    ap.add_argument("--calib-seq-len", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--top", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = PruneConfig(model=args.model, target_layers=args.target_layers, method=args.method,
                      calib=CalibConfig("mix", args.calib_samples, args.calib_seq_len, 8, 0), device="cpu",
                      dtype="float32", progress=False)
    profile = cProfile.Profile()
    t0 = time.perf_counter()
    profile.enable()
    prune(cfg)
    profile.disable()
    print(f"{args.method} to {args.target_layers} layers: {time.perf_counter() - t0:.1f} s under the profiler")
    stats = pstats.Stats(profile)
    stats.sort_stats("tottime").print_stats(args.top)
    stats.sort_stats("cumulative").print_stats("come/(capture|methods|merge|reconstruct|scores|prune|models|data)",
                                               2 * args.top)


if __name__ == "__main__":
    main()

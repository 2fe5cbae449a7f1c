"""Peak CPU memory of `come prune` with the weights in memory, streamed from the checkpoint (`--stream always`),
and with the disk-backed calibration cache (`--store-device disk`), side by side in one run.

Each setting prunes (and saves) the same model in a process of its own, whose peak resident set size
(ru_maxrss) is its reading; the settings run one after the other, never beside each other. The plan and the saved
weights of every setting are checked to be those of the first (a digest of each), so the ratios compare the same
work. The peak includes Python, torch and transformers themselves (a few hundred MB), which no setting changes:
the smaller the model, the smaller the ratio can be.

glibc's malloc keeps freed blocks below its mmap threshold in the heap, and raises that threshold (up to 32 MiB)
as blocks are freed; a small model's tensors (SmolLM2's are 3.5 MB) are below it, so memory a released layer
gave back stays in the process's RSS, while a 70B model's (100 MB and more) are mapped and unmapped whole. To
measure what each setting holds rather than what the allocator keeps, the children run with
MALLOC_MMAP_THRESHOLD_ fixed (`--malloc-mmap-threshold`, default 64 KiB; 0 leaves glibc's default), the same for
every setting.

    HF_HUB_OFFLINE=1 python benchmarks/stream_memory.py
    HF_HUB_OFFLINE=1 python benchmarks/stream_memory.py --model smollm2-135m --method come --target-layers 24 \\
        --samples 16 --seq-len 512
    HF_HUB_OFFLINE=1 python benchmarks/stream_memory.py --device cuda --dtype bfloat16 --out runs/gpu/stream.json

On a GPU (`--device cuda`) the layers stream from the checkpoint to the GPU for their turn; the table adds each
setting's peak GPU memory, and a setting whose plan or weights differ from the first makes the run fail.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETTINGS = {  # name: PruneConfig fields
    "in memory": {"stream": "never", "store_device": "cpu"},
    "streamed": {"stream": "always", "store_device": "cpu"},
    "streamed + disk cache": {"stream": "always", "store_device": "disk"},
    "disk cache": {"stream": "never", "store_device": "disk"},
}


def peak_rss() -> int:
    """This process's peak resident set size so far, in bytes (ru_maxrss is in kB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(args) -> None:
    """One setting: prune, save, print a JSON line with the peak RSS and digests of the plan and the weights."""
    from come import PruneConfig, prune
    from come.config import CalibConfig

    fields = SETTINGS[args.child]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        calib = CalibConfig(samples=args.samples, seq_len=args.seq_len, batch_size=args.batch_size)
        cfg = PruneConfig(model=args.model, target_layers=args.target_layers, method=args.method,
                          device=args.device, dtype=args.dtype, calib=calib, progress=False, cache_dir=tmp, **fields)
        result = prune(cfg)
        pruned = peak_rss()
        out = Path(tmp) / "out"
        result.save(out)
        saved = peak_rss()
        wall = time.perf_counter() - t0
        weights = hashlib.sha256()
        for f in sorted(out.glob("model*.safetensors")):
            from safetensors import safe_open

            with safe_open(str(f), "pt") as st:
                for key in sorted(st.keys()):
                    weights.update(key.encode() + st.get_tensor(key).view(-1).view(__import__("torch").uint8)
                                   .numpy().tobytes())
        plan = hashlib.sha256(json.dumps([result.plan.steps, result.plan.tree]).encode()).hexdigest()[:16]
        import torch

        gpu = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
        print(json.dumps({"setting": args.child, "peak_rss": pruned, "peak_rss_saved": saved, "peak_gpu": gpu,
                          "wall_s": round(wall, 1), "plan": plan,
                          "weights": weights.hexdigest()[:16],
                          "placement": result.plan.stats["placement"]["reason"]}), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--method", default="shortgpt")
    p.add_argument("--target-layers", type=int, default=24)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated, of: " + ", ".join(SETTINGS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--out", default=None, help="also write the rows to this JSON file")
    p.add_argument("--malloc-mmap-threshold", type=int, default=65536,
                   help="MALLOC_MMAP_THRESHOLD_ of every setting's process (0: glibc's default, dynamic)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return
    rows = []
    for name in args.settings.split(","):
        cmd = [sys.executable, __file__, "--child", name, "--model", args.model, "--method", args.method,
               "--target-layers", str(args.target_layers), "--samples", str(args.samples), "--seq-len",
               str(args.seq_len), "--batch-size", str(args.batch_size), "--device", args.device, "--dtype", args.dtype]
        env = os.environ.copy()
        if args.malloc_mmap_threshold:
            env["MALLOC_MMAP_THRESHOLD_"] = str(args.malloc_mmap_threshold)
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            sys.exit(f"{name} failed:\n{done.stderr[-3000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"  {name}: {rows[-1]['peak_rss'] / 2**20:.0f} MiB, {rows[-1]['placement']}", file=sys.stderr)
    base = rows[0]
    print(f"come prune {args.model} --method {args.method} --target-layers {args.target_layers}, "
          f"{args.samples} x {args.seq_len} tokens, {args.device}, dtype {args.dtype}; peak RSS of each setting's "
          "own process, after the prune and after saving the result; MALLOC_MMAP_THRESHOLD_="
          f"{args.malloc_mmap_threshold or 'glibc default'}")
    print()
    print(f"| setting | peak RSS, prune (MiB) | vs {base['setting']} | peak RSS, prune + save (MiB) | vs "
          f"{base['setting']} | wall (s) | plan | weights |")
    print("|---|---:|---:|---:|---:|---:|---|---|")
    for r in rows:
        same = {k: "same" if r[k] == base[k] else "DIFFERENT" for k in ("plan", "weights")}
        print(f"| {r['setting']} | {r['peak_rss'] / 2**20:.0f} | {r['peak_rss'] / base['peak_rss']:.2f}x | "
              f"{r['peak_rss_saved'] / 2**20:.0f} | {r['peak_rss_saved'] / base['peak_rss_saved']:.2f}x | "
              f"{r['wall_s']} | {same['plan']} | {same['weights']} |")
    if any(r["peak_gpu"] for r in rows):
        print()
        print("peak GPU memory: " + ", ".join(f"{r['setting']} {r['peak_gpu'] / 2**30:.2f} GiB" for r in rows))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1) + "\n")
    if any(r["plan"] != base["plan"] or r["weights"] != base["weights"] for r in rows):
        sys.exit("the settings made different plans or weights")


if __name__ == "__main__":
    main()

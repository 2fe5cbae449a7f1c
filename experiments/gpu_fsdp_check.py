"""GPU check of `come distill --strategy fsdp`: FSDP2 with its mixed-precision policy against the one-process run.

On one CUDA device it runs, from one pruned student (SmolLM2-135M by default, or a random Llama with --random):
  1. the reference: `--strategy ddp`, one process;
  2. FSDP's single-device path: `--strategy fsdp`, one process (bf16 gather/compute, fp32 reduce);
  3. the same FSDP run interrupted after a checkpoint and resumed;
  4. with two or more GPUs, `torchrun --nproc_per_node 2 ... --strategy fsdp` (skipped on one GPU: two processes on
     one device are not what FSDP is for);
the student itself is pruned twice, with the weights in memory and with them streamed from the checkpoint and the
disk-backed calibration cache (`--stream always --store-device disk`, docs/memory.md): the plans and the saved
weights must be the same (the check stops otherwise), and the streamed one, written layer by layer, is distilled;
and prints per run: wall time, peak GPU memory, first/last loss, the largest loss difference to the reference, the
largest weight difference of the saved folder (loaded back with from_pretrained) to the reference, and the saved
dtype. Results also go to $OUT/gpu_fsdp_check.json when OUT is set.

    HF_HUB_OFFLINE=1 python experiments/gpu_fsdp_check.py [--model smollm2-135m | --random] [--steps 8]

(`--device cpu --random --random-hidden 256 --steps 3` runs the same path on a CPU, without memory figures:
a check of the script.)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


class Interrupted(Exception):
    pass


def student(args, root: Path) -> Path:
    from come import PruneConfig, prune
    from come.config import CalibConfig

    model = args.model
    if args.random:  # a random Llama of a few hundred MB, with its tokenizer trained in memory (no download)
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from conftest import SAMPLE_TEXT, tiny_model, tiny_tokenizer

        h = args.random_hidden
        m = tiny_model("llama", hidden_size=h, intermediate_size=11 * h // 4, num_hidden_layers=12,
                       num_attention_heads=h // 64, num_key_value_heads=max(1, h // 256), vocab_size=512)
        m.to(torch.bfloat16).save_pretrained(root / "teacher")
        tiny_tokenizer().save_pretrained(root / "teacher")
        (root / "text.txt").write_text(SAMPLE_TEXT * 400)
        model = str(root / "teacher")
    calib = CalibConfig(data=str(root / "text.txt") if args.random else "mix", samples=16, seq_len=256)
    kept = prune(PruneConfig(model=model, target_layers=args.target_layers, calib=calib, device=args.device,
                             progress=False))
    kept.save(root / "student-in-memory")
    res = prune(PruneConfig(model=model, target_layers=args.target_layers, calib=calib, device=args.device,
                            progress=False, stream="always", store_device="disk", cache_dir=str(root)))
    out = res.save(root / "student")
    from safetensors.torch import load_file

    a, b = (load_file(str(f / "model.safetensors")) for f in (root / "student-in-memory", out))
    same = (kept.plan.steps, kept.plan.tree) == (res.plan.steps, res.plan.tree) and a.keys() == b.keys() \
        and all(torch.equal(a[k], b[k]) for k in a)
    print(f"student pruned with streamed weights and the disk cache: {'same' if same else 'DIFFERENT'} plan and "
          f"weights as in memory ({res.plan.stats['placement']['reason']})")
    if not same:
        raise SystemExit("streamed weights or the disk cache changed the plan or the weights")
    return out


def distill_once(args, root: Path, name: str, strategy: str, stop: int | None = None, resume: bool = False):
    from come.distillation import DistillConfig, distill

    data = str(root / "text.txt") if args.random else "mix"
    cfg = DistillConfig(student=str(root / "student"), out=str(root / name), strategy=strategy, stage="both",
                        data=data, steps=args.steps, seq_len=256, batch_size=4, lr=1e-4, checkpoint_every=2,
                        device=args.device, progress=False, resume=resume)

    def on_step(info):
        if stop is not None and info["run_step"] == stop:
            raise Interrupted

    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    try:
        res = distill(cfg, on_step=on_step)
    except Interrupted:
        return None
    if cuda:
        torch.cuda.synchronize()
    return {"wall_s": time.perf_counter() - t, "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
            "out": str(res.out)}


def two_processes(args, root: Path) -> dict | None:
    if not args.device.startswith("cuda") or torch.cuda.device_count() < 2:
        return None
    data = str(root / "text.txt") if args.random else "mix"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "come.cli",
           "distill", "--student", str(root / "student"), "--strategy", "fsdp", "--stage", "both", "--train-data", data,
           "--steps", str(args.steps), "--train-seq-len", "256", "--train-batch-size", "4", "--lr", "1e-4",
           "--device", "cuda", "--out", str(root / "fsdp2")]
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        return {"error": r.stderr[-2000:]}
    return {"wall_s": time.perf_counter() - t, "peak_gib": None, "out": str(root / "fsdp2")}


def compare(ref: dict, run: dict) -> dict:
    from transformers import AutoModelForCausalLM

    def losses(folder):
        return [json.loads(x)["loss"] for x in (Path(folder) / "distill_log.jsonl").read_text().splitlines()]

    a, b = losses(ref["out"]), losses(run["out"])
    wa = AutoModelForCausalLM.from_pretrained(ref["out"], dtype=torch.float32).state_dict()
    mb = AutoModelForCausalLM.from_pretrained(run["out"])
    wb = {k: v.float() for k, v in mb.state_dict().items()}
    return {"first_loss": b[0], "last_loss": b[-1], "max_loss_diff": max(abs(x - y) for x, y in zip(a, b)),
            "max_weight_diff": max((wa[k] - wb[k]).abs().max().item() for k in wa),
            "saved_dtype": str(mb.dtype).replace("torch.", "")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--random", action="store_true", help="a random 12-layer Llama instead of --model")
    p.add_argument("--target-layers", type=int, default=None, help="default: 2/3 of the layers")
    p.add_argument("--random-hidden", type=int, default=1024, help="hidden size of the --random model")
    p.add_argument("--steps", type=int, default=8, help="per stage (at least 3: the interrupted run stops after "
                   "the global stage's checkpoint at step 2)")
    p.add_argument("--device", default="cuda")
    args = p.parse_args()
    if args.steps < 3:
        raise SystemExit("--steps must be at least 3")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("gpu_fsdp_check needs a CUDA device (or --device cpu to check the script)")
    if args.target_layers is None:
        args.target_layers = 8 if args.random else 20
    root = Path(tempfile.mkdtemp(prefix="gpu_fsdp_check-"))
    student(args, root)
    runs = {"ddp, 1 process": distill_once(args, root, "ref", "ddp"),
            "fsdp, 1 process": distill_once(args, root, "fsdp1", "fsdp")}
    assert distill_once(args, root, "cut", "fsdp", stop=args.steps + 2) is None  # global stage, after step 2
    runs["fsdp, interrupted + resumed"] = distill_once(args, root, "cut", "fsdp", resume=True)
    runs["fsdp, 2 processes"] = two_processes(args, root)
    gpu = args.device.startswith("cuda")
    report = {"device": torch.cuda.get_device_name() if gpu else "cpu", "gpus": torch.cuda.device_count(),
              "torch": torch.__version__,
              "model": "random 12-layer Llama" if args.random else args.model, "steps_per_stage": args.steps}
    ref = runs["ddp, 1 process"]
    print(f"{report['device']} x{report['gpus']}, torch {report['torch']}, {report['model']}, "
          f"{args.steps} + {args.steps} steps of 4 x 256 tokens")
    print(f"{'run':30} {'wall s':>7} {'peak GiB':>9} {'first':>8} {'last':>8} {'|dloss|':>9} {'|dW|':>9} dtype")
    for name, run in runs.items():
        if run is None or "error" in run:
            print(f"{name:30} {'skipped (fewer than 2 GPUs)' if run is None else run['error']}")
            continue
        run.update(compare(ref, run))
        peak = "-" if run["peak_gib"] is None else f"{run['peak_gib']:.2f}"
        print(f"{name:30} {run['wall_s']:7.1f} {peak:>9} {run['first_loss']:8.4f} {run['last_loss']:8.4f} "
              f"{run['max_loss_diff']:9.2e} {run['max_weight_diff']:9.2e} {run['saved_dtype']}")
    resumed, whole = runs["fsdp, interrupted + resumed"], runs["fsdp, 1 process"]
    print(f"resumed vs uninterrupted fsdp: |dW| {compare(whole, resumed)['max_weight_diff']:.3g} "
          "(0 unless the GPU kernels are nondeterministic)")
    report["runs"] = runs
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu_fsdp_check.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

"""Training tokens per second of each recovery recipe of `come compress`, side by side in one run, on one student:

    stage 1   layer-wise: the teacher up to the last merged block (no grad), each merged layer forward + backward
    stage 2   global logit KL: the whole teacher forward, the whole student forward + backward, merged layers + norms
    lora      LoRA on every layer with the LM loss (the student forward + backward; no teacher)
    full      global logit KL training every layer

Each recipe runs --steps optimizer steps through `come.distill` (the code `come compress` runs); the median
tokens/s over the steps after the first (warm-up) is reported, with the share of stage 1's step that the teacher's
forward takes (timed alone on the same batches). Run with OMP_NUM_THREADS set on a shared machine.

    HF_HUB_OFFLINE=1 python benchmarks/recover_speed.py --model smollm2-135m --target-layers 20 --steps 4
    HF_HUB_OFFLINE=1 python benchmarks/recover_speed.py --tiny      # a tiny random Llama: seconds
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

RECIPES = {  # name -> (what it is, DistillConfig settings)
    "stage 1": ("layer-wise, merged layers", dict(stage="layerwise", loss="mse=1,cos=0,kl=0,logits=0")),
    "stage 2": ("global logit KL, merged+norms", dict(stage="global", train="merged+norms",
                                                      loss="mse=0,cos=0,kl=0,logits=1")),
    "lora": ("LoRA r=8, LM loss, every layer", dict(stage="lora")),
    "full": ("global logit KL, every layer", dict(stage="global", train="all", loss="mse=0,cos=0,kl=0,logits=1")),
}


def tiny_model(folder: Path) -> str:
    """A 6-layer random Llama with the bundled SmolLM2 tokenizer (its vocabulary), saved in `folder`."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from come.assets import smollm2_dir

    tok = AutoTokenizer.from_pretrained(smollm2_dir())
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=6,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def teacher_share(student: str, teacher: str, seq_len: int, batch: int, steps: int) -> float:
    """Seconds per micro-batch of the teacher's forward up to the last merged block (what stage 1 runs first)."""
    import torch

    from come.distillation.correspond import correspondences
    from come.distillation.teacher import capture_states
    from come.models import get_adapter, load_model
    from come.plan import Plan

    corr = [c for c in correspondences(Plan.load(student).tree) if c.merged]
    keep = {c.first for c in corr} | {c.last + 1 for c in corr}
    model, _, _ = load_model(teacher, "float32", "cpu")
    a = get_adapter(model)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq_len))
    times = []
    with torch.no_grad():
        for _ in range(steps):
            t0 = time.perf_counter()
            capture_states(model, a, ids, keep)
            times.append(time.perf_counter() - t0)
    return statistics.median(times[1:] or times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m", help="the teacher (ignored with --tiny)")
    ap.add_argument("--tiny", action="store_true", help="a tiny random 6-layer Llama instead (seconds)")
    ap.add_argument("--student", default=None, help="a `come prune` folder of --model (default: pruned here)")
    ap.add_argument("--target-layers", type=int, default=None, help="default: 20 (--tiny: 4)")
    ap.add_argument("--method", default="come")
    ap.add_argument("--recipes", default=",".join(RECIPES), help="comma list of " + ", ".join(RECIPES))
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--train-data", default="mix")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    import torch

    from come import PruneConfig, prune
    from come.config import CalibConfig
    from come.distillation import DistillConfig, distill

    work = Path(tempfile.mkdtemp(prefix="recover-speed-"))
    teacher = tiny_model(work / "teacher") if args.tiny else args.model
    target = args.target_layers or (4 if args.tiny else 20)
    student = args.student
    if student is None:
        calib = CalibConfig(samples=8, seq_len=min(args.seq_len, 256), batch_size=4)
        res = prune(PruneConfig(model=teacher, target_layers=target, method=args.method, calib=calib,
                                device=args.device, progress=False))
        student = str(res.save(work / "student"))
        del res
    print(f"teacher {teacher if not args.tiny else 'tiny random Llama (6 layers)'}, student {target} layers "
          f"({args.method}), {args.steps} steps of {args.batch_size} x {args.seq_len} tokens, "
          f"{torch.get_num_threads()} threads, {args.device}", flush=True)
    rows = []
    for name in args.recipes.split(","):
        what, settings = RECIPES[name]
        cfg = DistillConfig(student=student, teacher=teacher, out=str(work / name.replace(" ", "")),
                            data=args.train_data, steps=args.steps, seq_len=args.seq_len, batch_size=args.batch_size,
                            device=args.device, progress=False, **settings)
        out = distill(cfg).out
        log = [json.loads(line) for line in (out / "distill_log.jsonl").read_text().splitlines()]
        rates = [r["tokens_per_s"] for r in log[1:]] or [r["tokens_per_s"] for r in log]
        summary = json.loads((out / "distill_summary.json").read_text())
        trained = next(iter(summary["stages"].values()))["trainable_params"]
        rows.append((name, what, trained, statistics.median(rates)))
        print(f"  {name}: {statistics.median(rates):,.0f} tokens/s", flush=True)
    tokens = args.batch_size * args.seq_len
    print()
    print("| recipe | what | trained parameters | tokens/s | s/step |")
    print("|---|---|---:|---:|---:|")
    for name, what, trained, rate in rows:
        print(f"| {name} | {what} | {trained:,} | {rate:,.0f} | {tokens / rate:.2f} |")
    if any(r[0] == "stage 1" for r in rows):
        t = teacher_share(student, teacher, args.seq_len, args.batch_size, max(2, args.steps))
        step = tokens / next(r[3] for r in rows if r[0] == "stage 1")
        print(f"\nstage 1: the teacher's forward up to the last merged block takes {t:.3f} s of its {step:.3f} s "
              f"per step ({t / step:.0%}); the rest is the merged layers' forward and backward")
    return 0


if __name__ == "__main__":
    sys.exit(main())

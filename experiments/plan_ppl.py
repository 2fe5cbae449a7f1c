"""Perplexity of saved plans, and of the shallower depths on their way, on any evaluation texts.

Replays each plan (`Plan.prefix` for a shallower depth) on the original model in float32 and scores it on the
evaluation part of every named text, 512-token windows, no BOS (the protocol of docs/results.md). Used for the
table of come-plus and SLEB on the calibration domains' own evaluation parts:

    HF_HUB_OFFLINE=1 .venv/bin/python experiments/plan_ppl.py \\
        --texts encyclopedia,news,exams,science,medicine,math --depths 24,20 \\
        sleb=runs/results-8x256/methods/sleb come-plus=runs/results-8x256/methods/come-plus
"""

from __future__ import annotations

import argparse
import copy
import math

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from come.eval.ppl import perplexity
from come.models import resolve_model
from come.plan import Plan, apply_plan


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("plans", nargs="+", help="NAME=PLAN (a come_plan.json or the folder holding one)")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--texts", default="wiki-passages,fiction,stories,sports-history,code")
    ap.add_argument("--depths", default="24,20")
    ap.add_argument("--windows", type=int, default=16)
    args = ap.parse_args()
    path = resolve_model(args.model)
    tok = AutoTokenizer.from_pretrained(path)
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    texts = args.texts.split(",")
    print("| plan | layers | " + " | ".join(texts) + " | geo. mean |\n|---|---:|" + "---:|" * (len(texts) + 1))
    for name, where in (p.split("=", 1) for p in args.plans):
        plan = Plan.load(where)
        for depth in (int(d) for d in args.depths.split(",")):
            model = copy.deepcopy(base)
            apply_plan(model, plan if depth == plan.num_layers else plan.prefix(depth))
            ppl = [perplexity(model, tok, t, seq_len=512, max_windows=args.windows, progress=False)["ppl"]
                   for t in texts]
            gmean = math.exp(sum(math.log(v) for v in ppl) / len(ppl))
            print(f"| {name} | {depth} | " + " | ".join(f"{v:.2f}" for v in ppl) + f" | {gmean:.2f} |", flush=True)


if __name__ == "__main__":
    main()

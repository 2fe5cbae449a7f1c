"""Which step of a plan breaks a model: perplexity after each step of the plan, and of each of its merges alone.

Replays the plan one step at a time on the original model (float32) and scores every prefix on held-out texts
(evaluation parts, `--seq-len` windows, no BOS unless `--bos`); then applies each merge alone to the original
model (the original layers it joins, with the step's own ratio and pieces) to tell a merge
that breaks the model by itself from one that breaks it only after the others. Used to find the step where the
paper's `come` collapses Gemma 3 270M at 12 of 18 layers (docs/results.md, "Gemma 3 270M"):

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 .venv/bin/python experiments/merge_steps.py runs/gc12 \\
        --model gemma3-270m --texts sports-history,fiction --windows 4 --seq-len 256
"""

from __future__ import annotations

import argparse
import copy
import math

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from come.eval.ppl import perplexity
from come.models import get_adapter, resolve_model
from come.ops import apply_step
from come.plan import Plan


def scores(model, tok, texts: list[str], args) -> list[float]:
    return [perplexity(model, tok, t, seq_len=args.seq_len, max_windows=args.windows, bos=args.bos,
                       progress=False)["ppl"] for t in texts]


def row(label: str, ppl: list[float]) -> str:
    gmean = math.exp(sum(math.log(v) for v in ppl) / len(ppl))
    return f"| {label} | " + " | ".join(f"{v:,.1f}" for v in ppl) + f" | {gmean:,.1f} |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("plan", help="a come_plan.json or the folder holding one")
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--texts", default="sports-history,fiction")
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--bos", action="store_true", help="start every window with BOS")
    ap.add_argument("--alone", action="store_true", help="also apply each merge alone to the original model")
    args = ap.parse_args()
    torch.set_num_threads(1)
    path = resolve_model(args.model)
    tok = AutoTokenizer.from_pretrained(path)
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    plan = Plan.load(args.plan)
    texts = args.texts.split(",")
    print("| after | " + " | ".join(texts) + " | geo. mean |\n|---|" + "---:|" * (len(texts) + 1))
    print(row("dense", scores(base, tok, texts, args)), flush=True)
    model = copy.deepcopy(base)
    adapter = get_adapter(model)
    for k, step in enumerate(plan.steps, 1):
        apply_step(adapter, step, plan.tensors)
        what = f"{step['op']} {step.get('sources', step['layer'])}"
        if step["op"] == "merge":
            what += f" r={step['ratio'][0]:.2f} attn of {'a' if step['attn_groups'][0] else 'b'}"
        print(row(f"step {k}: {what}", scores(model, tok, texts, args)), flush=True)
    if not args.alone:
        return
    for k, step in enumerate(plan.steps, 1):
        if step["op"] != "merge" or "sources" not in step:
            continue
        (a, *_), (*_, b) = step["sources"]
        if b != a + 1:
            continue  # a re-merge of merged layers has no single-merge counterpart in the original model
        model = copy.deepcopy(base)
        apply_step(get_adapter(model), dict(step, layer=a), {})
        print(row(f"step {k}'s merge of ({a}, {b}) alone", scores(model, tok, texts, args)), flush=True)


if __name__ == "__main__":
    main()

"""Which step of a plan breaks a model: perplexity after each step of the plan, and of each of its merges alone.

Replays the plan one step at a time on the original model (float32) and scores every prefix on held-out texts
(evaluation parts, `--seq-len` windows, no BOS unless `--bos`); then applies each merge alone to the original
model (the original layers it joins, with the step's own ratio and pieces) to tell a merge
that breaks the model by itself from one that breaks it only after the others. Used to find the step where the
paper's `come` collapses Gemma 3 270M at 12 of 18 layers (docs/results.md, "Gemma 3 270M"):

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 .venv/bin/python experiments/merge_steps.py runs/gc12 \\
        --model gemma3-270m --texts sports-history,fiction --windows 4 --seq-len 256 --bos [--alone | --at 5]
"""

from __future__ import annotations

import argparse
import copy
import math

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from come.capture import Calibration
from come.data import calibration_windows
from come.eval.ppl import perplexity
from come.models import get_adapter, resolve_model
from come.ops import apply_step, initial_tree, update_tree
from come.plan import Plan
from come.scores import attn_group_sensitivity, bi_ratio, mlp_sensitivity, pair_scores, split_budget, top_k


def scores(model, tok, texts: list[str], args) -> list[float]:
    return [perplexity(model, tok, t, seq_len=args.seq_len, max_windows=args.windows, bos=args.bos,
                       progress=False)["ppl"] for t in texts]


def row(label: str, ppl: list[float]) -> str:
    gmean = math.exp(sum(math.log(v) for v in ppl) / len(ppl))
    return f"| {label} | " + " | ".join(f"{v:,.1f}" for v in ppl) + f" | {gmean:,.1f} |"


def come_merge(adapter, calib: Calibration, l: int) -> dict:
    """The merge `come` makes of (l, l+1): BI-proportional ratio, each layer's most sensitive KV groups and MLP
    channels (come.methods.come.merge_step, from the calibration's statistics alone)."""
    la, lb, sa, sb = adapter.layers[l], adapter.layers[l + 1], calib.stats[l], calib.stats[l + 1]
    ratio = bi_ratio(sa.bi, sb.bi)
    k_attn = split_budget(ratio, adapter.geometry().num_kv_heads)
    k_mlp = split_budget(ratio, adapter.down_proj(la).weight.shape[1])
    return {"op": "merge", "layer": l, "ratio": list(ratio), "norm": "mean",
            "attn_groups": [top_k(attn_group_sensitivity(adapter, la, sa), k_attn[0]),
                            top_k(attn_group_sensitivity(adapter, lb, sb), k_attn[1])],
            "mlp_channels": [top_k(mlp_sensitivity(adapter, la, sa), k_mlp[0]),
                             top_k(mlp_sensitivity(adapter, lb, sb), k_mlp[1])]}


def alternatives(base, tok, plan: Plan, texts: list[str], args) -> None:
    before = copy.deepcopy(base)
    adapter = get_adapter(before)
    tree = initial_tree(adapter.num_layers)
    for step in plan.steps[: args.at - 1]:
        apply_step(adapter, step, plan.tensors)
        update_tree(tree, step)
    step = plan.steps[args.at - 1]
    l, n = step["layer"], adapter.num_layers
    c = plan.settings["calib"]
    calib = Calibration(before, adapter, calibration_windows(tok, c["data"], c["samples"], c["seq_len"], c["seed"]),
                        c["batch_size"], progress=False)
    calib.run(0)
    angular = pair_scores(calib.hidden)
    names = ["".join(str(tree[i])) for i in range(n)]
    print(f"| before step {args.at} ({n} layers) | " + " | ".join(texts) + " | geo. mean |\n|---|"
          + "---:|" * (len(texts) + 1))
    print(row("as it is", scores(before, tok, texts, args)), flush=True)

    def scored(label: str, edit) -> None:
        model = copy.deepcopy(before)
        edit(get_adapter(model))
        print(row(label, scores(model, tok, texts, args)), flush=True)

    def drop(i: int):
        return lambda a: a.set_layers([x for j, x in enumerate(a.layers) if j != i], [j for j in range(n) if j != i])

    other = [[], step["attn_groups"][0]] if step["attn_groups"][0] else [step["attn_groups"][1], []]
    scored(f"the plan's merge of {names[l]}, {names[l + 1]}", lambda a: apply_step(a, step))
    scored("the same with --norm fold", lambda a: apply_step(a, dict(step, norm="fold")))
    scored("the same with the other layer's attention", lambda a: apply_step(a, dict(step, attn_groups=other)))
    scored(f"drop {names[l]}", drop(l))
    scored(f"drop {names[l + 1]}", drop(l + 1))
    for i in range(n - 1):
        if len(tree[i]) == 1 and len(tree[i + 1]) == 1:
            alt = come_merge(adapter, calib, i)
            scored(f"come's merge of {names[i]}, {names[i + 1]} (angular {angular[i]:.3f}, r {alt['ratio'][0]:.2f})",
                   lambda a, alt=alt: apply_step(a, alt))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("plan", help="a come_plan.json or the folder holding one")
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--texts", default="sports-history,fiction")
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--bos", action="store_true", help="start every window with BOS")
    ap.add_argument("--alone", action="store_true", help="also apply each merge alone to the original model")
    ap.add_argument("--at", type=int, help="score the alternatives to step K (1-based) instead of the steps")
    args = ap.parse_args()
    torch.set_num_threads(1)
    path = resolve_model(args.model)
    tok = AutoTokenizer.from_pretrained(path)
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    plan = Plan.load(args.plan)
    texts = args.texts.split(",")
    if args.at:
        alternatives(base, tok, plan, texts, args)
        return
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

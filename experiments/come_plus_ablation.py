"""Ablation of the CoMe family against layer dropping on one model, one calibration set, two depths.

Every variant prunes to the deepest cut once; shallower depths are plan prefixes (progressive methods).
Prints a markdown table (perplexity on the wiki-passages evaluation part, prune wall time) and writes JSON.

    HF_HUB_OFFLINE=1 .venv/bin/python experiments/come_plus_ablation.py --depths 24,20 --out runs/ablation.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from come import CalibConfig, PruneConfig, apply_plan, prune
from come.eval.ppl import perplexity
from come.models import load_model

Z = dict(refit_prior="zero")  # the re-fit as first measured (ridge toward zero); the default is now "merged"
VARIANTS = {
    "shortgpt": dict(method="shortgpt"),
    "come (angular, BI ratio, mean)": dict(method="come"),
    "come norm=fold": dict(method="come", norm="fold"),
    "come remerge": dict(method="come", remerge=True),
    "come + ridge re-fit (prior zero)": dict(method="come", reconstruct=True, **Z),
    "come + ridge re-fit (prior zero), norm=fold": dict(method="come", reconstruct=True, norm="fold", **Z),
    "come + ridge re-fit (prior zero), refit-target=dense": dict(method="come", reconstruct=True,
                                                                 refit_target="dense", **Z),
    "come-plus, prior zero (re-fit, ratio in {0, r_BI, 1} by loss)": dict(method="come-plus", **Z),
    "come-plus, prior zero, --pair-score loss": dict(method="come-plus", pair_score="loss", **Z),
    "come-plus, prior zero, --drop-candidates": dict(method="come-plus", drop_candidates=True, **Z),
    "come-plus (default: prior merged)": dict(method="come-plus"),
    "come pair=loss": dict(method="come", pair_score="loss"),
    "come-p (grid 10)": dict(method="come-p", grid=10),
    "sleb": dict(method="sleb"),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--depths", default="24,20")
    ap.add_argument("--variants", default="all")
    ap.add_argument("--calib-samples", type=int, default=8)
    ap.add_argument("--calib-seq-len", type=int, default=256)
    ap.add_argument("--loss-samples", type=int, default=None)
    ap.add_argument("--ppl-seq-len", type=int, default=512)
    ap.add_argument("--ppl-max-windows", type=int, default=20)
    ap.add_argument("--out", default="runs/ablation.json")
    args = ap.parse_args()
    depths = sorted((int(d) for d in args.depths.split(",")), reverse=True)
    names = list(VARIANTS) if args.variants == "all" else [n for n in VARIANTS if n in args.variants.split(";")]
    calib = CalibConfig("wiki-passages", args.calib_samples, args.calib_seq_len, 8, 0)
    ppl_kw = dict(source="wiki-passages", seq_len=args.ppl_seq_len, max_windows=args.ppl_max_windows, progress=False)
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    if "dense" not in results:
        model, tok, _ = load_model(args.model, "float32", "cpu")
        results["dense"] = {"ppl": {str(model.config.num_hidden_layers): perplexity(model, tok, **ppl_kw)["ppl"]}}
    for name in names:
        if name in results:
            continue
        cfg = PruneConfig(model=args.model, target_layers=depths[-1], calib=calib, device="cpu", progress=False,
                          loss_samples=args.loss_samples, **VARIANTS[name])
        t0 = time.perf_counter()
        res = prune(cfg)
        wall = time.perf_counter() - t0
        row = {"prune_wall_s": round(wall, 1), "ppl": {}}
        for d in depths:
            model, tok, _ = load_model(args.model, "float32", "cpu")
            apply_plan(model, res.plan.prefix(d))
            row["ppl"][str(d)] = perplexity(model, tok, **ppl_kw)["ppl"]
        results[name] = row
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1))
        print(name, row, flush=True)
    print(f"\n{args.model}, calibration {args.calib_samples}x{args.calib_seq_len} tokens of wiki-passages (calib), "
          f"perplexity on {args.ppl_max_windows} windows of {args.ppl_seq_len} (eval part)\n")
    print("| variant | " + " | ".join(f"ppl @{d}" for d in depths) + " | prune wall s (to the deepest) |")
    print("|---" * (len(depths) + 2) + "|")
    (n_dense, ppl_dense), = results["dense"]["ppl"].items()
    print(f"| dense ({n_dense} layers) | " + " | ".join(f"{ppl_dense:.1f}" for _ in depths) + " | |")
    for name, row in results.items():
        if name == "dense":
            continue
        cells = [f"{row['ppl'].get(str(d), float('nan')):.1f}" for d in depths]
        print(f"| {name} | " + " | ".join(cells) + f" | {row.get('prune_wall_s', '')} |")


if __name__ == "__main__":
    main()

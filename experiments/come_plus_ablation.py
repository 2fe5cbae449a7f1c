"""Ablation of come-plus on the out-of-domain suite: which of its parts generalise beyond the calibration text.

Every variant prunes SmolLM2-135M to the deepest cut once (shallower depths are plan prefixes; progressive
methods) and is scored on the wiki-passages evaluation part and on each held-out domain of the `ood` suite (the
same evaluation as `come compare`), with the ood geometric mean. Resumable: finished variants are kept in the
JSON file and skipped. Run it alone (two torch jobs on 2 cores slow each other down by more than 2x).

    HF_HUB_OFFLINE=1 .venv/bin/python experiments/come_plus_ablation.py --out runs/ablation-ood.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from come import CalibConfig, PruneConfig, apply_plan, prune
from come.compare import CompareConfig, evaluate_model, fmt_ppl
from come.corpora import OOD_DOMAINS
from come.models import load_model

VARIANTS = {  # name: (calibration text, PruneConfig settings)
    "come-plus (held-out decisions), mix": ("mix", dict(method="come-plus")),
    "come-plus (held-out decisions), wiki-passages": ("wiki-passages", dict(method="come-plus")),
    "come-plus, prior zero, mix": ("mix", dict(method="come-plus", refit_prior="zero")),
    "come-plus + drop candidates, mix": ("mix", dict(method="come-plus", drop_candidates=True)),
    "come + re-fit (no ratio choice), mix": ("mix", dict(method="come", reconstruct=True)),
    "come, mix": ("mix", dict(method="come")),
}
SOURCES = ["wiki-passages", *OOD_DOMAINS]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--depths", default="24,20")
    ap.add_argument("--variants", default="all", help="all, or names separated by ';'")
    ap.add_argument("--calib-samples", type=int, default=8)
    ap.add_argument("--calib-seq-len", type=int, default=256)
    ap.add_argument("--ppl-windows", type=int, default=16)
    ap.add_argument("--out", default="runs/ablation-ood.json")
    args = ap.parse_args()
    depths = sorted((int(d) for d in args.depths.split(",")), reverse=True)
    names = list(VARIANTS) if args.variants == "all" else [n for n in VARIANTS if n in args.variants.split(";")]
    ev = CompareConfig(model=args.model, evals=["ppl"], tasks=[], ppl_data=",".join(SOURCES), ppl_seq_len=512,
                       ppl_max_windows=args.ppl_windows, device="cpu", progress=False)
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    for name in names:
        if name in results:
            continue
        data, settings = VARIANTS[name]
        calib = CalibConfig(data, args.calib_samples, args.calib_seq_len, 8, 0)
        cfg = PruneConfig(model=args.model, target_layers=depths[-1], calib=calib, device="cpu", dtype="float32",
                          progress=False, **settings)
        t0 = time.perf_counter()
        res = prune(cfg)
        row = {"prune_wall_s": round(time.perf_counter() - t0, 1), "depths": {}}
        for d in depths:
            model, tok, _ = load_model(args.model, "float32", "cpu")
            apply_plan(model, res.plan.prefix(d))
            row["depths"][str(d)] = evaluate_model(model, tok, ev)
        results[name] = row
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1))
        print(name, {d: round(p["ppl_ood_gmean"], 1) for d, p in row["depths"].items()}, flush=True)
    print(f"\n{args.model}, calibration {args.calib_samples} x {args.calib_seq_len} tokens, perplexity on "
          f"{args.ppl_windows} windows x 512 tokens of each text\n")
    head = ["variant", "layers", *SOURCES, "ood geo. mean", "prune s (to the deepest)"]
    print("| " + " | ".join(head) + " |\n|---|" + "---:|" * (len(head) - 1))
    for d in depths:
        for name, row in results.items():
            p = row["depths"].get(str(d))
            if p is None:
                continue
            cells = [fmt_ppl(p["ppl_by_source"][s]["ppl"]) for s in SOURCES] + [f"**{fmt_ppl(p['ppl_ood_gmean'])}**"]
            print(f"| {name} | {d} | " + " | ".join(cells) + f" | {row['prune_wall_s']:.0f} |")


if __name__ == "__main__":
    main()

"""Ablation of come-plus on the out-of-domain suite: which of its parts generalise beyond the calibration text.

One `come compare` over variants (a method with settings, and calibration text, of its own): every variant prunes
SmolLM2-135M to the deepest cut once (shallower depths are plan prefixes; progressive methods) and is scored on
the wiki-passages evaluation part and on each held-out domain of the `ood` suite, with the ood geometric mean.
The compare folder sits beside the JSON file (`runs/ablation-ood.compare/`) and is resumed by the next call;
variants the JSON file already holds are kept as they are and not run again. Run it alone (two torch jobs on 2
cores slow each other down by more than 2x).

    HF_HUB_OFFLINE=1 .venv/bin/python experiments/come_plus_ablation.py --out runs/ablation-ood.json

The JSON file: {variant: {"prune_wall_s": s, "depths": {"24": scores, "20": scores}}}, scores as
`come.compare.evaluate_model` gives them (layers, params, ppl, ppl_by_source, ppl_ood_gmean, eval_wall_s).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import come_variants  # noqa: F401  (registers the research variants; experiments/ is this script's folder)

from come import CalibConfig
from come.compare import CompareConfig, Variant, compare, fmt_ppl
from come.corpora import OOD_DOMAINS
from come.runstore import RunFolder

# The research variants are method records of come_variants.py (registered on import). The rows of --cross-fit and
# --refit-anchor stay in docs/results.md; those variants left with their flags (commit bcfc332 made them).
VARIANTS = [
    Variant("come-plus (held-out decisions), mix", "come-plus", calib_data="mix"),
    Variant("come-plus (held-out decisions), wiki-passages", "come-plus", calib_data="wiki-passages"),
    Variant("come-plus, prior zero, mix", "come-plus:prior-zero", calib_data="mix"),
    Variant("come-plus + drop candidates, mix", "come-plus:drop-candidates", calib_data="mix"),
    Variant("come + re-fit (no ratio choice), mix", "come:refit", calib_data="mix"),
    Variant("come, mix", "come", calib_data="mix"),
    Variant("come-plus, pairs around SLEB's choice (--pair-score drop), mix", "come-plus", {"pair_score": "drop"},
            calib_data="mix"),
    Variant("come, pairs around SLEB's choice (--pair-score drop), mix", "come", {"pair_score": "drop"},
            calib_data="mix"),
    Variant("come-p, pairs around SLEB's choice (--pair-score drop), --grid 10, mix", "come-p",
            {"pair_score": "drop", "grid": 10}, calib_data="mix"),
    # the re-fit's parts: which projections it fits, how hard the ridge pulls toward the merged weights
    Variant("come-plus, o_proj re-fit only (down_proj left merged), mix", "come-plus:o_proj-only", calib_data="mix"),
    Variant("come-plus, down_proj re-fit only (o_proj left merged), mix", "come-plus:down_proj-only",
            calib_data="mix"),
    Variant("come-plus, strong pull to the merged weights (ridge strength 10 or 100 only), mix",
            "come-plus:strong-pull", calib_data="mix"),
]
SOURCES = ["wiki-passages", *OOD_DOMAINS]
SCORES = ("layers", "params", "ppl", "ppl_by_source", "ppl_ood_gmean", "eval_wall_s")  # of a row, as evaluated


def config(args, variants: list[Variant], folder: Path, depths: list[int]) -> CompareConfig:
    return CompareConfig(
        model=args.model, methods=variants, target_layers=depths[-1], depths=depths[:-1],
        calib=CalibConfig("mix", args.calib_samples, args.calib_seq_len, 8, 0), evals=["ppl"],
        ppl_data=",".join(SOURCES), ppl_seq_len=512, ppl_max_windows=args.ppl_windows, out=str(folder),
        save_models=False, resume=folder.exists() or RunFolder(folder).partial.exists(), device="cpu",
        dtype="float32", progress=False,
    )


def as_entry(row: dict) -> dict:
    """A compare row as an entry of the JSON file: its scores at every depth."""
    if "error" in row:
        return {"error": row["error"]}
    points = [{k: row[k] for k in SCORES if k in row}, *row.get("sweep", [])]
    return {"prune_wall_s": round(row["prune_wall_s"], 1),
            "depths": {str(p["layers"]): p for p in sorted(points, key=lambda p: -p["layers"])}}


def earlier_names(folder: Path) -> set[str]:
    """The variants an earlier call's compare folder holds (resuming without them would drop them)."""
    store = RunFolder(folder)
    return {r["row"]["method"] for f in store.earlier() for r in store.records(f, "rows")}


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
    wanted = [v.name for v in VARIANTS if args.variants == "all" or v.name in args.variants.split(";")]
    out = Path(args.out)
    folder = out.with_suffix(".compare")
    results = json.loads(out.read_text()) if out.exists() else {}
    todo = [n for n in wanted if n not in results]
    if todo:
        keep = earlier_names(folder)
        result = compare(config(args, [v for v in VARIANTS if v.name in todo or v.name in keep], folder, depths))
        for row in result["rows"][1:]:
            results.setdefault(row["method"], as_entry(row))
            print(row["method"], {d: round(p["ppl_ood_gmean"], 1) for d, p in
                                  results[row["method"]].get("depths", {}).items()}, flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1))
    print(f"\n{args.model}, calibration {args.calib_samples} x {args.calib_seq_len} tokens, perplexity on "
          f"{args.ppl_windows} windows x 512 tokens of each text\n")
    head = ["variant", "layers", *SOURCES, "ood geo. mean", "prune s (to the deepest)"]
    print("| " + " | ".join(head) + " |\n|---|" + "---:|" * (len(head) - 1))
    for d in depths:
        for name, row in results.items():
            p = row.get("depths", {}).get(str(d))
            if p is None:
                continue
            cells = [fmt_ppl(p["ppl_by_source"][s]["ppl"]) for s in SOURCES] + [f"**{fmt_ppl(p['ppl_ood_gmean'])}**"]
            print(f"| {name} | {d} | " + " | ".join(cells) + f" | {row['prune_wall_s']:.0f} |")


if __name__ == "__main__":
    main()

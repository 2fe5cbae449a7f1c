"""Paired perplexity ratios of compare rows against a reference row, per text and depth, with 95% intervals.

Both rows must have been scored on the same windows (the protocol of docs/results.md); the ratio is
exp(mean per-window NLL difference), its interval from `come.eval.stats.paired_ppl`. Used for the "paired
against SLEB" tables of docs/results.md:

    python experiments/paired.py runs/results-8x256/rows/sleb.json \\
        "runs/ablation-ood.compare/rows/come-plus, pairs around SLEB's choice (--pair-score drop), mix.json"
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from come.eval.stats import fmt_diff, ppl_difference


def depths(path: str) -> dict[int, dict]:
    """{layers: {text: perplexity result}} of a row file (its own depth and the sweep's)."""
    row = json.loads(Path(path).read_text())["row"]
    return {p["layers"]: p["ppl_by_source"] for p in [row, *row.get("sweep", [])]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("reference", help="row file of the reference (e.g. sleb)")
    ap.add_argument("rows", nargs="+", help="row files to compare with it")
    args = ap.parse_args()
    ref = depths(args.reference)
    for path in args.rows:
        mine = depths(path)
        texts = [t for t in next(iter(mine.values())) if all(t in ref[d] for d in mine if d in ref)]
        print(f"\n{path}\n| layers | " + " | ".join(texts) + " |\n|---:|" + "---|" * len(texts))
        for d in sorted((d for d in mine if d in ref), reverse=True):
            cells = [fmt_diff("ppl", ppl_difference(mine[d][t], ref[d][t])) for t in texts]
            print(f"| {d} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

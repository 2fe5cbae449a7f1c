"""The one results table of docs/results.md: every method at 24 and 20 layers on one fixed protocol.

One `come compare` run (resumable: the same command continues it, `--resume` is always passed once the folder
exists) prunes SmolLM2-135M to 20 layers with every method on the same calibration windows, scores 24 layers from
the same plans (their prefixes), and measures perplexity on the wiki-passages evaluation part and on each
held-out domain of the `ood` suite. Then this script prints the table (and, with --write, puts it into
docs/results.md between the RESULTS markers).

    HF_HUB_OFFLINE=1 .venv/bin/python experiments/results.py --out runs/results-8x256 --write
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

from come.compare import CompareConfig, compare, fmt_ppl
from come.config import CalibConfig
from come.corpora import OOD_DOMAINS
from come.eval.stats import fmt_ppl_interval, paired_ppl, ppl_interval

METHODS = "sleb,shortgpt,come,come-plus,come-p"
START, END = "<!-- RESULTS:START -->", "<!-- RESULTS:END -->"


def config(args) -> CompareConfig:
    return CompareConfig(
        model="smollm2-135m", methods=args.methods, target_layers=20, depths=[24],
        calib=CalibConfig(data=args.calib_data, samples=args.calib_samples, seq_len=args.calib_seq_len,
                          batch_size=8, seed=0),
        evals=args.eval, limit=args.limit, ppl_data="wiki-passages,ood", ppl_seq_len=512,
        ppl_max_windows=args.ppl_windows, out=args.out, save_models=False,
        resume=Path(args.out).exists() or Path(args.out + ".partial").exists(),
        device="cpu", dtype="float32",
    )


def interval(r: dict) -> str:
    """The 95% t-interval of the perplexity over windows (come.eval.stats), as " [lo, hi]"."""
    text = fmt_ppl_interval(ppl_interval(r.get("window_nll") or []), lambda v: f"{v:.0f}")
    return f" {text}" if text else ""


def point_at(row: dict, depth: int) -> dict | None:
    return row if row["layers"] == depth else next((p for p in row.get("sweep", []) if p["layers"] == depth), None)


def paired_table(result: dict, reference: str = "sleb") -> str:
    """Each method's perplexity divided by `reference`'s, per text, paired over the same windows (95% interval);
    below 1 = better than the reference."""
    sources = ["wiki-passages", *OOD_DOMAINS]
    rows = {r["method"]: r for r in result["rows"] if "error" not in r}
    if reference not in rows:
        return ""
    head = ["method / " + reference, "layers", *sources]
    lines = ["| " + " | ".join(head) + " |", "|---|---:|" + "---:|" * len(sources)]
    for depth in (24, 20):
        ref = point_at(rows[reference], depth)
        for name, row in rows.items():
            point = point_at(row, depth)
            if name in ("dense", reference) or point is None or ref is None:
                continue
            cells = []
            for s in sources:
                p = paired_ppl(point["ppl_by_source"][s]["window_nll"], ref["ppl_by_source"][s]["window_nll"])
                mark = " ≈" if p.get("within_noise") else ""
                cells.append(f"{p['ratio']:.2f} [{p['ratio_lo']:.2f}, {p['ratio_hi']:.2f}]{mark}")
            lines.append(f"| {name} | {depth} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table(result: dict) -> str:
    sources = ["wiki-passages", *OOD_DOMAINS]
    head = ["method", "layers", *sources, "ood geo. mean", "prune s"]
    lines = ["| " + " | ".join(head) + " |", "|---|---:|" + "---:|" * (len(head) - 2)]

    def line(name, point, prune_s):
        by = point["ppl_by_source"]
        cells = [name, str(point["layers"])] + [fmt_ppl(by[s]["ppl"]) + interval(by[s]) for s in sources]
        cells += [f"**{fmt_ppl(point['ppl_ood_gmean'])}**", prune_s]
        lines.append("| " + " | ".join(cells) + " |")

    rows = result["rows"]
    line("dense", rows[0], "0")
    for depth in (24, 20):
        for row in rows[1:]:
            if "error" in row:
                if depth == 20:
                    lines.append(f"| {row['method']} | failed: {row['error']} |" + " |" * (len(head) - 2))
                continue
            point = point_at(row, depth)
            if point is not None:
                line(row["method"], point, f"{row['prune_wall_s']:.0f}" if depth == 20 else "(prefix)")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/results-8x256")
    ap.add_argument("--methods", default=METHODS)
    ap.add_argument("--calib-data", default="mix")
    ap.add_argument("--calib-samples", type=int, default=8)
    ap.add_argument("--calib-seq-len", type=int, default=256)
    ap.add_argument("--ppl-windows", type=int, default=16)
    ap.add_argument("--eval", default="ppl")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--write", action="store_true", help="put the table into docs/results.md")
    args = ap.parse_args()
    t0 = time.perf_counter()
    result = compare(config(args))
    md = table(result)
    c = result["settings"]["calib"]
    cmd = ("HF_HUB_OFFLINE=1 .venv/bin/python experiments/results.py --out " + args.out
           + (f" --methods {args.methods}" if args.methods != METHODS else "")
           + (f" --calib-samples {args.calib_samples}" if args.calib_samples != 8 else "")
           + (f" --calib-seq-len {args.calib_seq_len}" if args.calib_seq_len != 256 else "") + " --write")
    paired = paired_table(result)
    if paired:
        md += ("\n\nPaired against SLEB (perplexity ratio over the same windows, 95% interval; below 1 = better "
               "than SLEB; ≈ = the interval contains 1):\n\n" + paired)
    block = (f"{START}\n{md}\n\nCalibration: `{c['data']}`, {c['samples']} windows x {c['seq_len']} tokens, seed "
             f"{c['seed']}, the same windows for every method. Perplexity: {args.ppl_windows} windows x 512 tokens "
             "of each text (evaluation parts), no BOS, float32; in brackets the 95% interval over windows. 24-layer "
             "rows replay the first steps of the 20-layer plans. prune s = wall time of the 20-layer pruning on 2 "
             "CPU cores, as measured in this run (other jobs may have shared the cores: compare them loosely). "
             f"Made by `{cmd}` (resumable: a finished method is not pruned or evaluated again; this call "
             f"{time.perf_counter() - t0:.0f} s).\n{END}")
    print(block)
    if args.write:
        path = Path(__file__).resolve().parents[1] / "docs" / "results.md"
        text = path.read_text() if path.exists() else f"# Results\n\n{START}\n{END}\n"
        if START not in text:
            text += f"\n{START}\n{END}\n"
        path.write_text(re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S))
    (Path(args.out) / "table.json").write_text(json.dumps({"markdown": md}) + "\n") if Path(args.out).exists() else None


if __name__ == "__main__":
    main()

"""`come compare` on the command line: its own flags, the config from the parsed flags, the dry run and the
printed result. The shared flags (model and target, calibration, output, recipe, dry run) are `come.cli`'s,
which builds the subcommand from these pieces."""

from __future__ import annotations

from come.compare.config import CompareConfig, parse_depths


def add_compare_args(p) -> None:
    """The flags only `come compare` has: which methods, how they are scored, what is saved, --resume."""
    from come.corpora import OOD_DOMAINS

    p.add_argument("--methods", default="all", help="all (default) or a comma list of registered methods "
                   "(`come prune --help` lists them)")
    p.add_argument("--eval", default="ppl", help="ppl (default), tasks, or ppl,tasks")
    p.add_argument("--tasks", default="all", help="all (default) or a comma list (with --eval tasks)")
    p.add_argument("--limit", type=int, default=None, help="items per task (default: all)")
    p.add_argument("--ppl-data", default="wiki-passages,ood",
                   help="comma list of perplexity text sources (their evaluation parts); ood = the held-out "
                   "domains " + ", ".join(OOD_DOMAINS) + ", reported one by one and as a geometric mean")
    p.add_argument("--ppl-seq-len", type=int, default=2048)
    p.add_argument("--ppl-max-windows", type=int, default=None)
    p.add_argument("--option", action="append", metavar="METHOD.KEY=VALUE",
                   help="a method's option, e.g. laco.T=0.5 (repeatable; `come prune --help` lists them)")
    p.add_argument("--sweep", action="store_true", help="also score every depth between dense and the target")
    p.add_argument("--depths", default="", help="also score these depths, a comma list (e.g. 24 with "
                   "--target-layers 20): progressive methods replay a prefix of their plan, others prune again")
    p.add_argument("--no-save-models", action="store_true", help="save each method's plan only, not its weights")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run (OUT.partial) or extend a finished OUT, e.g. with --eval "
                        "ppl,tasks or more --methods: plans made under the same pruning settings are replayed, "
                        "rows made under the same evaluation settings too are kept")


def config_from_args(args, calib) -> CompareConfig:
    """The CompareConfig of parsed `come compare` flags (`calib`: the CalibConfig of the calibration flags)."""
    from come.methods import parse_option_args

    return CompareConfig(
        model=args.model, methods=args.methods, target_layers=args.target_layers, sparsity=args.sparsity,
        evals=args.eval, tasks=args.tasks, limit=args.limit, ppl_data=args.ppl_data, ppl_seq_len=args.ppl_seq_len,
        ppl_max_windows=args.ppl_max_windows, out=args.out, save_models=not args.no_save_models, sweep=args.sweep,
        depths=parse_depths(args.depths),
        overwrite=args.overwrite, resume=args.resume, calib=calib, loss_samples=args.loss_samples,
        dtype=args.dtype, device=args.device, options=parse_option_args(args.option),
    )


def run_and_print(cfg: CompareConfig) -> int:
    """Run the compare and print its table, the paired differences and where it was written."""
    from come.compare.report import paired_section, table
    from come.compare.run import compare

    result = compare(cfg)
    print(table(result))
    print("\n".join(paired_section(result)))
    if result.get("plot"):
        print(result["plot"])
    print(f"wrote {cfg.out} in {result['wall_s']:.0f} s")
    return 0


def dry_run_text(cfg: CompareConfig, gpu_memory: str | None = None) -> str:
    """`come compare --dry-run`: every method's dry run (config only, no weights read), one line each."""
    from come.compare.run import check_targets
    from come.dryrun import dry_run
    from come.placement import gib

    cfg.validate()
    check_targets(cfg)
    names = cfg.names()
    runs = [dry_run(cfg.prune_config(n), gpu_memory) for n in names]
    first = runs[0]
    lines = first.text().splitlines()[1:7]  # layers .. placement (the peaks differ by method: the table)
    lines = [f"dry run of come compare on {first.model} ({first.model_type}): config only, no weights read",
             *lines, "", "| method | layers after | peak GPU | peak CPU RAM | calibration |",
             "|---|---:|---:|---:|---|"]
    for name, r in zip(names, runs):
        gpu = "-" if r.gpu_peak is None else f"~{gib(r.gpu_peak)}"
        lines.append(f"| {name} | {r.layers[1]} | {gpu} | ~{gib(r.cpu_peak)} | {r.passes_text} |")
    lines += ["", f"The dense model stays loaded beside each pruned one for its evaluation (+{gib(first.weight_bytes)}"
              " where the weights live); peaks are estimates from the shapes."]
    return "\n".join(lines)

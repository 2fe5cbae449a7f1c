"""`come compare` on the command line: its flags (CompareConfig's fields, come.cliargs), the dry run and the
printed result. The output, recipe and dry-run flags are `come.cli`'s, which builds the subcommand from these
pieces."""

from __future__ import annotations

from come.compare.config import CompareConfig


def add_compare_args(p) -> None:
    """Every setting of `come compare`, from CompareConfig's fields (those shared with `come prune` have its
    flags); --out and --overwrite are `come.cli.add_output_args`'."""
    from come.cliargs import add_config_args

    add_config_args(p, CompareConfig, exclude=("out", "overwrite"))


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


def dry_run_text(cfg: CompareConfig, gpu_memory: str | None = None, cpu_memory: str | None = None) -> str:
    """`come compare --dry-run`: every method's dry run (config only, no weights read), one line each."""
    from come.compare.run import check_targets
    from come.dryrun import dry_run
    from come.placement import gib

    cfg.validate()
    check_targets(cfg)
    names = cfg.names()
    runs = [dry_run(cfg.prune_config(n), gpu_memory, cpu_memory) for n in names]
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

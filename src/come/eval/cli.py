"""`come eval`: a thin layer over `come.eval.evaluate`."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    from come.cli import add_trust_remote_code_arg
    from come.cliargs import add_config_args
    from come.eval.config import EvalConfig

    p = sub.add_parser("eval", help="perplexity, zero-shot accuracy and speed of a model (vs. a baseline)")
    add_config_args(p, EvalConfig)  # every setting, from EvalConfig's fields
    add_trust_remote_code_arg(p)
    p.add_argument("--out", default=None, help="folder for eval.json and eval.md")
    p.add_argument("--overwrite", action="store_true", help="replace what --out holds")
    p.set_defaults(func=cmd_eval)


def config_from_args(args: argparse.Namespace):
    """The EvalConfig of parsed `come eval` flags (-v/--verbose: lm-eval's own logs too)."""
    from come import cliargs
    from come.eval.config import EvalConfig

    return cliargs.config_from_args(EvalConfig, args, verbose=getattr(args, "verbose", False))


def cmd_eval(args: argparse.Namespace) -> int:
    from come import preflight
    from come.eval.evaluation import evaluate, save
    from come.eval.report import table
    from come.io import check_output_dir, output_lock

    if getattr(args, "tasks", None) in (["list"], "list"):
        return list_tasks()
    cfg = config_from_args(args).validate()
    preflight.evaluation(cfg)  # the models' configs first: a mistyped --baseline fails now, not after a long run
    if not args.out:
        result = evaluate(cfg)
        print(table(result))
        return check_metrics(result)
    # the model may hold its evaluation (`--out MODEL/eval`: linked from its card), never be replaced by it
    check_output_dir(args.out, args.overwrite, [cfg.model, cfg.baseline, *cfg.ppl], nest_ok=[cfg.model])
    with output_lock(args.out):
        result = evaluate(cfg)
        print(table(result))
        print(f"wrote {save(result, args.out, args.overwrite)}")
    card = update_card(args.model, args.out, result)
    if card is not None:
        print(f"added the evaluation to the model card {card}")
    return check_metrics(result)


def list_tasks() -> int:
    """`--tasks list`: the tasks `come eval` runs offline (the paper's seven) and how to reach lm-eval's others."""
    from come.eval.harness import TASKS, offline_default

    print("zero-shot tasks bundled for offline use; --tasks all runs these seven (the paper's):")
    print("  " + ", ".join(TASKS))
    state = "off: HF_HUB_OFFLINE is set" if offline_default() else "on"
    print(f"any other lm-eval task runs with the Hugging Face hub on (now {state}); `lm-eval ls tasks` lists them")
    return 0


def check_metrics(result: dict) -> int:
    """1, with a one-line error naming them, when a metric is not a finite number (NaN in a perplexity: the model
    computes garbage); else 0."""
    from come.eval.evaluation import non_finite

    bad = non_finite(result)
    if not bad:
        return 0
    import sys

    print(f"come: error: not a finite number: {', '.join(bad[:4])}{' ...' if len(bad) > 4 else ''} (written as "
          "null): the model's outputs are not usable", file=sys.stderr)
    return 1


def update_card(model: str, out: str, result: dict):
    """The table into the model card of `model` when it is a folder `come` wrote (its README.md is ours); the
    details are linked when `out` lies inside that folder."""
    from pathlib import Path

    from come.card import add_eval
    from come.eval.evaluation import REPORT_FILE

    folder = Path(model).expanduser()
    if not folder.is_dir():
        return None
    try:
        where = (Path(out).expanduser().resolve() / REPORT_FILE).relative_to(folder.resolve()).as_posix()
    except ValueError:
        where = None  # elsewhere: not linked (no local paths in the card)
    return add_eval(folder, result, where)

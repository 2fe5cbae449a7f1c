"""`come distill`: recover a pruned model by distillation from its teacher, or by the LoRA baseline."""

from __future__ import annotations

import os

from come.cli import add_recipe_args, add_trust_remote_code_arg
from come.hub import add_push_args, check_push, push_and_print


def add_parser(sub) -> None:
    from come.cliargs import add_config_args
    from come.distillation.config import DistillConfig

    p = sub.add_parser("distill", help="distil a pruned model from its teacher (layer-wise, global) or LoRA-tune it")
    add_config_args(p, DistillConfig)  # every setting, from DistillConfig's fields
    add_trust_remote_code_arg(p)
    g = p.add_argument_group("dry run")
    g.add_argument("--dry-run", action="store_true",
                   help="print the memory each process needs per stage under ddp and fsdp (from the configs, no "
                   "weights read) and stop")
    g.add_argument("--world-size", type=int, default=None,
                   help="processes the --dry-run estimate is for (default: this run's)")
    add_recipe_args(p)
    add_push_args(p)
    p.set_defaults(func=cmd_distill)


def cmd_distill(args) -> int:
    from come.cli import print_recipe, require
    from come.cliargs import config_from_args
    from come.distillation.config import DistillConfig

    check_push(args.push_to_hub, args.private)  # offline or no token: refused before anything else
    require(args, "student")
    cfg = config_from_args(DistillConfig, args)
    if args.print_config:  # as every command: the recipe, then the dry run
        return print_recipe(cfg.validate(), None)
    if args.dry_run:
        from come.distillation.memory import dry_run

        print(dry_run(cfg, args.world_size), end="")
        return 0
    require(args, "out")
    from come.distillation.train import distill, summary_text
    from come.plan import Plan

    Plan.load(cfg.student)  # the student folder first: a wrong path is likelier than a missing --tokens

    result = distill(cfg)
    if os.environ.get("RANK", "0") == "0":
        print(summary_text(result.summary), end="")
        print(f"wrote {result.out}")
        push_and_print(result.out, args.push_to_hub, args.private)  # one upload, by the first process
    return 0

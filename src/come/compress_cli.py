"""`come compress`: its subcommand (the pipeline itself is `come.compress`, which the recipe reader imports, so the
command line that imports `come.cli` lives here and not there)."""

from __future__ import annotations

from come.compress import CompressConfig, compress


def add_parser(sub) -> None:
    from come.cli import add_output_args, add_recipe_args, add_trust_remote_code_arg
    from come.cliargs import add_config_args
    from come.hub import add_push_args

    p = sub.add_parser("compress", help="prune, recover by distillation and evaluate, into one folder (resumable)")
    add_config_args(p, CompressConfig)
    add_trust_remote_code_arg(p)
    add_output_args(p, required=False)
    p.add_argument("--resume", action="store_true",
                   help="go on from the stages an interrupted run finished (OUT.partial), with the same settings")
    add_recipe_args(p)
    add_push_args(p)
    p.set_defaults(func=cmd_compress)


def cmd_compress(args) -> int:
    from come.cli import print_recipe, require
    from come.cliargs import config_from_args
    from come.hub import check_push, push_and_print

    check_push(args.push_to_hub, args.private)
    require(args, "model")
    cfg = config_from_args(CompressConfig, args, out=args.out, overwrite=args.overwrite, resume=args.resume)
    if args.print_config:
        return print_recipe(cfg.validate(), args.out)
    require(args, "out", "recover")
    res = compress(cfg)
    print(f"wrote {res.out}: {', '.join(res.stages)}; card {res.out / 'README.md'}")
    push_and_print(res.out, args.push_to_hub, args.private)
    return 0

"""The `come` command line. Each subcommand is a thin layer over the Python API."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import os
import sys

from come.errors import ComeError


def add_common_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dtype", default="auto",
                   help="auto (float32 on CPU, else the checkpoint dtype), float32, bfloat16, float16")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="load a model folder that ships its own Python code (auto_map), RUNNING that code; "
                   "without it such folders are refused")


def add_target_args(p: argparse.ArgumentParser) -> None:
    """The model and how deep it must become (prune, compare); both may come from --config instead."""
    p.add_argument("model", nargs="?", default=None,
                   help="HF model folder, hub id, or alias (smollm2-135m); or `model:` in --config")
    t = p.add_mutually_exclusive_group()
    t.add_argument("--target-layers", type=int, help="number of decoder layers to keep")
    t.add_argument("--sparsity", type=float, help="fraction of ALL parameters to remove, rounded to whole layers")


def add_loss_samples_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--loss-samples", type=int, default=None,
                   help="windows used for loss trials (sleb, laco, come-p, --pair-score loss, --drop-candidates), "
                   "rounded up to whole batches (default: all)")


def add_output_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    """--out (required, unless a recipe may give it: then the command checks it) and --overwrite."""
    p.add_argument("--out", required=required, default=None,
                   help="output folder (must be empty or absent, unless --overwrite)"
                   + ("" if required else "; or `out:` in --config"))
    p.add_argument("--overwrite", action="store_true", help="replace what --out holds")


def add_recipe_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("recipe")
    g.add_argument("--config", metavar="RECIPE.yaml", default=None,
                   help="settings from a YAML recipe (keys = the config dataclass's fields, see recipes/); flags "
                   "given on the command line win")
    g.add_argument("--print-config", action="store_true", help="print the effective recipe (YAML) and exit")


def add_dry_run_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("dry run")
    g.add_argument("--dry-run", action="store_true",
                   help="from the model's config alone (no weights read): layers and parameters after, where "
                   "weights and the calibration cache would live, estimated peak GPU and CPU memory, calibration "
                   "passes; then exit")
    g.add_argument("--gpu-memory", default=None, metavar="SIZE",
                   help="with --dry-run: plan for a GPU with this much free memory (e.g. 80GiB, 24GB) instead of "
                   "the one present")


def require(args, *names: str) -> None:
    """Settings argparse cannot require because a recipe may give them: a one-line error when absent."""
    for name in names:
        if getattr(args, name, None) is None:
            flag = "MODEL" if name == "model" else "--" + name.replace("_", "-")
            raise ComeError(f"give {flag} (or `{name}:` in the --config recipe)")


def print_recipe(cfg, out: str | None) -> int:
    from come import recipe

    print(recipe.dump(recipe.of(cfg, out)), end="")
    return 0


def add_placement_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("memory")
    g.add_argument("--offload", default="auto", choices=["auto", "always", "never"],
                   help="keep the weights in CPU memory and stream one layer at a time to the GPU (auto: when the "
                   "weights do not fit in 80%% of its free memory; this is how a 70B model prunes on one GPU)")
    g.add_argument("--store-device", default=None,
                   help="where the cached hidden states live (default: the GPU if they fit beside the weights, "
                   "else cpu)")


def add_calib_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("calibration")
    g.add_argument("--calib-data", default="mix",
                   help="mix (bundled mixture of six real domains, the default), one of its domains, wiki-passages "
                   "(contaminates BoolQ), wikitext2, c4, or a .txt/.jsonl/.parquet/datasets folder")
    g.add_argument("--calib-samples", type=int, default=32, help="number of windows")
    g.add_argument("--calib-seq-len", type=int, default=2048, help="tokens per window")
    g.add_argument("--batch-size", type=int, default=8)
    g.add_argument("--seed", type=int, default=0)


def calib_config(args):
    from come.config import CalibConfig

    return CalibConfig(args.calib_data, args.calib_samples, args.calib_seq_len, args.batch_size, args.seed)


def add_prune_parser(sub) -> None:
    p = sub.add_parser("prune", help="compress a model by merging (or dropping) layers; writes an HF folder + plan")
    add_target_args(p)
    p.add_argument("--method", default="come", help=f"one of {', '.join(method_names())}; docs/methods.md")
    p.add_argument("--norm", default="mean", choices=["mean", "fold"], help="norm handling of a merged layer")
    p.add_argument("--pair-score", default="angular", choices=["angular", "loss"], help="how the pair is chosen")
    p.add_argument("--pair-tokens", default="last", choices=["last", "all"], help="tokens of the angular score")
    p.add_argument("--remerge", action="store_true", help="allow merging layers that are already merges")
    p.add_argument("--grid", type=int, default=20, help="CoMe-P ratio grid size g")
    p.add_argument("--reconstruct", action="store_true",
                   help="come/come-p: ridge re-fit of each merged layer's o_proj/down_proj (always on in come-plus)")
    p.add_argument("--refit-target", default="pair", choices=["pair", "dense"],
                   help="come-plus: re-fit to the current pair's output or to the dense model's")
    p.add_argument("--refit-prior", default="merged", choices=["merged", "zero"],
                   help="re-fit: the ridge pulls toward the merged layer's own weights (default) or toward zero")
    p.add_argument("--save-dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="dtype of the saved weights (auto: the original checkpoint's, whatever --dtype computed in)")
    p.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="a method option, repeatable (laco: C=4, I=2, T=0.65, L=1; docs/methods.md)")
    p.add_argument("--drop-candidates", action="store_true",
                   help="come family: each step, SLEB's best single-layer drop competes with the merge by "
                   "calibration NLL")
    add_loss_samples_arg(p)
    add_calib_args(p)
    add_common_model_args(p)
    add_placement_args(p)
    add_dry_run_args(p)
    add_output_args(p, required=False)
    add_recipe_args(p)
    p.set_defaults(func=cmd_prune)


def method_names() -> list[str]:
    from come.methods import METHODS

    return sorted(METHODS)


def cmd_prune(args) -> int:
    from come import preflight
    from come.config import PruneConfig
    from come.io import check_output_dir
    from come.methods import parse_option_args
    from come.prune import prune, summary_text

    require(args, "model")
    cfg = PruneConfig(
        model=args.model, target_layers=args.target_layers, sparsity=args.sparsity, method=args.method,
        norm=args.norm, pair_score=args.pair_score, pair_tokens=args.pair_tokens, remerge=args.remerge,
        grid=args.grid, loss_samples=args.loss_samples, refit_target=args.refit_target, reconstruct=args.reconstruct,
        refit_prior=args.refit_prior, ratio_power=getattr(args, "ratio_power", 1.0),
        drop_candidates=args.drop_candidates, method_options=parse_option_args(args.option),
        save_dtype=args.save_dtype,
        calib=calib_config(args),
        dtype=args.dtype,
        device=args.device,
        offload=args.offload,
        store_device=args.store_device,
    )
    cfg.validate()
    if args.print_config:
        return print_recipe(cfg, args.out)
    if args.dry_run:
        from come.dryrun import dry_run

        print(dry_run(cfg, gpu_memory=args.gpu_memory).text())
        return 0
    require(args, "out")
    check_output_dir(args.out, args.overwrite, **preflight.prune(cfg))  # fail before the expensive part
    result = prune(cfg)
    out = result.save(args.out, args.overwrite)
    print(summary_text(result.plan))
    print(f"wrote {out}")
    return 0


def add_apply_parser(sub) -> None:
    p = sub.add_parser("apply", help="replay a plan on the original model and save the result")
    p.add_argument("plan", help="a come_plan.json or a folder that holds one")
    p.add_argument("--model", default=None, help="the original model (default: the one the plan names)")
    p.add_argument("--target-layers", type=int, default=None,
                   help="replay a progressive plan only until the model has N layers (every depth on the way "
                   "to the plan's target comes from the same run)")
    add_common_model_args(p)
    p.add_argument("--save-dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="dtype of the saved weights (auto: the original checkpoint's)")
    p.add_argument("--force", action="store_true",
                   help="apply the plan to a model of its shape whose config or weights differ from the ones it was "
                   "made from (a model of another shape is always refused)")
    add_output_args(p)
    p.set_defaults(func=cmd_apply)


def cmd_apply(args) -> int:
    import dataclasses
    import shlex

    from come import preflight
    from come.card import display_name
    from come.io import check_output_dir, write_output_dir
    from come.models import count_params, load_config, load_model, save_dtype_for
    from come.plan import PLAN_FILE, Plan, apply_plan, base_model_path
    from come.prune import describe, resolve_device, save_model

    plan = Plan.load(args.plan)
    if args.target_layers is not None:
        plan = progressive_prefix(plan, args.target_layers)
    name = base_model_path(plan, args.model, args.plan)  # a local base: by folder name, never the hub
    check_output_dir(args.out, args.overwrite, **preflight.apply(  # all before any weights load
        plan, args.plan, name, args.dtype, resolve_device(args.device), args.save_dtype, args.force))
    save_dtype = save_dtype_for(args.save_dtype, load_config(name)[0])
    model, tok, _ = load_model(name, args.dtype, resolve_device(args.device))
    apply_plan(model, plan)
    plan = dataclasses.replace(plan, stats={**plan.stats, "layers_after": model.config.num_hidden_layers,
                                            "params_after": count_params(model), "replayed": True})
    cut = [] if args.target_layers is None else ["--target-layers", str(args.target_layers)]
    command = shlex.join(["come", "apply", PLAN_FILE, "--model", display_name(name), *cut, "--out", "OUT"])

    def write(folder):
        save_model(model, folder, save_dtype)
        tok.save_pretrained(folder)
        plan.save(folder / PLAN_FILE)
        describe(folder, plan, "apply", command)

    write_output_dir(args.out, args.overwrite, write)  # when saving fails: a fallback folder, named in the error
    print(f"wrote {args.out} ({model.config.num_hidden_layers} layers)")
    return 0


def progressive_prefix(plan, num_layers: int):
    """`plan` cut at `num_layers`, refused for methods whose shallower depths are not prefixes of a deeper run."""
    from come.methods import METHODS, is_progressive

    if plan.method in METHODS and not is_progressive(plan.method):
        raise ComeError(f"a {plan.method} plan is not progressive (each depth picks its own layers): "
                        f"run `come prune --method {plan.method} --target-layers {num_layers}` instead")
    return plan.prefix(num_layers)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, unless its help already speaks of it or there is none to show."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return super()._get_help_string(action)

    def _split_lines(self, text, width):
        import textwrap

        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)  # reverse-keep-last stays whole


def version() -> str:
    """The installed package's version (pyproject.toml is the one place it is written)."""
    import come

    return come.__version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="come", description="Compress LLMs by merging their layers (CoMe).")
    parser.add_argument("-v", "--verbose", action="store_true", help="show library logs and full tracebacks")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    add_prune_parser(sub)
    add_apply_parser(sub)
    for module in SUBCOMMAND_MODULES:
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module).add_parser(sub)
    for p in sub.choices.values():
        p.formatter_class = HelpFormatter
    parser.come_commands = sub.choices  # the subcommands' parsers, for --config
    return parser


def with_recipe(parser: argparse.ArgumentParser, argv: list[str] | None, args: argparse.Namespace):
    """`args` parsed again with the --config recipe as the subcommand's defaults (flags given still win)."""
    from come import recipe

    flat = recipe.load(args.config, args.command)
    recipe.apply(args.command, flat, parser.come_commands[args.command], args)
    return parser.parse_args(argv)


# Further subcommands live beside their code; each module exposes add_parser(subparsers).
SUBCOMMAND_MODULES = ["come.eval.cli", "come.compare", "come.distillation.cli"]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.verbose:
        logging.getLogger("transformers").setLevel(logging.ERROR)
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from come.io import Terminated, handle_sigterm
    from come.models import allow_remote_code

    handle_sigterm()  # like Ctrl-C: temporaries are removed, a compare keeps its finished rows
    allow_remote_code(getattr(args, "trust_remote_code", False))
    try:
        if getattr(args, "config", None):
            args = with_recipe(parser, argv, args)
        return args.func(args)
    except ComeError as e:
        if args.verbose:
            raise
        print(f"come: error: {e}", file=sys.stderr)
        return 2
    except Terminated:
        print("come: terminated (SIGTERM)", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("come: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

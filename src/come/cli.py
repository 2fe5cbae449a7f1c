"""The `come` command line. Each subcommand is a thin layer over the Python API."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import os
import sys

from come.errors import ComeError
from come.hub import add_push_args, check_push, push_and_print


def add_common_model_args(p: argparse.ArgumentParser) -> None:
    """--dtype and --device (as `come prune` has them) and --trust-remote-code."""
    from come.cliargs import add_config_args
    from come.config import PruneConfig

    add_config_args(p, PruneConfig, only=("dtype", "device"))
    add_trust_remote_code_arg(p)


def add_trust_remote_code_arg(p: argparse.ArgumentParser) -> None:
    """The flags on what a model load accepts: --trust-remote-code and --allow-nonfinite."""
    p.add_argument("--trust-remote-code", action="store_true",
                   help="load a model folder that ships its own Python code (auto_map), RUNNING that code; "
                   "without it such folders are refused")
    p.add_argument("--allow-nonfinite", action="store_true",
                   help="load a model whose weights hold NaN or infinite values (refused without it)")


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
    g.add_argument("--cpu-memory", default=None, metavar="SIZE",
                   help="with --dry-run: plan for a machine with this much CPU memory available (e.g. 128GiB) "
                   "instead of this one's (it decides whether the calibration cache goes to disk)")


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


def add_prune_parser(sub) -> None:
    from come.cliargs import add_config_args, more
    from come.config import PruneConfig

    p = sub.add_parser("prune", help="compress a model by merging (or dropping) layers; writes an HF folder + plan")
    add_config_args(p, PruneConfig)  # every setting, from PruneConfig's fields (calibration, memory included)
    add_trust_remote_code_arg(p)
    add_dry_run_args(p)
    add_output_args(p, required=False)
    add_push_args(p)
    g = p.add_argument_group("run")
    g.add_argument("--resume", action="store_true",
                   help="go on from the checkpoint a killed run left beside --out (.NAME.resume): the same plan as "
                   "an uninterrupted run")
    g.add_argument("--summary", action="store_true", help="print the whole summary (merge tree, steps) to stdout")
    add_recipe_args(p)
    # the front door lists what most runs need; --help-all the rest
    more(p, "--trust-remote-code", "--allow-nonfinite", "--gpu-memory", "--cpu-memory", "--summary", "--print-config")
    p.set_defaults(func=cmd_prune)


def cmd_prune(args) -> int:
    from come import preflight
    from come.cliargs import config_from_args
    from come.config import PruneConfig
    from come.io import check_output_dir, output_lock
    from come.plan import PLAN_FILE
    from come.prune import SUMMARY_FILE, prune, summary_text

    check_push(args.push_to_hub, args.private)  # offline or no token: refused before anything else
    require(args, "model")
    cfg = config_from_args(PruneConfig, args)
    cfg.validate()
    if args.print_config:
        return print_recipe(cfg, args.out)
    if args.dry_run:
        from come.dryrun import dry_run

        print(dry_run(cfg, gpu_memory=args.gpu_memory, cpu_memory=args.cpu_memory).text())
        return 0
    require(args, "out")
    check_output_dir(args.out, args.overwrite, **preflight.prune(cfg))  # fail before the expensive part
    from come import resume

    checkpoint = resume.checkpoint_for(args.out)
    with output_lock(args.out):  # a second run on this --out is refused: it would replace our checkpoint
        if checkpoint.exists() and not args.resume:
            logging.getLogger("come").warning("a checkpoint of an interrupted run is in %s: starting over; it is "
                                              "replaced once this run has made its first step (pass --resume to "
                                              "go on from it)", checkpoint)
        try:
            result = prune(cfg, checkpoint=checkpoint, resume=args.resume)
            out = result.save(args.out, args.overwrite)
        except BaseException:
            if (checkpoint / PLAN_FILE).exists():
                logging.getLogger("come").warning("the plan so far is in %s: add --resume to go on from it",
                                                  checkpoint)
            raise
        resume.remove(checkpoint)  # the output is complete: nothing to go on from
    if args.summary:
        print(summary_text(result.plan))
    s = result.plan.stats
    print(f"wrote {out}: {s['layers_before']} -> {s['layers_after']} layers, {s['params_after']:,} parameters "
          f"({s['wall_time_s']:.0f} s); summary in {out / SUMMARY_FILE}")
    push_and_print(out, args.push_to_hub, args.private)
    return 0


def add_compare_parser(sub) -> None:
    from come.compare.cli_args import add_compare_args

    p = sub.add_parser("compare", help="prune with several methods on the same calibration and compare them")
    add_compare_args(p)  # every setting, from CompareConfig's fields
    add_trust_remote_code_arg(p)
    add_output_args(p, required=False)
    add_dry_run_args(p)
    add_recipe_args(p)
    p.set_defaults(func=cmd_compare)


def cmd_compare(args) -> int:
    from come.cliargs import config_from_args
    from come.compare.cli_args import dry_run_text, run_and_print
    from come.compare.config import CompareConfig

    require(args, "model")
    cfg = config_from_args(CompareConfig, args)
    if args.print_config:
        return print_recipe(cfg.validate(), args.out)
    if args.dry_run:
        print(dry_run_text(cfg, args.gpu_memory, args.cpu_memory))
        return 0
    require(args, "out")
    return run_and_print(cfg)


def add_apply_parser(sub) -> None:
    from come.cliargs import add_config_args
    from come.config import PruneConfig

    p = sub.add_parser("apply", help="replay a plan on the original model and save the result")
    p.add_argument("plan", help="a come_plan.json or a folder that holds one")
    p.add_argument("--model", default=None, help="the original model (default: the one the plan names)")
    p.add_argument("--target-layers", type=int, default=None,
                   help="replay a progressive plan only until the model has N layers (every depth on the way "
                   "to the plan's target comes from the same run)")
    add_common_model_args(p)
    add_config_args(p, PruneConfig, only=("save_dtype",))
    p.add_argument("--force", action="store_true",
                   help="apply the plan to a model of its shape whose config or weights differ from the ones it was "
                   "made from (a model of another shape is always refused)")
    add_output_args(p)
    add_push_args(p)
    p.set_defaults(func=cmd_apply)


def cmd_apply(args) -> int:
    import dataclasses
    import shlex

    from come import preflight
    from come.card import display_name
    from come.finite import check_finite_weights
    from come.io import check_output_dir, output_lock, write_output_dir
    from come.models import count_params, load_config, load_model, save_dtype_for
    from come.plan import PLAN_FILE, Plan, apply_plan, base_model_path
    from come.prune import describe, resolve_device, save_model

    check_push(args.push_to_hub, args.private)  # offline or no token: refused before anything else
    plan = Plan.load(args.plan)
    if args.target_layers is not None:
        plan = progressive_prefix(plan, args.target_layers)
    name = base_model_path(plan, args.model, args.plan)  # a local base: by folder name, never the hub
    check_output_dir(args.out, args.overwrite, **preflight.apply(  # all before any weights load
        plan, args.plan, name, args.dtype, resolve_device(args.device), args.save_dtype, args.force))
    save_dtype = save_dtype_for(args.save_dtype, load_config(name)[0])
    model, tok, _ = load_model(name, args.dtype, resolve_device(args.device))
    check_finite_weights(model, name)
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

    with output_lock(args.out):
        write_output_dir(args.out, args.overwrite, write)  # when saving fails: a fallback folder, named in the error
    print(f"wrote {args.out} ({model.config.num_hidden_layers} layers)")
    push_and_print(args.out, args.push_to_hub, args.private)
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
        empty = action.default in (None, False, argparse.SUPPRESS, "", [], {})
        if "default" in text or empty or not action.option_strings:
            return text
        return super()._get_help_string(action)

    def _split_lines(self, text, width):
        import textwrap

        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)  # reverse-keep-last stays whole


def version() -> str:
    """The installed package's version (pyproject.toml is the one place it is written)."""
    import come

    return come.__version__


class Parser(argparse.ArgumentParser):
    """argparse's parser whose errors are one line, like every other refusal (not the whole usage block)."""

    def error(self, message: str):
        self.exit(2, f"come: error: {message}{retired_flags(message)} (`{self.prog} --help` lists the flags)\n")


def retired_flags(message: str) -> str:
    """For "unrecognized arguments: --reconstruct ...": where flags of settings an older come offered went."""
    if not message.startswith("unrecognized arguments:"):
        return ""
    from come.config import FORMER_FIELDS, RETIRED_AFTER

    said = []
    for word in message.split(":", 1)[1].split():
        key = word.split("=", 1)[0].lstrip("-").replace("-", "_")
        if word.startswith("--") and key in FORMER_FIELDS:
            went = FORMER_FIELDS[key][1] or "an option of the CoMe methods now: pass it after --method"
            said.append(f"{word.split('=', 1)[0]} was a setting until commit {RETIRED_AFTER}: {went}")
    return f" ({'; '.join(said)})" if said else ""


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="come", description="Compress LLMs by merging their layers (CoMe).")
    parser.add_argument("-v", "--verbose", action="store_true", help="show library logs and full tracebacks")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="no progress bars or step messages: only results, warnings and errors")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    add_prune_parser(sub)
    add_apply_parser(sub)
    add_compare_parser(sub)
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
    from come.cliargs import quiet_aliases

    flat = recipe.load(args.config, args.command)
    recipe.apply(args.command, flat, parser.come_commands[args.command], args)
    with quiet_aliases():  # the first parse printed them
        return parser.parse_args(argv)


# Further subcommands live beside their code; each module exposes add_parser(subparsers).
SUBCOMMAND_MODULES = ["come.eval.cli", "come.distillation.cli", "come.compress_cli"]


def setup_logging(quiet: bool) -> None:
    """The library's messages (logger `come`) to stderr, one line each; --quiet keeps warnings only."""
    log = logging.getLogger("come")
    if not any(isinstance(h, _Stderr) for h in log.handlers):
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.propagate = False
    log.setLevel(logging.WARNING if quiet else logging.INFO)


def quiet_libraries() -> None:
    """Switch off the progress bars of transformers, huggingface_hub and datasets for this process."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if "datasets" in sys.modules:
        sys.modules["datasets"].disable_progress_bars()


class _Stderr(logging.StreamHandler):
    """A handler writing to whatever sys.stderr is at the time of the message (a caller may replace it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except ComeError as e:  # a value outside a flag's choices: one line, like every other bad input
        print(f"come: error: {e}", file=sys.stderr)
        return 2
    if not args.verbose:
        logging.getLogger("transformers").setLevel(logging.ERROR)
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if args.quiet:  # the libraries' own bars too (transformers' "Loading weights", the hub's and datasets')
        quiet_libraries()
    setup_logging(args.quiet)
    from come.io import Terminated, handle_sigterm
    from come.models import allow_remote_code

    handle_sigterm()  # like Ctrl-C: temporaries are removed, a compare keeps its finished rows
    allow_remote_code(getattr(args, "trust_remote_code", False))
    allow = getattr(args, "allow_nonfinite", False)
    if allow or "come.finite" in sys.modules:  # set, or reset after an earlier call in this process
        from come.finite import allow_nonfinite

        allow_nonfinite(allow)
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

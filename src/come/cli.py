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


def add_target_args(p: argparse.ArgumentParser) -> None:
    """The model and how deep it must become (prune, compare)."""
    p.add_argument("model", help="HF model folder, hub id, or alias (smollm2-135m)")
    t = p.add_mutually_exclusive_group(required=True)
    t.add_argument("--target-layers", type=int, help="number of decoder layers to keep")
    t.add_argument("--sparsity", type=float, help="fraction of ALL parameters to remove, rounded to whole layers")


def add_loss_samples_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--loss-samples", type=int, default=None,
                   help="windows used for loss trials (sleb, laco, come-p, --pair-score loss, --drop-candidates), "
                   "rounded up to whole batches (default: all)")


def add_output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder (must be empty or absent, unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace what --out holds")


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
    p.add_argument("--method", default="come", help="come (default), come-p, or another registered method")
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
    add_output_args(p)
    p.set_defaults(func=cmd_prune)


def cmd_prune(args) -> int:
    from come.config import PruneConfig
    from come.io import check_output_dir
    from come.methods import parse_option_args
    from come.prune import prune, summary_text

    cfg = PruneConfig(
        model=args.model, target_layers=args.target_layers, sparsity=args.sparsity, method=args.method,
        norm=args.norm, pair_score=args.pair_score, pair_tokens=args.pair_tokens, remerge=args.remerge,
        grid=args.grid, loss_samples=args.loss_samples, refit_target=args.refit_target, reconstruct=args.reconstruct,
        refit_prior=args.refit_prior,
        drop_candidates=args.drop_candidates, method_options=parse_option_args(args.option),
        save_dtype=args.save_dtype,
        calib=calib_config(args),
        dtype=args.dtype,
        device=args.device,
        offload=args.offload,
        store_device=args.store_device,
    )
    cfg.validate()
    check_output_dir(args.out, args.overwrite)  # fail before the expensive part
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
    add_output_args(p)
    p.set_defaults(func=cmd_apply)


def cmd_apply(args) -> int:
    from come.io import atomic_output_dir, check_output_dir
    from come.models import load_config, load_model, save_dtype_for
    from come.plan import PLAN_FILE, Plan, apply_plan
    from come.prune import save_model

    plan = Plan.load(args.plan)
    if args.target_layers is not None:
        plan = progressive_prefix(plan, args.target_layers)
    check_output_dir(args.out, args.overwrite)
    name = args.model or plan.base_model["name"]
    save_dtype = save_dtype_for(args.save_dtype, load_config(name)[0])
    model, tok, _ = load_model(name, args.dtype, "cpu" if args.device == "auto" else args.device)
    apply_plan(model, plan)
    with atomic_output_dir(args.out, args.overwrite) as tmp:
        save_model(model, tmp, save_dtype)
        tok.save_pretrained(tmp)
        plan.save(tmp / PLAN_FILE)
    print(f"wrote {args.out} ({model.config.num_hidden_layers} layers)")
    return 0


def progressive_prefix(plan, num_layers: int):
    """`plan` cut at `num_layers`, refused for methods whose shallower depths are not prefixes of a deeper run."""
    from come.methods import METHODS, is_progressive

    if plan.method in METHODS and not is_progressive(plan.method):
        raise ComeError(f"a {plan.method} plan is not progressive (each depth picks its own layers): "
                        f"run `come prune --method {plan.method} --target-layers {num_layers}` instead")
    return plan.prefix(num_layers)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="come", description="Compress LLMs by merging their layers (CoMe).")
    parser.add_argument("-v", "--verbose", action="store_true", help="show library logs and full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    add_prune_parser(sub)
    add_apply_parser(sub)
    for module in SUBCOMMAND_MODULES:
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module).add_parser(sub)
    return parser


# Further subcommands live beside their code; each module exposes add_parser(subparsers).
SUBCOMMAND_MODULES = ["come.eval.cli", "come.compare", "come.distillation.cli"]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.verbose:
        logging.getLogger("transformers").setLevel(logging.ERROR)
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        return args.func(args)
    except ComeError as e:
        if args.verbose:
            raise
        print(f"come: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("come: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

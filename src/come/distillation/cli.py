"""`come distill`: recover a pruned model by distillation from its teacher, or by the LoRA baseline."""

from __future__ import annotations

import os

from come.cli import add_common_model_args, add_output_args, add_recipe_args


def add_parser(sub) -> None:
    p = sub.add_parser("distill", help="distil a pruned model from its teacher (layer-wise, global) or LoRA-tune it")
    p.add_argument("--student", default=None,
                   help="folder written by `come prune` (HF model + come_plan.json); required, here or in --config")
    p.add_argument("--teacher", default=None, help="the original model (default: the one the plan names)")
    p.add_argument("--stage", default="both", choices=["layerwise", "global", "both", "lora"],
                   help="layerwise (teacher-forced), global (hierarchical), both, or lora (LM-loss baseline)")
    p.add_argument("--loss", default="", help="loss weights, e.g. mse=1,cos=0,kl=0.1,logits=1 "
                   "(mse/cos/kl at each correspondence point, logits = KL on final logits)")
    p.add_argument("--temperature", type=float, default=1.0, help="KL temperature")
    p.add_argument("--train", default="merged", choices=["merged", "all", "norms", "lora"],
                   help="what the global stage trains")
    p.add_argument("--data", default="mix", help="training text: mix (the bundled calibration mixture), "
                   "wikitext2, c4, or a .txt/.jsonl/.parquet/datasets folder")
    budget = p.add_mutually_exclusive_group()  # one of them is required, here or in --config
    budget.add_argument("--tokens", type=int, help="training tokens per stage")
    budget.add_argument("--steps", type=int, help="optimizer steps per stage")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=4, help="windows per micro-batch, over all processes")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-4, help="learning rate of full weights")
    p.add_argument("--lora-lr", type=float, default=1e-3, help="learning rate of LoRA adapters")
    p.add_argument("--warmup", type=float, default=0.1, help="warm-up fraction of the steps")
    p.add_argument("--min-lr-ratio", type=float, default=0.1, help="the cosine schedule ends at lr x this")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--clip", type=float, default=1.0, help="max gradient norm per layer (0: off)")
    p.add_argument("--autocast", action="store_true", help="bf16 autocast (GPUs)")
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--lora-alpha", type=float, default=16.0)
    p.add_argument("--checkpoint-every", type=int, default=0, help="checkpoint every N steps (0: never)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")
    p.add_argument("--ppl-windows", type=int, default=0,
                   help="measure perplexity on N evaluation windows before and after each stage (0: skip)")
    p.add_argument("--ppl-data", default="wiki-passages")
    p.add_argument("--ppl-seq-len", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--strategy", default="ddp", choices=["ddp", "fsdp"],
                   help="several processes (torchrun): ddp keeps a full teacher and student on each; fsdp shards "
                   "both over all processes (FSDP2), for students that do not fit one device")
    p.add_argument("--save-dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="dtype of the saved weights (auto: the student checkpoint's)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the memory each process needs per stage under ddp and fsdp (from the configs, no "
                   "weights read) and stop")
    p.add_argument("--world-size", type=int, default=None,
                   help="processes the --dry-run estimate is for (default: this run's)")
    add_common_model_args(p)
    add_output_args(p, required=False)
    add_recipe_args(p)
    p.set_defaults(func=cmd_distill)


def cmd_distill(args) -> int:
    from dataclasses import fields

    from come.cli import print_recipe, require
    from come.distillation.train import DistillConfig, distill, summary_text

    require(args, "student")
    keys = [f.name for f in fields(DistillConfig) if f.name != "progress"]
    cfg = DistillConfig(**{k: getattr(args, k) for k in keys})
    if args.dry_run:
        from come.distillation.memory import dry_run

        print(dry_run(cfg, args.world_size), end="")
        return 0
    if args.print_config:
        return print_recipe(cfg.validate(), None)
    require(args, "out")
    result = distill(cfg)
    if os.environ.get("RANK", "0") == "0":
        print(summary_text(result.summary), end="")
        print(f"wrote {result.out}")
    return 0

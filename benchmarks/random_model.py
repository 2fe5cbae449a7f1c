"""A randomly initialised model of a real architecture's shape, saved as an HF folder (safetensors) with the
bundled SmolLM2 tokenizer (its ids fit any larger vocabulary): a stand-in to measure cost at scale without
downloading weights. Its perplexities mean nothing; its time and memory are those of the real shape.

    python benchmarks/random_model.py tests/data/configs/llama-3-8b --out /tmp/llama3-8b-random --dtype bfloat16
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", help="a folder with config.json (e.g. tests/data/configs/llama-3-8b)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--layers", type=int, default=None, help="override num_hidden_layers")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--device", default="cpu", help="where to initialise (cuda is much faster for large shapes)")
    args = ap.parse_args()
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from come.assets import smollm2_dir

    config = AutoConfig.from_pretrained(args.config)
    if args.layers:
        config.num_hidden_layers = args.layers
    torch.manual_seed(0)
    with torch.device(args.device):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, args.dtype))
    model.save_pretrained(args.out)
    AutoTokenizer.from_pretrained(smollm2_dir()).save_pretrained(args.out)
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {Path(args.out)}: {config.model_type}, {config.num_hidden_layers} layers, {n / 1e9:.2f} B parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())

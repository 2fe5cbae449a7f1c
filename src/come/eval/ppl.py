"""Perplexity over non-overlapping windows of a text source (GPTQ/SliceGPT protocol)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from come.corpora import FINAL, FINAL_DOMAINS, OOD, OOD_DOMAINS
from come.data import NAMED_SOURCES, load_text, split_windows, tokenize
from come.errors import ComeError
from come.eval.report import ood_geomean  # noqa: F401  (importable here too)


def expand_sources(spec: str | list[str]) -> list[str]:
    """Perplexity sources from a comma list (or list); `ood` stands for every held-out domain of its suite,
    `final` for every set-aside domain."""
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for n in (n.strip() for n in names):
        for src in (OOD_DOMAINS if n == OOD else FINAL_DOMAINS if n == FINAL else (n,) if n else ()):
            if src not in out:
                out.append(src)
    return out


def check_seq_len(model, seq_len: int) -> None:
    """Refuse windows longer than the model's context."""
    if seq_len < 2:
        raise ComeError(f"--ppl-seq-len {seq_len} is too small: pass at least 2 (e.g. 128 or 2048)")
    ctx = getattr(model.config, "max_position_embeddings", None)
    if ctx is not None and seq_len > ctx:
        raise ComeError(f"--ppl-seq-len {seq_len} exceeds the model context ({ctx}): pass at most {ctx}")


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer starts the text it encodes with BOS (Gemma's and Llama's do, SmolLM2's does not): a
    model trained that way is measured that way, or its first tokens score far worse than it deserves."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    ids = tokenizer("a", add_special_tokens=True, return_attention_mask=False)["input_ids"]
    return bool(ids) and ids[0] == bos


def eval_windows(tokenizer, source: str, seq_len: int, bos: bool | None = None, max_windows: int | None = None):
    """Token windows [n, seq_len] of the evaluation part of `source`; with `bos` each starts with BOS (None: when
    the tokenizer adds BOS itself, `adds_bos`).

    With BOS a window holds BOS + seq_len - 1 text tokens, so windows stay `seq_len` long either way.
    """
    if bos is None:
        bos = adds_bos(tokenizer)
    tokens = tokenize(tokenizer, load_text(source, "eval"))
    if not bos:
        windows = split_windows(tokens, seq_len, f"perplexity ({source})")
    else:
        if tokenizer.bos_token_id is None:
            raise ComeError("the tokenizer has no BOS token: evaluate perplexity without --ppl-bos")
        text = split_windows(tokens, seq_len - 1, f"perplexity ({source})")
        windows = torch.cat([torch.full((text.shape[0], 1), tokenizer.bos_token_id), text], dim=1)
    if max_windows is not None:
        if max_windows < 1:
            raise ComeError(f"--ppl-max-windows {max_windows} must be at least 1")
        windows = windows[:max_windows]
    return windows


@torch.no_grad()
def window_nll(model, windows: torch.Tensor, batch_size: int = 8, progress: bool = True,
               per_window: list[float] | None = None) -> tuple[float, int]:
    """Summed next-token NLL (float64) and number of scored tokens over `windows` [n, L].

    With `per_window` (a list), the mean NLL of every window is appended to it, in window order.
    """
    device = next(model.parameters()).device
    total, count = 0.0, 0
    batches = range(0, windows.shape[0], batch_size)
    for i in tqdm(batches, desc="perplexity", unit="batch", disable=not progress):
        ids = windows[i : i + batch_size].to(device)
        logits = model(input_ids=ids, use_cache=False).logits
        for row, lg in zip(ids, logits, strict=True):  # one row at a time keeps the float32 logits small
            nll = F.cross_entropy(lg[:-1].float(), row[1:], reduction="sum")
            total += nll.double().item()
            count += row.numel() - 1
            if per_window is not None:
                per_window.append(nll.double().item() / (row.numel() - 1))
    return total, count


def perplexity(model, tokenizer, source: str, seq_len: int = 2048, max_windows: int | None = None,
               batch_size: int = 8, bos: bool | None = None, progress: bool = True) -> dict:
    """exp(mean next-token NLL) over non-overlapping `seq_len` windows of the evaluation part of `source`; `bos`:
    see `eval_windows` (the result records what was used)."""
    check_seq_len(model, seq_len)
    if batch_size < 1:
        raise ComeError(f"--eval-batch-size {batch_size} must be at least 1")
    if bos is None:
        bos = adds_bos(tokenizer)
    windows = eval_windows(tokenizer, source, seq_len, bos, max_windows)
    per_window: list[float] = []
    nll, count = window_nll(model, windows, batch_size, progress, per_window)
    return {
        "source": source,
        "part": "eval" if source in NAMED_SOURCES else "whole file",
        "ppl": math.exp(nll / count),
        "nll": nll / count,
        "seq_len": seq_len,
        "windows": int(windows.shape[0]),
        "tokens_scored": count,
        "bos": bos,
        "max_windows": max_windows,
        "window_nll": per_window,  # mean NLL of each window, in order (for intervals and paired comparisons)
    }

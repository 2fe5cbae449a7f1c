"""Near-duplicate detection between texts: calibration and training text must share nothing with evaluation text.

Two documents are near-duplicates when they share a span of N_WORDS consecutive words (lower-cased, punctuation
removed — the 13-gram test of GPT-3's contamination study) or begin with the same PREFIX_CHARS characters.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

N_WORDS = 13
PREFIX_CHARS = 200
_WORD = re.compile(r"[a-z0-9]+")


def spans(text: str, n: int = N_WORDS) -> set[int]:
    """Hashes of every run of `n` consecutive normalised words of `text` (a text shorter than `n` words: itself)."""
    words = _WORD.findall(text.lower())
    if len(words) < n:
        return {hash(tuple(words))} if words else set()
    return {hash(tuple(words[i : i + n])) for i in range(len(words) - n + 1)}


def prefix(text: str) -> str | None:
    text = " ".join(text.split())
    return text[:PREFIX_CHARS] if len(text) >= PREFIX_CHARS else None


class Index:
    """The spans and prefixes of a set of reference texts (e.g. every evaluation item)."""

    def __init__(self, texts: Iterable[str] = (), n: int = N_WORDS):
        self.n = n
        self.spans: set[int] = set()
        self.prefixes: set[str] = set()
        for t in texts:
            self.add(t)

    def add(self, text: str) -> None:
        self.spans |= spans(text, self.n)
        p = prefix(text)
        if p is not None:
            self.prefixes.add(p)

    def hits(self, text: str) -> bool:
        """True when `text` shares a span or its first PREFIX_CHARS characters with a reference text."""
        p = prefix(text)
        return (p is not None and p in self.prefixes) or not self.spans.isdisjoint(spans(text, self.n))


def overlapping(docs: Iterable[str], reference: Index) -> list[int]:
    """Indices of the `docs` that are near-duplicates of a reference text."""
    return [i for i, d in enumerate(docs) if reference.hits(d)]

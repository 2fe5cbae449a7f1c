"""Output folders that appear only when complete."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from come.errors import ComeError


def check_output_dir(out: str | Path, overwrite: bool = False) -> Path:
    """Refuse an existing non-empty folder (unless `overwrite`) before any work is done."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise ComeError(f"output {out} exists and is a file: pass a folder path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ComeError(f"output folder {out} exists and is not empty: pass --overwrite or another --out")
    return out


def write_text_atomic(path: Path, text: str) -> None:
    """Write `path` through a temporary file beside it, so a reader (or a crash) never sees half of it."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


@contextmanager
def atomic_output_dir(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `out`; on success it replaces `out`, on error it is removed."""
    out = check_output_dir(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

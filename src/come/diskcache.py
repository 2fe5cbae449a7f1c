"""The calibration cache on disk (`--store-device disk`, or chosen when CPU memory is short): each batch of a
layer boundary's hidden states is written once to a file in a run folder under `--cache-dir`, and every read maps
the file afresh (`torch.from_file`, a private memory map), so CPU memory holds only the batches in use. The
bytes are the tensor's own, so a run with the disk cache computes exactly what a run without it does.

The run folder is a hidden temporary of `come.io` (`.come-cache.tmp-XXXXXXXX`, recording its writer): it is
removed when the run ends, however it ends, and one that a killed run left behind is removed by the next run
that uses the same `--cache-dir`. A boundary's files go as soon as nothing refers to its states any more.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import weakref
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from come.errors import ComeError

RUN_NAME = "come-cache"  # the run folder is .come-cache.tmp-XXXXXXXX inside --cache-dir


def default_dir() -> Path:
    """Where the disk cache goes without --cache-dir: the system's temporary folder."""
    return Path(tempfile.gettempdir())


def check_cache_dir(folder: str | Path | None, need_bytes: int = 0) -> Path:
    """`--cache-dir` must be a writable folder (created when missing) with `need_bytes` free: a one-line error
    before any weights load."""
    from come.io import check_writable

    path = Path(folder).expanduser() if folder is not None else default_dir()
    if path.exists() and not path.is_dir():
        raise ComeError(f"--cache-dir {path} is a file: pass a folder for the disk-backed calibration cache")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ComeError(f"--cache-dir {path} cannot be created ({e.strerror or type(e).__name__}): pass a writable "
                        "folder") from None
    try:
        check_writable(path, need_bytes, f"--cache-dir {path}")
    except ComeError as e:
        raise ComeError(str(e).replace("pass an --out on", "pass a --cache-dir on")) from None
    return path


class DiskCache:
    """A run folder of cached states; `close()` removes it (also at exit, if the run forgot)."""

    def __init__(self, folder: str | Path | None = None):
        from come.io import new_temporary

        self.root = new_temporary(check_cache_dir(folder) / RUN_NAME)
        self._ids = itertools.count()
        self._finalizer = weakref.finalize(self, shutil.rmtree, str(self.root), True)

    def store(self, tensors: Iterable[torch.Tensor] = ()) -> DiskStates:
        """A boundary's states written to files of this cache (more can be appended)."""
        return DiskStates(self, tensors)

    def new_file(self) -> Path:
        return self.root / f"states-{next(self._ids)}.bin"

    def close(self) -> None:
        self._finalizer()

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive


class DiskStates(Sequence):
    """One boundary's states (one tensor per batch) in files of a `DiskCache`: reading an item maps its file and
    returns a CPU tensor of the original dtype and shape; the files are removed once this object is gone."""

    def __init__(self, cache: DiskCache, tensors: Iterable[torch.Tensor] = ()):
        self.cache, self.meta, self.paths = cache, [], []  # `paths` is shared with the finalizer
        weakref.finalize(self, _unlink, self.paths)
        for t in tensors:
            self.append(t)

    def append(self, t: torch.Tensor) -> None:
        """Write one batch's states (any device) to a file of its own."""
        path = str(self.cache.new_file())
        t = t.detach().to("cpu").contiguous()
        self.paths.append(path)
        with open(path, "wb") as f:
            if t.numel():
                f.write(memoryview(t.view(-1).view(torch.uint8).numpy()))
        self.meta.append((t.shape, t.dtype))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        shape, dtype = self.meta[i]
        numel = shape.numel()
        if numel == 0:
            return torch.empty(shape, dtype=dtype)
        return torch.from_file(self.paths[i], shared=False, size=numel, dtype=dtype).view(shape)

    def __iter__(self):
        return (self[i] for i in range(len(self)))


def _unlink(paths: list[str]) -> None:
    for p in list(paths):
        try:
            os.unlink(p)
        except OSError:
            pass

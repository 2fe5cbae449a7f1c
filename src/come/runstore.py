"""Run folders of long runs: `OUT.partial` while the run works, `OUT` once it is done.

`come compare` and `come distill` keep what a run has finished in `OUT.partial` (compare: one JSON record per
finished row under `rows/`; distill: its last checkpoint, a sub-folder with `state.json`), so that `--resume`
continues after an interruption. Records are written through a temporary file and sub-folders through a
temporary folder, each renamed into place, so a crash never leaves half of one behind; a temporary that a killed
run left is removed by the next run. The finished run replaces `OUT` by renames (`come.io.swap_in`), so a failure
leaves either the old or the new `OUT` whole.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from come.errors import ComeError
from come.io import OutputTaken, clean_stale_temporaries, publish, swap_in, write_output_dir, write_text_atomic

PARTIAL = ".partial"


class RunFolder:
    """The output folder `out` of a run and its unfinished twin `out.partial` (`what` names the run in errors)."""

    def __init__(self, out: str | Path, what: str = "run"):
        self.out = Path(out).expanduser()
        self.what = what

    @property
    def partial(self) -> Path:
        """`out.partial` (asked only once `out` is checked: `.` or `..` have no name to add to)."""
        return self.out.with_name(self.out.name + PARTIAL)

    # --- starting ---
    def claim(self, resume: bool, overwrite: bool) -> None:
        """Refuse to start afresh beside an interrupted run unless told: `resume` continues it, `overwrite`
        discards it (in `open`)."""
        if self.partial.exists() and not resume and not overwrite:
            raise ComeError(f"an interrupted {self.what} left {self.partial}: pass --resume to continue it or "
                            "--overwrite to start over")

    def open(self, resume: bool) -> Path:
        """The partial folder, created; without `resume` an earlier one is discarded first. Temporaries a killed
        run left in it are removed: they are never resumed from."""
        if not resume:
            self.discard()
        self.partial.mkdir(parents=True, exist_ok=True)
        self.drop_temporaries()
        return self.partial

    def discard(self) -> None:
        shutil.rmtree(self.partial, ignore_errors=True)

    def drop_temporaries(self) -> None:
        """Our own temporaries (`.NAME.tmp-*`, `.NAME.old-*` folders, `.NAME.tmp` files) in the partial folder and
        its sub-folders: a killed run left them, and they are no result."""
        if not self.partial.is_dir():
            return
        for folder in (self.partial, *(p for p in self.partial.iterdir() if p.is_dir() and not p.is_symlink())):
            clean_stale_temporaries(folder, max_age_s=0)

    # --- records ---
    def write_json(self, name: str, obj) -> Path:
        """`name` (a path inside the partial folder) holds `obj` as JSON, written whole or not at all."""
        return self.write_text(name, json.dumps(obj, indent=1) + "\n")

    def write_text(self, name: str, text: str) -> Path:
        path = self.partial / name
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, text)
        return path

    @staticmethod
    def read_json(path: Path) -> dict:
        """A record an earlier run wrote; an unreadable one is a one-line error that says how to go on."""
        try:
            return json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise ComeError(f"--resume: cannot read {path} ({e}): delete it, or pass --overwrite to start over") from e

    def earlier(self) -> Iterator[Path]:
        """The folders an earlier run left, oldest first: a finished `out`, then an unfinished `out.partial`."""
        yield from (f for f in (self.out, self.partial) if f.is_dir())

    def records(self, folder: Path, kind: str) -> list[dict]:
        """The JSON records `folder/kind/*.json`, in name order."""
        return [self.read_json(p) for p in sorted((folder / kind).glob("*.json"))]

    # --- sub-folders replaced whole (checkpoints) ---
    def staging(self, name: str) -> Path:
        """Where the next version of the sub-folder `name` is written before `commit` puts it in place."""
        return self.partial / f"{name}.tmp"

    def begin(self, name: str) -> Path:
        """An empty staging folder for the sub-folder `name`."""
        tmp = self.staging(name)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        return tmp

    def commit(self, name: str) -> Path:
        """The staged sub-folder replaces `name` by renames: the old or the new one is always whole."""
        swap_in(self.staging(name), self.partial / name)
        return self.partial / name

    def committed(self, name: str, marker: str) -> Path | None:
        """The sub-folder `name` when it is complete (it holds `marker`), else None."""
        folder = self.partial / name
        return folder if (folder / marker).is_file() else None

    # --- finishing ---
    def publish(self, overwrite: bool = True) -> Path:
        """The finished partial folder becomes `out` (an earlier `out` is replaced only once the new one is in).
        Without `overwrite`, an `out` that is no longer absent or empty is not replaced: the finished partial
        folder stays, and the error names it."""
        self.drop_temporaries()
        try:
            publish(self.partial, self.out, overwrite)
        except OutputTaken as e:
            raise ComeError(f"{e}; the finished result is in {self.partial}: move it where you want it") from None
        return self.out

    def publish_new(self, write: Callable[[Path], None], overwrite: bool = True) -> Path:
        """`out` written afresh by `write(folder)` in a temporary beside it and renamed into place (a failing
        write: into a fallback folder, `come.io.write_output_dir`); then the partial folder (checkpoints, what
        `write` copied from it) is removed."""
        write_output_dir(self.out, overwrite, write)
        self.discard()
        return self.out

    def abandon(self, keep: bool) -> None:
        """After a failure: keep the partial folder when it holds something to resume from, else remove it."""
        if not keep:
            self.discard()

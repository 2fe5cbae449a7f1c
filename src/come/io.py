"""Output folders that appear only when complete, never at the cost of what was there.

A result is written into a hidden temporary folder beside `--out` (`.NAME.tmp-*`), which replaces `--out` only
when complete: an old folder is first renamed aside (`.NAME.old-*`), the new one renamed in, then the old one
deleted, so a failure at any point leaves either the old or the new folder whole. Folders that must never be
replaced (the current folder and its parents, the home folder, the inputs of the run) are refused before any
work, and so are outputs that cannot be written (a file in the path, a symbolic link, a mount point, a
read-only or full file system). Temporaries that a killed run left behind are recognised by their name and by
the process that wrote them (or their age) and removed by the next run that writes beside them.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from come.errors import ComeError

TMP_TAG, OLD_TAG = ".tmp-", ".old-"  # .NAME.tmp-XXXX: being written; .NAME.old-XXXX: the previous output, aside
WRITER_FILE = ".come-writer"  # in a temporary folder while it is written: the writing process (host and pid)
STALE_AFTER_S = 6 * 3600  # a temporary whose writer is unknown counts as stale once untouched this long
RESCUE_PREFIX = "come-rescue-"


def check_output_dir(out: str | Path, overwrite: bool = False, inputs: Iterable[str | Path | None] = (),
                     need_bytes: int = 0) -> Path:
    """Refuse, before any work, an output folder that would destroy data or cannot be written.

    Refused always: the current folder, one of its parents, the home folder or a file-system root; a folder
    that is, or holds, one of `inputs` (the model, data files or plan the run reads); a symbolic link; a mount
    point; a path below a file; a folder that cannot be written or lacks `need_bytes` of free space. An existing
    non-empty folder needs `overwrite`."""
    out = Path(out).expanduser()
    refuse_protected(out, inputs)
    if out.is_symlink():
        raise ComeError(f"--out {out} is a symbolic link (to {os.readlink(out)}): pass the folder itself")
    if out.exists() and not out.is_dir():
        raise ComeError(f"output {out} exists and is a file: pass a folder path")
    if out.is_dir() and os.path.ismount(out):
        raise ComeError(f"--out {out} is a mount point, which cannot be replaced: pass a folder inside it, "
                        f"e.g. {out / 'result'}")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ComeError(f"output folder {out} exists and is not empty: pass --overwrite or another --out")
    check_writable(_existing_ancestor(out), need_bytes, f"--out {out}")
    return out


def refuse_protected(out: Path, inputs: Iterable[str | Path | None] = ()) -> None:
    """The current folder and its parents, the home folder, a root, and what holds an input are never an output."""
    target = out.resolve()
    cwd = Path.cwd().resolve()
    if target == cwd or target in cwd.parents:
        what = "the current folder" if target == cwd else "a parent of the current folder"
        raise ComeError(f"--out {out} is {what}, which would be replaced: pass a new folder, e.g. {out / 'result'}")
    if target == Path.home().resolve() or target == Path(target.anchor):
        raise ComeError(f"--out {out} is the home folder or a file-system root: pass a new folder inside it")
    for item in inputs:
        if item is None:
            continue
        src = Path(item).expanduser()
        if not src.exists():
            continue
        src = src.resolve()
        if target == src or target in src.parents:
            raise ComeError(f"--out {out} is (or holds) {item}, which this run reads and --out would replace: "
                            "pass another folder")


def _existing_ancestor(path: Path) -> Path:
    """The deepest existing folder on the way to `path` (where its missing parents would be created)."""
    for p in [path.parent, *path.parent.parents]:
        if p.exists() or p.is_symlink():
            if not p.is_dir():
                raise ComeError(f"--out {path} lies below {p}, which is a file: pass a folder path")
            return p
    return Path.cwd()


def check_writable(folder: Path, need_bytes: int = 0, what: str = "the output") -> None:
    """A probe file written and removed in `folder`, and `need_bytes` of free space there."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".come-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ComeError(f"{what}: cannot write in {folder} ({e.strerror or type(e).__name__}): pass an --out on a "
                        "writable file system") from None
    free = shutil.disk_usage(folder).free
    if need_bytes and free < need_bytes:
        raise ComeError(f"{what}: the result needs about {gib(need_bytes)}, {folder} has {gib(free)} free: free "
                        "space or pass an --out on another file system")


def gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def write_text_atomic(path: Path, text: str) -> None:
    """Write `path` through a temporary file beside it, so a reader (or a crash) never sees half of it."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


@contextmanager
def atomic_output_dir(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `out`; on success it replaces `out` (old folder aside, new one in, old one
    deleted), on error it is removed and `out` is left as it was."""
    out = check_output_dir(out, overwrite)
    clean_stale_temporaries(out.parent, out.name)  # this output's: writer gone, or untouched for hours
    clean_stale_temporaries(out.parent, None, math.inf)  # any other output's: only when its writer is gone
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}{TMP_TAG}", dir=out.parent))
    (tmp / WRITER_FILE).write_text(json.dumps(_writer()))
    try:
        yield tmp
        (tmp / WRITER_FILE).unlink()
        tmp.chmod(0o777 & ~_umask())  # mkdtemp's 0700 -> what a plain save_pretrained folder would get
        swap_in(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def swap_in(new: Path, out: Path) -> None:
    """Replace `out` by the folder `new` (same parent) so that a failure leaves one of them whole at `out`."""
    if not (out.exists() or out.is_symlink()):
        new.rename(out)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{out.name}{OLD_TAG}", dir=out.parent))
    aside.rmdir()  # a unique free name for the old folder
    out.rename(aside)
    try:
        new.rename(out)
    except BaseException:
        aside.rename(out)
        raise
    try:
        shutil.rmtree(aside)
    except OSError as e:
        print(f"come: warning: could not delete the previous {out} (moved to {aside}: {e.strerror}); the next run "
              "that writes there removes it, or delete it yourself", file=sys.stderr)


def write_output_dir(out: str | Path, overwrite: bool, write: Callable[[Path], None]) -> Path:
    """`write(folder)` into `out` through `atomic_output_dir`. When writing fails with an OS error (a full or
    read-only file system, a folder that vanished), the result is written into a fallback folder instead (in
    $COME_RESCUE_DIR, the temporary folder or the home folder) and a one-line error names it."""
    out = Path(out).expanduser()
    try:
        with atomic_output_dir(out, overwrite) as tmp:
            write(tmp)
    except OSError as e:
        why = e.strerror or str(e)
        rescue = rescue_result(out.name, write)
        if rescue is None:
            raise ComeError(f"could not write {out} ({why}) nor a fallback folder: free space or pass another "
                            "--out and run again") from e
        raise ComeError(f"could not write {out} ({why}): the result was saved in {rescue} instead; move it where "
                        "you want it") from e
    return out


def rescue_result(name: str, write: Callable[[Path], None]) -> Path | None:
    """The first fallback folder `write` could fill, or None."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    bases = [os.environ.get("COME_RESCUE_DIR"), tempfile.gettempdir(), str(Path.home())]
    for base in dict.fromkeys(b for b in bases if b):
        folder = Path(base) / f"{RESCUE_PREFIX}{name}-{stamp}-{os.getpid()}"
        try:
            folder.mkdir(parents=True)
            write(folder)
            return folder
        except OSError:
            shutil.rmtree(folder, ignore_errors=True)
    return None


def clean_stale_temporaries(folder: Path, name: str | None = None, max_age_s: float = STALE_AFTER_S) -> list[Path]:
    """Remove our own temporaries in `folder` (of output `name`, or of any): `.NAME.tmp-*` / `.NAME.old-*`
    folders whose writer process is gone (same host), and those (and `.NAME.tmp` files of `write_text_atomic`)
    untouched for `max_age_s`. Returns what was removed."""
    if not folder.is_dir():
        return []
    removed = []
    prefix = f".{name}" if name is not None else "."
    for p in folder.iterdir():
        if not p.name.startswith(prefix) or not _is_our_temporary(p.name, name):
            continue
        if p.is_symlink() or not _is_stale(p, max_age_s):
            continue
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def _is_our_temporary(filename: str, name: str | None) -> bool:
    base = filename[1:]
    if name is not None:
        if not base.startswith(name):
            return False
        rest = base[len(name):]
        return rest.startswith((TMP_TAG, OLD_TAG)) or rest == ".tmp"
    return TMP_TAG in base or OLD_TAG in base or base.endswith(".tmp")


def _is_stale(path: Path, max_age_s: float) -> bool:
    writer = path / WRITER_FILE
    if path.is_dir() and writer.is_file():
        try:
            w = json.loads(writer.read_text())
            if w.get("host") == socket.gethostname() and not _alive(int(w["pid"])):
                return True
        except (OSError, ValueError, KeyError, TypeError):
            pass
    if max_age_s == math.inf:
        return False
    newest = max([path.lstat().st_mtime] + ([c.lstat().st_mtime for c in path.iterdir()] if path.is_dir() else []))
    return time.time() - newest > max_age_s


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (killed, not yet reaped by its parent) counts as gone
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _writer() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every cleanup (temporaries, a compare's finished rows) runs."""


def handle_sigterm() -> None:
    """Turn SIGTERM into `Terminated` in the main thread (a no-op elsewhere)."""

    def raise_terminated(signum, frame):
        raise Terminated()

    try:
        signal.signal(signal.SIGTERM, raise_terminated)
    except ValueError:  # not the main thread
        pass


__all__ = ["atomic_output_dir", "check_output_dir", "clean_stale_temporaries", "handle_sigterm", "refuse_protected",
           "swap_in", "write_output_dir", "write_text_atomic"]

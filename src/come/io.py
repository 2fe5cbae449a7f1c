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

import errno
import fcntl
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
                     need_bytes: int = 0, nest_ok: Iterable[str | Path | None] = ()) -> Path:
    """Refuse, before any work, an output folder that would destroy data or cannot be written.

    Refused always: the current folder, one of its parents, the home folder or one of its parents, a file-system
    root; a folder that is, holds or lies inside one of `inputs` (the model, data files or plan the run reads;
    inside those of `nest_ok` is allowed); a symbolic link, or a symbolic link where come keeps the output's
    checkpoint, run folder or lock; a mount point; a path below a file; a name too long for those hidden
    siblings; a folder that cannot be written or lacks `need_bytes` of free space. An existing non-empty folder
    needs `overwrite`."""
    out = Path(out).expanduser()
    refuse_protected(out, inputs, nest_ok)
    check_name_length(out)
    if out.is_symlink():
        raise ComeError(f"--out {out} is a symbolic link (to {os.readlink(out)}): pass the folder itself")
    refuse_linked_siblings(out)
    if out.exists() and not out.is_dir():
        raise ComeError(f"output {out} exists and is a file: pass a folder path")
    if out.is_dir() and os.path.ismount(out):
        raise ComeError(f"--out {out} is a mount point, which cannot be replaced: pass a folder inside it, "
                        f"e.g. {out / 'result'}")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ComeError(f"output folder {out} exists and is not empty: pass --overwrite or another --out")
    check_writable(_existing_ancestor(out), need_bytes, f"--out {out}")
    return out


def refuse_protected(out: Path, inputs: Iterable[str | Path | None] = (),
                     nest_ok: Iterable[str | Path | None] = ()) -> None:
    """The current folder and its parents, the home folder and its parents, a root, and what is, holds or lies
    inside an input (but those of `nest_ok` may hold the output) are never an output."""
    target = Path(out).expanduser().resolve()
    cwd = Path.cwd().resolve()
    if target == cwd or target in cwd.parents:
        what = "the current folder" if target == cwd else "a parent of the current folder"
        raise ComeError(f"--out {out} is {what}, which would be replaced: pass a new folder, e.g. {out / 'result'}")
    home = Path.home().resolve()
    if target == home or target in home.parents or target == Path(target.anchor):
        what = "the home folder" if target == home else "a file-system root" if target == Path(target.anchor) \
            else "a parent of the home folder"
        raise ComeError(f"--out {out} is {what}, which would be replaced: pass a new folder inside it")
    nest = {Path(p).expanduser().resolve() for p in nest_ok if p is not None}
    for item in inputs:
        if item is None:
            continue
        src = Path(item).expanduser()
        if not (src.exists() or src.is_symlink()):
            continue
        src = src.resolve()
        if target == src or target in src.parents:
            raise ComeError(f"--out {out} is (or holds) {item}, which this run reads and --out would replace: "
                            "pass another folder")
        if src in target.parents and src not in nest:
            raise ComeError(f"--out {out} lies inside {item}, which this run reads: pass a folder outside it")


# what come writes beside an output NAME, at the longest: `.NAME.tmp-XXXXXXXX` (mkdtemp's 8 characters)
SIBLING_EXTRA = len(f".{TMP_TAG}") + 8


def check_name_length(out: Path) -> None:
    """An output name whose hidden siblings (`.NAME.tmp-*`, `.NAME.resume`, `NAME.partial`) the file system
    cannot hold is refused before any work, not when the result is written."""
    try:
        limit = os.pathconf(_existing_ancestor(out), "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    size = len(os.fsencode(out.name))
    if size + SIBLING_EXTRA > limit:
        raise ComeError(f"--out name {out.name[:24]}… is {size} bytes long: come writes hidden folders beside it "
                        f"(.NAME.tmp-XXXXXXXX) that would exceed the file system's {limit}-byte limit on names: pass "
                        f"a name of at most {limit - SIBLING_EXTRA} bytes")


def siblings(out: Path) -> list[Path]:
    """Where come keeps an output's checkpoint (`.NAME.resume`), run folder (`NAME.partial`) and lock."""
    return [out.parent / f".{out.name}.resume", out.parent / f"{out.name}.partial", lock_path(out)]


def refuse_linked_siblings(out: Path) -> None:
    """A symbolic link where come writes beside `out` would redirect those writes (and deletions) elsewhere."""
    for p in siblings(out):
        if p.is_symlink():
            raise ComeError(f"{p} is a symbolic link (to {os.readlink(p)}): come never writes through one there; "
                            "remove the link and run again")


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


def new_temporary(out: Path) -> Path:
    """A fresh hidden folder `.NAME.tmp-*` beside `out` recording its writer (so a run that finds it knows
    whether its writer is alive); our stale temporaries there are removed first."""
    clean_stale_temporaries(out.parent, out.name)  # this output's: writer gone, or untouched for hours
    clean_stale_temporaries(out.parent, None, math.inf)  # any other output's: only when its writer is gone
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}{TMP_TAG}", dir=out.parent))
    (tmp / WRITER_FILE).write_text(json.dumps(_writer()))
    return tmp


@contextmanager
def atomic_output_dir(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `out`; on success it replaces `out` (old folder aside, new one in, old one
    deleted), on error it is removed and `out` is left as it was. Without `overwrite`, `out` is checked again
    when the result is complete: what appeared there meanwhile is never replaced, and the result is kept in a
    folder beside it that the error names."""
    out = check_output_dir(out, overwrite=True)  # a non-empty `out`: refused (result kept) when publishing
    tmp = new_temporary(out)
    try:
        yield tmp
        (tmp / WRITER_FILE).unlink()
        readable_as_umask(tmp)
        try:
            publish(tmp, out, overwrite)
        except OutputTaken as e:
            kept = out.parent / rescue_name(out.name)
            tmp.rename(kept)
            raise ComeError(f"{e}; the result is in {kept}: move it where you want it") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class OutputTaken(ComeError):
    """`--out` was filled (or became a link or a file) while the run worked, and may not be replaced."""


def publish(new: Path, out: Path, overwrite: bool) -> None:
    """The complete folder `new` becomes `out`. With `overwrite` an existing `out` is replaced (`swap_in`); without,
    `out` must still be absent or empty, else `OutputTaken` (and `new` is left whole)."""
    if out.is_symlink():
        raise OutputTaken(f"--out {out} became a symbolic link while this run worked, and was not replaced")
    if overwrite:
        swap_in(new, out)
        return
    taken = out.exists() and (not out.is_dir() or any(out.iterdir()))
    if not taken:
        try:
            new.rename(out)  # atomic; refused by the system if `out` is no longer an empty folder
            return
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                raise
    what = ", ".join(sorted(p.name for p in out.iterdir())[:3]) if out.is_dir() else "a file"
    raise OutputTaken(f"--out {out} was written to while this run worked ({what}) and is not replaced without "
                      "--overwrite")


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
    """`write(folder)` into `out` through `atomic_output_dir`. When writing fails (a full or read-only file
    system, a folder that vanished: whatever the writer raises, an OSError, safetensors' or tokenizers' errors),
    the result is written into a fallback folder instead (in $COME_RESCUE_DIR, the temporary folder or the home
    folder) and a one-line error names it, or says that nothing could be written, and why."""
    out = Path(out).expanduser()
    try:
        with atomic_output_dir(out, overwrite) as tmp:
            write(tmp)
    except ComeError:
        raise
    except Exception as e:
        why = describe_error(e)
        rescue, failures = rescue_result(out.name, write)
        if rescue is None:
            raise ComeError(f"could not write {out} ({why}) nor a fallback folder ({'; '.join(failures)}): nothing "
                            "was saved; free space or pass another --out and run again") from e
        raise ComeError(f"could not write {out} ({why}): the result was saved in {rescue} instead; move it where "
                        "you want it") from e
    return out


def describe_error(e: BaseException) -> str:
    """One line for an error of any type (an OSError's text, a SafetensorError's message, ...)."""
    text = getattr(e, "strerror", None) or (str(e).strip().splitlines() or [""])[0] or type(e).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def rescue_name(name: str) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return f"{RESCUE_PREFIX}{name[:160]}-{stamp}-{os.getpid()}"


def rescue_result(name: str, write: Callable[[Path], None]) -> tuple[Path | None, list[str]]:
    """The first fallback folder `write` could fill (or None), and why each one before it failed."""
    bases = [os.environ.get("COME_RESCUE_DIR"), tempfile.gettempdir(), str(Path.home())]
    failures = []
    for base in dict.fromkeys(b for b in bases if b):
        folder = Path(base) / rescue_name(name)
        try:
            folder.mkdir(parents=True)
            write(folder)
            return folder, failures
        except Exception as e:
            failures.append(f"{base}: {describe_error(e)}")
            shutil.rmtree(folder, ignore_errors=True)
    return None, failures


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


def readable_as_umask(folder: Path) -> None:
    """Give `folder` and everything in it the modes the user's umask gives a new folder or file (0755 / 0644
    under umask 022): mkdtemp makes the folder 0700, and transformers writes model.safetensors 0600 through a
    temporary file, so without this nobody else on a shared machine could read the weights."""
    mask = _umask()
    folder.chmod(0o777 & ~mask)
    for path in folder.rglob("*"):
        if not path.is_symlink():
            path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def lock_path(out: Path) -> Path:
    """The lock of output `out`: `.NAME.lock` beside it (in its real parent, so that two spellings of one
    folder share it)."""
    parent = out.parent.resolve() if out.parent.exists() else out.parent.absolute()
    return parent / f".{out.name}.lock"


@contextmanager
def output_lock(out: str | Path) -> Iterator[None]:
    """Hold the lock of `out` (and so of its `.NAME.resume` checkpoint and `NAME.partial` run folder) while a run
    works on it: a second run on the same `--out` is refused instead of replacing or deleting what the first one
    is writing. The lock is the system's (flock): it goes with the process, however that ends."""
    path = lock_path(Path(out).expanduser())
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise ComeError(f"{path} is a symbolic link: come never writes through one there; remove it") from None
            raise ComeError(f"cannot create the lock {path} ({e.strerror}): pass an --out on a writable file "
                            "system") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
            os.close(fd)
            raise ComeError(f"another come run is working on --out {out} ({holder or 'its lock is ' + str(path)}): "
                            "wait for it to end, or pass another --out") from None
        try:  # the file may have been removed (by the run that held it) between our open and our lock
            same = os.fstat(fd).st_ino == os.stat(path, follow_symlinks=False).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
    except OSError:
        pass  # a full disk: the lock holds without its note
    try:
        yield
    finally:
        try:
            os.unlink(path)  # while still holding it: a run waiting on this file sees it gone and opens anew
        except OSError:
            pass
        os.close(fd)


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


# Keys that describe where a model was loaded from on the machine that wrote it, not the model: transformers
# writes them back when it saves what it loaded (a GGUF file's own name, `local_files_only` of an offline load).
LOCAL_CONFIG_KEYS = ("_model_name_or_path", "_name_or_path")
LOCAL_TOKENIZER_KEYS = ("is_local", "local_files_only", "name_or_path", "_name_or_path")


def drop_keys(path: Path, keys: tuple[str, ...]) -> None:
    """Remove `keys` from the JSON object in `path` (when the file is there and holds any of them)."""
    if not path.is_file():
        return
    data = json.loads(path.read_text())
    if isinstance(data, dict) and any(k in data for k in keys):
        path.write_text(json.dumps({k: v for k, v in data.items() if k not in keys}, indent=2) + "\n")


__all__ = ["atomic_output_dir", "check_output_dir", "clean_stale_temporaries", "drop_keys", "handle_sigterm",
           "output_lock", "publish", "readable_as_umask", "refuse_protected", "swap_in", "write_output_dir",
           "write_text_atomic"]

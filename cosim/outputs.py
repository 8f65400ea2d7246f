"""Output folders that are never mixed, half-written or shared by two runs at once.

Every script that writes a folder of results (``--out``) goes through :class:`OutputDir`:

* the folder is checked first: ``--out`` that is a file, lies under a file or sits in a
  folder the user may not write is one line naming the path;
* a lock file beside it (``.NAME.lock``, an ``flock``, so the kernel releases it even when the
  holder is killed with SIGKILL) makes a second run into the same ``--out`` refuse at once;
* with ``staged=True`` (run_cosim, evaluate) the run writes into a temporary folder beside
  ``--out`` (``.NAME.tmp-PID``) and its files are moved into ``--out`` only when the run is
  complete, so a failed or interrupted run leaves the previous results untouched and never an
  old summary.json beside a new config.yaml or a half-written slots.csv (an earlier run's
  config.yaml, summary.json or slots.csv that the new run does not write is removed with it);
* temporary folders that a killed run left beside ``--out`` are removed by the next run into it;
* any OSError while writing (disk full, file too large, permissions) is one line naming the folder;
* files the user put there are never replaced or removed: the folder's manifest (``.dtcosim-outputs``,
  written by OutputDir) lists the files runs of this project wrote into it, and a run that would replace
  any other file of the same name refuses in one line naming it (a filesystem root or the home folder
  itself is refused as ``--out`` outright);
* the staging folder lies on the output folder's own file system (inside it when ``--out`` is a mount
  point), so the final rename never crosses devices.

Training writes into its run folder directly (``staged=False``): its periodic checkpoints must
survive a crash for ``--resume``; a fresh run refuses a folder that already holds another run.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import shutil
from pathlib import Path
from types import TracebackType
from typing import Literal

from .config import CosimError

LOCK_SUFFIX = ".lock"
STAGING_TAG = ".tmp-"
MANIFEST = ".dtcosim-outputs"  # in an output folder: the names of the files runs of this project wrote there


_TEMP_FILE = re.compile(r"^\..+\.tmp\d+$")  # .NAME.tmpPID, see temp_path()


def temp_path(path: Path) -> Path:
    """Where an atomic write of ``path`` goes first (same folder, so os.replace is atomic)."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temp_dirs(root: str | Path, prefix: str) -> list[Path]:
    """Remove ``root/PREFIX<pid>-*`` folders whose process is gone (left behind by a SIGKILL)."""
    stale = []
    for p in Path(root).glob(prefix + "*"):
        pid = p.name[len(prefix):].split("-", 1)[0]
        if p.is_dir() and pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)
            stale.append(p)
    return stale


class OutputError(CosimError):
    """An output folder cannot be used (not a folder, read-only, locked by another run, disk full)."""


def check_writable_dir(path: str | Path, what: str = "--out") -> Path:
    """``path`` as a folder this process can create and write into; one OutputError naming it otherwise."""
    p = Path(path).expanduser()
    try:
        real = p.resolve()
    except (RuntimeError, OSError) as exc:  # a symlink loop (RuntimeError before Python 3.13, ELOOP after)
        if isinstance(exc, RuntimeError) or getattr(exc, "errno", None) == errno.ELOOP:
            raise OutputError(f"{what} {p} is a symbolic link loop; name a real folder") from None
        raise OutputError(f"{what} {p}: {getattr(exc, 'strerror', None) or exc}") from None
    if real.parent == real:
        raise OutputError(f"{what} {p} is the root of a file system; name a folder for the results")
    try:
        home = Path.home().resolve()
    except (RuntimeError, OSError, KeyError):
        home = None
    if home is not None and real == home:
        raise OutputError(f"{what} {p} is your home folder; name a folder for the results, e.g. {p / 'runs'}")
    if p.exists() and not p.is_dir():
        raise OutputError(f"{what} {p} is a file, not a folder")
    parent = p
    while not parent.exists():  # the nearest existing ancestor must be a writable folder
        if parent.parent == parent:
            break
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise OutputError(f"{what} {p} lies under the file {parent}, not a folder")
    probe = p if p.is_dir() else parent
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(f"{what} {p}: the folder {probe} is read-only for this user")
    return p


def _same_device(a: Path, b: Path) -> bool:
    try:
        return os.stat(a).st_dev == os.stat(b).st_dev
    except OSError:
        return True


def _oserror_line(exc: OSError, where: Path) -> str:
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        reason = "the disk is full"
    elif exc.errno == errno.EFBIG:
        reason = "file too large for this file system or limit"
    name = f" ({exc.filename})" if exc.filename else ""
    return f"cannot write the outputs in {where}{name}: {reason}"


def marked_files(folder: Path) -> set[str]:
    """The names the folder's manifest lists (empty when it has none or it is unreadable)."""
    try:
        text = (Path(folder) / MANIFEST).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return set()
    return {ln for ln in text.splitlines() if ln and "/" not in ln}


def mark_files(folder: Path, names: set[str] | list[str]) -> None:
    """Add ``names`` to the folder's manifest (atomically: a reader never sees half of it)."""
    folder = Path(folder)
    names = sorted(marked_files(folder) | set(names))
    tmp = temp_path(folder / MANIFEST)
    try:
        tmp.write_text("".join(n + "\n" for n in names), encoding="utf-8")
        os.replace(tmp, folder / MANIFEST)
    finally:
        tmp.unlink(missing_ok=True)


def _legacy_run(folder: Path) -> bool:
    """Whether ``folder`` holds a run of a version before the manifest: a summary.json that
    run_cosim or evaluate wrote (an object with mean_cost, or one per policy or trace folder)."""
    import json
    try:
        d = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return False
    if not isinstance(d, dict):
        return False
    if "folders" in d and isinstance(d["folders"], dict):
        d = next(iter(d["folders"].values()), {})
    return "mean_cost" in d or (bool(d) and all(isinstance(v, dict) and "mean_cost" in v for v in d.values()))


def refuse_foreign(folder: Path, names, what: str = "--out", ours=None) -> None:
    """One OutputError naming the first of ``names`` that exists in ``folder`` and that no run of this
    project wrote (not in its manifest; ``ours(path)`` may recognise files older versions wrote)."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    marked = marked_files(folder)
    legacy = None
    for name in sorted(names):
        f = folder / name
        if name in marked or not (f.exists() or f.is_symlink()):
            continue
        if ours is not None and ours(f):
            continue
        if name in OutputDir.RUN_FILES and f.is_file() and not f.is_symlink():
            legacy = _legacy_run(folder) if legacy is None else legacy
            if legacy:
                continue
        raise OutputError(f"{what} {folder}: {os.path.join(folder, name)} was not written by a run of dtcosim; "
                          f"refusing to replace it "
                          f"(move it away or choose another {what})")


class OutputDir:
    """Context manager around one run's output folder; ``.path`` is where to write.

        with OutputDir(args.out, staged=True) as out:
            write(out.path / "summary.json")     # lands in args.out when the block completes
    """

    # What the tools write into a results folder: on commit, an earlier run's copy of one of these that
    # this run did not write is removed too, so no old slots.csv stays beside a new config.yaml.
    RUN_FILES = ("config.yaml", "summary.json", "slots.csv")

    def __init__(self, final: str | Path, staged: bool = True, what: str = "--out", writes=(), ours=None):
        """``writes``: names the run will write into the folder (checked against files the user put there,
        before the run starts; a staged run checks what it wrote again on commit); ``ours(path)``: whether
        a file without a manifest entry was written by an older version of this project."""
        self.final = check_writable_dir(final, what)
        self.staged = staged
        self.what = what
        self.writes = set(writes) if writes else (set(self.RUN_FILES) if staged else set())
        self.ours = ours
        final = self.final.resolve()
        name = final.name or "out"
        # Beside the folder; inside it when only the folder itself is writable (e.g. --out . in a home folder)
        # or when the folder is a mount point (a rename across file systems fails with EXDEV).
        base = final.parent
        if final.is_dir() and (not os.access(base, os.W_OK | os.X_OK) or not _same_device(final, base)):
            base = final
        self.lock_path = base / f".{name}{LOCK_SUFFIX}"
        self.staging = base / f".{name}{STAGING_TAG}{os.getpid()}"
        self.path = self.staging if staged else self.final
        self._fd: int | None = None

    # -- locking -----------------------------------------------------------------------------
    def _lock(self) -> None:
        try:
            self.lock_path.parent.mkdir(parents=True, exist_ok=True)
            while True:
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
                    os.close(fd)
                    raise OutputError(f"another run (pid {holder}) is writing to {self.final}; wait for it to "
                                      f"finish or choose another {self.what}") from None
                try:  # the holder may have removed the file between our open and flock: retry on a new one
                    if os.stat(self.lock_path).st_ino == os.fstat(fd).st_ino:
                        break
                except FileNotFoundError:
                    pass
                os.close(fd)
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            self._fd = fd
        except OSError as exc:
            raise OutputError(_oserror_line(exc, self.final)) from None

    def _unlock(self) -> None:
        if self._fd is not None:
            try:
                self.lock_path.unlink()
            except OSError:
                pass
            os.close(self._fd)  # closing releases the flock
            self._fd = None

    def remove_stale(self) -> list[Path]:
        """What killed runs left behind (we hold the lock, so none of it is live): staging folders
        beside the output and half-written temp files (``atomic_write``'s) inside it."""
        parent, prefix = self.staging.parent, self.staging.name.rsplit(STAGING_TAG, 1)[0] + STAGING_TAG
        stale = [p for p in parent.glob(prefix + "*") if p != self.staging and p.is_dir()]
        if self.final.is_dir():
            stale += [p for p in self.final.glob(".*.tmp*") if _TEMP_FILE.match(p.name) and p.is_file()]
        for p in stale:
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
        return stale

    # -- the run -----------------------------------------------------------------------------
    def __enter__(self) -> OutputDir:
        self._lock()
        try:
            self.remove_stale()
            refuse_foreign(self.final, self.writes, self.what, self.ours)
            if self.staged:
                shutil.rmtree(self.staging, ignore_errors=True)
                self.staging.mkdir(parents=True)
            else:
                self.final.mkdir(parents=True, exist_ok=True)
                if self.writes:
                    mark_files(self.final, self.writes)
        except OSError as exc:
            self._unlock()
            raise OutputError(_oserror_line(exc, self.final)) from None
        except BaseException:
            self._unlock()
            raise
        return self

    def commit(self) -> None:
        """Move the staged files into the output folder (replacing same-named ones of an earlier run)."""
        if not self.staged or not self.staging.exists():
            return
        written = {entry.name for entry in self.staging.iterdir()}
        if not self.final.exists():
            mark_files(self.staging, written)
            os.rename(self.staging, self.final)
            return
        refuse_foreign(self.final, written, self.what, self.ours)  # nothing is moved unless all of it may be
        mark_files(self.final, written)
        marked = marked_files(self.final)
        for name in self.RUN_FILES:
            old = self.final / name
            if name not in written and name in marked and old.is_file():
                old.unlink()
        for entry in sorted(self.staging.iterdir()):
            dest = self.final / entry.name
            if dest.is_dir() and not dest.is_symlink():
                shutil.rmtree(dest)
            os.replace(entry, dest)
        self.staging.rmdir()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> Literal[False]:
        try:
            if exc_type is None:
                try:
                    self.commit()
                except OSError as err:
                    raise OutputError(_oserror_line(err, self.final)) from None
        finally:
            if self.staged:
                shutil.rmtree(self.staging, ignore_errors=True)
            self._unlock()
        if isinstance(exc, OSError) and self._is_output_error(exc):
            raise OutputError(_oserror_line(exc, self.final)) from None
        return False

    def _is_output_error(self, exc: OSError) -> bool:
        """Whether an OSError raised inside the block came from writing the outputs."""
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS):
            return True
        if not exc.filename:
            return False
        f = Path(os.fsdecode(exc.filename)).resolve()
        return any(f == root or root in f.parents for root in (self.staging, self.final.resolve()))

"""Output folders that never lose anything: written through a temporary sibling and renamed, refused when they
already hold something (unless the caller overwrites or resumes that same run), and created with the user's umask.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np

RUN_MANIFEST = "scgrn_run.json"
_HELD_LOCKS: set[Path] = set()  # the folder locks this process holds


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file, read in 16 MiB blocks: how a published record names an input without its path."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_temporary_folder(parent: Path, name: str) -> Path:
    """A fresh folder beside its final place, with the permissions `mkdir` would give it (mkdtemp gives 0700)."""
    temporary = Path(tempfile.mkdtemp(dir=parent, prefix=f".{name}.tmp"))
    temporary.chmod(0o777 & ~_umask())
    return temporary


@contextmanager
def atomic_folder(path: str | os.PathLike):
    """Yield a temporary sibling folder to fill; on success it replaces `path`, on any error it is removed, so a
    crash never leaves a half-written folder at `path`."""
    path = folder_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = make_temporary_folder(path.parent, path.name)
    try:
        yield temporary
        if path.exists():
            shutil.rmtree(path)
        os.replace(temporary, path)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def folder_path(path: str | os.PathLike) -> Path:
    """An output folder as an absolute path without `.`/`..` (so `.` has a name and a parent to write beside) and,
    when it is a symbolic link, the folder it points to (which is what gets replaced or cleaned up)."""
    path = Path(os.path.abspath(path))
    return path.resolve() if path.is_symlink() else path


def is_empty_folder(path: Path) -> bool:
    return not path.exists() or (path.is_dir() and not any(path.iterdir()))


def run_task(path: Path) -> str | None:
    """The task recorded in a run folder's manifest (`pretrain`, `finetune`, ...), or None."""
    manifest = Path(path) / RUN_MANIFEST
    return json.loads(manifest.read_text()).get("task") if manifest.is_file() else None


def write_run_manifest(path: Path, task: str) -> None:
    from .. import __version__

    path.mkdir(parents=True, exist_ok=True)
    (path / RUN_MANIFEST).write_text(json.dumps({"task": task, "scgrn_version": __version__}, indent=2) + "\n")


def check_output_folder(path: str | os.PathLike, *, overwrite: bool = False, resume: bool = False,
                        task: str | None = None, inputs: tuple = (), option: str = "output folder",
                        replaced: bool = False) -> None:
    """Refuse to write into a non-empty `path` unless `overwrite` (then no input may lie inside it, since it is
    replaced) or `resume` of a run of the same `task` (recognised by its manifest). A folder that is `replaced`
    (written beside and renamed into place, or moved aside by `overwrite`) must not hold the working folder."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{option} {path} is a file, not a folder; choose a folder path.")
    if (replaced or overwrite) and folder_path(path) in (Path.cwd(), *Path.cwd().parents):
        raise ValueError(f"{option} {path} holds the folder this command runs in, which cannot be replaced; give "
                         "a new folder's name (e.g. ./run), or run the command from elsewhere.")
    if is_empty_folder(path):
        if resume:
            raise ValueError(f"there is no run to resume in {path}; drop --resume_from_checkpoint to start one.")
        return
    if resume:
        found = run_task(path)
        if found != task:
            what = f"a {found} run" if found else "no scgrn run (no scgrn_run.json)"
            raise ValueError(f"{path} holds {what}, not a {task} run; resume a {task} run's own folder.")
        return
    if not overwrite:
        found = run_task(path)
        raise ValueError(f"{option} {path} is not empty; choose a new folder, or pass --overwrite to replace it"
                         + (f" (or --resume_from_checkpoint latest to continue its {found} run)." if found else "."))
    resolved = path.resolve()
    for source in inputs:
        if source and Path(source).exists() and resolved in (Path(source).resolve(), *Path(source).resolve().parents):
            raise ValueError(f"--overwrite would delete the input {source}, which lies inside {path}; choose another "
                             f"{option}.")


def lock_path(path: Path) -> Path:
    """Where the lock of output folder `path` lies: a hidden sibling, so that it outlives the folder being moved
    aside or replaced (beside the folder a symbolic link points to, so that every name of it shares the lock)."""
    path = folder_path(path)
    return path.parent / f".{path.name}.lock"


def _lock_owner_alive(owner: dict) -> bool | None:
    """Whether the process that took a lock still runs: None when it ran on another host (not knowable here)."""
    if owner.get("host") != socket.gethostname():
        return None
    try:
        os.kill(int(owner.get("pid", -1)), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, OverflowError):
        return True
    return True


def _locked_message(path: Path, lock: Path) -> str:
    try:
        owner = json.loads(lock.read_text())
    except (OSError, ValueError):
        owner = {}
    who = f"pid {owner.get('pid', '?')} on host {owner.get('host', '?')}"
    since = f", since {owner['started']}" if "started" in owner else ""
    if _lock_owner_alive(owner) is False:
        return (f"output folder {path} is locked by a run ({who}{since}) that is no longer running; it stopped "
                f"without releasing the folder. Check what it left, then delete {lock} and run again.")
    return (f"output folder {path} is in use by another run ({who}{since}); wait for it to finish or choose "
            f"another folder (if no run uses it, delete {lock}).")


def _remove_stale_temporaries(path: Path) -> None:
    """With the folder's lock held, a half-written temporary sibling (`.<name>.tmp*`) can only be a dead run's (a
    kill -9 before its cleanup): remove it. A folder moved aside by `--overwrite` (`.<name>.replaced.tmp*`) is
    kept, since it holds what the user had."""
    path = folder_path(path)
    for stale in path.parent.glob(f".{path.name}.tmp*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)


@contextmanager
def folder_lock(path: str | os.PathLike):
    """Hold output folder `path` for a run's lifetime: a lock file beside it, created atomically and holding the
    owner's pid, host and start time, so that a second run into the same folder is refused instead of mixing its
    results in. A lock left by a process that died is reported (with how to clear it), never taken over."""
    path = Path(path)
    lock = lock_path(path)
    if lock in _HELD_LOCKS:  # this process already holds it (a script's folder, then the library writing it)
        yield lock
        return
    lock.parent.mkdir(parents=True, exist_ok=True)
    try:
        handle = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    except FileExistsError:
        raise ValueError(_locked_message(path, lock)) from None
    with os.fdopen(handle, "w") as file:
        json.dump({"pid": os.getpid(), "host": socket.gethostname(),
                   "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}, file)
    _HELD_LOCKS.add(lock)
    _remove_stale_temporaries(path)
    try:
        yield lock
    finally:
        _HELD_LOCKS.discard(lock)
        lock.unlink(missing_ok=True)


def checkpoint_folders(root: Path) -> list[Path]:
    """The `step_*` checkpoint folders under `root` (a run's `checkpoints/`), oldest first."""
    return sorted(p for p in Path(root).glob("step_*") if p.is_dir())


PROGRESS = "progress.json"  # what a benchmark of several units (known_truth) has finished, as it goes


def resumable(path: Path) -> bool:
    """Whether a run folder holds work a resumed run keeps: a training checkpoint, or a benchmark's progress."""
    return bool(checkpoint_folders(path / "checkpoints")) or (path / PROGRESS).is_file()


@contextmanager
def output_folder(path: str | os.PathLike, task: str, *, overwrite: bool = False, resume: bool = False,
                  inputs: tuple = (), main_process: bool = True):
    """The lifetime of a script's output folder. Checks it (`check_output_folder`); an overwritten folder is moved
    aside and deleted only when the new run succeeds. A run that fails leaves nothing behind unless it wrote
    something `resumable` (a checkpoint, a benchmark's progress; the old folder comes back where the new run left
    nothing). Only the main process touches the disk, and it holds the folder's lock (`folder_lock`) for the whole
    run."""
    path = folder_path(path)
    with (folder_lock(path) if main_process else nullcontext(),
          _output_folder(path, task, overwrite=overwrite, resume=resume, inputs=inputs, main_process=main_process)):
        yield path


@contextmanager
def _output_folder(path: Path, task: str, *, overwrite: bool, resume: bool, inputs: tuple, main_process: bool):
    check_output_folder(path, overwrite=overwrite, resume=resume, task=task, inputs=inputs)
    aside = None
    if main_process and overwrite and not resume and not is_empty_folder(path):
        aside = make_temporary_folder(path.parent, f"{path.name}.replaced")
        os.replace(path, aside / path.name)
    fresh, existed = not resume, path.exists()
    try:
        yield path
    except BaseException:
        if main_process and fresh and not resumable(path):
            shutil.rmtree(path, ignore_errors=True)
            if aside is not None:
                os.replace(aside / path.name, path)
            elif existed:
                path.mkdir(exist_ok=True)  # the empty folder the user made comes back; never masks the error
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def jsonable(value):
    """`json.dumps(default=...)` for numpy scalars (and anything else, as text)."""
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return str(value)

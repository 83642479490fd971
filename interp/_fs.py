"""Small file-system helpers: atomic writes, one writer per folder, paths confined to a folder, checksums.

* :func:`atomic_write_bytes` / :func:`atomic_write_json` / :func:`atomic_dir` — never half-written,
  created with the process umask (``0o666 & ~umask`` for files, ``0o777 & ~umask`` for folders),
  not the ``0600`` / ``0700`` of :mod:`tempfile`.
* :func:`folder_lock` — an advisory ``flock`` on ``<folder>/.lock``: a second writer is refused at
  once, naming the holder's pid; the kernel drops the lock when its holder dies (no stale locks).
* :func:`confined_path` — a path named by a manifest, refused if it leaves its folder.
* :func:`sha256_file` — streamed checksum of a file's bytes.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import hashlib
import json
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from interp.errors import StoreError

__all__ = ["interp_home", "atomic_dir", "atomic_write_bytes", "atomic_write_json", "folder_lock", "LOCK_NAME",
           "confined_path", "sha256_file", "process_umask", "file_mode", "fsync_dir"]

#: Name of the lock file :func:`folder_lock` keeps inside a folder while it is held.
LOCK_NAME = ".lock"

_UMASK_LOCK = threading.Lock()


def interp_home() -> Path:
    """Cache folder of interp: ``$INTERP_HOME``, else ``~/.cache/interp``."""
    return Path(os.environ.get("INTERP_HOME") or Path.home() / ".cache" / "interp")


# ---------------------------------------------------------------- permissions
def process_umask() -> int:
    """The process umask, read now (it may change while a program runs).

    Linux reports it in ``/proc/self/status`` without changing it. Elsewhere it is read by
    setting a restrictive ``0o077`` and restoring the old value at once, under a lock: the
    umask is process-global, so the window is kept to two system calls, and a file another
    thread creates inside it gets fewer permissions, never more.
    """
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        old = os.umask(0o077)
        os.umask(old)
    return old


def file_mode(*, folder: bool = False) -> int:
    """Mode a plain ``open()`` / ``mkdir()`` would give now: ``0o666 & ~umask`` (``0o777`` for folders)."""
    return (0o777 if folder else 0o666) & ~process_umask()


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (renames, new files) to disk, where the platform allows it."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ---------------------------------------------------------------- atomic writes
@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``final``; rename it to ``final`` on success.

    If another process created ``final`` meanwhile, its folder wins and ours is dropped.
    On any exception the temporary folder is removed and ``final`` is untouched. The folder
    gets the umask's permissions (``tempfile.mkdtemp`` would leave it ``0700``).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
        os.chmod(tmp, file_mode(folder=True))
        try:
            os.replace(tmp, final)
        except OSError:
            if not final.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and ``os.replace`` (never half-written).

    The file gets the permissions of a plain ``open(path, "w")``: ``0o666 & ~umask``.

    Raises:
        StoreError: the folder cannot be created or written (read-only, full, under a file);
            the message names ``path`` and the system's reason. ``path`` is then untouched.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise StoreError(f"cannot write {path}: {e.strerror or e}") from e
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), file_mode())
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and not isinstance(e, StoreError):
            raise StoreError(f"cannot write {path}: {e.strerror or e}") from e
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode())


# ---------------------------------------------------------------- one writer per folder
def _holder(fd: int) -> str:
    """Who holds the lock, from the lock file's content (pid, host, start time)."""
    for _ in range(20):  # the holder writes its record right after taking the lock
        try:
            info = json.loads(os.pread(fd, 4096, 0).decode() or "null")
        except (OSError, ValueError):
            info = None
        if isinstance(info, dict):
            return (f"pid {info.get('pid')} on host {info.get('host')}, since {info.get('since')}"
                    + (f", writing {info['what']}" if info.get("what") else ""))
        time.sleep(0.005)
    return "pid unknown: the lock file holds no record yet"


@contextlib.contextmanager
def folder_lock(folder: str | Path, *, what: str = "output folder") -> Iterator[Path]:
    """Hold the one-writer lock of ``folder`` (created if missing) while the ``with`` block runs.

    An advisory ``fcntl.flock`` on ``<folder>/.lock``, which records the holder's pid, host and
    start time. A second writer, in this or another process, is refused at once. The kernel
    releases the lock when its holder exits or is killed, so a leftover ``.lock`` of a dead
    process never blocks: its record is simply overwritten. The lock file is removed on release.
    Readers take no lock. Local file systems only (``flock`` is not shared over every NFS setup).
    Where ``fcntl`` does not exist (Windows) no lock is taken.

    Args:
        folder: the output folder.
        what: what is written there, for messages (``"activation store"``).

    Yields:
        ``folder`` as a Path.

    Raises:
        StoreError: ``folder`` is a file or cannot be created, or another writer holds it
            (the message names the folder and the holder's pid).

    Example:
        >>> import tempfile
        >>> tmp = Path(tempfile.mkdtemp())
        >>> with folder_lock(tmp / "store", what="activation store") as folder:
        ...     print(sorted(p.name for p in folder.iterdir()))
        ...     try:
        ...         with folder_lock(folder, what="activation store"):   # a second writer is refused
        ...             pass
        ...     except StoreError as e:
        ...         print(type(e).__name__, f"pid {os.getpid()} on host" in str(e))   # names this holder
        ['.lock']
        StoreError True
        >>> sorted(p.name for p in (tmp / "store").iterdir())         # lock file removed on release
        []
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise StoreError(f"{what} {folder} exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StoreError(f"cannot create {what} folder {folder}: {e.strerror or e}") from e
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield folder
        return
    lock = folder / LOCK_NAME
    fd = -1
    for _ in range(100):
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        except OSError as e:
            raise StoreError(f"cannot create the lock file {lock} of {what} {folder}: {e.strerror or e}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _holder(fd) if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES) else ""
            os.close(fd)
            if not holder:
                raise StoreError(f"cannot lock {what} {folder} ({lock}): {e.strerror or e}") from e
            raise StoreError(f"{what} {folder} is being written by another process ({holder}; lock {lock}); "
                             "wait for it to finish or choose another folder") from None
        # the previous holder may have removed the file between our open and our flock
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
        fd = -1
    if fd < 0:
        raise StoreError(f"could not take the lock {lock} of {what} {folder}: it was replaced 100 times in a row")
    try:
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "since": _dt.datetime.now().astimezone().isoformat(timespec="seconds"), "what": what}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        yield folder
    finally:
        with contextlib.suppress(OSError):
            if os.path.samestat(os.fstat(fd), os.stat(lock)):
                os.unlink(lock)
        os.close(fd)  # releases the flock


# ---------------------------------------------------------------- paths named by manifests
def confined_path(folder: str | Path, name: Any, *, source: str | Path, entry: str = "") -> Path:
    """``folder / name`` for a relative path a manifest names, refused if it could leave ``folder``.

    Refused: a non-string or empty name, an absolute path (POSIX or Windows), a ``..``
    component, and a path whose real location (symlinks followed, at any component) is
    outside ``folder``'s real location. Symlinks that stay inside are allowed.

    Args:
        folder: the folder the manifest describes.
        name: the path as written in the manifest.
        source: the manifest (or record) file, for the message.
        entry: which entry of it (``"shards[3].file"``), for the message.

    Raises:
        StoreError: naming ``source``, the entry and the offending path.
    """
    where = f"{source}{f' ({entry})' if entry else ''}"
    if not isinstance(name, str) or not name or "\0" in name:
        raise StoreError(f"{where}: expected a relative file name, got {name!r}")
    posix, win = PurePosixPath(name), PureWindowsPath(name)
    if posix.is_absolute() or win.is_absolute() or win.drive:
        raise StoreError(f"{where}: refusing the absolute path {name!r}; entries must stay inside {folder}")
    if ".." in posix.parts or ".." in win.parts:
        raise StoreError(f"{where}: refusing the path {name!r}, which climbs out of {folder} with '..'")
    folder = Path(folder)
    path = folder / name
    root = folder.resolve()
    real = path.resolve()
    if real != root and not real.is_relative_to(root):
        raise StoreError(f"{where}: refusing {name!r}, a symbolic link that leaves {folder} (it points to {real})")
    return path


def sha256_file(path: str | Path, *, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in ``chunk``-byte pieces (~1.3 GB/s)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()

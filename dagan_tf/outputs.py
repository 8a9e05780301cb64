"""Outputs that appear whole or not at all, with normal permissions, never destroying what was there.

Every command writes through :func:`atomic_output_dir` (folders) or
:func:`atomic_output_file` (single files): the result is built under a hidden
temporary name beside the target and renamed over it only once complete, so
a failure (bad input, full disk, a kill) leaves any previous output exactly as
it was and nothing partial behind.  Temporary names start with ``.NAME.`` so
they never collide with user files.  Folders and files get the permissions
``mkdir`` and ``open`` would give (``0777``/``0666`` less the umask), not the
``0700`` of :func:`tempfile.mkdtemp`.  Operating-system failures while writing
become a one-line :class:`DaganError` naming the path and the cause.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Iterator

from dagan_tf.errors import DaganError


def write_cache(path: str | Path, write) -> bool:
    """Best effort: ``write(tmp_path)`` then atomically to ``path``; False (nothing left) where that fails,
    e.g. a read-only data folder.  For caches that can always be recomputed."""
    try:
        with atomic_output_file(path, overwrite=True) as tmp:
            write(tmp)
    except DaganError:
        return False
    return True


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_new_output(out: str | Path, overwrite: bool) -> Path:
    """Raise when ``out`` exists and ``overwrite`` is False; returns ``out`` as a Path."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise DaganError(f"output {out} exists; pass --overwrite to replace it")
    return out


def make_dir(path: str | Path) -> Path:
    """``mkdir -p`` with a one-line error naming the path when the system refuses."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise os_error(exc, path) from None
    return path


def os_error(exc: BaseException, path: str | Path | None = None) -> DaganError:
    """A one-line error for an OS failure (``no space left on device writing RUN/checkpoints``).

    Handles ``OSError`` and TensorFlow's I/O errors (recognised by their message).
    """
    text = str(getattr(exc, "message", None) or exc)
    number = getattr(exc, "errno", None)
    causes = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
              errno.EACCES: "permission denied", errno.EPERM: "permission denied",
              errno.EROFS: "read-only file system", errno.ENOENT: "no such file or folder",
              errno.ENOTDIR: "a parent is not a folder", errno.EISDIR: "is a folder"}
    cause = causes.get(number)
    if cause is None:
        lowered = text.lower()
        for needle, name in (("no space left", "no space left on device"), ("quota", "disk quota exceeded"),
                             ("read-only file system", "read-only file system"),
                             ("permission denied", "permission denied")):
            if needle in lowered:
                cause = name
                break
    if cause is None and path is not None and _disk_full(Path(path)):
        cause = "no space left on device"  # e.g. numpy's "N requested and M written", which has no errno
    if cause is None:
        cause = getattr(exc, "strerror", None) or (text.splitlines()[0] if text else type(exc).__name__)
    where = path or getattr(exc, "filename", None)
    return DaganError(f"{cause} writing {where}" if where else cause)


def _disk_full(path: Path) -> bool:
    """True when the file system that would hold ``path`` has (almost) no free space left."""
    for folder in (path, *path.parents):
        if folder.exists():
            try:
                return shutil.disk_usage(folder).free < 64 * 1024
            except OSError:
                return False
    return False


def is_os_failure(exc: BaseException) -> bool:
    """True for ``OSError`` and TensorFlow I/O errors caused by the file system."""
    if isinstance(exc, OSError):
        return True
    tf = sys.modules.get("tensorflow")
    if tf is not None and isinstance(exc, tf.errors.OpError):
        text = str(exc.message).lower()
        return any(s in text for s in ("no space left", "read-only file system", "permission denied", "quota"))
    return False


def _apply_umask(path: Path, is_dir: bool) -> None:
    os.chmod(path, (0o777 if is_dir else 0o666) & ~current_umask())


def replace_path(new: Path, target: Path) -> None:
    """Put ``new`` at ``target``: the old ``target`` is moved aside, ``new`` renamed in, the old removed.

    Every step is a rename in one folder, so ``target`` is at each moment either
    the old or the new complete output.
    """
    old = None
    if target.exists() or target.is_symlink():
        old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(target, old)
    try:
        os.replace(new, target)
    except BaseException:
        if old is not None:
            os.replace(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() and not old.is_symlink() else old.unlink()


@contextlib.contextmanager
def _writing(tmp: Path, out: Path, is_dir: bool) -> Iterator[Path]:
    try:
        yield tmp
        _apply_umask(tmp, is_dir)
        replace_path(tmp, out)
    except BaseException as exc:
        error = os_error(exc, out) if is_os_failure(exc) else None  # before the cleanup frees the space
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        if error is not None:
            raise error from None
        raise


@contextlib.contextmanager
def atomic_output_dir(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a hidden temporary folder beside ``out``; on success it replaces ``out``.

    On any exception the temporary folder is removed and ``out`` is untouched.
    """
    out = check_new_output(out, overwrite)
    make_dir(out.parent)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as exc:
        raise os_error(exc, out) from None
    with _writing(tmp, out, is_dir=True) as folder:
        yield folder


@contextlib.contextmanager
def atomic_output_file(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a hidden temporary file path beside ``out`` (same suffix); on success it replaces ``out``."""
    out = check_new_output(out, overwrite)
    if out.is_dir():
        raise DaganError(f"output {out} is a folder, not a file")
    make_dir(out.parent)
    suffix = "".join(out.suffixes[-2:]) if out.name.endswith(".nii.gz") else out.suffix
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp{suffix}")
    with _writing(tmp, out, is_dir=False) as path:
        yield path


@contextlib.contextmanager
def exclusive_lock(target: str | Path, what: str) -> Iterator[None]:
    """Hold ``target`` (a file or folder, present or not) for this process alone, until the block ends.

    The lock is ``flock`` on a hidden ``.NAME.lock`` file beside ``target`` (holding the pid), removed
    on exit, so it also outlives a removal of ``target`` itself by someone else.  Raises
    :class:`DaganError` naming ``what`` and ``target`` when another process holds it.
    """
    target = Path(target)
    make_dir(target.parent)
    path = target.with_name(f".{target.name}.lock")
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise os_error(exc, path) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DaganError(f"{what} {target} is in use by another process (pid {holder}); "
                             f"wait until it ends") from None
        if _is_open_file(path, fd):
            break
        os.close(fd)  # its previous holder removed the file between our open and lock: lock the new one
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)


def _is_open_file(path: Path, fd: int) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)
